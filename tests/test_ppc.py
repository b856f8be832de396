"""Predictive checks (hiercompare.ppc): replicated data sets from every kind of fit, group-level p-values that
stay calm on data from the model itself and flag a misspecified one, the density overlay.

Fast by design: one 5,000-row default-scenario fit per engine (module fixtures), small hand-built data sets
otherwise; pymc and brms (which compile a model) are marked slow.
"""
from __future__ import annotations

import base64
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import hiercompare as hc
from hiercompare import datasets, ppc
from hiercompare.errors import ConvergenceWarning, SpecError

FORMULA = hc.Scenario().formula()
SIMPLE = "y ~ x2 + (1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def scenario_data():
    data, _ = hc.simulate(hc.Scenario(), seed=11)
    return data


@pytest.fixture(scope="module")
def native_fit(scenario_data):
    return hc.fit(scenario_data, FORMULA, backend="native")


@pytest.fixture(scope="module")
def ols_fit(scenario_data):
    return hc.fit(scenario_data, FORMULA, backend="ols")


def _design(seed: int, markets: int = 10, subs: int = 5, n: int = 40, residual_sd=1.0, skewed: bool = False):
    """A 2-level tree: y = 1 + 0.6 x2 + market + submarket deviations + noise (per-market SD or skewed)."""
    rng = np.random.default_rng(seed)
    mk = np.repeat(np.arange(markets), subs * n)
    sm = np.repeat(np.arange(markets * subs), n)
    x2 = rng.normal(size=len(mk))
    sd = np.broadcast_to(np.asarray(residual_sd, dtype=float), (markets,))
    noise = rng.exponential(1.0, len(mk)) ** 2 if skewed else rng.normal(size=len(mk)) * sd[mk]
    y = 1 + 0.6 * x2 + rng.normal(0, 0.8, markets)[mk] + rng.normal(0, 0.4, markets * subs)[sm] + noise
    return pd.DataFrame({"y": y, "x2": x2, "market": [f"M{i:02d}" for i in mk],
                         "submarket": [f"S{i % subs}" for i in sm]})


# ------------------------------------------------------------------------------------------------ replicate
def test_replicate_is_reproducible_by_seed(native_fit):
    a, what = ppc.replicate(native_fit, draws=30, seed=4)
    b, _ = ppc.replicate(native_fit, draws=30, seed=4)
    c, _ = ppc.replicate(native_fit, draws=30, seed=5)
    assert a.shape == (30, native_fit.nobs)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    # the text says what was drawn: the deviations with their SE convention, and the residual SD used
    sigma = float(native_fit.varcorr.query("group == 'Residual'")["estimate"].iloc[0])
    assert "Fit.predict()" in what and "condvar='full'" in what and f"{sigma:.6g}" in what
    assert "fixed effects held at their estimates" in what


def test_replicate_validates_its_arguments(native_fit):
    with pytest.raises(SpecError, match="draws"):
        ppc.replicate(native_fit, draws=0)
    with pytest.raises(SpecError, match="mode"):
        ppc.replicate(native_fit, mode="new")
    with pytest.raises(SpecError, match="not a grouping level"):
        ppc.group_checks(native_fit, level="county")


def test_replicated_group_means_equal_the_fits_predicted_group_means():
    """E[group mean of y_rep] = group mean of Fit.predict() (every draw has mean 0); tolerance 4 MC SEs."""
    data = _design(seed=3, markets=6, subs=3, n=10)
    fit = hc.fit(data, SIMPLE, backend="native")
    draws = 4000
    pred = pd.Series(fit.predict()).groupby(fit.model.hierarchy.levels[0].codes).mean().to_numpy()
    for fixed in (False, True):
        t = ppc.group_checks(fit, draws=draws, seed=1, fixed_uncertainty=fixed)
        means = t[t["statistic"] == "mean"]
        tol = 4 * means["replicated_sd"].to_numpy() / np.sqrt(draws)
        assert np.all(np.abs(means["replicated_mean"].to_numpy() - pred) < tol)
        # and the replicated spread is what was drawn: > the residual part alone
        sigma = float(fit.varcorr.query("group == 'Residual'")["estimate"].iloc[0])
        assert np.all(means["replicated_sd"].to_numpy() > sigma / np.sqrt(means["n_rows"].to_numpy()))
    # at the leaf level too
    sub = fit.model.hierarchy.level("market:submarket")
    t = ppc.group_checks(fit, level="submarket", draws=draws, seed=2)
    means = t[t["statistic"] == "mean"]
    pred = pd.Series(fit.predict()).groupby(sub.codes).mean().to_numpy()
    assert np.all(np.abs(means["replicated_mean"].to_numpy() - pred) < 4 * means["replicated_sd"] / np.sqrt(draws))


