"""Predictive checks: data sets replicated from a fitted model, set against the observed data.

Two checks, the same for every backend; only where the replicated data sets come from differs
(:func:`replicate`, and the ``draws_from`` text that travels with every table):

* a density overlay (:func:`density_overlay_plot`, as ArviZ's ``az.plot_ppc`` draws it): the observed
  response's density against the densities of ~50 replicated data sets;
* group-level statistics (:func:`group_checks`): each group's mean and SD (at the top level of the tree by
  default) against their distribution over the replicated data sets, with the two-sided predictive p-value
  ``p = min(1, 2 min(P(T_rep >= T_obs), P(T_rep <= T_obs)))``; :func:`check_summary` counts, per backend, the
  groups with ``p < 0.05`` out of the groups checked.

Where the replicated data sets come from
----------------------------------------
* **pymc, brms** (posterior predictive): each replicate takes one posterior draw of every parameter (fixed
  effects, every group's effects, the residual SD) and draws ``y`` from the family's likelihood at it
  (``Fit.posterior_predictive()``); the ``draws`` replicates use posterior draws evenly spaced over the chains.
* **frequentist engines** (native, lme4, mixedlm, ols, r_lm, glm, r_glm, lightgbm, torch and the naive baselines),
  simulated from the fitted model::

      y_rep = Fit.predict()                        (X beta_hat [+ learned f(x)] + every level's deviation)
              + sum over levels and terms  e_gt * z_t,   e_gt ~ N(0, std_error_gt^2)
              + eps,                                      eps ~ N(0, sigma_hat^2)          (gaussian)

  ``std_error_gt`` is the fit's ran_vals ``std_error`` of group g's term t, taken as the conditional SD of that
  deviation; the draws are independent across groups, terms and levels (the fits report no covariances between
  them: a group's intercept and slope, or a market and its submarkets, are in truth correlated a posteriori,
  so these draws are an approximation). What the SEs mean depends on the backend and is said in
  ``draws_from``: conditional SDs given the fixed effects (lme4 ``condVar``, mixedlm), Henderson's
  prediction-error SDs that include the fixed effects' uncertainty (native's default ``condvar="full"``,
  lightgbm, torch), or the no-pooling dummy coefficients' sampling SEs (ols, r_lm, glm, r_glm). ``sigma_hat`` is ran_pars
  group ``Residual``, term ``sd__Observation`` (for the naive baselines: their training RMSE). With
  ``fixed_uncertainty=True`` the fixed effects are drawn too, ``beta ~ N(beta_hat, diag(SE^2))`` (independent:
  a Fit carries no covariance of the fixed effects), otherwise they stay at their estimates. The learned
  ``f(x)`` of lightgbm and torch always stays at its fit. Non-Gaussian responses are drawn from the family at
  the inverse link of the drawn linear predictor, which carries the formula's ``offset()`` (so an exposure
  scales a Poisson or NB mean): binomial as successes out of each row's trials (``cbind(s, f)``; one trial for
  a 0/1 response), Poisson, and the negative binomial (NB2) with the fit's size ``theta_hat`` (ran_pars
  ``Dispersion`` ``theta``; variance ``mu + mu^2 / theta_hat``). A Gaussian fit with prior weights ``w``
  (``fit(..., weights=)``) draws each row's residual from ``N(0, sigma_hat^2 / w)``. A
  deviation without a std_error (the naive baselines report none) is held at its estimate, and ``draws_from``
  says so; a gaussian fit without a residual SD cannot be replicated (:class:`PredictiveCheckUnavailable`).

Reading the p-values
--------------------
Posterior (and these plug-in) predictive p-values use the data twice: the group means are the statistics the
group deviations are fitted to, so under a correct model their p-values gather towards 1 rather than being
uniform (Meng 1994; Bayarri & Berger 2000), most of all where the deviations' SEs are wide (native's
``condvar="full"``). A small p-value is therefore a strong signal, a large one little reassurance. The SD of a
group is not fitted group by group, and its check is the one with power against a residual SD that differs
between groups, or a skewed or heavy-tailed response.

Examples
--------
>>> import hiercompare as hc
>>> from hiercompare import ppc
>>> data, _ = hc.simulate(hc.Scenario(), seed=1)
>>> fit = hc.fit(data, hc.Scenario().formula(), backend="native")
>>> y_rep, what = ppc.replicate(fit, draws=20, seed=0)
>>> y_rep.shape
(20, 5000)
>>> table = ppc.group_checks(fit, draws=200)
>>> ppc.check_summary([table])[["backend", "statistic", "n_groups"]].values.tolist()
[['native', 'mean', 10], ['native', 'sd', 10]]
"""
from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd

