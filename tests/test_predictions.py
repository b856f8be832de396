"""Marginal predictions on the response scale and prediction intervals (hiercompare.predictions; issue 12)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.predictions import expected_response, level_covariance

DATA = Path(__file__).parent / "data"
POISSON = "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"
SLOPE = "use ~ age + urban + (1 + urban | district)"


@pytest.fixture(scope="module")
def mmmec():
    d = pd.read_csv(DATA / "glmm_mmmec.csv")
    return d, hc.fit(d, POISSON, backend="native", family="poisson")


@pytest.fixture(scope="module")
def contraception():
    d = pd.read_csv(DATA / "glmm_contraception.csv")
    return d, hc.fit(d, SLOPE, backend="native", family="binomial")


def _sds(fit):
    return fit.varcorr.set_index(["group", "term"])["estimate"]


def test_poisson_new_nation_is_exp_half_the_variances_above_the_conditional(mmmec):
    d, fit = mmmec
    new = d.copy()
    new["nation"] = "Atlantis"  # a new nation, hence new regions too
    cond = fit.predict(new, type="response", allow_new_levels=True)
    marg = fit.predict(new, type="response", kind="marginal", allow_new_levels=True)
    sd = _sds(fit)
    v = sd["nation", "sd__(Intercept)"] ** 2 + sd["nation:region", "sd__(Intercept)"] ** 2
    np.testing.assert_allclose(marg / cond, np.exp(v / 2), rtol=1e-12)
    # a new region in a seen nation integrates over the region only
    new2 = d.copy()
    new2["region"] = 10_000
    marg2 = fit.predict(new2, type="response", kind="marginal", allow_new_levels=True)
    cond2 = fit.predict(new2, type="response", allow_new_levels=True)
    np.testing.assert_allclose(marg2 / cond2, np.exp(sd["nation:region", "sd__(Intercept)"] ** 2 / 2), rtol=1e-12)
    # seen groups: marginal = conditional; population integrates everything
    np.testing.assert_allclose(fit.predict(d, type="response", kind="marginal"), fit.predict(d, type="response"))
    np.testing.assert_allclose(fit.predict(d, type="response", kind="population"), marg, rtol=1e-12)
    # the link scale of a marginal prediction is the linear predictor without the new groups' effects
    np.testing.assert_allclose(fit.predict(new, kind="marginal", allow_new_levels=True),
                               fit.predict(new, allow_new_levels=True))


def test_logit_marginal_with_a_correlated_slope_equals_monte_carlo(contraception):
    d, fit = contraception
    new = d.iloc[:6].copy()
    new["district"] = 999
    marg = fit.predict(new, type="response", kind="marginal", allow_new_levels=True)
    eta = fit.predict(new, allow_new_levels=True)
    S = level_covariance(fit, fit.model.hierarchy.levels[0])
    rng = np.random.default_rng(0)
    b = rng.multivariate_normal([0, 0], S, size=400_000)
    Z = np.column_stack([np.ones(len(new)), new["urban"]])
    mc = (1 / (1 + np.exp(-(eta[None, :] + b @ Z.T)))).mean(axis=0)
    np.testing.assert_allclose(marg, mc, atol=3e-3)  # Monte Carlo SE about 7e-4
    cond = fit.predict(new, type="response", allow_new_levels=True)
    assert np.all(np.abs(marg - 0.5) <= np.abs(cond - 0.5) + 1e-12)  # integrating pulls towards 1/2


def test_expected_response_quadrature():
    eta = np.array([-3.0, 0.0, 2.0])
    v = np.array([0.5, 2.0, 8.0])
    z = np.random.default_rng(1).standard_normal(2_000_000)
    for i in range(3):
        mc = np.mean(1 / (1 + np.exp(-(eta[i] + np.sqrt(v[i]) * z))))
        assert expected_response("binomial", eta, v)[i] == pytest.approx(mc, abs=1e-3)
    np.testing.assert_allclose(expected_response("poisson", eta, v), np.exp(eta + v / 2))
    np.testing.assert_allclose(expected_response("gaussian", eta, v), eta)
    np.testing.assert_allclose(expected_response("binomial", eta, np.zeros(3)), 1 / (1 + np.exp(-eta)))


def test_prediction_interval_covers_and_its_mean_is_the_marginal_mean(mmmec):
    d, fit = mmmec
    new = d.iloc[:8].copy()
    new["nation"] = "Atlantis"
    pi = fit.predict_interval(new, kind="marginal", level=0.9, nsim=40_000, seed=3, allow_new_levels=True)
    assert list(pi.columns) == ["estimate", "mean", "sd", "lower", "upper"]
    np.testing.assert_allclose(pi["mean"], pi["estimate"], rtol=0.02)
    assert (pi["lower"] <= pi["estimate"]).all() and (pi["estimate"] <= pi["upper"]).all()
    again = fit.predict_interval(new, kind="marginal", level=0.9, nsim=40_000, seed=3, allow_new_levels=True)
    pd.testing.assert_frame_equal(pi, again)
    # the fitted rows: each county's own interval covers its deaths about 95% of the time
    own = fit.predict_interval(level=0.95, nsim=4000, seed=1)
    covered = ((d["deaths"] >= own["lower"]) & (d["deaths"] <= own["upper"])).mean()
    assert 0.85 <= covered <= 1.0


def test_binomial_intervals_with_trials_and_gaussian_marginal_is_conditional():
    d = pd.read_csv(DATA / "glmm_cbpp.csv")
    fit = hc.fit(d, "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", backend="native",
                 family="binomial")
    counts = fit.predict_interval(type="count", nsim=2000)
    props = fit.predict_interval(type="response", nsim=2000)
    assert (counts["upper"] <= d["size"]).all() and (props["upper"] <= 1).all()
    np.testing.assert_allclose(counts["estimate"], fit.predict(type="count"))
    data, _ = hc.simulate(hc.Scenario(), seed=1)
    g = hc.fit(data, hc.Scenario().formula(), backend="native", ran_pars_ci="none")
    new = data.iloc[:5].copy()
    new["market"] = "Nowhere"
    np.testing.assert_allclose(g.predict(new, type="response", kind="marginal", allow_new_levels=True),
                               g.predict(new, type="response", allow_new_levels=True))
    gi = g.predict_interval(new, kind="marginal", allow_new_levels=True, nsim=20_000)
    assert (gi["upper"] - gi["lower"]).min() > 3.9 * _sds(g)["Residual", "sd__Observation"]


def test_kind_is_checked_and_new_levels_are_warned_about(mmmec):
    d, fit = mmmec
    with pytest.raises(ValueError, match="kind must be one of"):
        fit.predict(d, type="response", kind="average")
    new = d.iloc[:3].copy()
    new["nation"] = "Atlantis"
    with pytest.warns(hc.UnseenLevelsWarning):
        fit.predict(new, type="response", kind="marginal")
    with pytest.raises(hc.DataError, match="allow_new_levels=False"):
        fit.predict_interval(new, kind="marginal", allow_new_levels=False)


# ------------------------------------------------------------------ Gaussian prior weights in prediction intervals
@pytest.fixture(scope="module")
def weighted_sleep():
    d = pd.read_csv(DATA / "sleepstudy.csv", dtype={"Subject": str})
    d = d.assign(w=np.where(np.arange(len(d)) % 2 == 0, 1.0, 4.0))
    return d, hc.fit(d, "Reaction ~ Days + (1 + Days | Subject)", backend="native", weights="w")


def test_prediction_interval_draws_the_residual_with_variance_sigma2_over_w(weighted_sleep):
    d, fit = weighted_sleep
    sigma = float(fit.table.query("effect == 'ran_pars' and group == 'Residual'")["estimate"].iloc[0])
    new = pd.concat([d.iloc[[0]], d.iloc[[0]]], ignore_index=True)  # one row twice: same eta, same group
    pi = fit.predict_interval(new, weights=[1.0, 4.0], nsim=200_000, seed=3)
    # the two rows share every other part of the draw, so their variances differ by sigma^2 (1 - 1/4);
    # each variance's Monte Carlo SE at 200,000 draws is about var * sqrt(2 / 2e5) < 0.4% of ~1,000
    diff = pi["sd"].iloc[0] ** 2 - pi["sd"].iloc[1] ** 2
    assert diff == pytest.approx(sigma**2 * 0.75, rel=0.03)
    # a column name of newdata gives the same draws as the values
    by_col = fit.predict_interval(new.assign(ww=[1.0, 4.0]), weights="ww", nsim=200_000, seed=3)
    pd.testing.assert_frame_equal(pi, by_col)


def test_prediction_interval_on_the_fitted_rows_uses_their_weights(weighted_sleep):
    d, fit = weighted_sleep
    own = fit.predict_interval(nsim=500, seed=1)
    given = fit.predict_interval(d, weights="w", nsim=500, seed=1)
    np.testing.assert_allclose(own[["mean", "sd", "lower", "upper"]].to_numpy(),
                               given[["mean", "sd", "lower", "upper"]].to_numpy(), rtol=0, atol=1e-9)
    with pytest.warns(UserWarning, match="weight 1"):
        ones = fit.predict_interval(d, nsim=500, seed=1)
    assert (ones["sd"].to_numpy()[1::2] > own["sd"].to_numpy()[1::2]).all()  # the weight-4 rows: narrower with w


def test_prediction_interval_weights_are_checked(weighted_sleep, mmmec):
    d, fit = weighted_sleep
    with pytest.raises(hc.errors.DataError, match="one per row"):
        fit.predict_interval(d.iloc[:3], weights=[1.0, 2.0])
    with pytest.raises(hc.errors.DataError, match="positive"):
        fit.predict_interval(d.iloc[:2], weights=[1.0, 0.0])
    with pytest.raises(hc.errors.DataError, match="not a column"):
        fit.predict_interval(d.iloc[:2], weights="nope")
    with pytest.raises(hc.errors.SpecError, match="Gaussian prior weights"):
        mmmec[1].predict_interval(weights=np.ones(len(mmmec[0])))
