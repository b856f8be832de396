"""Model comparison across formulas: likelihood-ratio tests, AIC/BIC, PSIS-LOO.

* :func:`ml_refits` fits every formula by maximum likelihood on one engine (native by default; lme4 and
  mixedlm too) on the same rows.
* :func:`information_criteria`: AIC and BIC as lme4 counts them: ``n_params`` = fixed effects + variance and
  covariance parameters (one per SD, one per correlation) + the residual SD (Gaussian family); BIC's ``n`` is
  the number of observations, as ``stats::BIC`` uses for a merMod.
* :func:`lrt` and :func:`lrt_table`: likelihood-ratio tests between nested specifications. Nested means the
  smaller model's fixed-effect columns and its variance/covariance parameters are a subset of the bigger
  one's, with the same response, family, engine, fit method and rows; anything else is refused with an error
  that says which part differs. The reference distribution:

  - fixed effects, or covariances between terms that already vary, only: ``chi2(df)`` (interior parameters);
  - exactly one new variance (a new random intercept or slope, with its covariances with the level's other
    terms, and possibly fixed effects besides): the null puts that variance on the boundary of its space
    (0), and the statistic follows the chi-bar-square mixture ``0.5 chi2(df-1) + 0.5 chi2(df)``
    (Self & Liang 1987, JASA 82:605; Stram & Lee 1994, Biometrics 50:1171), where ``chi2(0)`` is a point
    mass at 0;
  - two or more new variances: the mixture's weights depend on the information matrix; ``chi2(df)`` is
    reported and said to be conservative (its p-value is too large).

  ``p_value`` uses that reference, ``p_value_naive_chi2`` is ``chi2(df)`` always (what ``anova()`` prints).
* :func:`loo_table`: PSIS-LOO (ArviZ) of the Bayesian fits that provide it (``fit.loo()``): elpd_loo, its SE,
  p_loo, ArviZ's compare columns (rank, elpd_diff, dse, stacking weight) and the Pareto-k counts in ArviZ's
  bins: good ``k <= good_k`` where ``good_k = min(1 - 1/log10(S), 0.7)`` for S posterior draws, bad
  ``good_k < k <= 1``, very bad ``k > 1``.

Examples
--------
>>> import pandas as pd
>>> from hiercompare import comparison
>>> data = pd.read_csv("tests/data/sleepstudy.csv", dtype={"Subject": str})  # doctest: +SKIP
>>> fits = comparison.ml_refits(data, ["Reaction ~ Days + (1 | Subject)",
...                                    "Reaction ~ Days + (Days | Subject)"])  # doctest: +SKIP
>>> comparison.lrt_table(fits)[["df", "statistic", "reference_distribution"]]  # doctest: +SKIP
   df  statistic       reference_distribution
0   2  42.139214  0.5*chi2(1) + 0.5*chi2(2)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError, HierCompareError, SpecError
from .results import Fit
from .spec import INTERCEPT, ModelSpec

ML_BACKENDS = ("native", "lme4", "mixedlm")
"""Engines that maximise the model's likelihood (REML or ML) and report it: the ones LRT and AIC/BIC use."""
LIKELIHOOD_METHODS = ("ML", "REML", "ML (Laplace)")
ZERO_STATISTIC = 1e-6
"""A likelihood-ratio statistic at or below this counts as 0 (the chi2(0) point mass of the mixture): the
engines reach their optimum to about 1e-7 in log-likelihood, so a variance estimated at zero gives a statistic of
that order, of either sign."""
SELF_LIANG = "Self & Liang 1987; Stram & Lee 1994"

IC_COLUMNS = ["formula", "backend", "method", "nobs", "n_params", "loglik", "AIC", "BIC", "delta_AIC",
              "delta_BIC", "note"]
LRT_COLUMNS = ["model_small", "model_big", "df", "statistic", "p_value", "p_value_naive_chi2",
               "reference_distribution", "note", "backend", "method", "nobs", "n_params_small", "n_params_big",
               "loglik_small", "loglik_big"]