from .errors import DataError, HierCompareError, SpecError
from .results import DISPERSION, RESIDUAL, THETA, Fit
from .schema import draw_response

ALPHA = 0.05
"""A group is flagged when its predictive p-value is below this."""

GROUP_CHECK_COLUMNS = ["backend", "level", "group", "statistic", "observed", "replicated_mean", "replicated_sd",
                       "p_value", "draws_from", "n_rows", "draws", "formula"]
SUMMARY_COLUMNS = ["backend", "formula", "level", "statistic", "n_groups", "n_flagged", "share_flagged", "alpha",
                   "min_p_value", "flagged_groups", "draws_from"]

BAYESIAN = frozenset({"pymc", "brms"})

# What a backend's ran_vals std_error is, as draws_from says it.
_SE_MEANING = {
    "lme4": "lme4's ranef(condVar = TRUE) conditional SDs, given the fixed effects and variance parameters",
    "mixedlm": "statsmodels' random_effects_cov conditional SDs, given the fixed effects and variance parameters",
    "lightgbm": ("mixedcore's prediction-error SDs (including the fixed effects' uncertainty), given the learned "
                 "f(x) and the variance parameters"),
    "torch": ("mixedcore's prediction-error SDs (including the fixed effects' uncertainty), given the learned "
              "f(x) and the variance parameters"),
    "ols": "the no-pooling dummy coefficients' sampling SEs",
    "r_lm": "the no-pooling dummy coefficients' sampling SEs",
    "glm": "the no-pooling dummy coefficients' sampling SEs",
    "r_glm": "the no-pooling dummy coefficients' sampling SEs",
}
_NATIVE_SE = {
    "full": "native's prediction-error SDs including the fixed effects' uncertainty (condvar='full')",
    "beta_fixed": "native's conditional SDs given the fixed effects (condvar='beta_fixed')",
}


class PredictiveCheckUnavailable(HierCompareError):
    """A fit cannot be replicated (no data attached, no residual SD, no posterior draws); the message says why."""