def test_fixed_uncertainty_widens_and_says_it_double_counts(native_fit):
    _, what = ppc.replicate(native_fit, draws=5, fixed_uncertainty=True)
    assert "N(beta_hat, SE^2)" in what and "counted twice" in what
    a = ppc.group_checks(native_fit, draws=500, seed=0)
    b = ppc.group_checks(native_fit, draws=500, seed=0, fixed_uncertainty=True)
    m = a["statistic"] == "mean"
    assert (b.loc[m, "replicated_sd"].mean() > a.loc[m, "replicated_sd"].mean())


# ------------------------------------------------------------------------------------------------ p-values
def test_predictive_p_value_two_sided():
    rep = np.arange(1, 101, dtype=float)[None, :].repeat(3, axis=0)
    p = ppc.predictive_p_value(np.array([0.0, 50.5, 95.0]), rep)
    assert p[0] == 0.0  # below every replicate
    assert p[1] == 1.0  # the median
    assert p[2] == pytest.approx(2 * 6 / 100)  # P(T_rep >= 95) = 6/100
    assert np.isnan(ppc.predictive_p_value(np.array([np.nan]), rep[:1]))[0]


def test_data_from_the_model_are_not_flagged(native_fit):
    """Default scenario, native fit. Conditional (the default) p-values of the market means are far from
    extreme and, as the module says, gather towards 1; the mixed mode's are roughly uniform."""
    t = ppc.group_checks(native_fit, draws=400, seed=0)
    means, sds = t[t["statistic"] == "mean"], t[t["statistic"] == "sd"]
    assert len(means) == 10 and len(sds) == 10
    assert means["p_value"].min() > 0.001 and sds["p_value"].min() > 0.001
    assert means["p_value"].median() > 0.6  # the conservativeness the docstring describes
    assert (sds["p_value"] < 0.05).sum() <= 2

    mixed = ppc.group_checks(native_fit, draws=400, seed=0, mode="mixed")
    p = mixed.loc[mixed["statistic"] == "mean", "p_value"]
    assert p.min() > 0.001
    assert stats.kstest(p, "uniform").pvalue > 0.01
    assert (p < 0.5).sum() >= 2 and (p > 0.5).sum() >= 2
    # 50 submarkets: roughly uniform, both statistics
    leaf = ppc.group_checks(native_fit, level="submarket", draws=400, seed=0, mode="mixed")
    for stat in ("mean", "sd"):
        q = leaf.loc[leaf["statistic"] == stat, "p_value"]
        assert len(q) == 50 and q.min() > 0.001
        assert stats.kstest(q, "uniform").pvalue > 0.01


@pytest.mark.parametrize("backend", ["native", "ols"])
def test_market_sd_heterogeneity_is_flagged(backend):
    """Residual SD 0.4 in half the markets and 2.5 in the other half, fitted homoscedastic: the SD check flags
    (nearly) every market, the mean check none."""
    data = _design(seed=5, residual_sd=np.tile([0.4, 2.5], 5))
    fit = hc.fit(data, SIMPLE, backend=backend)
    summary = ppc.check_summary([ppc.group_checks(fit, draws=200, seed=0)]).set_index("statistic")
    assert summary.loc["sd", "n_groups"] == 10 and summary.loc["sd", "n_flagged"] >= 8
    assert summary.loc["mean", "n_flagged"] == 0
    assert summary.loc["sd", "flagged_groups"].count("M") == summary.loc["sd", "n_flagged"]


def test_skewed_response_is_flagged_and_well_specified_is_not():
    skewed = hc.fit(_design(seed=6, skewed=True), SIMPLE, backend="native")
    fine = hc.fit(_design(seed=6), SIMPLE, backend="native")
    sd = pd.concat([ppc.check_summary(ppc.group_checks(f, seed=1)) for f in (skewed, fine)])
    sd = sd[sd["statistic"] == "sd"].reset_index(drop=True)
    assert sd.loc[0, "n_flagged"] >= 8 and sd.loc[0, "formula"] == skewed.spec.formula
    assert sd.loc[1, "n_flagged"] <= 2 and sd.loc[1, "min_p_value"] > 0.001


