"""mixedcore / native: against a dense N x N computation (no R needed) and against lme4 (REML and ML).

Issue tolerances vs lme4 away from the boundary: fixed effects 1e-6 relative, SDs and correlations 1e-4
relative, log-likelihood 1e-6 absolute.
"""
import numpy as np
import pandas as pd
import pytest
from scipy.linalg import block_diag

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.agreement import summary
from hiercompare.design import prepare

SEED_F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def _small_tree():
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 4, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)),
                                              label="M{i}"),
                             hc.LevelScenario("submarket", (2, 3), {"(Intercept)": 0.4, "x2": 0.3}, label="S{i}")),
                     n_obs=(3, 7))
    data, _ = hc.simulate(sc, seed=42)
    f = "y ~ x1 + x2 + (1 + x1 | market) + (1 + x2 || market:submarket)"
    return prepare(hc.ModelSpec.from_formula(f), data)


def _dense(md, theta, core, reml):
    """Brute force: V0 = Z G Z' + I with G = Lambda Lambda' over every group; GLS, deviance, BLUPs, PEV."""
    lam = core.lambdas(theta)
    Zs, Gs = [], []
    for li, lv in enumerate(md.hierarchy.levels):
        Zl = md.Z[lv.group]
        for g in range(lv.n_groups):
            Zs.append(Zl * (lv.codes == g)[:, None])
            Gs.append(lam[li] @ lam[li].T)
    Z = np.hstack(Zs)
    G = block_diag(*Gs)
    n, p = md.X.shape
    V0 = Z @ G @ Z.T + np.eye(n)
    Vi = np.linalg.inv(V0)
    XtVX = md.X.T @ Vi @ md.X
    beta = np.linalg.solve(XtVX, md.X.T @ Vi @ md.y)
    res = md.y - md.X @ beta
    r2 = res @ Vi @ res
    dof = n - p if reml else n
    dev = np.linalg.slogdet(V0)[1] + dof * (1 + np.log(2 * np.pi * r2 / dof))
    if reml:
        dev += np.linalg.slogdet(XtVX)[1]
    sigma2 = r2 / dof
    b = G @ Z.T @ Vi @ res
    P = Vi - Vi @ md.X @ np.linalg.solve(XtVX, md.X.T @ Vi)
    pev_full = sigma2 * (G - G @ Z.T @ P @ Z @ G)
    pev_beta = sigma2 * (G - G @ Z.T @ Vi @ Z @ G)
    return dev, beta, sigma2, b, pev_full, pev_beta


@pytest.mark.parametrize("reml", [True, False])
def test_sufficient_statistics_equal_dense_computation(reml):
    md = _small_tree()
    core = mixedcore.from_model_data(md)
    rng = np.random.default_rng(0)
    theta = np.abs(rng.normal(0.7, 0.3, size=len(core.theta0))) * np.where(np.isfinite(core.lower), 1, 0.5)
    res = core.solve(theta, reml=reml)
    dev, beta, sigma2, b, pev_full, pev_beta = _dense(md, theta, core, reml)
    assert res.deviance == pytest.approx(dev, abs=1e-9)
    np.testing.assert_allclose(res.beta, beta, rtol=1e-10, atol=1e-12)
    assert res.sigma ** 2 == pytest.approx(sigma2, rel=1e-10)
    ours = np.concatenate([bl.ravel() for bl in res.blups])
    np.testing.assert_allclose(ours, b, rtol=1e-8, atol=1e-10)
    diag_full = np.concatenate([np.diagonal(c, axis1=1, axis2=2).ravel() for c in res.blup_cov])
    np.testing.assert_allclose(diag_full, np.diag(pev_full), rtol=1e-8)
    res_b = core.solve(theta, reml=reml, condvar="beta_fixed")
    diag_b = np.concatenate([np.diagonal(c, axis1=1, axis2=2).ravel() for c in res_b.blup_cov])
    np.testing.assert_allclose(diag_b, np.diag(pev_beta), rtol=1e-8)
    # off-diagonal (within a group) conditional covariance too
    k0 = res.blup_cov[0].shape[1]
    np.testing.assert_allclose(res.blup_cov[0][0], pev_full[:k0, :k0], rtol=1e-8, atol=1e-12)


def test_offset_is_subtracted():
    md = _small_tree()
    off = np.linspace(-1, 1, md.n)
    a = mixedcore.from_model_data(md, offset=off)
    b = mixedcore.from_model_data(md)
    b.set_response(md.y - off)
    th = a.theta0 * 0.7
    assert a.deviance(th) == pytest.approx(b.deviance(th), abs=1e-10)


