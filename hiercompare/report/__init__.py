"""Self-contained HTML reports, rendered from a results dictionary (what ``results.json`` holds) alone.

Templates use Jinja2 with autoescaping on, so every label (group names, backend messages, column names) is
HTML-escaped; images are embedded as base64 PNG.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from ..results import convergence_text
from ..schema import INTERVAL_TEXT
from ..spec import INTERCEPT
from . import plots


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        ax = abs(x)
        if ax != 0 and (ax < 1e-3 or ax >= 1e5):
            return f"{x:.{digits - 1}e}"
        return f"{x:.{digits}f}"
    return str(x)


def _records(df: pd.DataFrame, cols) -> list[dict]:
    return [{c: _fmt(r[c]) for c in cols} for _, r in df.iterrows()]


def markdown_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` (MultiIndex columns joined by ' / '), for the recorded validation summaries."""
    cols = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _demo_hierarchy(results: dict, tidy: pd.DataFrame) -> dict | None:
    """The hierarchy diagram of a demo: one backend's intercept offsets on the tree (None without group effects).

    The backend is the first of :data:`hiercompare.report.plots.TREE_BACKENDS` that ran (else the first with
    group effects); a label's parent is its part before the last ``:`` (the demo's labels are ``market:sub``).
    """

    levels_info = results.get("hierarchy", {}).get("levels", [])
    rv = tidy[tidy["effect"] == "ran_vals"]
    present = list(dict.fromkeys(rv.loc[rv["estimate"].notna(), "backend"]))
    backend = next((b for b in plots.TREE_BACKENDS if b in present), present[0] if present else None)
    if backend is None or not levels_info:
        return None
    sub = tidy[tidy["backend"] == backend]
    levels = []
    for lv in levels_info:
        g = lv["group"]
        e = sub[(sub["effect"] == "ran_vals") & (sub["group"] == g) & (sub["term"] == INTERCEPT)]
        if e.empty:  # no intercept at this level: its labels, without offsets
            e = rv[rv["group"] == g].drop_duplicates("level").assign(estimate=np.nan)
        levels.append(e[["level", "estimate"]].assign(group=g))
    fixed = sub[(sub["effect"] == "fixed") & (sub["term"] == INTERCEPT)]["estimate"]
    root_value = float(fixed.iloc[0]) if len(fixed) and np.isfinite(fixed.iloc[0]) else None
    root = results.get("hierarchy", {}).get("root", "root")
    table = plots.hierarchy_table(root, root_value, levels)
    return dict(backend=backend, note=plots.hierarchy_note(table),
                png=plots.hierarchy_plot(root, root_value, levels, title=f"backend {backend}"))


def _demo_trees(results: dict) -> list[dict]:
    """The LightGBM trees recorded in ``results["lightgbm_trees"]`` (:func:`plots.lightgbm_tree_records`), drawn."""
    out = []
    for rec in results.get("lightgbm_trees", []):
        be = rec.get("backend", "lightgbm")
        if "error" in rec:
            out.append(dict(backend=be, png="", note=f"the tree could not be recorded: {rec['error']}"))
            continue
        what = ("LightGBM f(x) on the fixed-effect predictors, boosted on the marginal-likelihood gradient; the "
                "group effects come from mixedcore" if be == "lightgbm" else
                "BASELINE: LightGBM with the grouping factors as categorical features")
        note = f"{what}; tree {rec['tree_index']} of {rec['n_trees']}"
        try:
            png = plots.lightgbm_tree_from_record(rec)
        except (plots.GraphvizMissing, ImportError) as exc:
            png, note = "", f"{note}; not drawn here: {exc}"
        out.append(dict(backend=be, png=png, note=note))
    return out


