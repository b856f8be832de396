"""Recovery of the seed scenario's truth (seed 123, the seed conversation's RANDOM_SEED).

Documented tolerance for variance components from ONE data set, relative to the SDs realised by the drawn
group effects (what the data can reveal): market SDs within 35% (10 markets; each market intercept is
estimated with SE ~0.18 and the SD of an SD estimate from 10 groups is ~24%), the submarket SD within 15%
(50 groups), the residual SD within 3% (5,000 rows), the market correlation within 0.3 (absolute).
"""
import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.results import Fit, Truth, tidy_frame
from hiercompare.spec import ModelSpec

TOL = {("market", "sd__(Intercept)"): 0.35, ("market", "sd__x1"): 0.35,
       ("market:submarket", "sd__(Intercept)"): 0.15}


def _check(fit, truth):
    rec = hc.recovery(fit, truth)
    fixed = rec[rec["effect"] == "fixed"]
    assert len(fixed) == 3 and fixed["covers"].all(), fixed
    rp = rec[rec["effect"] == "ran_pars"].set_index(["group", "term"])
    for key, tol in TOL.items():
        est, real = rp.loc[key, "estimate"], rp.loc[key, "realized"]
        assert abs(est - real) / real < tol, (key, est, real)
    assert rp.loc[("Residual", "sd__Observation"), "estimate"] == pytest.approx(1.0, rel=0.03)
    assert abs(rp.loc[("market", "cor__(Intercept).x1"), "estimate"] - rp.loc[("market", "cor__(Intercept).x1"),
                                                                               "realized"]) < 0.3
    rv = rec[rec["effect"] == "ran_vals"]
    assert len(rv) == 10 * 2 + 50
    # BLUPs track the drawn effects: correlation with the truth well above chance
    sub = rv[rv["group"] == "market:submarket"]
    assert np.corrcoef(sub["estimate"], sub["truth"])[0, 1] > 0.7
    assert sub["covers"].mean() >= 0.8  # 95% intervals over 50 submarkets (binomial SD ~3%)


def test_mixedlm_recovers_seed_scenario(seed_data):
    data, truth = seed_data
    _check(hc.fit(data, hc.Scenario().formula(), backend="mixedlm"), truth)


@pytest.mark.r
def test_lme4_recovers_seed_scenario(seed_data):
    data, truth = seed_data
    _check(hc.fit(data, hc.Scenario().formula(), backend="lme4"), truth)


def test_ols_fixed_slopes_cover(seed_data):
    data, truth = seed_data
    rec = hc.recovery(hc.fit(data, hc.Scenario().formula(), backend="ols"), truth)
    fx = rec[rec["effect"] == "fixed"].set_index("term")
    assert fx.loc["x2", "covers"]  # the slope of x2 is a national fixed effect in every backend
    # the no-pooling intercept estimates alpha_US + mean of the 10 drawn market intercepts
    mk = truth.ranef("market")["(Intercept)"]
    assert fx.loc["(Intercept)", "conf_low"] < 1.0 + mk.mean() < fx.loc["(Intercept)", "conf_high"]


def test_recovery_join_by_hand():
    spec = ModelSpec.from_formula("y ~ x + (1 | g)")
    est = tidy_frame([
        dict(effect="fixed", term="(Intercept)", estimate=1.2, std_error=0.1, conf_low=1.0, conf_high=1.4),
        dict(effect="fixed", term="x", estimate=0.5, std_error=0.1, conf_low=0.3, conf_high=0.7),
        dict(effect="ran_pars", group="g", term="sd__(Intercept)", estimate=0.9),
        dict(effect="ran_vals", group="g", level="a", term="(Intercept)", estimate=0.2, conf_low=0.0, conf_high=0.4),
    ])
    tru = tidy_frame([
        dict(effect="fixed", term="(Intercept)", estimate=1.0),
        dict(effect="fixed", term="x", estimate=0.0),
        dict(effect="ran_pars", group="g", term="sd__(Intercept)", estimate=1.0),
        dict(effect="ran_vals", group="g", level="a", term="(Intercept)", estimate=0.5),
    ])
    tru["realized"] = [1.0, 0.0, 0.8, 0.5]
    rec = hc.recovery(Fit("x", spec, est), Truth(tru, {}, 0))
    assert rec["error"].round(12).tolist() == [0.2, 0.5, -0.1, -0.3]
    assert rec["covers"].isna().tolist() == [False, False, True, False]  # no interval for the SD
    assert rec["covers"].iloc[[0, 1, 3]].astype(bool).tolist() == [True, False, False]
    assert rec["rel_error"].iloc[2] == pytest.approx(-0.1)
    assert np.isnan(rec["rel_error"].iloc[1])  # truth 0: no relative error
    assert rec["realized"].tolist() == [1.0, 0.0, 0.8, 0.5]
