"""Backend vs backend: one tidy table of differences, a tolerance per parameter class, and a verdict.

Pairs are classed by what their backends estimate:

* ``least_squares`` (ols, r_lm; and glm, r_glm, the same dummy design for counts and proportions): the same
  design solved twice, so everything agrees to 1e-8 (relative).
* ``mixed`` (mixedlm, lme4, native): the same REML/ML criterion maximised by different code: fixed effects
  1e-4 relative, their SEs 1e-2 relative, SDs 1e-2 relative, correlations 1e-2 absolute, the log-likelihood
  1e-4 absolute, group deviations (BLUPs) within 1e-2 of that group term's SD (absolute tolerance
  ``1e-2 * max(sd_a, sd_b)``, the two fits' ``sd__<term>`` of that group), so the rule reads the same
  whatever the response's units (prices in dollars or in thousands).
* ``bayes`` (pymc, brms): the same posterior sampled by different code: posterior means agree within
  max(4 combined Monte Carlo SEs, 0.1 posterior SD) (the MCSEs are the backends' own, per parameter, from
  ``fit.diagnostics["mcse"]``), posterior SDs within 15% (relative).
* anything else (ols vs lme4, pymc vs lme4, say): different estimands, shown for information with verdict
  ``info``.

The fixed effects' degrees of freedom (quantity ``df``, class ``fixed_df``) are compared where either fit has
them: least-squares pairs (the residual df) to 1e-8, mixed pairs (Satterthwaite's or Kenward-Roger's, functions
of the variance estimates, computed at each fit's own estimates) to 2e-2 relative (seen: 4e-3 between mixedlm
and native on the seed scenario, 1e-4 on the shipped data sets). Where the two fits used different df methods
(``fit.diagnostics["df_method"]``: ``z`` against Satterthwaite, say) the rows are ``info``; where either fit
has a parameter on the boundary a difference beyond tolerance is ``boundary`` (the df depend on every variance
parameter).

Relative differences divide by ``max(|a|, |b|)``.

Boundary: each fit's own boundary terms are found from its estimates, per (group, term), not per fit or per
group: an SD below 1e-3 of the residual SD (``BOUNDARY_SD``), and a correlation with ``|r| >= 1 - 1e-3``
(``BOUNDARY_COR``; where a group's correlation matrix is singular, smallest eigenvalue below ``BOUNDARY_COR``,
without any single pair reaching it, every correlation of that group). A term whose SD is on the boundary
takes with it its group deviations (``ran_vals`` of that group and term) and every correlation it is part of.
The likelihood is flat in those directions and optimisers legitimately stop at different points, so a
difference beyond tolerance there is flagged ``boundary``, not failed. Every other parameter of the same
pair, including the other terms of the same group, is judged as usual: a singular fit masks nothing else.
The backend's own ``singular`` flag is not used to mask anything (it does not say which term is on the
boundary); the terms of either fit of the pair count.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from .results import KEY, RESIDUAL, Fit

LEAST_SQUARES = frozenset({"ols", "r_lm"})
GLM = frozenset({"glm", "r_glm"})  # IRLS to 1e-12 on both sides: compared as least_squares
MIXED = frozenset({"mixedlm", "lme4", "native"})
BAYES = frozenset({"pymc", "brms"})
BAYES_SD_REL = 0.15
BOUNDARY_SD = 1e-3  # an SD below this fraction of the residual SD is on the boundary
BOUNDARY_COR = 1e-3  # a correlation with |r| >= 1 - BOUNDARY_COR is on the boundary


@dataclass(frozen=True)
class Tol:
    value: float
    kind: str  # "rel", "abs", or "sd": absolute, value times the larger of the two fits' SDs of the term

    def bound(self, a: float, b: float, sd: float = np.nan) -> float:
        """The largest |a - b| that agrees (``sd``: the scale of an ``"sd"`` rule)."""
        if self.kind == "abs":
            return self.value
        if self.kind == "sd":
            return self.value * sd
        return self.value * max(abs(a), abs(b), 1e-300)

    def ok(self, a: float, b: float, sd: float = np.nan) -> bool:
        return abs(a - b) <= self.bound(a, b, sd)


# parameter class -> tolerance, per pair class
TOLERANCES: dict[str, dict[str, Tol]] = {
    "least_squares": {
        "fixed": Tol(1e-8, "rel"), "fixed_se": Tol(1e-8, "rel"), "sd": Tol(1e-8, "rel"),
        "ran_vals": Tol(1e-8, "rel"), "ran_vals_se": Tol(1e-8, "rel"), "loglik": Tol(1e-8, "rel"),
        "fixed_df": Tol(1e-8, "rel"),
    },
    "mixed": {
        "fixed": Tol(1e-4, "rel"), "fixed_se": Tol(1e-2, "rel"), "sd": Tol(1e-2, "rel"), "cor": Tol(1e-2, "abs"),
        "loglik": Tol(1e-4, "abs"), "ran_vals": Tol(1e-2, "sd"), "fixed_df": Tol(2e-2, "rel"),
    },
}

COLUMNS = ["backend_a", "backend_b", "pair", "effect", "group", "level", "term", "quantity", "param_class",
           "value_a", "value_b", "diff", "rel_diff", "tolerance", "tol_kind", "verdict"]


def pair_class(a: str, b: str) -> str:
    if {a, b} <= LEAST_SQUARES or {a, b} <= GLM:
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
        return {"estimate": "fixed", "df": "fixed_df"}.get(quantity, "fixed_se")
    if effect == "ran_pars":
        return "cor" if term.startswith("cor__") else "sd"
    return "ran_vals" if quantity == "estimate" else "ran_vals_se"


def _ran_pars(f: Fit) -> tuple[dict[tuple[str, str], float], float]:
    """``{(group, term): estimate}`` of a fit's ran_pars rows (not the residual), and its residual SD."""
    rp = f.table[f.table["effect"] == "ran_pars"]
    resid = rp.loc[rp["group"] == RESIDUAL, "estimate"]
    scale = float(resid.iloc[0]) if len(resid) and np.isfinite(resid.iloc[0]) else np.nan
    rp = rp[rp["group"] != RESIDUAL]
    return {(g, t): float(e) for g, t, e in zip(rp["group"], rp["term"], rp["estimate"])}, scale