LOO_COLUMNS = ["formula", "backend", "rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight", "good_k",
               "pareto_k_good", "pareto_k_bad", "pareto_k_very_bad", "pareto_k_max", "warning", "n_samples",
               "n_data_points", "note"]


# ---------------------------------------------------------------------- parameters of a specification
@dataclass(frozen=True)
class Parameters:
    """The parameters a fit estimates, as lme4 counts them.

    ``fixed``: the fixed-effect columns (the design's names); ``variances`` and ``covariances``: keys
    ``(factor, terms)`` with the factor as a frozenset of its columns (``a:b`` is ``b:a``) and the terms as a
    frozenset of one (a variance) or two (a covariance) varying terms; ``residual``: 1 for the Gaussian family.
    """

    fixed: frozenset
    variances: frozenset
    covariances: frozenset
    residual: int

    @property
    def count(self) -> int:
        return len(self.fixed) + len(self.variances) + len(self.covariances) + self.residual

    @classmethod
    def of(cls, fit: Fit) -> "Parameters":
        spec = fit.spec
        fixed = list(fit.fixef.index)
        if not fixed and fit.model is not None:
            fixed = list(fit.model.fixed_names)
        variances, covariances = set(), set()
        for lv in spec.levels:
            factor = frozenset(lv.factor)
            for block in lv.blocks:
                for i, a in enumerate(block):
                    variances.add((factor, frozenset((a,))))
                    for b in block[i + 1:]:
                        covariances.add((factor, frozenset((a, b))))
        return cls(fixed=frozenset(fixed), variances=frozenset(variances), covariances=frozenset(covariances),
                   residual=1 if spec.family == "gaussian" else 0)


def n_params(fit: Fit) -> int:
    """lme4's parameter count (``npar`` in ``anova()``, ``df`` of ``logLik``): fixed effects + variance and
    covariance parameters + the residual SD (Gaussian family)."""
    return Parameters.of(fit).count


def _label(key) -> str:
    factor, terms = key
    group = ":".join(sorted(factor))
    t = sorted(terms, key=lambda s: (s != INTERCEPT, s))
    return f"sd__{t[0]} | {group}" if len(t) == 1 else f"cor__{t[0]}.{t[1]} | {group}"


def _labels(keys) -> list[str]:
    return sorted(_label(k) for k in keys)


# ---------------------------------------------------------------------- what a likelihood comparison needs
def _likelihood_problem(fit: Fit) -> str | None:
    """Why ``fit`` has no likelihood that AIC/BIC/LRT can use, or None."""
    if fit.loglik is None or not np.isfinite(fit.loglik):
        return (f"{fit.backend} reports no maximised likelihood (method {fit.method!r}); "
                f"compare Bayesian fits with loo_table, or refit with one of {ML_BACKENDS}")
    if fit.nonlinear is not None:
        return (f"{fit.backend}'s likelihood is conditional on its learned f(x), which has no parameter count; "
                "no AIC/BIC/LRT for it (use grouped cross-validation)")
    if fit.method not in LIKELIHOOD_METHODS:
        return (f"{fit.backend} fits by {fit.method!r}, not the mixed model's likelihood (no pooling: a different "
                f"model); refit with one of {ML_BACKENDS}")
    return None


def _require_likelihood(fit: Fit, which: str) -> None:
    why = _likelihood_problem(fit)
    if why is not None:
        raise SpecError(f"the {which} model ({fit.spec.formula}): {why}")