def test_check_summary_layout():
    t = pd.DataFrame({"backend": "b", "level": "market", "group": ["a", "b", "c", "a", "b", "c"],
                      "statistic": ["mean"] * 3 + ["sd"] * 3, "observed": 0.0, "replicated_mean": 0.0,
                      "replicated_sd": 1.0, "p_value": [0.01, 0.5, 0.04, np.nan, 0.2, 0.3], "draws_from": "x"})
    s = ppc.check_summary({"b": t}, max_listed=1)
    assert list(s.columns) == ppc.SUMMARY_COLUMNS
    assert s["formula"].tolist() == ["", ""]
    two = ppc.check_summary([t.assign(formula="y ~ 1"), t.assign(formula="y ~ x")])  # formulas kept apart
    assert two[["formula", "statistic", "n_flagged"]].values.tolist() == [
        ["y ~ 1", "mean", 2], ["y ~ 1", "sd", 0], ["y ~ x", "mean", 2], ["y ~ x", "sd", 0]]
    assert s[["statistic", "n_groups", "n_flagged"]].values.tolist() == [["mean", 3, 2], ["sd", 2, 0]]
    assert s.loc[0, "flagged_groups"] == "a (+1 more)"
    assert ppc.check_summary([]).empty


# ------------------------------------------------------------------------------------------------ backends
def test_group_checks_table_layout(ols_fit):
    t = ppc.group_checks(ols_fit, draws=50)
    assert list(t.columns) == ppc.GROUP_CHECK_COLUMNS
    assert t["backend"].unique().tolist() == ["ols"] and t["level"].unique().tolist() == ["market"]
    assert t["statistic"].tolist()[:2] == ["mean", "sd"]
    assert t["draws"].unique().tolist() == [50] and t["n_rows"].sum() == 2 * ols_fit.nobs
    assert "no-pooling dummy coefficients' sampling SEs" in t["draws_from"].iloc[0]
    with pytest.raises(ppc.PredictiveCheckUnavailable, match="no variance components"):
        ppc.replicate(ols_fit, mode="mixed")


def test_baseline_without_deviation_ses_says_so(scenario_data):
    fit = hc.fit(scenario_data, FORMULA, backend="lightgbm-cat")
    y_rep, what = ppc.replicate(fit, draws=10)
    assert y_rep.shape == (10, fit.nobs) and np.isfinite(y_rep).all()
    assert "not drawn, no std_error reported" in what and "training RMSE" in what and "f(x)" in what


SE_TEXT = {"mixedlm": "random_effects_cov", "lightgbm": "learned f(x)", "torch": "learned f(x)",
           "lme4": "condVar", "r_lm": "no-pooling"}


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.r) if b in ("lme4", "r_lm") else b
                                     for b in SE_TEXT])
def test_every_frequentist_engine_replicates(backend):
    data = _design(seed=8, markets=6, subs=3, n=12)
    fit = hc.fit(data, SIMPLE, backend=backend)
    y_rep, what = ppc.replicate(fit, draws=40, seed=0)
    assert y_rep.shape == (40, len(data)) and np.isfinite(y_rep).all()
    assert SE_TEXT[backend] in what and "not drawn" not in what and "sigma_hat" in what
    t = ppc.group_checks(fit, level="submarket", draws=40)
    assert len(t) == 2 * 18 and t["p_value"].notna().all()


@pytest.mark.parametrize("name", ["pastes", "exam"])
def test_real_data_native_and_ols(name):
    data = datasets.load(name)
    formula = datasets.info(name).formulas[0]
    for backend in ("native", "ols"):
        fit = hc.fit(data, formula, backend=backend)
        t = ppc.group_checks(fit, draws=100, seed=0)
        top = fit.model.hierarchy.levels[0]
        assert len(t) == 2 * top.n_groups and t["p_value"].notna().all()
        assert set(t["group"]) == set(top.labels)
    png = ppc.density_overlay_plot(fit, draws=20, title=name)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"


def test_density_overlay_table(native_fit):
    t = ppc.density_overlay_table(native_fit, draws=12, seed=0)
    assert t.attrs["kind"] == "kde" and "Fit.predict()" in t.attrs["draws_from"]
    assert t.groupby("series")["draw"].nunique().to_dict() == {"observed": 1, "replicate": 12, "replicate_mean": 1}
    x = t.loc[t["series"] == "observed", "x"].to_numpy()
    for _, sub in t.groupby(["series", "draw"]):
        assert sub["density"].sum() * (x[1] - x[0]) == pytest.approx(1.0, abs=0.02)  # each curve integrates to 1


