"""lightgbm (GPBoost-style boosting with mixedcore random effects) and the lightgbm-cat baseline.

Documented tolerances: on the linear seed scenario the boosted model needs (almost) no trees and its variance
components are within 5% of native's; on the nonlinear scenario its SDs are within 10% (market terms 15%) of
the oracle fit (mixedcore with the TRUE f as offset), and its held-out RMSE beats a linear mixed model and the
naive categorical baseline on every seed tried.
"""
import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import DataError, mixedcore
from hiercompare.backends.learners import group_aware_split
from hiercompare.design import prepare
from hiercompare.simulate import nonlinear_part

pytestmark = pytest.mark.skipif("lightgbm" not in hc.available_backends(), reason="lightgbm not installed")
F = hc.Scenario().formula()


def _split(sc, seed):
    data, _ = hc.simulate(sc, seed=seed)
    md = prepare(hc.ModelSpec.from_formula(F), data)
    test = group_aware_split(md, 0.2, seed=1000 + seed)
    return data[~test].reset_index(drop=True), data[test].reset_index(drop=True)


def _sds(fit):
    v = fit.varcorr
    return v[v["term"].str.startswith("sd__")].set_index(["group", "term"])["estimate"]


def test_linear_scenario_matches_native(seed_data):
    data, _ = seed_data
    g = hc.fit(data, F, backend="lightgbm", seed=1)
    n = hc.fit(data, F, backend="native")
    assert g.diagnostics["rounds"] <= 20  # nothing nonlinear to learn: early stopping ends boosting quickly
    np.testing.assert_allclose(_sds(g), _sds(n).loc[_sds(g).index], rtol=0.05)
    parts = g.decompose()
    assert "nonlinear" in parts.columns
    np.testing.assert_allclose(parts.drop(columns="prediction").sum(axis=1), g.predict(), rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_nonlinear_scenario_beats_linear_and_baseline(seed):
    sc = hc.Scenario(nonlinear="sin_threshold", name="nonlinear")
    train, test = _split(sc, seed)
    fits = {b: hc.fit(train, F, backend=b, seed=seed) for b in ("native", "lightgbm", "lightgbm-cat")}
    rmse = {b: float(np.sqrt(np.mean((test["y"] - f.predict(test)) ** 2))) for b, f in fits.items()}
    assert rmse["lightgbm"] < 0.95 * rmse["native"], rmse
    assert rmse["lightgbm"] < rmse["lightgbm-cat"], rmse
    oracle = mixedcore.from_model_data(prepare(hc.ModelSpec.from_formula(F), train),
                                       offset=nonlinear_part(sc, train)).fit()
    sds = _sds(fits["lightgbm"])
    orc = {("market", "sd__(Intercept)"): np.sqrt(oracle.cov[0][0, 0]), ("market", "sd__x1"): np.sqrt(oracle.cov[0][1, 1]),
           ("market:submarket", "sd__(Intercept)"): np.sqrt(oracle.cov[1][0, 0]),
           ("Residual", "sd__Observation"): oracle.sigma}
    for key, ref in orc.items():
        tol = 0.15 if key[0] == "market" else 0.10
        assert abs(sds[key] / ref - 1) < tol, (key, sds[key], ref)
    # the linear mixed model absorbs the missed f(x) into its residual SD
    assert _sds(fits["native"])[("Residual", "sd__Observation")] > 1.1 * oracle.sigma


def test_baseline_is_labelled_and_adds_up(seed_data):
    data, _ = seed_data
    c = hc.fit(data, F, backend="lightgbm-cat", seed=2)
    assert c.diagnostics["baseline"] is True and "BASELINE" in c.diagnostics["notes"][0]
    assert set(c.tidy("ran_pars")["group"]) == {"Residual"}  # no variance components pretended
    parts = c.decompose()
    np.testing.assert_allclose(parts["prediction"], c.raw.predict(_cat_design(c, data)), atol=1e-10)
    mk = c.ranef("market")["(Intercept)"]
    assert abs(mk.mean()) < 1e-10  # contrasts against the national mean (balanced tree)
    # the contrasts track the drawn market intercepts
    truth = hc.simulate(seed=123)[1].ranef("market")["(Intercept)"]
    assert np.corrcoef(mk.loc[truth.index], truth)[0, 1] > 0.8


def _cat_design(fit, data):
    md = fit.model
    X = pd.DataFrame(data[list(fit.diagnostics.get("features", ["x1", "x2"]))].to_numpy(float), columns=["x1", "x2"])
    for lv in md.hierarchy.levels:
        codes = lv.codes_for(data)
        X[f"group_level_{lv.depth}"] = pd.Categorical(codes, categories=np.arange(-1, lv.n_groups))
    return X


def test_bad_input_and_reproducibility(seed_data):
    data, _ = seed_data
    sub = data.iloc[:1500]
    a = hc.fit(sub, F, backend="lightgbm", seed=5)
    b = hc.fit(sub, F, backend="lightgbm", seed=5)
    pd.testing.assert_frame_equal(a.tidy(), b.tidy())
    bad = sub.head(3).copy()
    bad.loc[bad.index[0], "x2"] = np.nan
    with pytest.raises(DataError, match=r"features \['x2'\] contain NaN"):
        a.predict(bad)
    new = sub.head(2).assign(market=["Market_new", "Market_new"])
    parts = a.decompose(new)
    assert parts.attrs["unseen"]["market"] == 2
    assert (parts["market|(Intercept)"] == 0).all()
