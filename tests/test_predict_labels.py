"""predict()/decompose() find the fitted groups by value whatever the grouping column's dtype is now (integer
ids read back as floats, text or categories), count and warn about groups not seen in fitting, and refuse them
with ``allow_new_levels=False``. The same holds for predictions streamed from a file (write_predictions)."""
import warnings

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.errors import DataError, UnseenLevelsWarning
from hiercompare.hierarchy import value_key

F = "y ~ x + (1 | school) + (1 | school:klass)"


@pytest.fixture(scope="module")
def schools():
    """30 schools with integer ids 1..30, 3 classes each (ids 1..3 in every school), 20 pupils per class."""
    rng = np.random.default_rng(11)
    school = np.repeat(np.arange(1, 31), 60)
    klass = np.tile(np.repeat(np.arange(1, 4), 20), 30)
    x = rng.normal(size=len(school))
    s_eff = rng.normal(0, 1.0, 31)
    c_eff = rng.normal(0, 0.5, (31, 4))
    y = 2 + 0.5 * x + s_eff[school] + c_eff[school, klass] + rng.normal(0, 0.5, len(school))
    return pd.DataFrame({"school": school, "klass": klass, "x": x, "y": y})


@pytest.fixture(scope="module")
def fit_int(schools):
    return hc.fit(schools, F, backend="native")


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning of any kind
        return fn(*args, **kwargs)


CASTS = {
    "float": lambda s: s.astype(float),
    "text": lambda s: s.astype(str),
    "object ints": lambda s: s.astype(object),
    "nullable Int64": lambda s: s.astype("Int64"),
    "category of ints": lambda s: s.astype("category"),
    "category of text": lambda s: s.astype(str).astype("category"),
    "text of floats": lambda s: s.astype(float).astype(str),  # "1.0", as a CSV written from floats reads
}


@pytest.mark.parametrize("cast", list(CASTS), ids=list(CASTS))
def test_integer_ids_found_whatever_the_dtype(fit_int, schools, cast):
    new = schools.assign(school=CASTS[cast](schools["school"]), klass=CASTS[cast](schools["klass"]))
    want = fit_int.predict(schools)
    got = _quiet(fit_int.decompose, new)
    assert got.attrs["unseen"] == {"school": 0, "school:klass": 0}
    np.testing.assert_allclose(got["prediction"].to_numpy(), want, rtol=0, atol=1e-12)
    # the group parts are really there: far from the population level (the school SD is about 1)
    assert np.abs(got["school|(Intercept)"]).max() > 0.5


def test_the_reported_bug_float_ids_read_from_csv(fit_int, schools, tmp_path):
    """As the issue found it: newdata read from a CSV where a NaN elsewhere in the column made ids floats."""
    new = schools.head(60).copy().astype({"school": float})
    new.loc[new.index[-1], "school"] = np.nan  # one row without a school
    new.to_csv(tmp_path / "new.csv", index=False)
    back = pd.read_csv(tmp_path / "new.csv")
    assert back["school"].dtype == np.float64
    with pytest.warns(UnseenLevelsWarning, match=r"1 of 60 rows have a school not seen in fitting") as rec:
        got = fit_int.predict(back)
    assert len(rec) == 1
    want = fit_int.predict(schools.head(60))
    np.testing.assert_allclose(got[:-1], want[:-1], rtol=0, atol=1e-12)
    national = fit_int.decompose(schools.head(60))["national"].to_numpy()
    assert np.abs(got[:-1] - national[:-1]).max() > 0.5  # not the population-level prediction