# ------------------------------------------------------------------------------------------------ replicate
def replicate(fit: Fit, draws: int = 200, seed: int = 0, fixed_uncertainty: bool = False,
              mode: str = "conditional", level: str | None = None) -> tuple[np.ndarray, str]:
    """Replicated responses for the fitted rows, and a sentence saying exactly what was drawn.

    Parameters
    ----------
    fit : Fit
        A fit with its data attached (``fit.model``).
    draws : int
        Number of replicated data sets (default 200). A Bayesian fit with fewer posterior draws than this
        gives one replicate per posterior draw (fewer rows; the description says so).
    seed : int
        Seed of every random draw here: the same fit, ``draws`` and ``seed`` give the same array.
    fixed_uncertainty : bool
        Frequentist fits only: also draw the fixed effects, independently, from ``N(beta_hat, SE^2)`` (default
        False: held at their estimates). Where the deviations' SEs already include the fixed effects'
        uncertainty (native's default, lightgbm, torch) this counts it twice; ``draws_from`` says so. Ignored
        for pymc and brms, whose posterior draws carry every parameter's uncertainty.
    mode : {"conditional", "mixed"}
        ``"conditional"`` (default): every group keeps its fitted deviation (plus the draws of its uncertainty),
        as described in the module docstring. ``"mixed"`` (frequentist mixed models only): the groups of
        ``level`` and of every level below it get NEW deviations drawn from the fitted covariance
        ``N(0, Sigma_hat)`` of their level (ran_pars SDs and correlations), the levels above keep theirs; a
        mixed predictive check (Marshall & Spiegelhalter 2007), whose p-values for the group means are close
        to uniform under the model and which flags a group whose mean is unusual among its level's groups.
    level : str, optional
        The level from which ``mode="mixed"`` draws new deviations (default: the top level); unused otherwise.

    Returns
    -------
    (ndarray, str)
        Array of shape (draws, n_rows) in the order of ``fit.model.y``; the ``draws_from`` text (see the module
        docstring for the model behind it).

    Raises
    ------
    PredictiveCheckUnavailable
        The fit has no data attached, a gaussian fit has no residual SD, or a Bayesian fit has no posterior
        predictive draws.

    Examples
    --------
    >>> import hiercompare as hc
    >>> data, _ = hc.simulate(hc.Scenario(), seed=1)
    >>> fit = hc.fit(data, hc.Scenario().formula(), backend="ols")
    >>> y_rep, what = replicate(fit, draws=5, seed=3)
    >>> bool((y_rep == replicate(fit, draws=5, seed=3)[0]).all())
    True
    """
    draws = _positive_int(draws, "draws")
    if fit.model is None:
        raise PredictiveCheckUnavailable(f"{fit.backend}: this Fit was loaded without its data; refit it to "
                                         "replicate its data")
    if mode not in ("conditional", "mixed"):
        raise SpecError(f"mode must be 'conditional' or 'mixed', got {mode!r}")
    if "posterior_predictive" in fit.extras or fit.backend in BAYESIAN:
        if mode == "mixed":
            raise PredictiveCheckUnavailable(f"{fit.backend}: mode='mixed' is for the frequentist fits; a "
                                             "posterior predictive check uses mode='conditional'")
    if "posterior_predictive" in fit.extras:
        return _posterior_predictive(fit, draws, seed)
    if fit.backend in BAYESIAN:
        raise PredictiveCheckUnavailable(f"{fit.backend}: this fit carries no posterior predictive draws "
                                         "(fit.extras has no 'posterior_predictive'); refit it")
    return _simulate(fit, draws, seed, bool(fixed_uncertainty), mode, level)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise SpecError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _posterior_predictive(fit: Fit, draws: int, seed: int) -> tuple[np.ndarray, str]:
    kept, total = _posterior_draws_count(fit)
    thin = max(1, kept // draws) if kept else 1
    pp = np.asarray(fit.posterior_predictive(thin=thin, seed=int(seed)), dtype=float)
    available = pp.shape[0]
    if available > draws:
        pp = pp[np.round(np.linspace(0, available - 1, draws)).astype(int)]
    fam = fit.spec.family
    lik = {"gaussian": "drawn from the gaussian likelihood at it (with its residual SD)",
           "binomial": ("a binomial draw of successes out of each row's trials at the inverse logit of its linear "
                        "predictor" if fit.spec.has_trials else
                        "a Bernoulli draw at the inverse logit of its linear predictor"),
           "poisson": "a Poisson draw at the exponential of its linear predictor",
           "negbinomial": ("a negative binomial (NB2) draw at the exponential of its linear predictor with that "
                           "draw's size")}[fam]
    if fam != "gaussian" and fit.spec.offsets:
        lik += " (the formula's offset in it)"
    if kept and total and kept < total:
        of = f" of the {kept} joint draws the fit kept (from {total})"
    elif kept:
        of = f" of the {kept} posterior draws"
    else:
        of = ""
    fewer = f" (fewer than the {draws} asked: one per posterior draw)" if pp.shape[0] < draws else ""
    text = (f"posterior predictive ({fit.backend}): {pp.shape[0]}{of}, evenly spaced over the chains{fewer}; "
            f"each gives the fixed effects, every group's effects and the residual SD, and y_rep is {lik}")
    return pp, text


def _posterior_draws_count(fit: Fit) -> tuple[int, int]:
    """(draws the fit's posterior_predictive works from, posterior draws in all); 0 where unknown."""
    raw = fit.raw
    post = getattr(raw, "posterior", None)
    if post is not None:  # pymc: an InferenceData
        n = int(post.sizes["chain"] * post.sizes["draw"])
        return n, n
    if isinstance(raw, dict) and isinstance(raw.get("draws"), dict):  # brms: the joint draws it kept
        d = raw["draws"]
        return int(len(d["b"])), int(d.get("total") or len(d["b"]))
    return 0, 0


def _simulate(fit: Fit, draws: int, seed: int, fixed_uncertainty: bool, mode: str, level) -> tuple[np.ndarray, str]:
    md = fit.model
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    fam = fit.spec.family
    levels = md.hierarchy.levels
    # mixed: the checked level and every level below it get new deviations from the fitted covariance
    first_new = levels.index(_level(md, level)) if mode == "mixed" else len(levels)
    if first_new < len(levels):
        parts = fit.decompose()
        eta = parts["prediction"].to_numpy(dtype=float).copy()
        for lv in levels[first_new:]:
            for term in lv.spec.terms:
                eta -= parts[f"{lv.group}|{term}"].to_numpy(dtype=float)
    else:
        eta = np.asarray(fit.predict(), dtype=float)
    E = np.repeat(eta[None, :], draws, axis=0)

    # the fitted group deviations' uncertainty, level by level, term by term
    drawn, held, partial, new = [], [], [], []
    ran = fit.ranef(what="std_error") if levels else {}
    for lv in levels[:first_new]:
        table = ran.get(lv.group)
        Z = md.Z[lv.group]
        for j, term in enumerate(lv.spec.terms):
            if table is None or term not in table.columns:
                se = np.full(lv.n_groups, np.nan)
            else:
                se = table[term].reindex(lv.labels).to_numpy(dtype=float)
            ok = np.isfinite(se) & (se >= 0)
            name = f"{lv.group} {term}"
            if not ok.any():
                held.append(name)
                continue
            if not ok.all():
                partial.append(f"{name} ({int((~ok).sum())} of {lv.n_groups} groups)")
            e = rng.standard_normal((draws, lv.n_groups)) * np.where(ok, se, 0.0)
            E += e[:, lv.codes] * Z[:, j]
            drawn.append(name)
    # new deviations at the checked level and below (mixed mode)
    for lv in levels[first_new:]:
        L = np.linalg.cholesky(_level_covariance(fit, lv))
        e = rng.standard_normal((draws, lv.n_groups, len(lv.spec.terms))) @ L.T
        E += np.einsum("nk,dnk->dn", md.Z[lv.group], e[:, lv.codes, :])
        new.append(lv.group)

    # optionally the fixed effects
    fixed_text = "fixed effects held at their estimates"
    if fixed_uncertainty:
        fe = fit.tidy("fixed").set_index("term")["std_error"].reindex(md.fixed_names).to_numpy(dtype=float)
        ok = np.isfinite(fe)
        if ok.any():
            d = rng.standard_normal((draws, len(fe))) * np.where(ok, fe, 0.0)
            E += d @ md.X.T
            fixed_text = ("fixed effects drawn from N(beta_hat, SE^2), independently (a Fit carries no covariance "
                          "of the fixed effects)")
            if not ok.all():
                fixed_text += f", except {[n for n, k in zip(md.fixed_names, ok) if not k]} (no std_error: held)"
            if _se_includes_beta(fit) and drawn:
                fixed_text += ("; the deviations' SEs already include the fixed effects' uncertainty, so it is "
                               "counted twice")
        else:
            fixed_text = "fixed effects held at their estimates (the fit reports no std_error for them)"

    # the response, from the family (the linear predictor carries the formula's offsets: Fit.predict())
    offset_note = " (the offset, e.g. a log exposure, in it)" if md.has_offset else ""
    if fam == "gaussian":
        sigma = _residual_sd(fit)
        if sigma is None:
            raise PredictiveCheckUnavailable(f"{fit.backend}: the fit reports no residual SD (ran_pars group "
                                             f"{RESIDUAL!r}, term 'sd__Observation'), so its data cannot be "
                                             "replicated")
        w = md.weights
        Y = draw_response("gaussian", E, rng, sigma=sigma, weights=w)
        sigma_note = " (the baseline's training RMSE)" if _is_baseline(fit) else ""
        if w is None:
            noise = (f"+ residual noise N(0, sigma_hat^2), sigma_hat = {sigma:.6g}{sigma_note} (ran_pars Residual "
                     "sd__Observation)")
        else:
            noise = (f"+ residual noise N(0, sigma_hat^2 / w) with each row's prior weight w, sigma_hat = "
                     f"{sigma:.6g}{sigma_note} (ran_pars Residual sd__Observation)")
    elif fam == "binomial":
        trials = md.trials if md.trials is not None else np.ones(md.n)
        Y = draw_response("binomial", E, rng, trials=trials)
        if md.spec.has_trials:
            noise = (f"; y_rep ~ Binomial(the row's trials, inverse logit of that linear predictor{offset_note}): "
                     "successes out of each row's n")
        else:
            noise = f"; y_rep ~ Bernoulli(inverse logit of that linear predictor{offset_note})"
    elif fam == "poisson":
        Y = draw_response("poisson", E, rng)
        noise = f"; y_rep ~ Poisson(exp of that linear predictor{offset_note})"
    elif fam == "negbinomial":
        size = _nb_size(fit)
        if size is None:
            raise PredictiveCheckUnavailable(f"{fit.backend}: the fit reports no negative binomial size (ran_pars "
                                             f"group {DISPERSION!r}, term {THETA!r}), so its data cannot be "
                                             "replicated")
        Y = draw_response("negbinomial", E, rng, size=size)
        noise = (f"; y_rep ~ NB2(mean mu = exp of that linear predictor{offset_note}, size theta_hat = {size:.6g}: "
                 "variance mu + mu^2 / theta_hat; ran_pars Dispersion theta)")
    else:  # pragma: no cover - the spec admits these four families only
        raise SpecError(f"unknown family {fam!r}")

    f_x = (" + learned f(x)" if fit.nonlinear is not None else "") + (
        f" + offset({', '.join(md.spec.offsets)})" if md.has_offset else "")
    if new:
        kept = [lv.group for lv in levels[:first_new]]
        text = [f"simulated from the fitted model ({fit.backend}), mixed predictive: X beta_hat{f_x}"
                + (f" + the fitted deviations of {kept}" if kept else "")
                + f" + NEW deviations of {new} drawn from N(0, Sigma_hat) (each level's fitted SDs and "
                "correlations, ran_pars)"]
    else:
        text = [f"simulated from the fitted model ({fit.backend}): Fit.predict() (X beta_hat{f_x} + group "
                "deviations, on the link scale)"]
    if drawn:
        text.append(f"+ draws N(0, std_error^2) of the fitted deviations {drawn} ({_se_meaning(fit)}; independent "
                    "across groups, terms and levels)")
    if partial:
        text.append(f"[deviations without a std_error held at their estimates: {partial}]")
    if held:
        text.append(f"[not drawn, no std_error reported: {held}; those deviations are held at their estimates]")
    if fit.nonlinear is not None:
        text.append("[the learned f(x) held at its fit]")
    text.append(noise)
    text.append(f"; {fixed_text}")
    return Y, " ".join(text).replace(" ;", ";")


def _level_covariance(fit: Fit, lv) -> np.ndarray:
    """The fitted covariance of a level's varying terms from ran_pars (SDs, correlations; 0 where a block is
    independent), made positive definite enough for a Cholesky factor."""
    rp = fit.table[(fit.table["effect"] == "ran_pars") & (fit.table["group"] == lv.group)]
    est = dict(zip(rp["term"], rp["estimate"].astype(float)))
    terms = list(lv.spec.terms)
    sd = np.array([est.get(f"sd__{t}", np.nan) for t in terms])
    if not np.isfinite(sd).all():
        raise PredictiveCheckUnavailable(
            f"{fit.backend}: mixed predictive checks draw new {lv.group} deviations from the fitted SDs, and "
            f"this fit reports none for {[t for t, v in zip(terms, sd) if not np.isfinite(v)]} (a no-pooling or "
            "baseline fit estimates no variance components); use mode='conditional'")
    R = np.eye(len(terms))
    for a in range(len(terms)):
        for b in range(len(terms)):
            if a != b:
                r = est.get(f"cor__{terms[a]}.{terms[b]}", est.get(f"cor__{terms[b]}.{terms[a]}", 0.0))
                R[a, b] = r if np.isfinite(r) else 0.0
    S = R * np.outer(sd, sd)
    w, V = np.linalg.eigh((S + S.T) / 2)
    return (V * np.clip(w, 0, None)) @ V.T + 1e-12 * max(float(sd.max()), 1.0) ** 2 * np.eye(len(terms))


def _nb_size(fit: Fit) -> float | None:
    t = fit.table
    row = t[(t["effect"] == "ran_pars") & (t["group"] == DISPERSION) & (t["term"] == THETA)]
    if row.empty:
        return None
    value = float(row["estimate"].iloc[0])
    return value if np.isfinite(value) and value > 0 else None


def _residual_sd(fit: Fit) -> float | None:
    t = fit.table
    row = t[(t["effect"] == "ran_pars") & (t["group"] == RESIDUAL) & (t["term"] == "sd__Observation")]
    if row.empty:
        return None
    value = float(row["estimate"].iloc[0])
    return value if np.isfinite(value) and value >= 0 else None


def _is_baseline(fit: Fit) -> bool:
    return fit.backend in ("lightgbm-cat", "torch-embed")


def _se_includes_beta(fit: Fit) -> bool:
    if fit.backend == "native":
        return (fit.provenance.get("options") or {}).get("condvar", "full") == "full"
    return fit.backend in ("lightgbm", "torch")


def _se_meaning(fit: Fit) -> str:
    if fit.backend == "native":
        return _NATIVE_SE.get((fit.provenance.get("options") or {}).get("condvar", "full"), "native's ran_vals SEs")
    return _SE_MEANING.get(fit.backend, f"{fit.backend}'s ran_vals std_error taken as conditional SDs")


# ------------------------------------------------------------------------------------------------ group checks
def _level(md, level):
    levels = md.hierarchy.levels
    if not levels:
        raise SpecError(f"the formula {md.spec.formula!r} has no grouping level to check groups at")
    if level is None:
        return levels[0]
    for lv in levels:
        if level in (lv.group, lv.spec.factor[-1]):
            return lv
    raise SpecError(f"level {level!r} is not a grouping level of {md.spec.formula!r}; levels are "
                    f"{[lv.group for lv in levels]}")


def _group_stats(Y: np.ndarray, codes: np.ndarray, n_groups: int, center: np.ndarray):
    """Per-group mean and SD (ddof 1) of each row of Y (draws, n): arrays (G, draws).

    Rows are centred at ``center[codes]`` (the observed group means) before summing, so the SD loses no
    precision on responses far from 0.
    """
    from scipy import sparse

    n = Y.shape[1]
    M = sparse.csr_matrix((np.ones(n), (codes, np.arange(n))), shape=(n_groups, n))
    counts = np.asarray(M.sum(axis=1)).ravel()
    C = Y - center[codes][None, :]
    s1 = np.asarray(M @ C.T)  # (G, draws)
    s2 = np.asarray(M @ (C * C).T)
    mean_c = s1 / counts[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (s2 - counts[:, None] * mean_c**2) / (counts[:, None] - 1)
    sd = np.sqrt(np.clip(var, 0, None))
    sd[counts < 2] = np.nan
    return mean_c + center[:, None], sd, counts


def predictive_p_value(observed: np.ndarray, replicated: np.ndarray) -> np.ndarray:
    """Two-sided predictive p-value per row: ``min(1, 2 min(P(T_rep >= T_obs), P(T_rep <= T_obs)))``.

    ``observed`` has shape (G,), ``replicated`` (G, draws); NaN where the observed statistic is NaN.

    >>> predictive_p_value(np.array([0.0, 3.0]), np.array([[-1.0, 1.0, 2.0, -2.0], [0.0, 1.0, 2.0, 2.5]]))
    array([1., 0.])
    """
    ge = (replicated >= observed[:, None]).mean(axis=1)
    le = (replicated <= observed[:, None]).mean(axis=1)
    p = np.minimum(1.0, 2 * np.minimum(ge, le))
    return np.where(np.isfinite(observed), p, np.nan)


def group_checks(fit: Fit, level: str | None = None, draws: int = 200, seed: int = 0,
                 fixed_uncertainty: bool = False, mode: str = "conditional") -> pd.DataFrame:
    """Each group's mean and SD of the response against their replicated distribution, with p-values.

    Parameters
    ----------
    fit : Fit
        Any backend's fit with its data (see :func:`replicate` for what is drawn for each).
    level : str, optional
        The grouping level whose groups are checked: its group name as written in the formula
        (``"market:submarket"``) or its last factor (``"submarket"``); default the top level of the tree.
    draws, seed, fixed_uncertainty, mode
        Passed to :func:`replicate` (with ``level``: ``mode="mixed"`` draws new deviations from that level down).

    Returns
    -------
    DataFrame
        One row per group and statistic (``"mean"``, then ``"sd"``, with ddof 1), in the level's label order:
        ``backend``, ``level``, ``group`` (label), ``statistic``, ``observed``, ``replicated_mean`` and
        ``replicated_sd`` (over the replicated data sets), ``p_value`` (two-sided, :func:`predictive_p_value`;
        its resolution is ``1 / draws``; NaN for the SD of a one-row group), ``draws_from`` (what was drawn),
        ``n_rows`` (the group's rows), ``draws`` (the replicated data sets used), ``formula`` (the fit's).

    Examples
    --------
    >>> import hiercompare as hc
    >>> data, _ = hc.simulate(hc.Scenario(), seed=1)
    >>> fit = hc.fit(data, hc.Scenario().formula(), backend="native")
    >>> t = group_checks(fit, draws=100)
    >>> t[["group", "statistic"]].head(2).values.tolist()
    [['Market_0', 'mean'], ['Market_0', 'sd']]
    """
    if fit.model is None:
        raise PredictiveCheckUnavailable(f"{fit.backend}: this Fit was loaded without its data; refit it")
    lv = _level(fit.model, level)
    Y, what = replicate(fit, draws=draws, seed=seed, fixed_uncertainty=fixed_uncertainty, mode=mode,
                        level=lv.group)
    md = fit.model
    y = np.asarray(md.y, dtype=float)
    counts = np.bincount(lv.codes, minlength=lv.n_groups)
    center = np.bincount(lv.codes, weights=y, minlength=lv.n_groups) / np.maximum(counts, 1)
    obs_mean, obs_sd, _ = _group_stats(y[None, :], lv.codes, lv.n_groups, center)
    rep_mean, rep_sd, _ = _group_stats(Y, lv.codes, lv.n_groups, center)
    stats = {"mean": (obs_mean[:, 0], rep_mean), "sd": (obs_sd[:, 0], rep_sd)}
    summ = {}
    for name, (obs, rep) in stats.items():
        spread = rep.std(axis=1, ddof=1) if rep.shape[1] > 1 else np.full(len(obs), np.nan)
        summ[name] = (obs, rep.mean(axis=1), spread, predictive_p_value(obs, rep))
    rows = []
    for g, label in enumerate(lv.labels):
        for name, (obs, rmean, rsd, p) in summ.items():
            rows.append({"backend": fit.backend, "level": lv.group, "group": label, "statistic": name,
                         "observed": obs[g], "replicated_mean": rmean[g], "replicated_sd": rsd[g],
                         "p_value": p[g], "draws_from": what, "n_rows": int(counts[g]), "draws": int(Y.shape[0]),
                         "formula": fit.spec.formula})
    return pd.DataFrame(rows, columns=GROUP_CHECK_COLUMNS)


def check_summary(tables, alpha: float = ALPHA, max_listed: int = 10) -> pd.DataFrame:
    """Per backend, formula, level and statistic: how many groups have ``p < alpha`` out of how many were checked.

    Parameters
    ----------
    tables : DataFrame, or an iterable or dict of DataFrames
        :func:`group_checks` outputs (any backends, levels).
    alpha : float
        The flagging threshold (default 0.05).
    max_listed : int
        ``flagged_groups`` names at most this many of the flagged groups (smallest p first), then "+N more".

    Returns
    -------
    DataFrame
        ``backend``, ``formula`` (empty where the tables have none), ``level``, ``statistic``, ``n_groups``
        (groups with a p-value), ``n_flagged``,
        ``share_flagged``, ``alpha``, ``min_p_value``, ``flagged_groups``, ``draws_from``.
    """
    if isinstance(tables, pd.DataFrame):
        frames = [tables]
    elif isinstance(tables, dict):
        frames = list(tables.values())
    else:
        frames = list(tables)
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    all_rows = pd.concat(frames, ignore_index=True)
    missing = sorted(set(GROUP_CHECK_COLUMNS[:9]) - set(all_rows.columns))
    if missing:
        raise DataError(f"check_summary needs group_checks tables; missing columns {missing}")
    if "formula" not in all_rows.columns:
        all_rows["formula"] = ""
    all_rows["formula"] = all_rows["formula"].fillna("")
    out = []
    for (backend, formula, level, stat), sub in all_rows.groupby(["backend", "formula", "level", "statistic"],
                                                                sort=False):
        ok = sub[sub["p_value"].notna()]
        flagged = ok[ok["p_value"] < alpha].sort_values("p_value")
        names = [str(v) for v in flagged["group"].head(max_listed)]
        more = len(flagged) - len(names)
        out.append({"backend": backend, "formula": formula, "level": level, "statistic": stat, "n_groups": int(len(ok)),
                    "n_flagged": int(len(flagged)),
                    "share_flagged": len(flagged) / len(ok) if len(ok) else np.nan, "alpha": alpha,
                    "min_p_value": float(ok["p_value"].min()) if len(ok) else np.nan,
                    "flagged_groups": ", ".join(names) + (f" (+{more} more)" if more > 0 else ""),
                    "draws_from": sub["draws_from"].iloc[0]})
    return pd.DataFrame(out, columns=SUMMARY_COLUMNS)


# ------------------------------------------------------------------------------------------------ density overlay
MAX_DISCRETE_VALUES = 60


def _discrete(y: np.ndarray, family: str) -> bool:
    if family in ("binomial", "poisson", "negbinomial"):  # counts (successes out of trials too)
        return np.ptp(y) <= MAX_DISCRETE_VALUES if len(y) else True
    return False


def _binned_kde(values: np.ndarray, edges: np.ndarray, bw: float) -> np.ndarray:
    """Gaussian KDE on the centres of ``edges`` by linear binning and a discrete convolution."""
    width = edges[1] - edges[0]
    centres = (edges[:-1] + edges[1:]) / 2
    pos = (values - centres[0]) / width
    lo = np.floor(pos).astype(int)
    frac = pos - lo
    m = len(centres)
    w = np.zeros(m)
    for idx, wt in ((lo, 1 - frac), (lo + 1, frac)):
        keep = (idx >= 0) & (idx < m)
        np.add.at(w, idx[keep], wt[keep])
    half = int(np.ceil(4 * bw / width))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) * width / bw) ** 2)
    dens = np.convolve(w, k, mode="full")[half:half + m]
    return dens / (len(values) * width * k.sum())


