import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import SpecError


def test_default_scenario_is_the_seed_tree(seed_data):
    data, truth = seed_data
    sc = hc.Scenario()
    assert sc.formula() == "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
    assert data.shape == (5000, 6)
    assert data["market"].nunique() == 10
    assert data.groupby("market")["submarket"].nunique().eq(5).all()
    assert data.groupby(["market", "submarket"]).size().eq(100).all()
    assert set(data["submarket"]) == {f"Sub{i}" for i in range(5)}  # labels repeat across markets
    fx = truth.fixef
    assert fx.to_dict() == {"(Intercept)": 1.0, "x1": 0.0, "x2": 0.6}
    rp = truth.tidy("ran_pars").set_index(["group", "term"])["estimate"]
    assert rp[("market", "sd__(Intercept)")] == 0.8
    assert rp[("market", "sd__x1")] == 0.5
    assert rp[("market", "cor__(Intercept).x1")] == 0.3
    assert rp[("market:submarket", "sd__(Intercept)")] == 0.4
    assert rp[("Residual", "sd__Observation")] == 1.0


def test_truth_reproduces_the_data_exactly(seed_data):
    """y minus the linear predictor built from the truth's ran_vals is pure noise with SD ~ 1."""
    data, truth = seed_data
    mk = truth.ranef("market")
    sm = truth.ranef("market:submarket")
    assert mk.shape == (10, 2) and sm.shape == (50, 1)
    eta = (1.0 + 0.6 * data["x2"] + mk.loc[data["market"], "(Intercept)"].to_numpy()
           + mk.loc[data["market"], "x1"].to_numpy() * data["x1"]
           + sm.loc[data["market"] + ":" + data["submarket"], "(Intercept)"].to_numpy())
    resid = data["y"] - eta
    assert abs(resid.mean()) < 0.05  # 5000 N(0,1) draws: SE 0.014
    assert abs(resid.std() - 1.0) < 0.03
    # realised SDs are the SDs of the drawn effects
    rp = truth.tidy("ran_pars").set_index(["group", "term"])["realized"]
    assert rp[("market", "sd__(Intercept)")] == pytest.approx(mk["(Intercept)"].std(ddof=1), rel=1e-12)
    assert rp[("market:submarket", "sd__(Intercept)")] == pytest.approx(sm["(Intercept)"].std(ddof=1), rel=1e-12)
    assert rp[("market", "cor__(Intercept).x1")] == pytest.approx(np.corrcoef(mk["(Intercept)"], mk["x1"])[0, 1])
    assert rp[("Residual", "sd__Observation")] == pytest.approx(resid.std(), rel=1e-9)


def test_same_seed_same_data_other_seed_other_data():
    a, ta = hc.simulate(seed=7)
    b, tb = hc.simulate(seed=7)
    c, _ = hc.simulate(seed=8)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(ta.table, tb.table)
    assert not np.allclose(a["y"], c["y"])


def test_correlation_is_drawn_as_specified():
    """Over many markets the drawn effects have the generating SDs and correlation (MC tolerance ~4 SE)."""
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 4000, {"(Intercept)": 0.8, "x1": 0.5},
                                              ((1, 0.3), (0.3, 1)), label="M{i}"),), n_obs=1)
    _, truth = hc.simulate(sc, seed=11)
    rp = truth.tidy("ran_pars").set_index(["group", "term"])["realized"]
    assert rp[("market", "sd__(Intercept)")] == pytest.approx(0.8, abs=4 * 0.8 / np.sqrt(2 * 4000))
    assert rp[("market", "sd__x1")] == pytest.approx(0.5, abs=4 * 0.5 / np.sqrt(2 * 4000))
    assert rp[("market", "cor__(Intercept).x1")] == pytest.approx(0.3, abs=4 * (1 - 0.09) / np.sqrt(4000))


def test_unbalanced_sizes():
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 6, {"(Intercept)": 0.8}, label="Market_{i}"),
                             hc.LevelScenario("submarket", (2, 9), {"(Intercept)": 0.4}, label="Sub{i}")),
                     n_obs=(5, 300))
    data, truth = hc.simulate(sc, seed=5)
    per_market = data.groupby("market")["submarket"].nunique()
    assert per_market.between(2, 9).all() and per_market.nunique() > 1
    sizes = data.groupby(["market", "submarket"]).size()
    assert sizes.between(5, 300).all() and sizes.nunique() > 5
    assert len(truth.ranef("market:submarket")) == per_market.sum()


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_families(family):
    sc = hc.Scenario(family=family, fixed={"(Intercept)": 0.2, "x1": 0.0, "x2": 0.3}, residual_sd=0.0)
    data, truth = hc.simulate(sc, seed=2)
    if family == "binomial":
        assert set(np.unique(data["y"])) == {0.0, 1.0}
        assert 0.3 < data["y"].mean() < 0.8
    else:
        assert (data["y"] >= 0).all() and (data["y"] == data["y"].round()).all()
    assert "Residual" not in set(truth.tidy("ran_pars")["group"])


def test_scenario_round_trip_and_validation():
    sc = hc.Scenario(levels=(hc.LevelScenario("market", (3, 5), {"(Intercept)": 1.0, "x1": 0.2},
                                              ((1, -0.5), (-0.5, 1)), label="M{i}"),), n_obs=(4, 8))
    assert hc.Scenario.from_dict(sc.to_dict()) == sc
    with pytest.raises(SpecError, match="not positive definite"):
        hc.Scenario(levels=(hc.LevelScenario("m", 3, {"(Intercept)": 1, "x1": 1}, ((1, 1.2), (1.2, 1))),))
    with pytest.raises(SpecError, match="varies 'x9'"):
        hc.Scenario(levels=(hc.LevelScenario("m", 3, {"x9": 1.0}),))
