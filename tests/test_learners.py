"""The learners' shared validate-then-refit loop (lightgbm, lightgbm-cat, torch, torch-embed all use it)."""
import numpy as np
import pytest

import hiercompare as hc
from hiercompare.backends.learners import group_aware_split, validate_then_refit
from hiercompare.design import prepare
from hiercompare.errors import DataError


def _md(n_obs):
    sc = hc.Scenario(n_obs=n_obs)
    data, _ = hc.simulate(sc, seed=4)
    return prepare(hc.ModelSpec.from_formula(sc.formula()), data)


def test_count_chosen_on_held_out_rows_then_refit_on_all():
    md = _md(10)
    seen = []

    def validate(mask):
        seen.append(mask)
        return 7

    out, count, note = validate_then_refit(md, 0.2, 3, 100, "rounds", validate, lambda n: ("fitted", n))
    assert out == ("fitted", 7) and count == 7 and note is None
    np.testing.assert_array_equal(seen[0], group_aware_split(md, 0.2, 3))
    assert seen[0].sum() == 2 * 50  # 2 of the 10 rows of each of the 50 submarkets


@pytest.mark.parametrize("n_obs, fraction, note", [
    (10, 0.0, None),  # no validation asked for: the maximum, silently
    (2, 0.2, "every leaf group has too few rows for a validation split; trained the maximum 100 epochs"),
])
def test_no_held_out_rows_means_the_maximum(n_obs, fraction, note):
    def validate(mask):
        raise AssertionError("validate must not run without held-out rows")

    out, count, got = validate_then_refit(_md(n_obs), fraction, 0, 100, "epochs", validate, lambda n: n)
    assert (out, count, got) == (100, 100, note)


def test_data_error_in_validation_skips_it_with_a_note():
    def validate(mask):
        raise DataError("category 'c' only in the held-out rows")

    out, count, note = validate_then_refit(_md(10), 0.2, 0, 40, "epochs", validate, lambda n: n)
    assert (out, count) == (40, 40)
    assert note == "validation skipped (category 'c' only in the held-out rows); trained the maximum 40 epochs"