def density_overlay_table(fit: Fit, draws: int = 50, seed: int = 0, grid_points: int = 256) -> pd.DataFrame:
    """The numbers behind :func:`density_overlay_plot`, in long form.

    Gaussian responses: a Gaussian kernel density on a common grid (linear binning, then convolution) with one
    bandwidth for every curve, Silverman's rule of thumb on the observed response. Binomial (successes),
    Poisson and negative binomial responses spanning up to 60 distinct values (a KDE beyond): the share of rows
    at each value.

    Returns
    -------
    DataFrame
        ``backend``, ``series`` (``observed``, ``replicate`` or ``replicate_mean``), ``draw`` (the replicate's
        index; -1 otherwise), ``x``, ``density``. ``attrs``: ``draws_from``, ``kind`` ("kde" or "share"),
        ``bandwidth`` (kde).
    """
    Y, what = replicate(fit, draws=draws, seed=seed)
    y = np.asarray(fit.model.y, dtype=float)
    frames = []
    if _discrete(y, fit.spec.family):
        lo = int(min(y.min(), np.quantile(Y, 0.001)))
        hi = int(max(y.max(), np.quantile(Y, 0.999)))
        xs = np.arange(lo, hi + 1)

        def dens(v):
            return np.bincount(np.clip(v.astype(int), lo, hi) - lo, minlength=len(xs)) / len(v)
        kind, bw = "share", np.nan
    else:
        sd = np.std(y, ddof=1) if len(y) > 1 else 1.0
        iqr = np.subtract(*np.quantile(y, [0.75, 0.25]))
        spread = min(sd, iqr / 1.349) if iqr > 0 else sd
        bw = 0.9 * (spread if spread > 0 else 1.0) * len(y) ** (-0.2)
        lo = min(y.min(), np.quantile(Y, 0.005)) - 3 * bw
        hi = max(y.max(), np.quantile(Y, 0.995)) + 3 * bw
        edges = np.linspace(lo, hi, grid_points + 1)
        xs = (edges[:-1] + edges[1:]) / 2

        def dens(v):
            return _binned_kde(v, edges, bw)
        kind = "kde"
    rep = np.array([dens(Y[i]) for i in range(Y.shape[0])])
    frames.append(pd.DataFrame({"series": "observed", "draw": -1, "x": xs, "density": dens(y)}))
    for i in range(rep.shape[0]):
        frames.append(pd.DataFrame({"series": "replicate", "draw": i, "x": xs, "density": rep[i]}))
    frames.append(pd.DataFrame({"series": "replicate_mean", "draw": -1, "x": xs, "density": rep.mean(axis=0)}))
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "backend", fit.backend)
    out.attrs.update({"draws_from": what, "kind": kind, "bandwidth": float(bw)})
    return out