def _check_same_rows(small: Fit, big: Fit) -> str:
    """Refuse fits on different rows; returns a note when the rows could not be compared row by row."""
    if small.nobs != big.nobs:
        raise DataError(
            f"the two fits used different rows: {small.nobs} for {small.spec.formula!r} and {big.nobs} for "
            f"{big.spec.formula!r} (rows with missing values in one model's columns?). Likelihoods of different "
            "data are not comparable; refit on the same rows, e.g. ml_refits(data, formulas, na_action='drop'), "
            "which drops rows missing in any formula's columns")
    ms, mb = small.model, big.model
    if ms is None or mb is None:
        return "rows not compared one by one (a fit was loaded without its data); the numbers of rows agree"
    if not np.array_equal(np.asarray(ms.y, dtype=float), np.asarray(mb.y, dtype=float)):
        raise DataError(
            f"the two fits used different rows: the same number ({small.nobs}) but different response values "
            f"for {small.spec.formula!r} and {big.spec.formula!r}; refit both on one data set "
            "(ml_refits(data, formulas))")
    common = [c for c in ms.data.columns if c in mb.data.columns]
    differ = [c for c in common if not np.array_equal(ms.data[c].to_numpy(), mb.data[c].to_numpy())]
    if differ:
        raise DataError(f"the two fits used different rows: column(s) {differ} differ row by row between "
                        f"{small.spec.formula!r} and {big.spec.formula!r}; refit both on one data set")
    return ""


@dataclass(frozen=True)
class _Difference:
    fixed: tuple[str, ...]
    variances: tuple
    covariances: tuple


def _nested_difference(small: Fit, big: Fit) -> _Difference:
    """What ``big`` adds to ``small``; SpecError unless ``small`` is nested in ``big``."""
    a, b = small.spec, big.spec
    if a.response != b.response:
        raise SpecError(f"the models have different responses ({a.response!r} and {b.response!r}); "
                        "likelihoods of different data are not comparable")
    if a.family != b.family:
        raise SpecError(f"the models have different families ({a.family} and {b.family})")
    ps, pb = Parameters.of(small), Parameters.of(big)
    extra = {
        "fixed effect(s)": sorted(ps.fixed - pb.fixed),
        "variance(s)": _labels(ps.variances - pb.variances),
        "covariance(s)": _labels(ps.covariances - pb.covariances),
    }
    extra = {k: v for k, v in extra.items() if v}
    if extra:
        listing = "; ".join(f"{k} {v}" for k, v in extra.items())
        reverse = (pb.fixed <= ps.fixed and pb.variances <= ps.variances and pb.covariances <= ps.covariances)
        hint = (" It is the other way round: the first nests the second; pass the smaller model first."
                if reverse else " A likelihood-ratio test needs nested models; compare non-nested ones with "
                "information_criteria (AIC/BIC) or cross-validation.")
        raise SpecError(f"{a.formula!r} is not nested in {b.formula!r}: it has {listing} that the second "
                        f"lacks.{hint}")
    diff = _Difference(fixed=tuple(sorted(pb.fixed - ps.fixed)),
                       variances=tuple(sorted(pb.variances - ps.variances, key=_label)),
                       covariances=tuple(sorted(pb.covariances - ps.covariances, key=_label)))
    if not (diff.fixed or diff.variances or diff.covariances):
        raise SpecError(f"{a.formula!r} and {b.formula!r} have the same parameters: nothing to test")
    return diff


# ---------------------------------------------------------------------- reference distributions
def _chi2_sf(x: float, df: int) -> float:
    """P(chi2(df) >= x), with chi2(0) the point mass at 0 (x counts as 0 up to :data:`ZERO_STATISTIC`)."""
    from scipy.stats import chi2

    if x <= ZERO_STATISTIC and df == 0:
        return 1.0
    if df == 0:
        return 0.0
    return float(chi2.sf(max(x, 0.0), df))


def chibar2_sf(statistic: float, df: int) -> float:
    """p-value of the chi-bar-square mixture ``0.5 chi2(df-1) + 0.5 chi2(df)`` (one variance on its boundary).

    ``chi2(0)`` is the point mass at 0: for one new variance alone (df = 1) the p-value is
    ``0.5 * chi2.sf(statistic, 1)`` for a positive statistic and 1 for a statistic of 0.

    >>> round(chibar2_sf(3.84, 1), 4)
    0.025
    """
    if df < 1:
        raise ValueError(f"df must be at least 1, got {df}")
    return 0.5 * _chi2_sf(statistic, df - 1) + 0.5 * _chi2_sf(statistic, df)