def test_native_agrees_with_mixedlm_without_r(seed_data):
    data, _ = seed_data
    a = hc.fit(data, SEED_F, backend="native")
    m = hc.fit(data, SEED_F, backend="mixedlm")
    s = summary(hc.compare([a, m])).set_index("param_class")
    assert (s.loc[["fixed", "fixed_se", "sd", "cor", "loglik", "ran_vals"], "verdict"] == "agree").all(), s
    assert a.loglik >= m.loglik - 1e-6  # native's optimum is at least as good
    parts = a.decompose()
    np.testing.assert_array_equal(parts.drop(columns="prediction").sum(axis=1), a.predict())


def _check_vs_lme4(a, b, boundary=False):
    ta, tb = a.tidy(), b.tidy()
    key = ["effect", "group", "level", "term"]
    m = ta.merge(tb, on=key, suffixes=("_a", "_b"))
    assert len(m) == len(ta) == len(tb)
    fx = m[m["effect"] == "fixed"]
    np.testing.assert_allclose(fx["estimate_a"], fx["estimate_b"], rtol=1e-6, atol=1e-9)
    if not boundary:
        rp = m[m["effect"] == "ran_pars"]
        sd = rp[rp["term"].str.startswith("sd__")]
        np.testing.assert_allclose(sd["estimate_a"], sd["estimate_b"], rtol=1e-4)
        cor = rp[rp["term"].str.startswith("cor__")]
        np.testing.assert_allclose(cor["estimate_a"], cor["estimate_b"], rtol=1e-4, atol=1e-5)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-6)
    assert a.loglik >= b.loglik - 1e-9


CASES = [
    ("seed", SEED_F),
    ("seed", "y ~ x1 + x2 + (1 + x1 || market) + (1 | market:submarket)"),
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
    ("pastes", "strength ~ 1 + (1 | batch/cask)"),
    ("deep", "y ~ x1 + x2 + (1 + x1 | region) + (1 + x1 | region:market) + (1 | region:market:submarket)"),
]


@pytest.fixture(scope="module")
def datasets(seed_data, sleepstudy, pastes):
    sc4 = hc.Scenario(levels=(
        hc.LevelScenario("region", 8, {"(Intercept)": 1.0, "x1": 0.5}, ((1, 0.5), (0.5, 1)), label="R{i}"),
        hc.LevelScenario("market", 4, {"(Intercept)": 0.5, "x1": 0.4}, ((1, -0.3), (-0.3, 1)), label="M{i}"),
        hc.LevelScenario("submarket", 3, {"(Intercept)": 0.4}, label="S{i}")), n_obs=30)
    return {"seed": seed_data[0], "sleepstudy": sleepstudy, "pastes": pastes, "deep": hc.simulate(sc4, seed=4)[0]}


@pytest.mark.r
@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("name, formula", CASES, ids=[c[0] + str(i) for i, c in enumerate(CASES)])
def test_native_matches_lme4(datasets, name, formula, method):
    data = datasets[name]
    a = hc.fit(data, formula, backend="native", method=method)
    b = hc.fit(data, formula, backend="lme4", method=method, optimizer="bobyqa")
    assert not b.diagnostics["singular"], "choose data away from the boundary for this test"
    _check_vs_lme4(a, b)


@pytest.mark.r
def test_native_boundary_fit_is_flagged():
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 10, {"(Intercept)": 0.8}, label="Market_{i}"),
                             hc.LevelScenario("submarket", 5, {"(Intercept)": 0.0}, label="Sub{i}")), n_obs=20)
    data, _ = hc.simulate(sc, seed=3)
    f = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    a = hc.fit(data, f, backend="native")
    b = hc.fit(data, f, backend="lme4")
    assert a.diagnostics["singular"] and b.diagnostics["singular"]
    sd = a.varcorr.set_index("group").loc["market:submarket", "estimate"]
    assert sd == 0.0
    _check_vs_lme4(a, b, boundary=True)
    t = hc.compare([a, b])
    assert "disagree" not in set(t["verdict"])


@pytest.mark.r
def test_conditional_sd_conventions(seed_data):
    """lme4 1.1-31's condVar conditions on beta: native's 'beta_fixed' matches it; 'full' (the default,
    Henderson's prediction-error variance) adds the fixed effects' uncertainty and is never smaller."""
    data, _ = seed_data
    b = hc.fit(data, SEED_F, backend="lme4").tidy("ran_vals").set_index(["group", "level", "term"])
    fixed = hc.fit(data, SEED_F, backend="native", condvar="beta_fixed").tidy("ran_vals").set_index(
        ["group", "level", "term"])
    full = hc.fit(data, SEED_F, backend="native").tidy("ran_vals").set_index(["group", "level", "term"])
    np.testing.assert_allclose(fixed["std_error"], b.loc[fixed.index, "std_error"], rtol=1e-3)
    assert (full["std_error"] >= fixed["std_error"] - 1e-12).all()
    assert (full["std_error"] > 1.2 * fixed["std_error"]).any()
