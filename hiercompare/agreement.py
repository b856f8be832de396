"""Backend vs backend: one tidy table of differences, a tolerance per parameter class, and a verdict.

Pairs are classed by what their backends estimate:

* ``least_squares`` (ols, r_lm): the same design solved twice, so everything agrees to 1e-8 (relative).
* ``mixed`` (mixedlm, lme4): the same REML/ML criterion maximised by different code: fixed effects 1e-4
  relative, their SEs 1e-2 relative, SDs 1e-2 relative, correlations 1e-2 absolute, the log-likelihood
  1e-4 absolute, group deviations (BLUPs) 1e-2 absolute.
* ``bayes`` (pymc, brms): the same posterior sampled by different code: posterior means agree within
  max(4 combined Monte Carlo SEs, 0.1 posterior SD) (the MCSEs are the backends' own, per parameter, from
  ``fit.diagnostics["mcse"]``), posterior SDs within 15% (relative).
* anything else (ols vs lme4, pymc vs lme4, say): different estimands, shown for information with verdict
  ``info``.

Relative differences divide by ``max(|a|, |b|)``. A variance parameter of a fit that sits on the boundary
(singular fit, or an SD below 1e-3 of the residual SD) is flagged ``boundary``, not failed: the likelihood is
flat there and optimisers legitimately stop at different points.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from .results import KEY, RESIDUAL, Fit

LEAST_SQUARES = frozenset({"ols", "r_lm"})
MIXED = frozenset({"mixedlm", "lme4", "native"})
BAYES = frozenset({"pymc", "brms"})
BAYES_SD_REL = 0.15
BOUNDARY_SD = 1e-3


@dataclass(frozen=True)
class Tol:
    value: float
    kind: str  # "rel" or "abs"

    def ok(self, a: float, b: float) -> bool:
        d = abs(a - b)
        if self.kind == "abs":
            return d <= self.value
        return d <= self.value * max(abs(a), abs(b), 1e-300)


# parameter class -> tolerance, per pair class
TOLERANCES: dict[str, dict[str, Tol]] = {
    "least_squares": {
        "fixed": Tol(1e-8, "rel"), "fixed_se": Tol(1e-8, "rel"), "sd": Tol(1e-8, "rel"),
        "ran_vals": Tol(1e-8, "rel"), "ran_vals_se": Tol(1e-8, "rel"), "loglik": Tol(1e-8, "rel"),
    },
    "mixed": {
        "fixed": Tol(1e-4, "rel"), "fixed_se": Tol(1e-2, "rel"), "sd": Tol(1e-2, "rel"), "cor": Tol(1e-2, "abs"),
        "loglik": Tol(1e-4, "abs"), "ran_vals": Tol(1e-2, "abs"),
    },
}

COLUMNS = ["backend_a", "backend_b", "pair", "effect", "group", "level", "term", "quantity", "param_class",
           "value_a", "value_b", "diff", "rel_diff", "tolerance", "tol_kind", "verdict"]


def pair_class(a: str, b: str) -> str:
    if {a, b} <= LEAST_SQUARES:
        return "least_squares"
    if {a, b} <= MIXED:
        return "mixed"
    if {a, b} <= BAYES:
        return "bayes"
    return "info"


def _param_class(effect: str, term: str, quantity: str) -> str:
    if quantity == "loglik":
        return "loglik"
    if effect == "fixed":
        return "fixed" if quantity == "estimate" else "fixed_se"
    if effect == "ran_pars":
        return "cor" if term.startswith("cor__") else "sd"
    return "ran_vals" if quantity == "estimate" else "ran_vals_se"


def _boundary_groups(f: Fit) -> set[str]:
    rp = f.table[f.table["effect"] == "ran_pars"]
    resid = rp.loc[rp["group"] == RESIDUAL, "estimate"]
    scale = float(resid.iloc[0]) if len(resid) else 1.0
    small = rp[rp["term"].str.startswith("sd__") & (rp["estimate"] < BOUNDARY_SD * scale) & (rp["group"] != RESIDUAL)]
    groups = set(small["group"])
    if f.diagnostics.get("singular"):
        groups |= set(rp.loc[rp["group"] != RESIDUAL, "group"])
    return groups


def compare(fits: list[Fit], pairs: list[tuple[int, int]] | None = None) -> pd.DataFrame:
    """Compare every pair of fits (or the given index pairs) parameter by parameter.

    Returns one row per (pair, parameter, quantity) with both values, the difference, the tolerance of the
    parameter's class and a verdict: ``agree``, ``disagree``, ``boundary`` (flagged, not failed),
    ``missing`` (one side lacks a parameter the other has) or ``info`` (no rule for this pair).

    Examples
    --------
    >>> table = compare([fit_ols, fit_r_lm])  # doctest: +SKIP
    >>> summary(table)  # doctest: +SKIP
    """
    fits = list(fits)
    if len(fits) < 2:
        raise ValueError("compare() needs at least two fits")
    pairs = pairs if pairs is not None else list(combinations(range(len(fits)), 2))
    frames = [_compare_pair(fits[i], fits[j]) for i, j in pairs]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return out[COLUMNS]


def _mcse(f: Fit) -> dict:
    return {(r["effect"], r["group"], r["level"], r["term"]): float(r["mcse"]) for r in f.diagnostics.get("mcse", [])}


def _compare_bayes(fa: Fit, fb: Fit) -> pd.DataFrame:
    merged = fa.table.merge(fb.table, on=KEY, how="outer", suffixes=("_a", "_b"))
    ma, mb = _mcse(fa), _mcse(fb)
    rows = []
    for r in merged.itertuples(index=False):
        key = (r.effect, r.group, r.level, r.term)
        base = dict(backend_a=fa.backend, backend_b=fb.backend, pair=f"{fa.backend} vs {fb.backend}",
                    effect=r.effect, group=r.group, level=r.level, term=r.term)
        sa, sb = r.std_error_a, r.std_error_b
        for quantity, va, vb in (("estimate", r.estimate_a, r.estimate_b), ("std_error", sa, sb)):
            klass = _param_class(r.effect, r.term, quantity) if r.effect != "ran_pars" else (
                ("cor" if r.term.startswith("cor__") else "sd") + ("" if quantity == "estimate" else "_se"))
            diff = va - vb
            denom = max(abs(va), abs(vb)) if np.isfinite(diff) else np.nan
            rel = abs(diff) / denom if denom and np.isfinite(denom) else np.nan
            if quantity == "estimate":
                tol = max(4 * np.hypot(ma.get(key, 0.0), mb.get(key, 0.0)), 0.1 * np.nanmean([sa, sb]))
                ok = abs(diff) <= tol
                kind = "abs: max(4 MCSE, 0.1 SD)"
            else:
                tol, kind = BAYES_SD_REL, "rel"
                ok = rel <= tol
            verdict = "missing" if not (np.isfinite(va) and np.isfinite(vb)) else ("agree" if ok else "disagree")
            rows.append(dict(base, quantity=quantity, param_class=klass, value_a=va, value_b=vb, diff=diff,
                             rel_diff=rel, tolerance=tol, tol_kind=kind, verdict=verdict))
    return pd.DataFrame(rows, columns=COLUMNS)


def _compare_pair(fa: Fit, fb: Fit) -> pd.DataFrame:
    pc = pair_class(fa.backend, fb.backend)
    if pc == "bayes":
        return _compare_bayes(fa, fb)
    rules = TOLERANCES.get(pc, {})
    ta, tb = fa.table, fb.table
    merged = ta.merge(tb, on=KEY, how="outer" if pc != "info" else "inner", suffixes=("_a", "_b"))
    rows = []
    boundary = _boundary_groups(fa) | _boundary_groups(fb)
    for quantity in ("estimate", "std_error"):
        for r in merged.itertuples(index=False):
            va, vb = getattr(r, f"{quantity}_a"), getattr(r, f"{quantity}_b")
            if r.effect == "ran_pars" and quantity == "std_error":
                continue
            if quantity == "std_error" and (pd.isna(va) and pd.isna(vb)):
                continue
            rows.append(_row(fa.backend, fb.backend, pc, rules, r.effect, r.group, r.level, r.term, quantity, va, vb,
                             boundary))
    if fa.loglik is not None and fb.loglik is not None and fa.method == fb.method:
        rows.append(_row(fa.backend, fb.backend, pc, rules, "model", "", "", "logLik", "loglik", fa.loglik,
                         fb.loglik, set()))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(a, b, pc, rules, effect, group, level, term, quantity, va, vb, boundary):
    klass = _param_class(effect, term, quantity)
    tol = rules.get(klass)
    va = float(va) if va is not None and not pd.isna(va) else np.nan
    vb = float(vb) if vb is not None and not pd.isna(vb) else np.nan
    diff = va - vb
    denom = max(abs(va), abs(vb)) if np.isfinite(diff) else np.nan
    rel = abs(diff) / denom if denom and np.isfinite(denom) and denom > 0 else (0.0 if diff == 0 else np.nan)
    if pc == "info" or tol is None:
        verdict = "info"
    elif not (np.isfinite(va) and np.isfinite(vb)):
        verdict = "missing"
    elif tol.ok(va, vb):
        verdict = "agree"
    elif effect in ("ran_pars", "ran_vals") and group in boundary:
        verdict = "boundary"
    else:
        verdict = "disagree"
    return dict(backend_a=a, backend_b=b, pair=f"{a} vs {b}", effect=effect, group=group, level=level, term=term,
                quantity=quantity, param_class=klass, value_a=va, value_b=vb, diff=diff, rel_diff=rel,
                tolerance=tol.value if tol else np.nan, tol_kind=tol.kind if tol else "", verdict=verdict)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per pair and parameter class: counts of each verdict, the largest difference, and an overall verdict."""
    if table.empty:
        return pd.DataFrame()
    g = table.groupby(["pair", "param_class"], sort=False)
    out = g["verdict"].value_counts().unstack(fill_value=0)
    for v in ("agree", "disagree", "boundary", "missing", "info"):
        if v not in out.columns:
            out[v] = 0
    out["max_abs_diff"] = g["diff"].apply(lambda s: float(np.nanmax(np.abs(s))) if s.notna().any() else np.nan)
    out["max_rel_diff"] = g["rel_diff"].apply(lambda s: float(np.nanmax(s)) if s.notna().any() else np.nan)
    out["tolerance"] = g["tolerance"].first()
    out["tol_kind"] = g["tol_kind"].first()
    out["verdict"] = np.where(out["disagree"] + out["missing"] > 0, "DISAGREE",
                              np.where(out["info"] > 0, "info", np.where(out["boundary"] > 0, "boundary", "agree")))
    return out.reset_index()[["pair", "param_class", "agree", "disagree", "boundary", "missing", "info",
                              "max_abs_diff", "max_rel_diff", "tolerance", "tol_kind", "verdict"]]