# ---------------------------------------------------------------------- public functions
def ml_refits(data: pd.DataFrame, formulas: Sequence[str | ModelSpec], backend: str = "native",
              family: str | None = None, na_action: str = "error", **options) -> list[Fit]:
    """Fit every formula by maximum likelihood on one engine, all on the same rows.

    Parameters
    ----------
    data : DataFrame
    formulas : sequence of str or ModelSpec
    backend : {"native", "lme4", "mixedlm"}
        A likelihood engine (default native, the exact Gaussian likelihood); lme4 also fits binomial and
        poisson families (Laplace).
    family : str, optional
    na_action : {"error", "drop"}
        ``"drop"`` drops every row with a missing value in ANY formula's columns before fitting, so that every
        model sees the same rows (a likelihood-ratio test needs that).
    **options
        Passed to the backend (e.g. ``optimizer="bobyqa"`` for lme4).

    Examples
    --------
    >>> fits = ml_refits(data, ["y ~ x1 + (1 | market)", "y ~ x1 + (1 + x1 | market)"])  # doctest: +SKIP
    >>> [f.method for f in fits]  # doctest: +SKIP
    ['ML', 'ML']
    """
    from .fitting import as_spec, fit

    if backend not in ML_BACKENDS:
        raise SpecError(f"ML refits are for the likelihood engines {list(ML_BACKENDS)}, not {backend!r}")
    if na_action not in ("error", "drop"):
        raise SpecError(f"na_action must be 'error' or 'drop', got {na_action!r}")
    specs = [as_spec(f, family) for f in formulas]
    if not specs:
        raise SpecError("no formulas given")
    dropped = 0
    if na_action == "drop":
        used = list(dict.fromkeys(v for s in specs for v in s.variables))
        missing = [c for c in used if c not in data.columns]
        if missing:
            have = list(map(str, data.columns))[:20]
            raise DataError(f"column(s) {missing} are missing from the data; it has {have}")
        frame = data[used]
        bad = frame.isna().any(axis=1).to_numpy().copy()
        for c in used:
            if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]):
                bad |= ~np.isfinite(frame[c].to_numpy(dtype=float, na_value=np.nan))
        dropped, total = int(bad.sum()), len(data)
        data = data.loc[~bad]
    out = []
    for spec in specs:
        f = fit(data, spec, backend=backend, method="ML", **options)
        if dropped:
            f.diagnostics.setdefault("notes", []).append(
                f"ml_refits dropped {dropped} of {total} rows with a missing value in any formula's columns")
        out.append(f)
    return out


def information_criteria(fits: Sequence[Fit]) -> pd.DataFrame:
    """AIC and BIC of each fit, as lme4 computes them.

    ``AIC = -2 loglik + 2 n_params``, ``BIC = -2 loglik + log(nobs) n_params``, ``n_params`` counted by
    :func:`n_params`. ``delta_AIC`` / ``delta_BIC`` are differences from the smallest value among the fits
    that are comparable: same response, family, fit method and number of rows (each such set has its own
    zero). A REML fit's criterion compares only fits with the same fixed effects (said in ``note``); fits with
    no usable likelihood (Bayesian, no-pooling, machine-learning backends) get a row of missing values and
    the reason in ``note``.

    Examples
    --------
    >>> information_criteria(ml_refits(data, formulas))[["formula", "AIC", "BIC"]]  # doctest: +SKIP
    """
    rows = []
    for fit in fits:
        row = dict(formula=fit.spec.formula, backend=fit.backend, method=fit.method, nobs=int(fit.nobs),
                   n_params=np.nan, loglik=np.nan, AIC=np.nan, BIC=np.nan, delta_AIC=np.nan, delta_BIC=np.nan,
                   note="")
        why = _likelihood_problem(fit)
        if why is not None:
            row["note"] = why
            rows.append(row)
            continue
        k = n_params(fit)
        ll = float(fit.loglik)
        row.update(n_params=k, loglik=ll, AIC=-2 * ll + 2 * k, BIC=-2 * ll + np.log(fit.nobs) * k)
        if fit.method == "REML":
            row["note"] = ("REML criterion: comparable only between fits with the same fixed effects; refit by ML "
                           "(ml_refits) to compare fixed effects")
        row["_key"] = (fit.spec.response, fit.spec.family, fit.method, int(fit.nobs))
        rows.append(row)
    df = pd.DataFrame(rows)
    if "_key" in df:
        ok = df["_key"].notna()
        for col in ("AIC", "BIC"):
            best = df.loc[ok].groupby("_key")[col].transform("min")
            df.loc[ok, f"delta_{col}"] = df.loc[ok, col] - best
        keys = df.loc[ok, "_key"]
        if keys.nunique() > 1:
            for i in keys.index:
                response, family, method, nobs = df.at[i, "_key"]
                said = f"deltas within the fits of {response} ({family}, {method}) on the same {nobs} rows"
                df.at[i, "note"] = f"{df.at[i, 'note']}; {said}" if df.at[i, "note"] else said
        df = df.drop(columns="_key")
    df = df.reindex(columns=IC_COLUMNS)
    df["n_params"] = df["n_params"].astype("Int64")
    return df


