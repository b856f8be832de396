"""Predictions on the response scale that integrate over the group effects, and prediction intervals.

:meth:`hiercompare.results.Fit.predict` takes ``kind``:

``"conditional"`` (the default)
    Given the group effects: the inverse link of the linear predictor with every seen group's estimated
    deviation, and 0 at a level where the row's group was not seen in fitting. This is lme4's ``predict`` (with
    ``allow.new.levels = TRUE``). For a new group it is the response at b = 0, the *median* group, not the
    average one: for a log link it is low by the factor exp(v / 2), v the variance of the new group's effects on
    the row's linear predictor; a logit pulls it towards 1/2.
``"marginal"``
    The expected response of the row, E[y] = E_b[g^-1(eta + z'b)], integrating over the effects of every level
    at which the row's group is new (b ~ N(0, Sigma_l) of those levels, the fitted covariances), the seen
    groups keeping their estimates. For seen groups it equals the conditional prediction.
``"population"``
    The same integral over the effects of every level: the population-averaged mean of a row with these
    covariates (a new group at every level), whatever the row's labels.

The integral is one-dimensional for each row: the integrated levels' effects enter the row's linear predictor
as one normal term with variance v = sum_l z_l' Sigma_l z_l (levels independent). It is exact for the log
link, E = exp(eta + v / 2), and by 40-node Gauss-Hermite quadrature for the logit (error below 1e-12 for v up to
about 10); the identity link has E = eta.

:func:`prediction_interval` (``Fit.predict_interval``) simulates: per draw and row, the integrated levels'
effects from N(0, v), the seen groups' deviations from N(estimate, SE^2) where the fit reports SEs (otherwise
held at the estimates), then the response from the family (gaussian with the residual SD, binomial with the
row's trials, poisson, negative binomial with its size); the fixed effects stay at their estimates. It reports
the simulated mean and the two quantiles.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import DataError, SpecError

KINDS = ("conditional", "marginal", "population")
GH_NODES = 40


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return kind


def level_covariance(fit, lv) -> np.ndarray:
    """The fitted covariance (k x k) of one level's varying terms, from the fit's ran_pars SDs and correlations
    (NaN-free: a missing correlation is 0, a missing SD an error)."""
    rp = fit.table[(fit.table["effect"] == "ran_pars") & (fit.table["group"] == lv.group)]
    est = dict(zip(rp["term"], rp["estimate"]))
    terms = list(lv.spec.terms)
    sd = []
    for t in terms:
        v = est.get(f"sd__{t}")
        if v is None or not np.isfinite(v):
            raise DataError(f"{fit.backend}: no SD for {t} at {lv.group}; marginal predictions need the fitted "
                            "variance of every level they integrate over")
        sd.append(float(v))
    sd = np.array(sd)
    R = np.eye(len(terms))
    for i, a in enumerate(terms):
        for j, b in enumerate(terms):
            if i < j:
                c = est.get(f"cor__{a}.{b}", est.get(f"cor__{b}.{a}", 0.0))
                R[i, j] = R[j, i] = 0.0 if c is None or not np.isfinite(c) else float(c)
    return R * np.outer(sd, sd)


def _pieces(fit, newdata, kind: str, allow_new_levels):
    """(eta, v, codes per level): the linear predictor to integrate around and the variance of the
    integrated levels' contribution, per row."""
    from .schema import check_unseen

    parts, seen = fit._decompose(newdata)
    check_unseen(parts.attrs["unseen"], parts.attrs["unseen_groups"], seen, allow_new_levels, "predict",
                 rows=len(parts), stacklevel=4)
    md = fit._require_model()
    eta = parts["prediction"].to_numpy(dtype=float).copy()
    v = np.zeros(len(eta))
    codes = {}
    if kind == "conditional":
        return eta, v, codes
    for lv in md.hierarchy.levels:
        c = lv.codes if newdata is None else lv.codes_for(newdata)
        codes[lv.group] = c
        integrate = np.ones(len(eta), dtype=bool) if kind == "population" else (c < 0)
        if not integrate.any():
            continue
        Z = md.Z[lv.group] if newdata is None else md.z_matrix(lv.group, newdata)
        if kind == "population":
            for term in lv.spec.terms:
                eta -= parts[f"{lv.group}|{term}"].to_numpy(dtype=float)
        S = level_covariance(fit, lv)
        v += np.where(integrate, np.einsum("na,ab,nb->n", Z, S, Z), 0.0)
    return eta, v, codes