def boundary_terms(f: Fit) -> set[tuple[str, str, str]]:
    """The parameters of ``f`` on the boundary of the parameter space, as ``(effect, group, term)``.

    ``("ran_pars", g, "sd__x")`` where that SD is below ``BOUNDARY_SD`` of the residual SD (with no residual
    SD, below ``BOUNDARY_SD`` absolute), and then also ``("ran_vals", g, "x")`` and every correlation of ``g``
    involving ``x``; ``("ran_pars", g, "cor__a.b")`` where ``|r| >= 1 - BOUNDARY_COR``, or every correlation
    of ``g`` where its correlation matrix is singular without any single pair at +-1.
    """
    pars, scale = _ran_pars(f)
    scale = scale if np.isfinite(scale) and scale > 0 else 1.0
    out: set[tuple[str, str, str]] = set()
    small = {(g, t[len("sd__"):]) for (g, t), e in pars.items()
             if t.startswith("sd__") and np.isfinite(e) and e < BOUNDARY_SD * scale}
    for g, term in small:
        out |= {("ran_pars", g, f"sd__{term}"), ("ran_vals", g, term)}
    by_group: dict[str, dict[str, float]] = {}
    for (g, t), e in pars.items():
        if t.startswith("cor__"):
            by_group.setdefault(g, {})[t] = e
    for g, cors in by_group.items():
        terms = [t[len("sd__"):] for (gg, t) in pars if gg == g and t.startswith("sd__")]
        flagged = set()
        for t, r in cors.items():
            a, b = _pair_in(t, terms)
            if (np.isfinite(r) and abs(r) >= 1 - BOUNDARY_COR) or (g, a) in small or (g, b) in small:
                flagged.add(t)
        if not flagged and len(terms) > 2 and _min_eigen(terms, cors) < BOUNDARY_COR:
            flagged = set(cors)
        out |= {("ran_pars", g, t) for t in flagged}
    return out


def _pair_in(term: str, names: list[str]) -> tuple[str, str]:
    """The two term names of ``cor__a.b``, matched against the group's own term names (names may hold dots)."""
    body = term[len("cor__"):]
    for a in names:
        if body.startswith(a + ".") and body[len(a) + 1:] in names:
            return a, body[len(a) + 1:]
    a, _, b = body.partition(".")
    return a, b


def _min_eigen(terms: list[str], cors: dict[str, float]) -> float:
    k = len(terms)
    R = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            r = cors.get(f"cor__{terms[i]}.{terms[j]}", cors.get(f"cor__{terms[j]}.{terms[i]}", 0.0))
            R[i, j] = R[j, i] = r if np.isfinite(r) else 0.0
    return float(np.linalg.eigvalsh(R)[0])