def lrt(small: Fit, big: Fit) -> dict:
    """Likelihood-ratio test of ``small`` against the bigger ``big`` that nests it.

    Both fits must come from one likelihood engine, by one method (ML; REML only when the fixed effects are
    the same), on the same rows; ``small``'s fixed-effect columns and variance/covariance parameters must be
    a subset of ``big``'s (:class:`SpecError` / :class:`DataError` otherwise, saying which part differs).

    Returns
    -------
    dict
        ``model_small``, ``model_big`` (formulas), ``df``, ``statistic`` (2 x the log-likelihood difference,
        as ``anova()`` prints it, negative if the bigger fit stopped below the smaller one), ``p_value`` (from
        ``reference_distribution``), ``p_value_naive_chi2``, ``reference_distribution``, ``note`` (why that
        reference; see the module docstring), and ``backend``, ``method``, ``nobs``, ``n_params_small``,
        ``n_params_big``, ``loglik_small``, ``loglik_big``, ``added`` (the parameters ``big`` adds).

    Examples
    --------
    >>> small, big = ml_refits(pastes, ["strength ~ 1 + (1 | batch)",
    ...                                 "strength ~ 1 + (1 | batch/cask)"])  # doctest: +SKIP
    >>> lrt(small, big)["reference_distribution"]  # doctest: +SKIP
    '0.5*chi2(0) + 0.5*chi2(1)'
    """
    _require_likelihood(small, "smaller")
    _require_likelihood(big, "bigger")
    if small.backend != big.backend:
        raise SpecError(f"the fits come from different engines ({small.backend} and {big.backend}); a "
                        "likelihood-ratio test compares one engine's likelihoods: refit both with ml_refits")
    if small.method != big.method:
        raise SpecError(f"the fits used different methods ({small.method} and {big.method}); refit both by ML "
                        "(ml_refits)")
    diff = _nested_difference(small, big)
    rows_note = _check_same_rows(small, big)
    if small.method == "REML" and diff.fixed:
        raise SpecError(f"REML criteria of models with different fixed effects are not comparable (the second adds "
                        f"{list(diff.fixed)}); refit both by ML (ml_refits)")
    k_small, k_big = n_params(small), n_params(big)
    df = k_big - k_small
    stat = 2.0 * (float(big.loglik) - float(small.loglik))
    naive = _chi2_sf(stat, df)
    added = [f"fixed {t}" for t in diff.fixed] + [_label(k) for k in diff.variances + diff.covariances]
    notes = []
    n_var = len(diff.variances)
    if n_var == 0:
        reference, p = f"chi2({df})", naive
        what = "fixed effects" if not diff.covariances else (
            "covariance(s) between terms that vary in both models" if not diff.fixed else
            "fixed effects and covariance(s) between terms that vary in both models")
        notes.append(f"{what} only: interior parameters, chi2({df}) reference")
    elif n_var == 1:
        reference, p = f"0.5*chi2({df - 1}) + 0.5*chi2({df})", chibar2_sf(stat, df)
        var = _label(diff.variances[0])
        notes.append(
            f"chi-bar-square: the variance {var} is tested on its boundary (SD = 0), so the statistic follows "
            f"0.5 chi2({df - 1}) + 0.5 chi2({df}) ({SELF_LIANG}); the naive chi2({df}) p-value beside it is "
            "conservative")
        if stat <= ZERO_STATISTIC:
            notes.append(f"statistic <= {ZERO_STATISTIC:g}: the added variance is estimated at 0, the mixture's "
                         "point mass, p = 1")
    else:
        reference, p = f"chi2({df}) (conservative)", naive
        notes.append(
            f"{n_var} variances tested on their boundary ({', '.join(_label(v) for v in diff.variances)}): the "
            "chi-bar-square mixture's weights depend on the information matrix; the chi2 p-value is conservative "
            f"(too large) ({SELF_LIANG})")
    if stat < -ZERO_STATISTIC:
        notes.append(f"the bigger model's log-likelihood is {-stat / 2:.3g} below the smaller one's: its optimiser "
                     "stopped early or at a worse local optimum (compare engines, or refit with another optimiser)")
    if small.method == "REML":
        notes.append("REML criteria compared: valid because the fixed effects are the same")
    if rows_note:
        notes.append(rows_note)
    return dict(model_small=small.spec.formula, model_big=big.spec.formula, df=df, statistic=stat, p_value=p,
                p_value_naive_chi2=naive, reference_distribution=reference, note="; ".join(notes),
                backend=big.backend, method=big.method, nobs=int(big.nobs), n_params_small=k_small,
                n_params_big=k_big, loglik_small=float(small.loglik), loglik_big=float(big.loglik), added=added)