def test_text_and_float_ids_at_fit_time(schools):
    as_text = schools.assign(school=schools["school"].astype(str))
    f_text = hc.fit(as_text, F, backend="native")
    as_float = schools.assign(school=schools["school"].astype(float))
    f_float = hc.fit(as_float, F, backend="native")
    want = f_text.predict(as_text)
    for f, fitted in ((f_text, as_text), (f_float, as_float)):
        np.testing.assert_allclose(f.predict(fitted), want, rtol=0, atol=1e-9)  # the same model
        for new in (schools, as_text, as_float, schools.assign(school=schools["school"].astype("category"))):
            np.testing.assert_allclose(_quiet(f.predict, new), want, rtol=0, atol=1e-9)
    # the fit-time dtypes are kept
    cols = {c.name: c for c in f_float.model.hierarchy.level("school").columns}
    assert cols["school"].dtype == "float64" and cols["school"].kind == "float"
    assert cols["school"].labels[0] == "1.0" and cols["school"].values[0] == 1.0


def test_value_keys():
    same = [1, 1.0, np.int64(1), np.float32(1.0), "1", "1.0"]
    assert {value_key(v, str(v)) for v in same} == {("num", 1)}
    assert value_key("01", "01") == ("str", "01") and value_key("+1", "+1") == ("str", "+1")
    assert value_key(1.5, "1.5") == value_key("1.5", "1.5") == ("num", 1.5)
    assert value_key(True, "True") == ("bool", True) != value_key(1, "1")
    assert value_key(np.nan, "nan") is None and value_key(None, "None") is None and value_key(pd.NA, "<NA>") is None


def test_unseen_groups_counted_warned_and_refused(fit_int, schools):
    new = schools.head(10).copy().astype({"school": float})
    new["school"] = [1.0, 2.0, 40.0, 41.0, 40.0, 3.0, 4.0, 5.0, 6.0, 1.5]
    with pytest.warns(UnseenLevelsWarning) as rec:
        d = fit_int.decompose(new)
    assert len(rec) == 1
    msg = str(rec[0].message)
    assert "4 of 10 rows have a school not seen in fitting (3 labels, e.g. '40.0', '41.0', '1.5')" in msg
    assert "(school is float64 here, int64 when fitting)" in msg and "allow_new_levels" in msg
    assert d.attrs["unseen"] == {"school": 4, "school:klass": 4}
    assert d.attrs["unseen_groups"] == {"school": 3, "school:klass": 3}
    # unseen rows: the population level at both levels; seen rows: their groups
    unseen = np.isin(new["school"], [40.0, 41.0, 1.5])
    np.testing.assert_array_equal(d.loc[unseen, ["school|(Intercept)", "school:klass|(Intercept)"]], 0.0)
    np.testing.assert_allclose(d.loc[unseen, "prediction"], d.loc[unseen, "national"], rtol=0, atol=0)
    want = fit_int.predict(new[~unseen].astype({"school": int}))  # the seen rows with integer ids
    np.testing.assert_allclose(d["prediction"].to_numpy()[~unseen], want, rtol=0, atol=1e-12)
    # accepted silently, with the same numbers
    np.testing.assert_allclose(_quiet(fit_int.predict, new, allow_new_levels=True), d["prediction"], atol=0)
    # refused, naming the level, the rows and examples
    with pytest.raises(DataError, match=r"predict\(\): 4 of 10 rows have a school not seen in fitting \(3 labels, "
                                        r"e.g. '40.0', '41.0', '1.5'\).*allow_new_levels=False refuses"):
        fit_int.predict(new, allow_new_levels=False)
    with pytest.raises(DataError, match=r"decompose\(\)"):
        fit_int.decompose(new, allow_new_levels=False)
    # nothing unseen: False is no obstacle, and nothing is said
    np.testing.assert_allclose(_quiet(fit_int.predict, new[~unseen], allow_new_levels=False), want, atol=0)
    with pytest.raises(ValueError, match="allow_new_levels must be True, False or None"):
        fit_int.predict(new, allow_new_levels="no")


def test_only_the_finer_level_unseen(fit_int, schools):
    new = schools.head(4).assign(klass=[1, 2, 9, 9])  # a class that school 1 never had
    with pytest.warns(UnseenLevelsWarning, match=r"2 of 4 rows have a school:klass not seen in fitting "
                                                 r"\(1 label, e.g. '1:9'\)") as rec:
        d = fit_int.decompose(new)
    assert "a school not seen" not in str(rec[0].message)
    assert d.attrs["unseen"] == {"school": 0, "school:klass": 2}
    assert (d["school|(Intercept)"] != 0).all() and (d["school:klass|(Intercept)"].iloc[2:] == 0).all()