def _term_sds(fa: Fit, fb: Fit) -> dict[tuple[str, str], float]:
    """``{(group, term): max(sd_a, sd_b)}``: the scale of that group term's deviations in either fit."""
    pa, _ = _ran_pars(fa)
    pb, _ = _ran_pars(fb)
    out = {}
    for g, t in set(pa) | set(pb):
        both = [v for v in (pa.get((g, t), np.nan), pb.get((g, t), np.nan)) if np.isfinite(v)]
        if t.startswith("sd__") and both:
            out[(g, t[len("sd__"):])] = max(both)
    return out


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
    boundary = boundary_terms(fa) | boundary_terms(fb)
    sds = _term_sds(fa, fb)
    for quantity in ("estimate", "std_error"):
        for r in merged.itertuples(index=False):
            va, vb = getattr(r, f"{quantity}_a"), getattr(r, f"{quantity}_b")
            if r.effect == "ran_pars" and quantity == "std_error":
                continue
            if quantity == "std_error" and (pd.isna(va) and pd.isna(vb)):
                continue
            rows.append(_row(fa.backend, fb.backend, pc, rules, r.effect, r.group, r.level, r.term, quantity, va, vb,
                             boundary, sds.get((r.group, r.term), np.nan)))
    if "df_a" in merged.columns:  # the fixed effects' df (see the module docstring)
        same_method = fa.diagnostics.get("df_method") == fb.diagnostics.get("df_method")
        df_rules = rules if same_method else {}
        for r in merged.itertuples(index=False):
            if r.effect == "fixed" and not (pd.isna(r.df_a) and pd.isna(r.df_b)):
                row = _row(fa.backend, fb.backend, pc, df_rules, r.effect, r.group, r.level, r.term, "df",
                           r.df_a, r.df_b, boundary, np.nan)
                if row["verdict"] == "disagree" and boundary:
                    row["verdict"] = "boundary"
                elif np.isinf(row["value_a"]) or np.isinf(row["value_b"]):  # z (df inf) on either side
                    same = row["value_a"] == row["value_b"]
                    row.update(diff=0.0 if same else np.nan, rel_diff=0.0 if same else np.nan,
                               verdict="agree" if same and row["verdict"] == "missing" else "info")
                rows.append(row)
    if fa.loglik is not None and fb.loglik is not None and fa.method == fb.method:
        rows.append(_row(fa.backend, fb.backend, pc, rules, "model", "", "", "logLik", "loglik", fa.loglik,
                         fb.loglik, set(), np.nan))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(a, b, pc, rules, effect, group, level, term, quantity, va, vb, boundary, sd):
    klass = _param_class(effect, term, quantity)
    tol = rules.get(klass)
    if tol is not None and tol.kind == "sd" and not np.isfinite(sd):
        tol = None  # no SD of this group term in either fit: nothing to scale the rule by
    va = float(va) if va is not None and not pd.isna(va) else np.nan
    vb = float(vb) if vb is not None and not pd.isna(vb) else np.nan
    diff = va - vb
    denom = max(abs(va), abs(vb)) if np.isfinite(diff) else np.nan
    rel = abs(diff) / denom if denom and np.isfinite(denom) and denom > 0 else (0.0 if diff == 0 else np.nan)
    if pc == "info" or tol is None:
        verdict = "info"
    elif not (np.isfinite(va) and np.isfinite(vb)):
        verdict = "missing"
    elif tol.ok(va, vb, sd):
        verdict = "agree"
    elif (effect, group, term) in boundary:
        verdict = "boundary"
    else:
        verdict = "disagree"
    if tol is not None and tol.kind == "sd":
        # the absolute bound this row was judged by, and the rule it comes from
        tolerance, kind = tol.bound(va, vb, sd), f"abs: {tol.value:g} x SD"
    else:
        tolerance, kind = (tol.value, tol.kind) if tol else (np.nan, "")
    return dict(backend_a=a, backend_b=b, pair=f"{a} vs {b}", effect=effect, group=group, level=level, term=term,
                quantity=quantity, param_class=klass, value_a=va, value_b=vb, diff=diff, rel_diff=rel,
                tolerance=tolerance, tol_kind=kind, verdict=verdict)


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
    # an SD-scaled rule has one bound per group term: the summary shows the rule (the factor), not one bound
    classes = g[["backend_a", "backend_b"]].first()
    for key, (a, b) in classes.iterrows():
        rule = TOLERANCES.get(pair_class(a, b), {}).get(key[1])
        if rule is not None and rule.kind == "sd" and out.loc[key, "tol_kind"]:
            out.loc[key, "tolerance"], out.loc[key, "tol_kind"] = rule.value, "x SD of the group term"
    out["verdict"] = np.where(out["disagree"] + out["missing"] > 0, "DISAGREE",
                              np.where(out["info"] > 0, "info", np.where(out["boundary"] > 0, "boundary", "agree")))
    return out.reset_index()[["pair", "param_class", "agree", "disagree", "boundary", "missing", "info",
                              "max_abs_diff", "max_rel_diff", "tolerance", "tol_kind", "verdict"]]