def lrt_table(fits: Sequence[Fit]) -> pd.DataFrame:
    """Likelihood-ratio tests of consecutive models, as ``anova(m1, m2, ...)`` does.

    The fits with a likelihood are grouped by engine, method, response and family; within a group they are
    ordered by :func:`n_params` (ties keep the given order) and each is tested against the next. A
    consecutive pair that cannot be tested (not nested, different rows) gets a row with missing numbers and
    the reason in ``note``, where ``anova()`` would stop with an error. Fits without a likelihood are left out (see
    :func:`information_criteria` for why).

    Examples
    --------
    >>> lrt_table(ml_refits(sleepstudy, ["Reaction ~ Days + (1 | Subject)",
    ...                                  "Reaction ~ Days + (Days | Subject)"]))  # doctest: +SKIP
    """
    groups: dict[tuple, list[Fit]] = {}
    for fit in fits:
        if _likelihood_problem(fit) is None:
            key = (fit.backend, fit.method, fit.spec.response, fit.spec.family)
            groups.setdefault(key, []).append(fit)
    rows = []
    for members in groups.values():
        ordered = sorted(members, key=n_params)
        for small, big in zip(ordered, ordered[1:]):
            try:
                row = lrt(small, big)
                row.pop("added")
            except HierCompareError as exc:
                row = dict(model_small=small.spec.formula, model_big=big.spec.formula,
                           df=n_params(big) - n_params(small), statistic=np.nan, p_value=np.nan,
                           p_value_naive_chi2=np.nan, reference_distribution="", note=f"not tested: {exc}",
                           backend=big.backend, method=big.method, nobs=int(big.nobs),
                           n_params_small=n_params(small), n_params_big=n_params(big),
                           loglik_small=float(small.loglik), loglik_big=float(big.loglik))
            rows.append(row)
    return pd.DataFrame(rows, columns=LRT_COLUMNS)


