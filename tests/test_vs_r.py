"""Python vs R: ols == R lm to 1e-8; mixedlm vs lme4 within the agreement tolerances; lme4 vs published values.

Reference values for sleepstudy and Pastes were printed by lme4 1.1-31 (R 4.2.2) with digits = 10 and are
quoted to more digits than the assertions need.
"""
import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import BackendError
from hiercompare.agreement import summary

pytestmark = pytest.mark.r
F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def _sd(fit, group, term):
    v = fit.varcorr
    return float(v[(v["group"] == group) & (v["term"] == term)]["estimate"].iloc[0])


@pytest.fixture(scope="module")
def seed_fits(seed_data):
    data, _ = seed_data
    return {b: hc.fit(data, F, backend=b) for b in ("ols", "r_lm", "mixedlm", "lme4")}


def test_ols_equals_r_lm_to_1e8(seed_fits):
    a, b = seed_fits["ols"], seed_fits["r_lm"]
    ta, tb = a.tidy(), b.tidy()
    assert len(ta) == len(tb) == 3 + 10 * 2 + 50 + 1
    for col in ("estimate", "std_error", "conf_low", "conf_high"):
        x, y = ta[col].to_numpy(), tb[col].to_numpy()
        ok = np.isnan(x) == np.isnan(y)
        assert ok.all()
        m = ~np.isnan(x)
        assert np.max(np.abs(x[m] - y[m]) / np.maximum(np.abs(y[m]), 1e-12)) < 1e-8, col
    assert a.loglik == pytest.approx(b.loglik, rel=1e-10)
    table = hc.compare([a, b])
    assert set(table["verdict"]) == {"agree"}
    assert len(table) == 2 * (3 + 70) + 1 + 1 + 3  # estimates and SEs, residual SD, logLik, the fixed effects' df


def test_ols_equals_r_lm_unbalanced_with_categorical():
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 6, {"(Intercept)": 0.8, "x1": 0.3}, label="Market_{i}"),
                             hc.LevelScenario("submarket", (1, 6), {"(Intercept)": 0.4}, label="Sub{i}")),
                     n_obs=(3, 40))
    data, _ = hc.simulate(sc, seed=9)
    data["region"] = np.where(data["x2"] > 0.4, "b", np.where(data["x2"] < -0.4, "c", "a"))
    f = "y ~ x1 + region + (1 + x1 | market) + (1 | market:submarket)"
    a, b = hc.fit(data, f, backend="ols"), hc.fit(data, f, backend="r_lm")
    s = summary(hc.compare([a, b]))
    assert (s["verdict"] == "agree").all(), s
    assert "region[T.b]" in a.fixef.index


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_mixedlm_vs_lme4_simulated(seed_data, method):
    data, _ = seed_data
    a = hc.fit(data, F, backend="mixedlm", method=method)
    b = hc.fit(data, F, backend="lme4", method=method)
    assert a.method == b.method == method
    table = hc.compare([a, b])
    s = summary(table).set_index("param_class")
    for klass in ("fixed", "fixed_se", "sd", "cor", "loglik", "ran_vals"):
        assert s.loc[klass, "verdict"] == "agree", (klass, s.loc[klass])
    # the stated tolerances, asserted directly too
    fx = table[(table["param_class"] == "fixed")]
    assert (fx["rel_diff"] < 1e-4).all()
    sd = table[table["param_class"] == "sd"]
    assert (sd["rel_diff"] < 1e-2).all()
    assert abs(a.loglik - b.loglik) < 1e-4


SLEEP_REML = dict(fixed=(251.40510485, 10.46728596), sd=(24.74065799498, 5.92213765890), cor=0.06555123824,
                  sigma=25.59179572168, loglik=-871.81413598)
SLEEP_ML = dict(fixed=(251.40510485, 10.46728596), sd=(23.77975958946, 5.71679851393), cor=0.08132109343,
                sigma=25.59190703649, loglik=-875.969672244)


@pytest.mark.parametrize("method, ref", [("REML", SLEEP_REML), ("ML", SLEEP_ML)])
def test_sleepstudy(sleepstudy, method, ref):
    f = "Reaction ~ Days + (Days | Subject)"
    b = hc.fit(sleepstudy, f, backend="lme4", method=method)
    a = hc.fit(sleepstudy, f, backend="mixedlm", method=method)
    for fit, rtol_sd in ((b, 1e-5), (a, 1e-2)):
        assert fit.fixef["(Intercept)"] == pytest.approx(ref["fixed"][0], rel=1e-4)
        assert fit.fixef["Days"] == pytest.approx(ref["fixed"][1], rel=1e-4)
        assert _sd(fit, "Subject", "sd__(Intercept)") == pytest.approx(ref["sd"][0], rel=rtol_sd)
        assert _sd(fit, "Subject", "sd__Days") == pytest.approx(ref["sd"][1], rel=rtol_sd)
        assert _sd(fit, "Residual", "sd__Observation") == pytest.approx(ref["sigma"], rel=rtol_sd)
        assert _sd(fit, "Subject", "cor__(Intercept).Days") == pytest.approx(ref["cor"], abs=10 * rtol_sd)
        assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-4)
    # the published REML values (lme4 vignette / JSS paper), to the printed precision
    if method == "REML":
        assert round(b.fixef["(Intercept)"], 3) == 251.405 and round(b.fixef["Days"], 3) == 10.467
        assert round(_sd(b, "Subject", "sd__(Intercept)"), 3) == 24.741
        assert round(_sd(b, "Subject", "sd__Days"), 3) == 5.922
        assert round(_sd(b, "Subject", "cor__(Intercept).Days"), 3) == 0.066
        assert round(_sd(b, "Residual", "sd__Observation"), 3) == 25.592
    s = summary(hc.compare([a, b])).set_index("param_class")
    assert (s.loc[["fixed", "sd", "cor", "loglik"], "verdict"] == "agree").all()


