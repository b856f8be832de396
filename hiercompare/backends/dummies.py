"""The fixed-effects (no pooling) design shared by ``ols`` and ``r_lm`` (and ``glm`` / ``r_glm`` for non-Gaussian
families).

Every varying term of every level becomes fixed dummy columns with sum-to-zero (deviation) coding *within
each parent*: the market deviations sum to zero over markets, and the submarket deviations sum to zero
within each market. The intercept is then the national level (the unweighted mean over markets at x = 0),
and every group's deviation is reported, the last one of each parent as minus the sum of the others, with
its standard error from the coefficient covariance (``C V C'``). None is hidden as a reference level.

A parent with a single child gives that child a deviation of exactly 0 (it cannot be told apart from its
parent); it is reported with standard error 0 and a note.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..design import ModelData
from ..errors import BackendError, SpecError
from ..results import RESIDUAL, sd_term, tidy_frame


@dataclass
class DummyDesign:
    D: np.ndarray  # (n, p_fixed + sum of deviation columns)
    names: list[str]
    blocks: list[tuple[str, str, slice, np.ndarray]]  # (group, term, columns in D, contrast C (G x q))
    p_fixed: int
    notes: list[str]


def build(md: ModelData) -> DummyDesign:
    cols = [md.X]
    names = list(md.fixed_names)
    blocks = []
    notes = []
    start = md.X.shape[1]
    for lv in md.hierarchy.levels:
        C = _sum_to_zero(lv.parent)
        lonely = np.flatnonzero(np.abs(C).sum(axis=1) == 0)
        if len(lonely):
            notes.append(
                f"{len(lonely)} {lv.group} group(s) are the only child of their parent (e.g. "
                f"{lv.labels[lonely[0]]!r}); their deviation is 0 by construction"
            )
        Zg = md.Z[lv.group]
        rowsC = C[lv.codes]
        for j, term in enumerate(lv.spec.terms):
            block = Zg[:, [j]] * rowsC
            cols.append(block)
            q = block.shape[1]
            names += [f"{lv.group}|{term}|{lab}" for lab in lv.labels[np.argmax(C != 0, axis=0)]] if q else []
            blocks.append((lv.group, term, slice(start, start + q), C))
            start += q
    D = np.column_stack(cols)
    rank = np.linalg.matrix_rank(D)
    if rank < D.shape[1]:
        p = md.X.shape[1]
        rest = np.linalg.matrix_rank(D[:, p:]) if D.shape[1] > p else 0
        # a fixed column is aliased when dropping it leaves the rank unchanged: it is a combination of the others
        aliased = [names[j] for j in range(p) if names[j] != "(Intercept)"
                   and np.linalg.matrix_rank(np.delete(D, j, axis=1)) == rank]
        if aliased and rest + p - len(aliased) >= rank:  # what ols/r_lm cannot fit, as SpecError (not applicable)
            raise SpecError(
                f"the dummy design has rank {rank} < {D.shape[1]} columns: the fixed effect(s) {aliased} are "
                "constant within the groups of a level (group-level covariates), so the groups' own dummies "
                "(no pooling) absorb them and a fixed-effects fit cannot estimate them (R's lm gives NA). Drop "
                "them from the formula for ols/r_lm, or use a mixed model (native, lme4, mixedlm)")
        raise BackendError(
            f"the dummy design has rank {rank} < {D.shape[1]} columns: some group has too few rows, or a "
            "varying slope's covariate is constant within a group. A fixed-effects fit cannot separate them; "
            "use a mixed model (lme4, mixedlm) instead"
        )
    if D.shape[0] <= D.shape[1]:
        raise BackendError(f"{D.shape[0]} rows are too few for {D.shape[1]} fixed-effect columns")
    return DummyDesign(D=D, names=names, blocks=blocks, p_fixed=md.X.shape[1], notes=notes)


def _sum_to_zero(parent: np.ndarray) -> np.ndarray:
    """Contrast matrix C (G x q): deviations = C @ coefficients, summing to zero within each parent."""
    G = len(parent)
    cols = []
    for p in np.unique(parent):
        kids = np.flatnonzero(parent == p)
        for k in kids[:-1]:
            c = np.zeros(G)
            c[k] = 1.0
            c[kids[-1]] = -1.0
            cols.append(c)
    return np.column_stack(cols) if cols else np.zeros((G, 0))


def tidy_rows(md: ModelData, dd: DummyDesign, coef: np.ndarray, vcov: np.ndarray, sigma: float | None,
              df_resid: float, extra: list[dict] | None = None):
    """Fixed, ran_vals (all deviations, with SEs) and the residual SD, with t-based 95% intervals; the fixed rows'
    ``df`` is the residual df and ``p_value`` the t test's. ``df_resid=inf`` gives z intervals (a GLM's Wald
    tests); ``sigma=None`` writes no residual row (binomial, poisson); ``extra`` rows are appended as given
    (the negative binomial's theta)."""
    tq = stats.t.ppf(0.975, df_resid)
    se = np.sqrt(np.clip(np.diag(vcov), 0, None))
    rows = []
    for j, name in enumerate(md.fixed_names):
        with np.errstate(divide="ignore", invalid="ignore"):
            pv = 2 * stats.t.sf(abs(coef[j] / se[j]), df_resid)
        rows.append(dict(effect="fixed", term=name, estimate=coef[j], std_error=se[j],
                         conf_low=coef[j] - tq * se[j], conf_high=coef[j] + tq * se[j], df=float(df_resid),
                         p_value=pv))
    for group, term, sl, C in dd.blocks:
        lv = md.hierarchy.level(group)
        dev = C @ coef[sl]
        cov = C @ vcov[sl, sl] @ C.T
        dse = np.sqrt(np.clip(np.diag(cov), 0, None))
        for g, lab in enumerate(lv.labels):
            rows.append(dict(effect="ran_vals", group=group, level=lab, term=term, estimate=dev[g],
                             std_error=dse[g], conf_low=dev[g] - tq * dse[g], conf_high=dev[g] + tq * dse[g]))
    if sigma is not None:
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=sigma))
    rows.extend(extra or [])
    return tidy_frame(rows)