def expected_response(family: str, eta, v) -> np.ndarray:
    """E[g^-1(eta + e)], e ~ N(0, v), per row: the identity, exp(eta + v/2), or Gauss-Hermite for the logit."""
    from .schema import inverse_link

    eta = np.asarray(eta, dtype=float)
    v = np.clip(np.asarray(v, dtype=float), 0.0, None)
    if family == "gaussian":
        return eta.copy()
    if family in ("poisson", "negbinomial"):
        return np.exp(eta + v / 2)
    z, w = np.polynomial.hermite_e.hermegauss(GH_NODES)
    w = w / np.sqrt(2 * np.pi)
    out = inverse_link(family, eta[:, None] + np.sqrt(v)[:, None] * z[None, :]) @ w
    return np.where(v > 0, out, inverse_link(family, eta))


def predict(fit, newdata=None, type: str = "response", kind: str = "marginal", allow_new_levels=None) -> np.ndarray:
    """``Fit.predict`` for ``kind`` "marginal" or "population" (see the module docstring)."""
    check_kind(kind)
    eta, v, _ = _pieces(fit, newdata, kind, allow_new_levels)
    if type == "link":
        return eta
    mu = expected_response(fit.spec.family, eta, v)
    if type == "count" and fit.spec.family == "binomial":
        md = fit._require_model()
        return mu * (md.trials if newdata is None else md.trials_for(newdata))
    return mu


def _residual_sd(fit) -> float | None:
    from .schema import RESIDUAL

    t = fit.table
    r = t[(t["effect"] == "ran_pars") & (t["group"] == RESIDUAL) & (t["term"] == "sd__Observation")]
    return float(r["estimate"].iloc[0]) if len(r) else None


def _nb_size(fit) -> float | None:
    from .schema import DISPERSION, THETA

    t = fit.table
    r = t[(t["effect"] == "ran_pars") & (t["group"] == DISPERSION) & (t["term"] == THETA)]
    return float(r["estimate"].iloc[0]) if len(r) else None