@pytest.mark.r
def test_binomial_drawn_from_the_family():
    rng = np.random.default_rng(2)
    data = _design(seed=2, markets=8, subs=3, n=20)
    eta = -0.3 + 0.8 * data["x2"] + rng.normal(0, 0.7, 8)[data["market"].str[1:].astype(int)]
    data["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    fit = hc.fit(data, "y ~ x2 + (1 | market)", backend="lme4", family="binomial")
    y_rep, what = ppc.replicate(fit, draws=300, seed=0)
    assert set(np.unique(y_rep)) <= {0.0, 1.0}
    assert "Bernoulli" in what and "sigma_hat" not in what
    t = ppc.group_checks(fit, draws=300)
    assert t["p_value"].min() > 0.001
    assert ppc.density_overlay_table(fit, draws=10).attrs["kind"] == "share"


# ------------------------------------------------------------------------------------------------ samplers
@pytest.mark.slow
def test_pymc_posterior_predictive(scenario_data):
    small = scenario_data.sample(800, random_state=0).reset_index(drop=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = hc.fit(small, FORMULA, backend="pymc", draws=100, tune=200, chains=2, seed=1)
    y_rep, what = ppc.replicate(fit, draws=50, seed=0)
    assert y_rep.shape == (50, 800) and what.startswith("posterior predictive (pymc): 50 of the 200 posterior draws")
    assert np.array_equal(y_rep, ppc.replicate(fit, draws=50, seed=0)[0])
    t = ppc.group_checks(fit, draws=200, seed=0)
    assert t["p_value"].min() > 0.001
    # the replicated market means centre on the posterior mean prediction
    m = t[t["statistic"] == "mean"]
    pred = pd.Series(fit.predict()).groupby(fit.model.hierarchy.levels[0].codes).mean().to_numpy()
    assert np.all(np.abs(m["replicated_mean"].to_numpy() - pred) < 4 * m["replicated_sd"] / np.sqrt(200))
    with pytest.raises(ppc.PredictiveCheckUnavailable, match="frequentist"):
        ppc.replicate(fit, mode="mixed")


@pytest.mark.r
@pytest.mark.slow
def test_brms_posterior_predictive(scenario_data):
    """brms keeps joint posterior draws (one row of its draws matrix each) in hiercompare's order: kept in full,
    their means and SDs are exactly the fit's summaries; the default keeps 200 and the Fit still pickles."""
    import pickle

    small = scenario_data.sample(800, random_state=0).reset_index(drop=True)
    opts = dict(iter=200, warmup=200, chains=2, cores=1, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        full = hc.fit(small, FORMULA, backend="brms", keep_draws=10**6, **opts)
        fit = hc.fit(small, FORMULA, backend="brms", **opts)
    d = full.raw["draws"]
    assert d["b"].shape == (400, 3) and d["total"] == 400
    np.testing.assert_allclose(d["b"].mean(axis=0), full.fixef.to_numpy(), rtol=0, atol=1e-10)
    resid = full.varcorr.query("group == 'Residual'")
    np.testing.assert_allclose(d["sigma"].std(ddof=1), resid["std_error"].iloc[0], rtol=1e-10)
    for group, r in d["r"].items():
        lv = full.model.hierarchy.level(group)
        for what, got in (("estimate", r.mean(axis=0)), ("std_error", r.std(axis=0, ddof=1))):
            want = full.ranef(group, what=what).reindex(lv.labels)[list(lv.spec.terms)].to_numpy()
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)

    assert fit.raw["draws"]["b"].shape == (200, 3)
    y_rep, what = ppc.replicate(fit, draws=100, seed=0)
    assert y_rep.shape == (100, 800) and "100 of the 200 joint draws the fit kept (from 400)" in what
    t = ppc.group_checks(pickle.loads(pickle.dumps(fit)), draws=200)
    assert t["p_value"].min() > 0.001
    m = t[t["statistic"] == "mean"]
    pred = pd.Series(fit.predict()).groupby(fit.model.hierarchy.levels[0].codes).mean().to_numpy()
    assert np.all(np.abs(m["replicated_mean"].to_numpy() - pred) < 4 * m["replicated_sd"] / np.sqrt(200))
    with pytest.raises(SpecError, match="keep_draws"):
        hc.fit(small, FORMULA, backend="brms", keep_draws=-1)
