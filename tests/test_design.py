"""Bad input: every case gets a clear error naming the problem and the fix."""
import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import BackendUnavailable, DataError, SpecError
from hiercompare.design import prepare

F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def _spec(f=F, family="gaussian"):
    return hc.ModelSpec.from_formula(f, family=family)


def test_missing_column(seed_data):
    data, _ = seed_data
    with pytest.raises(DataError, match=r"column\(s\) \['x2'\] are missing from the data; it has \['y', 'x1'"):
        prepare(_spec(), data.drop(columns="x2"))


def test_nan_is_an_error_by_default_and_drop_is_counted(seed_data):
    data, _ = seed_data
    bad = data.copy()
    bad.loc[[3, 10, 11], "x1"] = np.nan
    bad.loc[5, "y"] = np.inf
    with pytest.raises(DataError, match=r"y \(1 rows\), x1 \(3 rows\).*na_action='drop'"):
        prepare(_spec(), bad)
    md = prepare(_spec(), bad, na_action="drop")
    assert md.n == len(data) - 4 and md.dropped_rows == 4
    assert "removed 4 of 5000 rows" in md.notes[0]
    f = hc.fit(bad, F, backend="ols", na_action="drop")
    assert f.nobs == 4996 and f.diagnostics["dropped_rows"] == 4
    assert any("removed 4 of 5000" in n for n in f.diagnostics["notes"])


def test_nan_in_grouping_column(seed_data):
    data, _ = seed_data
    bad = data.copy()
    bad["market"] = bad["market"].astype(object)
    bad.loc[7, "market"] = None
    with pytest.raises(DataError, match=r"market \(1 rows\)"):
        prepare(_spec(), bad)


def test_non_numeric_response(seed_data):
    data, _ = seed_data
    bad = data.assign(y=data["y"].astype(str))
    with pytest.raises(DataError, match="response 'y' must be numeric"):
        prepare(_spec(), bad)


def test_family_checks(seed_data):
    data, _ = seed_data
    with pytest.raises(DataError, match="binomial' needs a 0/1 response"):
        prepare(_spec(family="binomial"), data)
    with pytest.raises(DataError, match="poisson' needs non-negative integer counts"):
        prepare(_spec(family="poisson"), data)


def test_categorical_slope_rejected(seed_data):
    data, _ = seed_data
    bad = data.assign(x1=np.where(data["x1"] > 0, "hi", "lo"))
    with pytest.raises(DataError, match="varying slope 'x1' must be a numeric column"):
        prepare(_spec(), bad)


def test_categorical_fixed_terms(seed_data):
    data, _ = seed_data
    d = data.assign(region=np.where(data["x2"] > 0.5, "north", np.where(data["x2"] < -0.5, "south", "east")))
    md = prepare(_spec("y ~ x1 + region + (1 | market)"), d)
    assert md.fixed_names == ["(Intercept)", "x1", "region[T.north]", "region[T.south]"]
    assert [c.r_name for c in md.columns] == ["(Intercept)", "x1", "regionnorth", "regionsouth"]
    md2 = prepare(_spec("y ~ x1 + C(region) + (1 | market)"), d)
    np.testing.assert_array_equal(md.X, md2.X)
    with pytest.raises(DataError, match="levels not seen when fitting: \\['west'\\]"):
        md.fixed_matrix(d.assign(region="west").head(3))


def test_collinear_fixed_effects(seed_data):
    data, _ = seed_data
    with pytest.raises(DataError, match="rank deficient"):
        prepare(_spec("y ~ x1 + x3 + (1 | market)"), data.assign(x3=2 * data["x1"]))


def test_not_a_dataframe():
    with pytest.raises(DataError, match="must be a pandas DataFrame"):
        prepare(_spec(), {"y": [1, 2]})


def test_unknown_and_unavailable_backends(seed_data, monkeypatch):
    data, _ = seed_data
    with pytest.raises(SpecError, match="unknown backend 'stan'; registered backends are"):
        hc.fit(data, F, backend="stan")
    from hiercompare import rbridge

    monkeypatch.setattr(rbridge, "availability", lambda pkgs=(): (False, "R cannot be started (test); run `make install`"))
    with pytest.raises(BackendUnavailable, match="lme4: R cannot be started .*make install"):
        hc.fit(data, F, backend="lme4")


def test_backend_family_and_structure_limits(seed_data):
    data, _ = seed_data
    with pytest.raises(SpecError, match="backend 'mixedlm' fits families \\['gaussian'\\], not 'binomial'"):
        hc.fit(data, F, backend="mixedlm", family="binomial")
    with pytest.raises(SpecError, match="varying slope\\(s\\) \\['x1'\\] at the nested level market:submarket"):
        hc.fit(data, "y ~ x1 + (1 | market) + (1 + x1 | market:submarket)", backend="mixedlm")
    with pytest.raises(SpecError, match="ols.* fits families"):
        hc.fit(data, F, backend="ols", family="poisson")
