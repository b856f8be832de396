"""Performance of estimators over simulation replications, each measure with its Monte Carlo SE.

The measures and their Monte Carlo standard errors (MCSE) follow Morris, White & Crowther (2019), "Using
simulation studies to evaluate statistical methods", Statistics in Medicine 38:2074-2102, Table 6. For one
backend and one parameter, over the ``n`` replications with an estimate :math:`\\hat\\theta_i` of the target
:math:`\\theta` (:math:`e_i = \\hat\\theta_i - \\theta`, :math:`\\bar\\theta = \\frac1n\\sum\\hat\\theta_i`):

==================  =================================================  ==============================================
measure             estimate                                           MCSE
==================  =================================================  ==============================================
bias                :math:`\\bar e = \\bar\\theta - \\theta`               :math:`\\sqrt{\\sum(e_i-\\bar e)^2/(n(n-1))}`
rel_bias            :math:`\\bar e/|\\theta|` (fraction, not %)          MCSE(bias) / :math:`|\\theta|`
empse               :math:`\\sqrt{\\sum(\\hat\\theta_i-\\bar\\theta)^2/(n-1)}`   empse / :math:`\\sqrt{2(n-1)}`
mse                 :math:`\\frac1n\\sum e_i^2`                           :math:`\\sqrt{\\sum(e_i^2-\\mathrm{mse})^2/(n(n-1))}`
rmse                :math:`\\sqrt{\\mathrm{mse}}`                         MCSE(mse) / (2 rmse)  (delta method)
modse               :math:`\\sqrt{\\frac1m\\sum s_i^2}` (model SEs)       :math:`\\sqrt{\\widehat{\\mathrm{Var}}(s^2)/(4m\\,\\mathrm{modse}^2)}`
rel_error_modse     modse / empse - 1 (fraction, not %)                :math:`\\frac{\\mathrm{modse}}{\\mathrm{empse}}\\sqrt{\\frac{\\widehat{\\mathrm{Var}}(s^2)}{4m\\,\\mathrm{modse}^4}+\\frac{1}{2(n-1)}}`
coverage            share of 95% intervals containing :math:`\\theta`   :math:`\\sqrt{p(1-p)/c}`
be_coverage         share of intervals containing :math:`\\bar\\theta`  :math:`\\sqrt{p(1-p)/c}`
power               share of p-values :math:`\\le 0.05`                 :math:`\\sqrt{p(1-p)/k}`
convergence         share of assessed fits that converged              :math:`\\sqrt{p(1-p)/N}`
==================  =================================================  ==============================================

``m`` counts the replications with a model SE, :math:`\\widehat{\\mathrm{Var}}(s^2) = \\sum(s_i^2 -
\\overline{s^2})^2/(m-1)`; ``c`` counts those with both interval ends (``n_ci``); ``k`` those with a p-value
(``n_p``: the fixed effects of backends that report one, column ``p_value``; where the truth is 0, ``power`` is the
type I error rate); ``N`` counts every attempted fit of
that backend in that scenario whose convergence was assessed (failed fits included, fits whose ``converged``
is missing, "not assessed" by the backend, left out). Where fits ran and none of them was assessed (ols, r_lm
and the naive baselines do not assess convergence) ``convergence`` is NaN: not assessed, never assumed. A failed fit
(non-empty ``error``) never enters the other measures; with ``converged_only=True`` neither do fits that
reported non-convergence (``converged`` False; not-assessed fits stay).

The target is the generating value (column ``truth``) by default, or with ``target="realized"`` the value
realised in each data set (for ``ran_pars``: the SD or correlation of the group effects actually drawn).
Where the target varies between replications the errors :math:`e_i` use each replication's own target,
bias-eliminated coverage checks whether interval ``i`` contains :math:`\\theta_i + \\bar e` (which is
:math:`\\bar\\theta` when the target is constant), empse stays the SD of the estimates, and ``rel_bias`` is
missing (there is no single :math:`\\theta` to divide by).

Group effects (``effect == "ran_vals"``) are pooled over every group label and replication, per
(scenario, backend, group, term): bias, mse, rmse, modse (root mean squared conditional SD) and coverage.
Group effects of one replication share one data set and one set of variance estimates, so they are not
independent; their MCSE is the cluster (ratio-estimator) SE with replications as clusters: for a pooled
mean :math:`\\hat p = \\sum_r S_r / \\sum_r k_r` of per-effect values (errors, squared errors, 0/1 coverage)
with replication sums :math:`S_r` over :math:`k_r` effects,

.. math:: \\mathrm{MCSE}(\\hat p) = \\frac{\\sqrt{\\tfrac{R}{R-1}\\sum_r (S_r - \\hat p\\,k_r)^2}}{\\sum_r k_r},

which reduces to :math:`\\sqrt{\\sum_r(\\bar x_r-\\hat p)^2/(R(R-1))}` when every :math:`k_r` is equal. empse,
rel_bias, rel_error_modse and be_coverage are not defined for pooled group effects (missing).

Coverage is computed for every parameter whose rows carry both interval ends: the fixed effects (Wald z, or t with
the df in column ``df``), and the variance parameters (``ran_pars``) where the backend gives them intervals
(profile likelihood or bootstrap for native and lme4, posterior intervals for pymc and brms). ``median_df`` is the
median over the replications of the ``df`` column (fixed effects: ``inf`` for z intervals; missing where the
backend states no df).

Conditional intervals (the learners' ``interval = "conditional_on_f"`` rows: lightgbm's and torch's Wald and BLUP
intervals computed as if the learned f(x) were known) are never reported as ordinary ones: their cell's ``interval``
column says ``conditional_on_f``, its ``coverage``, ``be_coverage``, ``modse`` and ``rel_error_modse`` are missing,
and ``conditional_coverage`` / ``conditional_modse`` (with MCSEs) hold what those measures would be, under their own
names. Results written before the ``interval`` column existed are read the same way for the backends ``lightgbm``
and ``torch`` (and their variants), whose intervals were all conditional then (:func:`interval_kind`). Cluster
bootstrap intervals (``cluster_bootstrap``) are ordinary intervals, labelled as such in ``interval``.

Measures that need more replications than there are (an SD from one value, a coverage without any
interval) are missing (NaN), never 0.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError

#: Columns :func:`performance` needs in its input (the long table of :meth:`hiercompare.study.Study.run`).
REQUIRED = ["scenario", "replication", "backend", "effect", "group", "level", "term", "estimate", "std_error",
            "conf_low", "conf_high", "truth", "realized", "converged", "error"]
#: One row of the output per these keys (``ran_vals`` rows pool every ``level``).
CELL = ["scenario", "backend", "effect", "group", "term"]
MEASURES = ["bias", "rel_bias", "empse", "mse", "rmse", "modse", "rel_error_modse", "coverage", "be_coverage",
            "power", "convergence", "conditional_modse", "conditional_coverage"]
#: Backends whose intervals were conditional on their learned f(x) before the ``interval`` column existed.
CONDITIONAL_BACKENDS = ("lightgbm", "torch")
#: Measures that a conditional cell reports under ``conditional_*`` names instead (the others: missing).
_CONDITIONAL_MOVES = {"coverage": "conditional_coverage", "modse": "conditional_modse"}
#: The significance level of ``power`` (p-values at or below it count as rejections).
ALPHA = 0.05
COLUMNS = CELL + ["interval", "truth", "n_rep", "n_used", "n_se", "n_ci", "n_p", "mean_estimate", "median_df"] + [
    c for m in MEASURES for c in (m, f"{m}_mcse")]


def _nan_dict() -> dict[str, float]:
    return {c: np.nan for m in MEASURES for c in (m, f"{m}_mcse")}


def _binomial(hits: np.ndarray) -> tuple[float, float]:
    """Share and its binomial MCSE sqrt(p(1-p)/n); NaN for no trials."""
    n = len(hits)
    if n == 0:
        return np.nan, np.nan
    p = float(np.mean(hits))
    return p, float(np.sqrt(p * (1 - p) / n))


def convergence_rate(ok, not_assessed, failed=None) -> tuple[float, float]:
    """Share of attempted fits that converged, and its binomial MCSE, over the fits whose convergence was
    assessed (a failed fit counts as not converged); NaN where fits ran and none of them was assessed (the
    backend does not assess convergence: its failures alone are no convergence rate).

    >>> convergence_rate([True, False, False, False], [False, False, True, True])
    (0.5, 0.3535533905932738)
    >>> convergence_rate([False, False, False], [True, True, False], failed=[False, False, True])
    (nan, nan)
    """
    ok = np.asarray(ok, dtype=bool)
    not_assessed = np.asarray(not_assessed, dtype=bool)
    failed = np.zeros_like(ok) if failed is None else np.asarray(failed, dtype=bool)
    if not_assessed.any() and not (~failed & ~not_assessed).any():
        return np.nan, np.nan
    return _binomial(ok[~not_assessed])


def replication_measures(
    estimate, target, std_error=None, conf_low=None, conf_high=None, p_value=None, df=None
) -> dict[str, float]:
    """Morris et al. (2019) Table 6 measures for one parameter over independent replications.

    Parameters
    ----------
    estimate : array-like
        One estimate per replication (already restricted to usable fits; NaN entries are an error).
    target : float or array-like
        The true value: one number, or one per replication.
    std_error : array-like, optional
        Model SEs; NaN where a replication has none (those are left out of modse).
    conf_low, conf_high : array-like, optional
        95% interval ends; replications missing either end are left out of both coverages.
    p_value : array-like, optional
        p-values of the test of ``parameter = 0``; NaN where there is none (left out of ``power``).
    df : array-like, optional
        The interval's degrees of freedom (``inf`` for z); their median is ``median_df`` (NaN entries left out).

    Returns
    -------
    dict
        ``bias``, ``rel_bias``, ``empse``, ``mse``, ``rmse``, ``modse``, ``rel_error_modse``, ``coverage``,
        ``be_coverage``, ``power`` and for each ``<measure>_mcse``, plus counts ``n_used``, ``n_se``, ``n_ci``,
        ``n_p``, ``mean_estimate`` and ``median_df``. ``convergence`` is left missing (it needs the failed fits
        too).

    Examples
    --------
    >>> m = replication_measures([1.2, 0.8, 1.3, 0.9], 1.0)
    >>> round(m["bias"], 4), round(m["bias_mcse"], 4)
    (0.05, 0.119)
    """
    est = np.asarray(estimate, dtype=float)
    n = len(est)
    if np.isnan(est).any():
        raise DataError("replication_measures: estimates contain NaN; drop failed fits before calling it")
    tgt = np.broadcast_to(np.asarray(target, dtype=float), est.shape)
    out: dict[str, float] = _nan_dict()
    out.update(n_used=n, n_se=0, n_ci=0, n_p=0, mean_estimate=float(est.mean()) if n else np.nan,
               median_df=_median(df))
    if n == 0:
        return out
    err = est - tgt
    bias = float(err.mean())
    out["bias"] = bias
    constant = bool(np.all(tgt == tgt[0]))
    if n > 1:
        out["bias_mcse"] = float(np.sqrt(np.sum((err - bias) ** 2) / (n * (n - 1))))
        empse = float(np.sqrt(np.sum((est - est.mean()) ** 2) / (n - 1)))
        out["empse"] = empse
        out["empse_mcse"] = empse / np.sqrt(2 * (n - 1))
    if constant and tgt[0] != 0:
        out["rel_bias"] = bias / abs(tgt[0])
        out["rel_bias_mcse"] = out["bias_mcse"] / abs(tgt[0])
    sq = err ** 2
    mse = float(sq.mean())
    out["mse"], out["rmse"] = mse, float(np.sqrt(mse))
    if n > 1:
        out["mse_mcse"] = float(np.sqrt(np.sum((sq - mse) ** 2) / (n * (n - 1))))
        if mse > 0:
            out["rmse_mcse"] = out["mse_mcse"] / (2 * out["rmse"])
    if std_error is not None:
        se = np.asarray(std_error, dtype=float)
        v = se[np.isfinite(se)] ** 2
        m = len(v)
        out["n_se"] = m
        if m:
            modse = float(np.sqrt(v.mean()))
            out["modse"] = modse
            if m > 1 and modse > 0:
                var_v = float(np.sum((v - v.mean()) ** 2) / (m - 1))
                out["modse_mcse"] = float(np.sqrt(var_v / (4 * m * modse ** 2)))
                empse = out["empse"]
                if np.isfinite(empse) and empse > 0:
                    ratio = modse / empse
                    out["rel_error_modse"] = ratio - 1
                    out["rel_error_modse_mcse"] = float(
                        ratio * np.sqrt(var_v / (4 * m * modse ** 4) + 1 / (2 * (n - 1))))
    if conf_low is not None and conf_high is not None:
        lo, hi = np.asarray(conf_low, dtype=float), np.asarray(conf_high, dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        out["n_ci"] = int(ok.sum())
        lo, hi, t = lo[ok], hi[ok], tgt[ok]
        out["coverage"], out["coverage_mcse"] = _binomial((lo <= t) & (t <= hi))
        shifted = t + bias  # = mean estimate when the target is constant
        out["be_coverage"], out["be_coverage_mcse"] = _binomial((lo <= shifted) & (shifted <= hi))
    if p_value is not None:
        p = np.asarray(p_value, dtype=float)
        p = p[np.isfinite(p)]
        out["n_p"] = len(p)
        out["power"], out["power_mcse"] = _binomial(p <= ALPHA)
    return out


def _median(values) -> float:
    """Median of the non-NaN values (``inf`` counts: z intervals); NaN when there are none."""
    if values is None:
        return np.nan
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(np.median(v)) if len(v) else np.nan


def cluster_mean(values, cluster) -> tuple[float, float]:
    """Pooled mean of per-item values and its MCSE with replications as clusters (ratio estimator).

    Parameters
    ----------
    values : array-like
        One value per item (e.g. per group effect and replication).
    cluster : array-like
        The replication each item belongs to.

    Returns
    -------
    (mean, mcse)
        ``mean = sum(S_r) / sum(k_r)`` and ``mcse = sqrt(R/(R-1) * sum((S_r - mean*k_r)^2)) / sum(k_r)``
        (NaN for fewer than two replications).

    Examples
    --------
    >>> m, se = cluster_mean([0.1, -0.3, 0.2, 0.0, 0.4], [1, 1, 2, 2, 2])
    >>> round(m, 6), round(se, 6)
    (0.08, 0.144)
    """
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return np.nan, np.nan
    s = pd.Series(x).groupby(np.asarray(cluster)).agg(["sum", "size"])
    S, k = s["sum"].to_numpy(), s["size"].to_numpy(dtype=float)
    total = k.sum()
    mean = float(S.sum() / total)
    R = len(S)
    if R < 2:
        return mean, np.nan
    mcse = float(np.sqrt(R / (R - 1) * np.sum((S - mean * k) ** 2)) / total)
    return mean, mcse


def group_effect_measures(estimate, target, replication, std_error=None, conf_low=None,
                          conf_high=None) -> dict[str, float]:
    """Bias, MSE, RMSE, modse and coverage of group effects pooled over labels and replications.

    MCSEs are cluster SEs over replications (:func:`cluster_mean`); RMSE's and modse's by the delta method
    (MCSE of the mean square divided by twice the root). Measures not defined for pooled group effects
    (empse, rel_bias, rel_error_modse, be_coverage) are missing.

    Examples
    --------
    >>> m = group_effect_measures([0.1, -0.3, 0.2, 0.0, 0.4], 0.0, [1, 1, 2, 2, 2])
    >>> round(m["mse"], 4), round(m["mse_mcse"], 4)
    (0.06, 0.008)
    """
    est = np.asarray(estimate, dtype=float)
    rep = np.asarray(replication)
    tgt = np.broadcast_to(np.asarray(target, dtype=float), est.shape)
    out: dict[str, float] = _nan_dict()
    out.update(n_used=len(est), n_se=0, n_ci=0, n_p=0, mean_estimate=float(est.mean()) if len(est) else np.nan,
               median_df=np.nan)
    if len(est) == 0:
        return out
    err = est - tgt
    out["bias"], out["bias_mcse"] = cluster_mean(err, rep)
    out["mse"], out["mse_mcse"] = cluster_mean(err ** 2, rep)
    out["rmse"] = float(np.sqrt(out["mse"]))
    if out["rmse"] > 0:
        out["rmse_mcse"] = out["mse_mcse"] / (2 * out["rmse"])
    if std_error is not None:
        se = np.asarray(std_error, dtype=float)
        ok = np.isfinite(se)
        out["n_se"] = int(ok.sum())
        if ok.any():
            msq, msq_se = cluster_mean(se[ok] ** 2, rep[ok])
            out["modse"] = float(np.sqrt(msq))
            if out["modse"] > 0:
                out["modse_mcse"] = msq_se / (2 * out["modse"])
    if conf_low is not None and conf_high is not None:
        lo, hi = np.asarray(conf_low, dtype=float), np.asarray(conf_high, dtype=float)
        ok = np.isfinite(lo) & np.isfinite(hi)
        out["n_ci"] = int(ok.sum())
        if ok.any():
            hits = ((lo[ok] <= tgt[ok]) & (tgt[ok] <= hi[ok])).astype(float)
            out["coverage"], out["coverage_mcse"] = cluster_mean(hits, rep[ok])
    return out


def interval_kind(results: pd.DataFrame) -> pd.Series:
    """Each row's interval kind (the tidy frame's ``interval``: ``""``, ``"conditional_on_f"``,
    ``"cluster_bootstrap"``), with rows written before that column existed read as ``"conditional_on_f"`` where the
    backend is ``lightgbm`` or ``torch`` (or a variant ``lightgbm:...``) and the row has an SE or an interval.

    >>> interval_kind(pd.DataFrame({"backend": ["lightgbm", "native"], "std_error": [0.1, 0.1],
    ...                             "conf_low": [0.0, 0.0], "conf_high": [1.0, 1.0]})).tolist()
    ['conditional_on_f', '']
    """
    from .schema import INTERVAL_CONDITIONAL

    if "interval" in results:
        raw = results["interval"].astype(object)
        kind = raw.where(raw.notna(), "").astype(str)
    else:
        kind = pd.Series("", index=results.index, dtype=object)
    base = results["backend"].astype(str).str.split(":", n=1).str[0]
    has = results["std_error"].notna() | results["conf_low"].notna() | results["conf_high"].notna()
    legacy = (kind == "") & base.isin(CONDITIONAL_BACKENDS) & has
    return kind.where(~legacy, INTERVAL_CONDITIONAL)


def _relabel_conditional(m: dict) -> dict:
    """A conditional cell's measures: coverage and modse under their ``conditional_*`` names, the ordinary
    coverage, be_coverage, modse and rel_error_modse missing."""
    for src, dst in _CONDITIONAL_MOVES.items():
        m[dst], m[f"{dst}_mcse"] = m[src], m[f"{src}_mcse"]
    for c in ("coverage", "be_coverage", "modse", "rel_error_modse"):
        m[c], m[f"{c}_mcse"] = np.nan, np.nan
    return m


def _check(results: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED if c not in results.columns]
    if missing:
        raise DataError(
            f"performance() needs the long results table of a Study (hiercompare.study); columns {missing} "
            f"are missing. It has {list(results.columns)}")


def performance(results: pd.DataFrame, target: str = "truth", converged_only: bool = False) -> pd.DataFrame:
    """Performance measures with Monte Carlo SEs, per scenario, backend and parameter.

    Parameters
    ----------
    results : DataFrame
        The long table of :meth:`hiercompare.study.Study.run`: one row per (scenario, replication, backend,
        parameter), failed fits as one row with a non-empty ``error``.
    target : {"truth", "realized"}
        Which column is the true value: the generating value or the value realised in each data set.
    converged_only : bool
        Leave fits that reported non-convergence out of every measure except ``convergence``.

    Returns
    -------
    DataFrame
        One row per (scenario, backend, effect, group, term) with columns :data:`COLUMNS`: ``interval`` (the
        cell's interval kind; ``conditional_on_f`` moves coverage and modse to ``conditional_*``), the target
        (``truth``: the constant target, or its mean where it varies), counts (``n_rep`` attempted fits,
        ``n_used`` estimates, ``n_se`` model SEs, ``n_ci`` intervals, ``n_p`` p-values), ``mean_estimate``,
        ``median_df`` (the fixed effects' df: ``inf`` for z) and each measure with ``<measure>_mcse``. The
        columns ``df`` and ``p_value`` are optional in ``results`` (a table written before them has neither). Rows with no truth (parameters the scenario does not generate) are left out.
        A backend none of whose fits gave an estimate in a scenario still gets one row (empty effect, group
        and term, ``n_used`` 0) carrying its convergence rate.

    Examples
    --------
    >>> from hiercompare.study import Study  # doctest: +SKIP
    >>> res = Study([Scenario()], replications=50, backends=["mixedlm"]).run("out")  # doctest: +SKIP
    >>> performance(res).query("effect == 'fixed'")[["term", "bias", "bias_mcse", "coverage"]]  # doctest: +SKIP
    """
    _check(results)
    if target not in ("truth", "realized"):
        raise ValueError(f"target must be 'truth' or 'realized', got {target!r}")
    keys = ["scenario", "replication", "backend", "effect", "group", "level", "term"]
    dup = results.duplicated(keys)
    if dup.any():
        first = results.loc[dup, keys].iloc[0].to_dict()
        raise DataError(f"performance(): {int(dup.sum())} rows appear more than once, e.g. {first}; the results "
                        "table has duplicated rows (the same study concatenated twice?)")
    df = results.copy()
    df["interval"] = interval_kind(df)
    err_text = df["error"].fillna("").astype(str)
    failed = err_text != ""
    conv = df["converged"].astype("boolean")
    df["_ok"] = conv.fillna(False).astype(bool) & ~failed
    df["_not_assessed"] = conv.isna().to_numpy() & ~failed
    # convergence: one outcome per attempted fit (scenario, replication, backend)
    df["_failed"] = failed
    fits = df.groupby(["scenario", "replication", "backend"], sort=False).agg(
        ok=("_ok", "all"), not_assessed=("_not_assessed", "all"), failed=("_failed", "any")).reset_index()
    conv_rate = {}
    for (sc, be), sub in fits.groupby(["scenario", "backend"], sort=False):
        p, se = convergence_rate(sub["ok"].to_numpy(), sub["not_assessed"].to_numpy(), sub["failed"].to_numpy())
        conv_rate[(sc, be)] = (len(sub), p, se)
    usable = df[~failed & df["estimate"].notna() & df[target].notna()]
    if converged_only:
        usable = usable[usable["_ok"] | usable["_not_assessed"]]
    rows = []
    for key, sub in usable.groupby(CELL, sort=True):
        sc, be, effect = key[0], key[1], key[2]
        sub = sub.sort_values(["replication", "level"])
        tgt = sub[target].to_numpy(dtype=float)
        if effect == "ran_vals":
            m = group_effect_measures(sub["estimate"], tgt, sub["replication"], sub["std_error"],
                                      sub["conf_low"], sub["conf_high"])
        else:
            m = replication_measures(sub["estimate"], tgt, sub["std_error"], sub["conf_low"], sub["conf_high"],
                                     p_value=sub["p_value"] if "p_value" in sub else None,
                                     df=sub["df"] if "df" in sub else None)
        n_rep, p, se = conv_rate[(sc, be)]
        m["convergence"], m["convergence_mcse"] = p, se
        kinds = sorted(set(sub["interval"]) - {""})
        kind = "+".join(kinds)  # one kind per cell in practice; a mix is named as such
        if "conditional_on_f" in kinds:
            m = _relabel_conditional(m)
        rows.append(dict(zip(CELL, key), interval=kind,
                         truth=float(tgt[0]) if np.all(tgt == tgt[0]) else float(tgt.mean()), n_rep=n_rep, **m))
    seen = {(r["scenario"], r["backend"]) for r in rows}
    for (sc, be), (n_rep, p, se) in conv_rate.items():
        if (sc, be) not in seen:  # every fit failed: keep the backend's convergence rate visible
            m = _nan_dict()
            m.update(convergence=p, convergence_mcse=se)
            rows.append(dict(scenario=sc, backend=be, effect="", group="", term="", interval="", truth=np.nan,
                             n_rep=n_rep,
                             n_used=0, n_se=0, n_ci=0, n_p=0, mean_estimate=np.nan, median_df=np.nan, **m))
    out = pd.DataFrame(rows, columns=COLUMNS).sort_values(CELL, kind="mergesort")
    for c in ("n_rep", "n_used", "n_se", "n_ci", "n_p"):
        out[c] = out[c].astype("int64")
    return out.reset_index(drop=True)


def fit_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and backend: attempted fits, failures, non-convergence, convergence rate, time.

    Parameters
    ----------
    results : DataFrame
        The long table of a Study.

    Returns
    -------
    DataFrame
        ``scenario``, ``backend``, ``n_rep`` (attempted fits), ``n_failed`` (raised an error),
        ``n_not_converged`` (fitted but reported non-convergence), ``n_not_assessed`` (fitted by a backend that
        does not assess convergence: ``converged`` missing), ``convergence`` (over the assessed fits; NaN when
        none was) and its binomial ``convergence_mcse``, ``seconds_mean``, ``seconds_median`` (per fit) and
        ``first_error``.

    Examples
    --------
    >>> fit_summary(results)  # doctest: +SKIP
    """
    _check(results)
    if "seconds" not in results.columns:
        raise DataError("fit_summary() needs the 'seconds' column of a Study's results table")
    df = results.copy()
    df["_failed"] = df["error"].fillna("").astype(str) != ""
    conv = df["converged"].astype("boolean")
    df["_conv"] = conv.fillna(False).astype(bool)
    df["_na"] = conv.isna().to_numpy()
    per_fit = df.groupby(["scenario", "replication", "backend"], sort=True).agg(
        failed=("_failed", "any"), conv=("_conv", "all"), na=("_na", "all"), seconds=("seconds", "first"),
        error=("error", lambda e: next((x for x in e if x), ""))).reset_index()
    rows = []
    for (sc, be), sub in per_fit.groupby(["scenario", "backend"], sort=True):
        not_assessed = (~sub["failed"] & sub["na"]).to_numpy()
        ok = (~sub["failed"] & sub["conv"]).to_numpy()
        p, se = convergence_rate(ok, not_assessed, sub["failed"].to_numpy())
        errs = [e for e in sub["error"] if e]
        rows.append(dict(scenario=sc, backend=be, n_rep=len(sub), n_failed=int(sub["failed"].sum()),
                         n_not_converged=int((~sub["failed"] & ~sub["conv"] & ~sub["na"]).sum()),
                         n_not_assessed=int(not_assessed.sum()), convergence=p,
                         convergence_mcse=se, seconds_mean=float(sub["seconds"].mean()),
                         seconds_median=float(sub["seconds"].median()), first_error=errs[0] if errs else ""))
    return pd.DataFrame(rows)


def performance_long(perf: pd.DataFrame) -> pd.DataFrame:
    """The wide output of :func:`performance` as one row per measure: ``measure``, ``estimate``, ``mcse``.

    Examples
    --------
    >>> performance_long(perf).query("measure == 'coverage'")  # doctest: +SKIP
    """
    keep = CELL + ["interval", "truth", "n_rep", "n_used"]
    parts = []
    for m in MEASURES:
        p = perf[keep].copy()
        p["measure"] = m
        p["estimate"] = perf[m].to_numpy()
        p["mcse"] = perf[f"{m}_mcse"].to_numpy()
        parts.append(p)
    out = pd.concat(parts, ignore_index=True)
    return out.dropna(subset=["estimate"]).reset_index(drop=True)


__all__ = ["performance", "performance_long", "fit_summary", "interval_kind", "CONDITIONAL_BACKENDS", "replication_measures", "group_effect_measures", "cluster_mean",
           "convergence_rate", "MEASURES", "COLUMNS", "REQUIRED", "ALPHA"]