def test_pastes_nested_with_repeated_labels(pastes):
    """cask labels a, b, c repeat in every batch: (1 | batch/cask) must give 30 cask groups, as lme4 does."""
    f = "strength ~ 1 + (1 | batch/cask)"
    b = hc.fit(pastes, f, backend="lme4")
    a = hc.fit(pastes, f, backend="mixedlm")
    assert _sd(b, "batch:cask", "sd__(Intercept)") == pytest.approx(2.9040774665, rel=1e-5)
    assert _sd(b, "batch", "sd__(Intercept)") == pytest.approx(1.2873658811, rel=1e-4)
    assert _sd(b, "Residual", "sd__Observation") == pytest.approx(0.8234075234, rel=1e-5)
    assert b.loglik == pytest.approx(-123.495372927, abs=1e-6)
    assert len(b.ranef("batch:cask")) == 30 and "A:a" in b.ranef("batch:cask").index
    assert _sd(a, "batch:cask", "sd__(Intercept)") == pytest.approx(2.9040774665, rel=1e-2)
    assert a.loglik == pytest.approx(-123.495372927, abs=1e-4)
    s = summary(hc.compare([a, b])).set_index("param_class")
    assert s.loc["ran_vals", "verdict"] == "agree"


def test_uncorrelated_terms_map_back_to_their_group(seed_data):
    data, _ = seed_data
    f = "y ~ x1 + x2 + (1 + x1 || market) + (1 | market:submarket)"
    b = hc.fit(data, f, backend="lme4")
    a = hc.fit(data, f, backend="mixedlm")
    for fit in (a, b):
        terms = set(fit.varcorr.loc[fit.varcorr["group"] == "market", "term"])
        assert terms == {"sd__(Intercept)", "sd__x1"}  # no correlation estimated
    s = summary(hc.compare([a, b])).set_index("param_class")
    assert (s.loc[["fixed", "sd", "loglik"], "verdict"] == "agree").all()


def test_glmer_binomial_recovers_fixed_effects():
    sc = hc.Scenario(family="binomial", fixed={"(Intercept)": -0.3, "x1": 0.0, "x2": 0.8}, residual_sd=0.0,
                     n_obs=200)
    data, truth = hc.simulate(sc, seed=123)
    f = hc.fit(data, sc.formula(), backend="lme4", family="binomial")
    assert f.method == "ML (Laplace)" and f.converged
    rec = hc.recovery(f, truth)
    fixed = rec[rec["effect"] == "fixed"]
    assert fixed["covers"].all(), fixed
    p = f.predict(type="response")
    assert ((p > 0) & (p < 1)).all()


def test_singular_fit_is_flagged_not_failed(seed_data):
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 10, {"(Intercept)": 0.8}, label="Market_{i}"),
                             hc.LevelScenario("submarket", 5, {"(Intercept)": 0.0}, label="Sub{i}")), n_obs=20)
    data, _ = hc.simulate(sc, seed=3)  # a seed whose REML optimum has the submarket SD at 0
    f = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    b = hc.fit(data, f, backend="lme4")
    a = hc.fit(data, f, backend="mixedlm")
    assert b.diagnostics["singular"] is True and b.converged  # singular is reported, not a convergence failure
    assert any("singular" in w for w in b.diagnostics["warnings"])
    assert _sd(b, "market:submarket", "sd__(Intercept)") < 1e-3
    # mixedlm's L-BFGS alone stopped 0.04 log-lik units short here; the polishing attempts reach lme4's optimum
    assert len(a.diagnostics["optimizer_attempts"]) > 1
    assert a.loglik == pytest.approx(b.loglik, abs=1e-4)
    table = hc.compare([a, b])
    sub = table[(table["group"] == "market:submarket") & (table["effect"] == "ran_pars")]
    assert set(sub["verdict"]) <= {"agree", "boundary"} and "boundary" in set(sub["verdict"])
    assert set(table.loc[table["param_class"].isin(["fixed", "loglik"]), "verdict"]) == {"agree"}


def test_labels_reach_r_as_data_not_code(seed_data):
    data, _ = seed_data
    evil = 'M"); system("touch /tmp/hc_pwned"); ("'
    d = data.assign(market=data["market"].replace({"Market_0": evil}))
    b = hc.fit(d, F, backend="lme4")
    assert evil in b.ranef("market").index
    import os

    assert not os.path.exists("/tmp/hc_pwned")


def test_r_error_is_carried():
    df = pd.DataFrame({"y": np.arange(6.0), "x": [0.1, 0.5, 0.2, 0.9, 0.3, 0.4], "id": list("abcdef")})
    with pytest.raises(BackendError, match="number of levels of each grouping factor must be < number of observations"):
        hc.fit(df, "y ~ x + (1 | id)", backend="lme4")


def test_versions_in_provenance(seed_fits):
    p = seed_fits["lme4"].provenance
    assert p["R"].startswith("R version") and p["lme4"] and p["rpy2"].startswith("3.5")


def test_lme4_needs_a_group_term(seed_data):
    data, _ = seed_data
    with pytest.raises(hc.SpecError, match="lme4 needs at least one group term"):
        hc.fit(data, "y ~ x1 + x2", backend="lme4")