def test_zero_padded_text_is_not_an_integer_id(fit_int, schools):
    """'07' is not 7 (codes with leading zeros are text): counted as unseen, and the warning says the dtype
    changed, so the user sees why."""
    new = schools.head(3).assign(school=["01", "1", "1.0"])
    with pytest.warns(UnseenLevelsWarning, match=r"1 of 3 rows have a school not seen in fitting \(1 label, "
                                                 r"e.g. '01'\) \(school is \w+ here, int64 when fitting\)"):
        d = fit_int.decompose(new)
    assert d.attrs["unseen"]["school"] == 1


def test_a_value_naming_two_fitted_groups_is_an_error(schools):
    """Fitted on text labels where '1' and '1.0' are two groups, a numeric 1 could be either."""
    data = schools.assign(school=schools["school"].astype(str))
    data.loc[data["school"] == "30", "school"] = "1.0"
    f = hc.fit(data, F, backend="native")
    np.testing.assert_allclose(_quiet(f.predict, data), f.predict(), atol=0)  # text stays text
    with pytest.raises(DataError, match=r"'school' is float64 here but was \w+ when fitting, and its value 1.0 "
                                        r"matches 2 fitted labels \('1', '1.0'\)"):
        f.predict(data.assign(school=data["school"].astype(float)))


def test_streamed_predictions_match_by_value_and_warn_once(fit_int, schools, tmp_path):
    from hiercompare.sources import write_predictions

    new = schools.astype({"school": float, "klass": float})
    new.loc[:24, "school"] = 99.0  # 25 rows of a new school, in the first batches
    new.to_parquet(tmp_path / "new.parquet", row_group_size=400)
    with pytest.warns(UnseenLevelsWarning) as rec:
        res = write_predictions(fit_int, tmp_path / "new.parquet", tmp_path / "p.parquet", batch_rows=100)
    assert len(rec) == 1  # once for the whole source, not once per batch
    assert f"25 of {len(new)} rows have a school not seen in fitting (1 label, e.g. '99.0')" in str(rec[0].message)
    assert res["rows"] == len(new) and res["unseen"] == {"school": 25, "school:klass": 25}
    assert res["unseen_groups"] == {"school": 1, "school:klass": 2}  # rows 0-24: classes 1 and 2 of school 99
    with pytest.warns(UnseenLevelsWarning):
        want = fit_int.predict(new)
    got = pd.read_parquet(tmp_path / "p.parquet")["prediction"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got[25:], fit_int.predict(schools)[25:], rtol=0, atol=1e-12)
    _quiet(write_predictions, fit_int, tmp_path / "new.parquet", tmp_path / "q.parquet", batch_rows=100,
           allow_new_levels=True)
    with pytest.raises(DataError, match=r"new.parquet \(rows 0-99\): predict\(\): 25 of 100 rows have a school"):
        write_predictions(fit_int, tmp_path / "new.parquet", tmp_path / "r.parquet", batch_rows=100,
                          allow_new_levels=False)


def test_streamed_fit_predicts_a_frame_of_another_dtype(schools, tmp_path):
    """A fit streamed from Parquet (labels read as text) predicts a DataFrame of integer or float ids."""
    schools.to_parquet(tmp_path / "d.parquet", row_group_size=500)
    st = hc.fit(tmp_path / "d.parquet", F, backend="native")
    mem = hc.fit(schools, F, backend="native")
    for new in (schools, schools.astype({"school": float, "klass": float})):
        np.testing.assert_allclose(_quiet(st.predict, new), mem.predict(schools), rtol=1e-9, atol=1e-9)
    with pytest.raises(DataError, match="school not seen"):
        st.predict(schools.assign(school=0), allow_new_levels=False)