def prediction_interval(fit, newdata=None, type: str = "response", kind: str = "conditional", level: float = 0.95,
                        nsim: int = 2000, seed: int | None = 0, allow_new_levels=None, weights=None) -> pd.DataFrame:
    """Prediction intervals by simulation (see the module docstring for what is drawn).

    Returns a frame with one row per row of ``newdata`` (or of the fitted data): ``estimate`` (the expected
    response of this ``kind``, :func:`predict`), ``mean`` and ``sd`` of the simulated responses, and
    ``lower`` / ``upper``, their ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles. ``type``: "response"
    (binomial: the proportion of successes out of the row's trials) or "count" (binomial: the successes).

    ``weights``: a Gaussian fit with prior weights draws row i's residual with variance ``sigma^2 / w_i``, as
    R's ``predict.lm(interval = "prediction", weights = )`` does. The fitted rows use their own weights;
    ``newdata`` takes ``weights`` (a column name of ``newdata`` or one value per row), and without them each
    new row has weight 1, with a warning (R's "Assuming constant prediction variance even though model fit is
    weighted").
    """
    check_kind(kind)
    if type not in ("response", "count"):
        raise ValueError("a prediction interval is for type 'response' or 'count'")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    nsim = int(nsim)
    if nsim < 10:
        raise ValueError("nsim must be at least 10")
    family = fit.spec.family
    md = fit._require_model()
    eta, v, codes = _pieces(fit, newdata, kind, allow_new_levels)
    n = len(eta)
    # the family's parameters first (a missing one is an error before any drawing)
    if weights is not None and family != "gaussian":
        raise SpecError(f"weights= are Gaussian prior weights; this fit's family is {family!r}")
    sd = w = trials = k = None
    if family == "gaussian":
        sd = _residual_sd(fit)
        if sd is None:
            raise SpecError(f"{fit.backend}: no residual SD in this fit, so no prediction interval")
        w = _prediction_weights(md, newdata, weights, n)
    elif family == "binomial":
        trials = np.asarray(md.trials if newdata is None else md.trials_for(newdata), dtype=float)
    elif family == "negbinomial":
        k = _nb_size(fit)
        if k is None:
            raise SpecError(f"{fit.backend}: no negative binomial size (ran_pars Dispersion theta) in this fit")
    rng = np.random.default_rng(seed)
    E = np.repeat(eta[None, :], nsim, axis=0) + rng.standard_normal((nsim, n)) * np.sqrt(np.clip(v, 0, None))
    # the seen groups' estimation uncertainty (conditional SDs), where the fit reports them
    if kind != "population":
        rv = fit.table[fit.table["effect"] == "ran_vals"]
        for lv in md.hierarchy.levels:
            c = codes.get(lv.group)
            if c is None:
                c = lv.codes if newdata is None else lv.codes_for(newdata)
            seen = c >= 0
            if not seen.any():
                continue
            Z = md.Z[lv.group] if newdata is None else md.z_matrix(lv.group, newdata)
            sub = rv[rv["group"] == lv.group]
            for j, term in enumerate(lv.spec.terms):
                se = sub[sub["term"] == term].set_index("level")["std_error"].reindex(lv.labels).to_numpy(dtype=float)
                se = np.nan_to_num(se, nan=0.0)
                s_row = np.where(seen, se[np.maximum(c, 0)], 0.0) * Z[:, j]
                if np.any(s_row):
                    E += rng.standard_normal((nsim, n)) * s_row[None, :]
    from .schema import draw_response  # the one place a fitted family's response is drawn

    Y = draw_response(family, E, rng, sigma=sd, weights=w, trials=trials, size=k)
    if family == "binomial" and type == "response":
        Y = Y / trials[None, :]
    est = expected_response(family, eta, v)
    if family == "binomial" and type == "count":
        est = est * trials
    q = np.quantile(Y, [(1 - level) / 2, (1 + level) / 2], axis=0)
    index = (md.data if newdata is None else newdata).index
    return pd.DataFrame({"estimate": est, "mean": Y.mean(axis=0), "sd": Y.std(axis=0, ddof=1), "lower": q[0],
                         "upper": q[1]}, index=index)


def _prediction_weights(md, newdata, weights, n: int) -> np.ndarray | None:
    """The rows' Gaussian prior weights for a prediction interval (None: all 1); see :func:`prediction_interval`."""
    import warnings

    if weights is None:
        if newdata is None:
            return None if md.weights is None else np.asarray(md.weights, dtype=float)
        if md.weights is not None:
            warnings.warn("the fit has prior weights and newdata none (weights=): each new row gets weight 1, "
                          "residual variance sigma^2, as R's predict.lm assumes; pass weights= (a column of "
                          "newdata or one value per row) for other rows", UserWarning, stacklevel=3)
        return None
    if isinstance(weights, str):
        frame = md.data if newdata is None else newdata
        if weights not in frame.columns:
            raise DataError(f"weights={weights!r} is not a column of {'the data' if newdata is None else 'newdata'}")
        w = frame[weights].to_numpy()
    else:
        w = np.asarray(weights)
    try:
        w = np.asarray(w, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise DataError("weights= must be numeric") from None
    if len(w) != n:
        raise DataError(f"weights= has {len(w)} values for {n} rows; give one per row")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise DataError("weights= must be positive and finite (a prior weight w gives residual variance "
                        "sigma^2 / w)")
    return w


__all__ = ["KINDS", "predict", "prediction_interval", "expected_response", "level_covariance"]
