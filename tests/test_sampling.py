"""The MCMC backends' one convergence rule (hiercompare.backends.sampling), used by pymc and brms."""
import math
import warnings

import pytest

from hiercompare.backends import sampling
from hiercompare.errors import ConvergenceWarning


@pytest.mark.parametrize("rhat, ess_bulk, ess_tail, div, ok", [
    ([1.0, 1.01], [400.0, 900.0], [400.0, 500.0], 0, True),  # the thresholds themselves pass
    ([1.0, 1.0101], [900.0, 900.0], [900.0, 900.0], 0, False),
    ([1.0, 1.0], [399.9, 900.0], [900.0, 900.0], 0, False),
    ([1.0, 1.0], [900.0, 900.0], [900.0, 399.0], 0, False),
    ([1.0, 1.0], [900.0, 900.0], [900.0, 900.0], 1, False),
    ([float("nan"), float("nan")], [900.0, 900.0], [900.0, 900.0], 0, False),  # nothing finite: not converged
])
def test_rule(rhat, ess_bulk, ess_tail, div, ok):
    d = sampling.convergence(["a", "b"], rhat, ess_bulk, ess_tail, div)
    assert d["converged"] is ok
    assert d["warnings"] == ([] if ok else
                             ["sampling diagnostics below thresholds (R-hat <= 1.01, ESS >= 400, no divergences)"])


def test_extremes_skip_nonfinite_and_name_their_variable():
    d = sampling.convergence(["b_Intercept", "sd_1", "r_1[g1]"], [1.002, float("nan"), 1.004],
                             [812.0, None, 455.5], [700.0, 650.0, float("inf")], 0)
    assert (d["rhat_max"], d["rhat_max_variable"]) == (1.004, "r_1[g1]")
    assert (d["ess_bulk_min"], d["ess_bulk_min_variable"]) == (455.5, "r_1[g1]")
    assert (d["ess_tail_min"], d["ess_tail_min_variable"]) == (650.0, "sd_1")
    assert d["nonfinite_rhat"] == 1 and d["converged"]
    assert math.isnan(sampling.convergence([], [], [], [], 0)["rhat_max"])


def test_warning_names_numbers_thresholds_and_advice():
    bad = sampling.convergence(["x"], [1.2], [50.0], [60.0], 3)
    with pytest.warns(ConvergenceWarning, match=r"pymc sampling diagnostics failed: R-hat max 1\.2000 \(x\), bulk "
                      r"ESS min 50, tail ESS min 60, 3 divergences \(thresholds: R-hat <= 1\.01, ESS >= 400, no "
                      r"divergences\); raise draws"):
        sampling.warn_if_unconverged("pymc", bad, "raise draws")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sampling.warn_if_unconverged("pymc", sampling.convergence(["x"], [1.0], [900.0], [900.0], 0), "unused")