def render_demo(results: dict) -> str:
    """HTML for a demo / method-comparison run (see :func:`hiercompare.demo.run_demo` for the dict).

    Besides the tables, it draws the hierarchy with one backend's offsets (:func:`plots.hierarchy_plot`) and,
    where ``results["lightgbm_trees"]`` holds records (:func:`plots.lightgbm_tree_records`), each LightGBM
    backend's first tree coloured by node kind.
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("hiercompare", "report/templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    truth = pd.DataFrame(results["truth"]["tidy"])
    for c in ("group", "level"):
        truth[c] = truth[c].fillna("")
    fits = results["fits"]
    tidy = pd.concat([pd.DataFrame(f["tidy"]) for f in fits], ignore_index=True) if fits else pd.DataFrame(
        columns=["effect", "group", "level", "term", "estimate", "std_error", "conf_low", "conf_high", "backend"])
    for c in ("group", "level"):
        tidy[c] = tidy[c].fillna("")
    for c in ("estimate", "std_error", "conf_low", "conf_high"):  # JSON nulls (no interval) -> NaN
        tidy[c] = pd.to_numeric(tidy[c], errors="coerce").astype(float)
    backends = [f["backend"] for f in fits]

    # truth table (fixed + variance parameters)
    tp = truth[truth["effect"] != "ran_vals"]
    truth_cols = ["effect", "group", "term", "estimate", "realized"]
    truth_rows = _records(tp.rename(columns={}), truth_cols)
    for r in truth_rows:
        r["generating value"] = r.pop("estimate")
        r["realised"] = r.pop("realized")
    truth_cols = ["effect", "group", "term", "generating value", "realised"]

    # fixed effects: term x backend
    fx = tidy[tidy["effect"] == "fixed"]
    terms = list(dict.fromkeys(fx["term"]))
    tv = truth[truth["effect"] == "fixed"].set_index("term")["estimate"]
    fixed_rows = []
    for t in terms:
        row = {"term": t, "truth": _fmt(tv.get(t, np.nan))}
        for b in backends:
            s = fx[(fx["backend"] == b) & (fx["term"] == t)]
            row[b] = "" if s.empty else f"{_fmt(s['estimate'].iloc[0])} [{_fmt(s['conf_low'].iloc[0])}, {_fmt(s['conf_high'].iloc[0])}]"
            kind = s["interval"].iloc[0] if not s.empty and "interval" in s else ""
            if INTERVAL_TEXT.get(kind):  # e.g. the learners' Wald interval treats the learned f as known
                row[b] += " " + INTERVAL_TEXT[kind]
        fixed_rows.append(row)
    fixed_cols = ["term", "truth"] + backends

    # variance components
    rp = tidy[tidy["effect"] == "ran_pars"]
    tr = truth[truth["effect"] == "ran_pars"].set_index(["group", "term"])
    keys = list(dict.fromkeys(list(tr.index) + list(zip(rp["group"], rp["term"]))))
    vc_rows = []
    for g, t in keys:
        row = {"group": g, "term": t, "truth": _fmt(tr["estimate"].get((g, t), np.nan)),
               "realised": _fmt(tr["realized"].get((g, t), np.nan))}
        for b in backends:
            s = rp[(rp["backend"] == b) & (rp["group"] == g) & (rp["term"] == t)]
            row[b] = "" if s.empty else _fmt(s["estimate"].iloc[0])
        vc_rows.append(row)
    vc_cols = ["group", "term", "truth", "realised"] + backends
    vplot = rp.merge(tr[["estimate", "realized"]].rename(columns={"estimate": "truth"}).reset_index(),
                     on=["group", "term"], how="left")
    variance_png = plots.variance_plot(vplot) if not vplot.empty else ""

    # intercepts of the top grouping level (named as in the formula)
    top = results.get("hierarchy", {}).get("levels", [])
    top_group = top[0]["group"] if top else "top-level"
    top_png = ""
    if top and INTERCEPT in top[0]["terms"]:
        g = top[0]["group"]
        rv = tidy[tidy["effect"] == "ran_vals"]
        top_png = plots.group_effects_plot(rv, truth[truth["effect"] == "ran_vals"], g, INTERCEPT,
                                              f"{g} intercept deviations: estimate and 95% interval per backend")

    hierarchy = _demo_hierarchy(results, tidy)
    trees = _demo_trees(results)

    agreement = pd.DataFrame(results.get("agreement_summary", []))
    agreement_cols = ["pair", "param_class", "agree", "disagree", "boundary", "missing", "info", "max_abs_diff",
                      "max_rel_diff", "tolerance", "tol_kind", "verdict"]
    agreement_rows = _records(agreement, agreement_cols) if not agreement.empty else []
    # pairs with a rule first; pairs that estimate different things (verdict info) folded below them
    info_rows = [r for r in agreement_rows if r["verdict"] == "info"]
    agreement_rows = [r for r in agreement_rows if r["verdict"] != "info"]

    timing_cols = ["backend", "status", "fit_seconds", "total_seconds", "where"]
    # "where": a fit in a second process ran at the same time as the others; its seconds overlap theirs
    timing_rows = [{"backend": t["backend"], "status": t["status"], "fit_seconds": _fmt(t.get("fit_seconds")),
                    "total_seconds": _fmt(t.get("total_seconds")),
                    "where": (f"{t['process']} (waited {t['waited_seconds']:.1f} s for it)" if "process" in t
                              else "this process")} for t in results.get("timings", [])]
    diagnostics = []
    for f in fits:
        d = f["diagnostics"]
        items = list(d.get("warnings", [])) + list(d.get("notes", [])) + list(d.get("convergence_messages", []))
        diagnostics.append({"backend": f["backend"], "converged": convergence_text(d.get("converged")),
                            "singular": d.get("singular"),
                            "messages": items})
    prov = results.get("provenance", {})
    provenance_rows = [{"key": k, "value": json.dumps(v) if isinstance(v, (dict, list)) else str(v)}
                       for k, v in prov.items()]
    levels = results.get("hierarchy", {}).get("levels", [])
    tree = " \u2192 ".join([results.get("hierarchy", {}).get("root", "root")] +
                           [f"{lv['group']} ({lv['n_groups']} groups)" for lv in levels])
    ctx = dict(
        title=results.get("title", "hiercompare report"),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        provenance=prov, formula=results["formula"], family=results.get("family", "gaussian"),
        seed=results.get("seed"), nobs=results.get("nobs"), tree=tree,
        truth_rows=truth_rows, truth_cols=truth_cols, fixed_rows=fixed_rows, fixed_cols=fixed_cols,
        vc_rows=vc_rows, vc_cols=vc_cols, variance_png=variance_png, top_png=top_png,
        top_group=top_group, root=results.get("hierarchy", {}).get("root", "root"),
        agreement_rows=agreement_rows, info_rows=info_rows, agreement_cols=agreement_cols, timing_rows=timing_rows,
        timing_cols=timing_cols, diagnostics=diagnostics, skipped=results.get("skipped", []),
        provenance_rows=provenance_rows, scenario_json=json.dumps(results.get("scenario", {}), indent=2),
        hierarchy=hierarchy, trees=trees,
    )
    return env.get_template("demo.html.j2").render(**ctx)
