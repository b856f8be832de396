"""A small simulation-based calibration run for the pymc backend (the full run is recorded under validation/).

30 simulations on a small tree (6 markets x 3 submarkets x 8 rows), 200 thinned posterior draws each. Under a
correct sampler the ranks are uniform: each parameter's chi-square test over 5 bins must not reject at the
0.1% level (a test at that level across 8 parameters rejects a calibrated sampler with probability < 1%),
and the ranks' mean must lie within 4 standard errors of the uniform mean.
"""
import numpy as np
import pytest

import hiercompare as hc
from hiercompare.sbc import sbc, small_design

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif("pymc" not in hc.available_backends(), reason="pymc not installed")]


def test_sbc_small():
    md, pri = small_design()
    res = sbc(md, pri, n_sims=30, draws=200, tune=300, thin=2, seed=4)
    assert res.n_draws == 200
    assert list(res.ranks.columns) == ["beta[(Intercept)]", "beta[x1]", "beta[x2]", "sigma",
                                       "sd[market:(Intercept)]", "sd[market:x1]", "sd[market:submarket:(Intercept)]",
                                       "cor[market]"]
    u = res.uniformity(bins=5)
    assert (u["p_value"] > 1e-3).all(), u
    mean_rank = res.ranks.mean() / res.n_draws
    se = np.sqrt(1 / 12 / len(res.ranks))
    assert ((mean_rank - 0.5).abs() < 4 * se).all(), mean_rank
    png = res.ecdf_difference_plot()
    assert len(png) > 1000