def loo_table(fits: Sequence[Fit], **loo_options) -> pd.DataFrame:
    """PSIS-LOO of the Bayesian fits, in the layout of ``arviz.compare`` plus the Pareto-k counts.

    Each fit that provides ``fit.loo()`` (the pymc backend) gives ``elpd_loo``, its ``se``, ``p_loo``, ArviZ's
    ``good_k`` threshold and the counts of Pareto k in ArviZ's bins (good ``k <= good_k``, bad
    ``good_k < k <= 1``, very bad ``k > 1``) and the largest k. Where two or more such fits share the same rows,
    ``arviz.compare`` ranks them and adds ``elpd_diff``, ``dse`` (SE of the pointwise difference) and the
    stacking ``weight``. brms's LOO comes from its kept joint draws (``keep_draws``, default 200). A fit without LOO
    (brms with ``keep_draws=0``; the frequentist engines have no posterior) gets a row with the reason in ``note``.

    ``loo_options`` are passed to ``fit.loo()`` (e.g. ``thin=2``).
    """
    import arviz as az

    rows, elpds = [], {}
    for i, fit in enumerate(fits):
        row = {c: np.nan for c in LOO_COLUMNS}
        row.update(formula=fit.spec.formula, backend=fit.backend, warning=False, note="")
        if "loo" not in fit.extras:
            row["note"] = (f"{fit.backend} provides no PSIS-LOO: "
                           + ("it kept no posterior draws (keep_draws=0)" if fit.backend == "brms" else
                              "not a Bayesian fit (compare it with information_criteria or cross-validation)"))
            rows.append(row)
            continue
        elpd = fit.loo(**loo_options)
        k = np.asarray(elpd["pareto_k"]).ravel() if "pareto_k" in elpd else np.array([])
        n_samples = int(elpd["n_samples"])
        good_k = float(elpd["good_k"]) if "good_k" in elpd else min(1 - 1 / np.log10(n_samples), 0.7)
        counts = np.histogram(k, bins=[-np.inf, good_k, 1, np.inf])[0] if k.size else [np.nan] * 3
        row.update(elpd_loo=float(elpd["elpd_loo"]), se=float(elpd["se"]), p_loo=float(elpd["p_loo"]),
                   good_k=good_k, pareto_k_good=counts[0], pareto_k_bad=counts[1], pareto_k_very_bad=counts[2],
                   pareto_k_max=float(k.max()) if k.size else np.nan, warning=bool(elpd["warning"]),
                   n_samples=n_samples, n_data_points=int(elpd["n_data_points"]))
        if k.size and counts[1] + counts[2]:
            row["note"] = (f"{counts[1] + counts[2]} Pareto k above {good_k:.2f}: PSIS-LOO is unreliable for those "
                           "rows (refit leaving them out, or use K-fold cross-validation)")
        elpds[i] = elpd
        rows.append(row)
    table = pd.DataFrame(rows, columns=LOO_COLUMNS)
    same = len({int(e["n_data_points"]) for e in elpds.values()}) == 1
    if len(elpds) >= 2 and same and all("loo_i" in e for e in elpds.values()):
        names = {i: f"{i}: {fits[i].spec.formula} [{fits[i].backend}]" for i in elpds}
        comp = az.compare({names[i]: e for i, e in elpds.items()}, ic="loo", scale="log")
        for i in elpds:
            r = comp.loc[names[i]]
            table.loc[i, ["rank", "elpd_diff", "dse", "weight"]] = [r["rank"], r["elpd_diff"], r["dse"],
                                                                     r["weight"]]
    elif len(elpds) == 1:
        i = next(iter(elpds))
        table.loc[i, ["rank", "elpd_diff", "dse", "weight"]] = [0, 0.0, 0.0, 1.0]
    elif len(elpds) >= 2:
        for i in elpds:
            table.loc[i, "note"] = (table.loc[i, "note"] + "; " if table.loc[i, "note"] else "") + (
                "not ranked: the fits' LOO covers different rows")
    for c in ("rank", "pareto_k_good", "pareto_k_bad", "pareto_k_very_bad", "n_samples", "n_data_points"):
        table[c] = table[c].astype("Int64")
    return table


__all__ = ["ml_refits", "information_criteria", "lrt", "lrt_table", "loo_table", "n_params", "chibar2_sf",
           "Parameters", "ML_BACKENDS"]
