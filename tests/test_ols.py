import numpy as np
import pandas as pd
import pytest

import hiercompare as hc

F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def ols_fit(seed_data):
    data, _ = seed_data
    return hc.fit(data, F, backend="ols")


def test_intercept_only_closed_form(seed_data):
    """y ~ (1 | market), balanced: intercept = grand mean, deviations = market mean - grand mean."""
    data, _ = seed_data
    f = hc.fit(data, "y ~ 1 + (1 | market)", backend="ols")
    means = data.groupby("market")["y"].mean()
    assert f.fixef["(Intercept)"] == pytest.approx(means.mean(), abs=1e-12)
    dev = f.ranef("market")["(Intercept)"]
    np.testing.assert_allclose(dev.loc[means.index], means - means.mean(), atol=1e-12)
    # SE of each deviation: sigma * sqrt((1 - 1/G) / n_g) for G groups of n_g rows
    sigma = f.varcorr.set_index("group").loc["Residual", "estimate"]
    se = f.ranef("market", what="std_error")["(Intercept)"]
    np.testing.assert_allclose(se, sigma * np.sqrt((1 - 1 / 10) / 500), rtol=1e-10)


def test_every_deviation_reported_and_sums_to_zero(ols_fit):
    mk = ols_fit.ranef("market")
    sm = ols_fit.ranef("market:submarket")
    assert mk.shape == (10, 2) and sm.shape == (50, 1)
    assert not mk.isna().any().any() and not sm.isna().any().any()
    np.testing.assert_allclose(mk.sum(), 0, atol=1e-10)
    by_market = sm["(Intercept)"].groupby(sm.index.str.split(":").str[0]).sum()
    np.testing.assert_allclose(by_market, 0, atol=1e-10)
    # the derived last group has a proper SE (not 0, not NaN), comparable to the others
    se = ols_fit.ranef("market", what="std_error")["(Intercept)"]
    assert se.max() / se.min() < 1.01


def test_same_fit_as_treatment_coding(seed_data, ols_fit):
    """The sum-to-zero design spans the same space as statsmodels' own treatment-coded formula."""
    import statsmodels.formula.api as smf

    data, _ = seed_data
    ref = smf.ols("y ~ x2 + C(market) * x1 + C(market):C(submarket)", data).fit()
    np.testing.assert_allclose(ols_fit.predict(), ref.fittedvalues, atol=1e-9)
    assert ols_fit.loglik == pytest.approx(ref.llf, abs=1e-7)
    # the national slope of x1 is the mean of the market slopes
    slopes = ref.params["x1"] + np.r_[0, [ref.params[f"C(market)[T.Market_{i}]:x1"] for i in range(1, 10)]]
    assert ols_fit.fixef["x1"] == pytest.approx(slopes.mean(), abs=1e-10)


def test_decompose_adds_up_to_predict(ols_fit):
    parts = ols_fit.decompose()
    assert list(parts.columns) == ["national", "market|(Intercept)", "market|x1", "market:submarket|(Intercept)",
                                   "prediction"]
    np.testing.assert_array_equal(parts.drop(columns="prediction").sum(axis=1), parts["prediction"])
    np.testing.assert_array_equal(ols_fit.predict(), parts["prediction"].to_numpy())


def test_predict_unseen_groups_is_population_level(ols_fit, seed_data):
    data, _ = seed_data
    new = pd.DataFrame({"x1": [0.5, 0.5, 0.5], "x2": [1.0, 1.0, 1.0],
                        "market": ["Market_3", "Market_3", "Market_new"], "submarket": ["Sub1", "Sub_new", "Sub1"]})
    parts = ols_fit.decompose(new)
    fe = ols_fit.fixef
    national = fe["(Intercept)"] + 0.5 * fe["x1"] + fe["x2"]
    np.testing.assert_allclose(parts["national"], national)
    mk = ols_fit.ranef("market").loc["Market_3"]
    sm = ols_fit.ranef("market:submarket").loc["Market_3:Sub1", "(Intercept)"]
    expected = [national + mk["(Intercept)"] + 0.5 * mk["x1"] + sm, national + mk["(Intercept)"] + 0.5 * mk["x1"],
                national]
    np.testing.assert_allclose(ols_fit.predict(new), expected, rtol=1e-12)
    assert parts.attrs["unseen"] == {"market": 1, "market:submarket": 2}


def test_tidy_schema(ols_fit):
    t = ols_fit.tidy()
    assert list(t.columns) == ["effect", "group", "level", "term", "estimate", "std_error", "conf_low",
                               "conf_high", "df", "p_value", "interval", "backend"]
    assert set(t["interval"]) == {""}  # ols's intervals are its own (t with the residual df), not conditional
    assert set(t["effect"]) == {"fixed", "ran_vals", "ran_pars"}
    fx = t[t["effect"] == "fixed"]
    assert (fx["conf_low"] < fx["estimate"]).all() and (fx["estimate"] < fx["conf_high"]).all()
    # t intervals on the residual df, and that t test's p-values; no df on the other rows
    res = ols_fit.raw if hasattr(ols_fit.raw, "df_resid") else None
    if res is not None:
        assert (fx["df"] == res.df_resid).all()
        np.testing.assert_allclose(fx["p_value"], np.asarray(res.pvalues)[:len(fx)], rtol=1e-10)
    assert (fx["df"] > 0).all() and fx["p_value"].between(0, 1).all()
    assert t.loc[t["effect"] != "fixed", ["df", "p_value"]].isna().all().all()
    assert ols_fit.provenance["statsmodels"]
    assert ols_fit.timing["fit_seconds"] > 0
    js = ols_fit.to_dict()
    assert js["tidy"][0]["term"] == "(Intercept)" and js["backend"] == "ols"
