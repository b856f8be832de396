"""The report of :func:`hiercompare.compare_data`: rendered from its results dictionary alone.

Sections, in the order a user reads them: what to look at first (the disagreements no known cause explains),
the data, the fits, agreement and its diagnosis, model comparison, cross-validation, the pictures, the bootstrap,
provenance. Every table is one of ``results["tables"]`` (also ``tables/NAME.csv``); every label is escaped by
Jinja2's autoescape.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from ..results import NOT_ASSESSED
from ..schema import INTERVAL_TEXT
from . import _fmt

# table name -> (columns shown, text columns); columns absent from a table are skipped
SHOWN: dict[str, list[str]] = {
    "data_columns": ["column", "dtype", "kind", "role", "missing", "distinct", "example"],
    "data_dropped": ["column", "rows_missing", "used_by"],
    "data_tree": ["formula", "level", "depth", "groups", "rows_min", "rows_median", "rows_max", "singletons",
                  "children_min", "children_median", "children_max", "varying_terms"],
    "fits": ["formula", "backend", "status", "method", "converged", "singular", "loglik", "fit_seconds", "reason"],
    "agreement_summary": ["formula", "pair", "param_class", "agree", "disagree", "boundary", "missing", "info",
                          "max_abs_diff", "max_rel_diff", "tolerance", "tol_kind", "verdict"],
    "diagnosis": ["formula", "pair", "cause", "explained", "n_disagree", "param_classes", "explanation"],
    "likelihood_check": ["formula", "backend", "method", "loglik_reported", "loglik_exact", "delta_to_best",
                         "verdict"],
    "allfit": None,
    "information_criteria": ["formula", "backend", "method", "nobs", "n_params", "loglik", "AIC", "BIC",
                             "delta_AIC", "delta_BIC"],
    "lrt": ["model_small", "model_big", "df", "statistic", "p_value", "p_value_naive_chi2",
            "reference_distribution", "note"],
    "loo": None,
    "cv_summary": None,
    "cv_folds": None,
    "ppc_summary": None,
    "ppc_groups": None,
    "ppc_skipped": None,
}
NUMERIC_TEXT = {"formula", "backend", "status", "method", "reason", "pair", "param_class", "tol_kind", "verdict",
                "cause", "explanation", "column", "dtype", "kind", "role", "example", "used_by", "level",
                "varying_terms", "model_small", "model_big", "reference_distribution", "note", "param_classes",
                "term", "group", "effect"}


def _cell(column: str, value, row: dict) -> str:
    if column == "converged" and row.get("status", "ok") == "ok" and (
            value is None or (isinstance(value, float) and np.isnan(value))):
        return NOT_ASSESSED  # the engine makes no assessment (closed form, or a baseline)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return _fmt(value)


def _table(results: dict, name: str, cols: list[str] | None = None) -> dict:
    rows = results.get("tables", {}).get(name, [])
    if not rows:
        return {"rows": [], "cols": [], "text": []}
    have = list(rows[0].keys())
    cols = [c for c in (cols or SHOWN.get(name) or have) if c in have]
    out = [{c: _cell(c, r.get(c), r) for c in cols} for r in rows]
    return {"rows": out, "cols": cols, "text": [c for c in cols if c in NUMERIC_TEXT]}


def _estimate_cell(rows: pd.DataFrame) -> str:
    """``estimate [conf_low, conf_high]`` of the first row ("" when there is none; no interval when absent), the
    interval followed by ``conditional on f(x)`` / ``cluster bootstrap`` where the row's ``interval`` says so (the
    learners' intervals)."""
    if rows.empty:
        return ""
    r = rows.iloc[0]
    ci = (f" [{_fmt(r['conf_low'])}, {_fmt(r['conf_high'])}]"
          if pd.notna(r.get("conf_low")) and pd.notna(r.get("conf_high")) else "")
    kind = r.get("interval")
    if ci and isinstance(kind, str) and kind:
        ci += " " + INTERVAL_TEXT.get(kind, kind)
    return f"{_fmt(r['estimate'])}{ci}"


