"""The Fit schema's shared pieces: the one Wald interval every frequentist backend reports (ran_vals, and fixed
effects under df='z'), and the fixed effects' t intervals with their df."""
import numpy as np
import pytest
from scipy.stats import norm
from scipy.stats import t as t_dist

import hiercompare as hc
from hiercompare.results import normal_quantile, wald_interval


def test_normal_quantile_is_scipys():
    assert normal_quantile() == 1.959963984540054 == norm.ppf(0.975)  # the digits the backends had written out
    assert normal_quantile(0.9) == pytest.approx(1.6448536269514722, abs=1e-15)


def test_wald_interval_scalars_and_arrays():
    assert wald_interval(1.0, 0.5) == {"conf_low": 1.0 - 0.979981992270027, "conf_high": 1.979981992270027}
    w = wald_interval(np.array([0.0, 2.0]), np.array([1.0, 0.0]), level=0.9)
    np.testing.assert_allclose(w["conf_low"], [-1.6448536269514722, 2.0], rtol=0, atol=1e-15)


@pytest.mark.parametrize("backend", ["native", "mixedlm"])
def test_backends_report_that_interval(backend, seed_data):
    """ran_vals: the Wald interval; fixed effects: t with the row's df (Satterthwaite by default), or the same
    Wald interval with df = inf under df='z'."""
    data, _ = seed_data
    formula = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
    z = 1.959963984540054
    for df in (None, "z"):
        t = hc.fit(data, formula, backend=backend, df=df).tidy()
        t = t[t["std_error"].notna()]
        assert set(t["effect"]) == {"fixed", "ran_vals"}
        assert t.loc[t["effect"] == "ran_vals", "df"].isna().all()
        fixed = (t["effect"] == "fixed").to_numpy()
        dfs = t.loc[fixed, "df"].to_numpy()
        if df == "z":
            assert np.isinf(dfs).all()
        else:
            assert np.isfinite(dfs).all() and (dfs > 1).all()
        q = np.where(fixed, t_dist.ppf(0.975, t["df"].fillna(np.inf)), z)
        np.testing.assert_allclose(t["conf_low"], t["estimate"] - q * t["std_error"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(t["conf_high"], t["estimate"] + q * t["std_error"], rtol=0, atol=1e-12)