def density_overlay_plot(fit: Fit, draws: int = 50, seed: int = 0, title: str = "") -> str:
    """Observed response density against ``draws`` replicated data sets' densities (as ``az.plot_ppc``), as
    a base64 PNG.

    Thin translucent lines: one per replicated data set; thick black: the observed response; dashed: the mean
    of the replicated densities. The caption under the axes says what was drawn. The numbers are
    :func:`density_overlay_table`.

    >>> import hiercompare as hc
    >>> data, _ = hc.simulate(hc.Scenario(), seed=1)
    >>> png = density_overlay_plot(hc.fit(data, hc.Scenario().formula(), backend="ols"), draws=10)
    >>> png[:8]
    'iVBORw0K'
    """
    from .report.plots import _png, _pyplot

    table = density_overlay_table(fit, draws=draws, seed=seed)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    share = table.attrs["kind"] == "share"
    step = {"drawstyle": "steps-mid"} if share else {}
    reps = table[table["series"] == "replicate"]
    for i, (_, sub) in enumerate(reps.groupby("draw", sort=True)):
        ax.plot(sub["x"], sub["density"], color="C0", alpha=0.2, lw=0.8,
                label="replicated y" if i == 0 else None, **step)
    obs = table[table["series"] == "observed"]
    ax.plot(obs["x"], obs["density"], color="black", lw=2.0, label="observed y", **step)
    mean = table[table["series"] == "replicate_mean"]
    ax.plot(mean["x"], mean["density"], color="C1", ls="--", lw=1.5, label="mean of replicates", **step)
    ax.set_xlabel(fit.spec.response)
    ax.set_ylabel("share of rows" if share else "density")
    n_rep = reps["draw"].nunique()
    kind = "posterior predictive check" if fit.backend in BAYESIAN else "predictive check (simulated from the fit)"
    ax.set_title(title or f"{fit.backend}: {kind}, {n_rep} replicates", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    caption = textwrap.fill(table.attrs["draws_from"], 110)
    fig.text(0.01, -0.02, caption, fontsize=6, va="top", ha="left", wrap=True)
    return _png(fig)


__all__ = ["replicate", "group_checks", "check_summary", "density_overlay_plot", "density_overlay_table",
           "predictive_p_value", "PredictiveCheckUnavailable", "ALPHA", "GROUP_CHECK_COLUMNS", "SUMMARY_COLUMNS"]