def _estimate_tables(results: dict) -> list[dict]:
    """Per formula: fixed effects (term x backend: estimate [interval]) and variance components."""
    est = pd.DataFrame(results.get("tables", {}).get("estimates", []))
    out = []
    if est.empty:
        return out
    for c in ("group", "level"):
        est[c] = est[c].fillna("")
    for formula in results["formulas"]:
        e = est[est["formula"] == formula]
        if e.empty:
            continue
        backends = list(dict.fromkeys(e["backend"]))
        fx = e[e["effect"] == "fixed"]
        fixed_rows = [{"term": t, **{b: _estimate_cell(fx[(fx["backend"] == b) & (fx["term"] == t)]) for b in backends}}
                      for t in dict.fromkeys(fx["term"])]
        rp = e[e["effect"] == "ran_pars"]
        vc_rows = [{"group": g, "term": t,
                    **{b: _estimate_cell(rp[(rp["backend"] == b) & (rp["group"] == g) & (rp["term"] == t)])
                       for b in backends}}
                   for g, t in dict.fromkeys(zip(rp["group"], rp["term"]))]
        out.append({"formula": formula, "fixed_rows": fixed_rows, "fixed_cols": ["term"] + backends,
                    "vc_rows": vc_rows, "vc_cols": ["group", "term"] + backends})
    return out


def _messages(results: dict) -> list[dict]:
    out = []
    for formula, fits in results.get("fits", {}).items():
        for b, f in fits.items():
            d = f.get("diagnostics", {})
            items = list(d.get("warnings", [])) + list(d.get("notes", [])) + list(d.get("convergence_messages", []))
            conv = d.get("converged")
            out.append({"formula": formula, "backend": b,
                        "converged": "not assessed" if conv is None else str(bool(conv)),
                        "singular": str(d.get("singular")), "messages": items})
    return out


def render_compare(results: dict, figures: list[dict] | None = None) -> str:
    """HTML for a :func:`~hiercompare.compare_data` run. ``figures`` defaults to ``results["figures"]``: a list of
    ``{"section", "title", "png", "caption"}`` (base64 PNG, each with its table in ``results["tables"]``)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("hiercompare", "report/templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    diag = pd.DataFrame(results.get("tables", {}).get("diagnosis", []))
    unexplained = []
    if not diag.empty and "explained" in diag.columns:
        u = diag[~diag["explained"].astype(bool)]
        unexplained = [{"formula": r.get("formula", ""), "pair": r.get("pair", ""), "cause": r.get("cause", ""),
                        "explanation": r.get("explanation", "")} for r in u.to_dict("records")]
    tables = {name: _table(results, name) for name in SHOWN}
    # the diagnosis: disagreements (and flags) first; pairs that estimate different things (info) folded below
    d_all = results.get("tables", {}).get("diagnosis", [])
    is_info = [bool(r.get("info")) and not r.get("n_disagree") for r in d_all]
    tables["diagnosis_info"] = _table({"tables": {"diagnosis": [r for r, i in zip(d_all, is_info) if i]}},
                                      "diagnosis")
    tables["diagnosis"] = _table({"tables": {"diagnosis": [r for r, i in zip(d_all, is_info) if not i]}},
                                 "diagnosis")
    prov = results.get("provenance", {})
    provenance_rows = [{"key": k, "value": json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)}
                       for k, v in prov.items()]
    definition = results.get("definition", {})
    ctx = dict(
        title=results.get("title", "hiercompare compare"),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=prov.get("hiercompare", ""), source=results.get("source", ""), formulas=results["formulas"],
        family=results.get("family", "gaussian"), nobs=results.get("nobs"), backends=results.get("backends", []),
        cv_backends=results.get("cv_backends", []), cv_opt_in=results.get("cv_opt_in", []),
        definition=definition, stream=results.get("stream"), unexplained=unexplained, t=tables, estimates=_estimate_tables(results),
        messages=_messages(results), figures=figures if figures is not None else results.get("figures", []),
        bootstrap=_table(results, "bootstrap_summary"), ppc_draws=results.get("ppc_draws", 200), provenance_rows=provenance_rows,
        stages={k: f"{v:.1f} s" for k, v in results.get("timing_stages", {}).items() if isinstance(v, float)},
    )
    return env.get_template("compare.html.j2").render(**ctx)


__all__ = ["render_compare"]
