"""Predictive checks (hiercompare.ppc) on counts, proportions and weighted Gaussian fits: the replicated data
have the fitted model's moments.

Data: lme4's cbpp (binomial with trials) and mlmRev's Mmmec (Poisson / NB, the expected count as exposure),
tests/data/glmm_cbpp.csv and glmm_mmmec.csv (origin in hiercompare/data/SOURCES.md).

``replicate`` draws each group's deviation around its estimate with its std_error, then the response from the
family. With the std_errors set to 0 (a copy of the fit), the replicates are draws from the family at the
fitted linear predictor itself, whose mean and variance the tests compute from the data, the fixed effects and
the BLUPs (not from predict()): successes n p and n p (1 - p), Poisson mean exposure * exp(...), NB2 variance
mu + mu^2 / size, Gaussian residual variance sigma^2 / w. With the std_errors kept, a Poisson replicate's
mean is exp(eta + s^2 / 2) (s^2 the row's summed deviation variances), also checked.
Tolerances: per row |z| < 4.5 of the sum over draws; pooled standardised variance within 0.05 of 1.
"""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import ppc

DATA = __import__("pathlib").Path(__file__).parent / "data"
DRAWS = 4000
Z_MAX = 4.5


@pytest.fixture(scope="module")
def mmmec():
    d = pd.read_csv(DATA / "glmm_mmmec.csv")
    return d


@pytest.fixture(scope="module")
def cbpp():
    return pd.read_csv(DATA / "glmm_cbpp.csv", dtype={"herd": str, "period": str})


@pytest.fixture(scope="module")
def poisson_fit(mmmec):
    return hc.fit(mmmec, "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)",
                  backend="native", family="poisson")


@pytest.fixture(scope="module")
def nb_fit(mmmec):
    return hc.fit(mmmec, "deaths ~ uvb + offset(log_expected) + (1 | nation)", backend="native", family="negbinomial")


@pytest.fixture(scope="module")
def cbpp_fit(cbpp):
    return hc.fit(cbpp, "cbind(incidence, size - incidence) ~ period + (1 | herd)", backend="native",
                  family="binomial")


def _without_ses(fit):
    """A copy of the fit whose deviations have std_error 0: replicates drawn at the fitted linear predictor."""
    f = copy.copy(fit)
    f.table = fit.table.copy()
    f.table.loc[f.table["effect"] == "ran_vals", "std_error"] = 0.0
    return f


def _eta(fit, offset):
    """X beta_hat + offset + the BLUPs, from the fit's tables and the data (not predict())."""
    md = fit.model
    eta = md.X @ fit.fixef.reindex(md.fixed_names).to_numpy() + offset
    for lv in md.hierarchy.levels:
        b = fit.ranef(lv.group)["(Intercept)"].reindex(lv.labels).to_numpy(dtype=float)
        eta = eta + b[lv.codes]
    return eta


def _check(y, mean, var):
    z = (y - mean).sum(axis=0) / np.sqrt(DRAWS * var)
    assert np.abs(z).max() < Z_MAX, np.abs(z).max()
    ratio = float(((y - mean) ** 2).mean(axis=0).sum() / var.sum())
    assert ratio == pytest.approx(1.0, abs=0.05)
    return ratio


def test_binomial_successes_out_of_each_rows_trials(cbpp_fit, cbpp):
    n = cbpp["size"].to_numpy(dtype=float)
    y, what = ppc.replicate(_without_ses(cbpp_fit), draws=DRAWS, seed=1)
    assert ((y >= 0) & (y <= n) & (y == np.round(y))).all() and y.max() > 1
    assert "successes out of each row's n" in what and "Binomial" in what
    p = 1 / (1 + np.exp(-_eta(cbpp_fit, 0.0)))
    _check(y, n * p, n * p * (1 - p))  # a Bernoulli draw (the old behaviour) has mean p, not n p
    t = ppc.group_checks(cbpp_fit, draws=300)
    assert t["p_value"].notna().any() and t["p_value"].min() > 0.001
    assert ppc.density_overlay_table(cbpp_fit, draws=10).attrs["kind"] == "share"


def test_poisson_offset_scales_the_mean(poisson_fit, mmmec):
    y, what = ppc.replicate(_without_ses(poisson_fit), draws=DRAWS, seed=2)
    assert "offset(log_expected)" in what and "Poisson" in what
    # the mean is expected * exp(X beta + b): the exposure column scales it
    mu = mmmec["expected"].to_numpy() * np.exp(_eta(poisson_fit, 0.0))
    _check(y, mu, mu)
    # with the deviations' SEs: E[y] = mu * exp(s^2 / 2), s^2 the row's summed deviation variances
    y2, _ = ppc.replicate(poisson_fit, draws=DRAWS, seed=3)
    md = poisson_fit.model
    s2 = np.zeros(md.n)
    for lv in md.hierarchy.levels:
        se = poisson_fit.ranef(lv.group, what="std_error")["(Intercept)"].reindex(lv.labels).to_numpy(dtype=float)
        s2 += se[lv.codes] ** 2
    m = mu * np.exp(s2 / 2)
    v = m + mu ** 2 * (np.exp(2 * s2) - np.exp(s2))  # Poisson-lognormal: E mu + Var mu
    z = (y2 - m).sum(axis=0) / np.sqrt(DRAWS * v)
    assert np.abs(z).max() < Z_MAX


def test_negative_binomial_variance_has_the_fitted_size(nb_fit, mmmec):
    size = float(nb_fit.tidy("ran_pars").set_index("term").loc["theta", "estimate"])
    y, what = ppc.replicate(_without_ses(nb_fit), draws=DRAWS, seed=4)
    assert "NB2" in what and f"{size:.6g}" in what
    mu = mmmec["expected"].to_numpy() * np.exp(_eta(nb_fit, 0.0))
    ratio = _check(y, mu, mu + mu ** 2 / size)
    # against a Poisson variance the same draws give a ratio of ~3.6 (mu / size is large here)
    assert ((y - mu) ** 2).mean(axis=0).sum() / mu.sum() > 2 * ratio
    t = ppc.group_checks(nb_fit, draws=200)
    assert set(t["statistic"]) == {"mean", "sd"} and t["p_value"].notna().all()
    assert ppc.density_overlay_table(nb_fit, draws=5).attrs["kind"] in ("share", "kde")


def test_gaussian_prior_weights_give_residual_variance_sigma2_over_w():
    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(15), 10)
    w = rng.choice([0.25, 1.0, 4.0], size=len(g))
    x = rng.normal(size=len(g))
    data = pd.DataFrame({"y": 2 + 0.3 * x + rng.normal(0, 0.6, 15)[g] + rng.normal(size=len(g)) / np.sqrt(w),
                         "x": x, "g": [f"G{i:02d}" for i in g], "w": w})
    fit = hc.fit(data, "y ~ x + (1 | g)", backend="native", weights="w")
    sigma = float(fit.tidy("ran_pars").set_index("group").loc["Residual", "estimate"])
    y, what = ppc.replicate(_without_ses(fit), draws=DRAWS, seed=5)
    assert "sigma_hat^2 / w" in what
    eta = _eta(fit, 0.0)
    _check(y, eta, sigma ** 2 / w)
    for wv in (0.25, 4.0):  # 4,000 draws x ~50 rows per class: relative SE ~0.3%
        assert ((y - eta)[:, w == wv] ** 2).mean() * wv / sigma ** 2 == pytest.approx(1.0, abs=0.02)
