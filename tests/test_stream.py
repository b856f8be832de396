"""Streamed fits (hiercompare.sources, leafsums): per-leaf sums read in batches from Parquet / CSV / pyarrow / Dask.

The reference is the in-memory native fit of the same rows (itself checked against lme4 and a dense N x N
computation in test_native.py). Tolerances: per-leaf sums 1e-12 relative to their largest entry (only the
order of the additions differs); everything computed at one theta (deviance, beta, BLUPs) 1e-9; the fitted
log-likelihood 1e-10 relative; fitted parameters 1e-6 relative (fixed effects) and 1e-5 relative (SDs): the
optimiser stops within its tolerance at a point that moves with the last bits of the sums (theta moved ~5e-9
here), as two starts of the in-memory fit would.
"""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.errors import CrossedFactorsError, DataError, NestingError, SpecError
from hiercompare.simulate import PARQUET_BLOCK, simulate_to_parquet
from hiercompare.sources import StreamedFit, write_predictions

F = "y ~ x1 + x2 + region + (1 + x1 | market) + (1 | market:submarket)"
SEED_F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def _data(seed: int = 3) -> pd.DataFrame:
    sc = hc.Scenario(levels=(
        hc.LevelScenario("market", 6, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)), label="M{i}"),
        hc.LevelScenario("submarket", (2, 4), {"(Intercept)": 0.4}, label="S{i}")), n_obs=(5, 40))
    data, _ = hc.simulate(sc, seed=seed)
    rng = np.random.default_rng(seed)
    data["region"] = rng.choice(["north", "south", "east"], len(data))
    data["y"] = data["y"] + data["region"].map({"north": 0.3, "south": -0.2, "east": 0.0})
    return data


@pytest.fixture(scope="module")
def data():
    return _data()


@pytest.fixture(scope="module")
def parquet(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("stream") / "data.parquet"
    data.to_parquet(path, row_group_size=53)
    return path


def _sums(fit):
    return mixedcore.from_model_data(fit.model).C


def _assert_same_sums(a, b):
    A, B = _sums(a), _sums(b)
    assert A.shape == B.shape
    np.testing.assert_allclose(B, A, rtol=0, atol=1e-12 * np.abs(A).max())


def _assert_same_fit(mem, st, reml=True):
    """Streamed ``st`` against the in-memory ``mem``: same rows, same model, same numbers."""
    assert isinstance(st, StreamedFit) and isinstance(st, hc.Fit)
    assert st.nobs == mem.nobs and st.provenance["nobs"] == mem.nobs
    _assert_same_sums(mem, st)
    assert st.loglik == pytest.approx(mem.loglik, rel=1e-10)
    ta, tb = mem.tidy(), st.tidy()
    pd.testing.assert_frame_equal(ta[["effect", "group", "level", "term"]], tb[["effect", "group", "level", "term"]])
    np.testing.assert_allclose(st.fixef.to_numpy(), mem.fixef.to_numpy(), rtol=1e-6)
    sd = ta["term"].str.startswith("sd__")
    np.testing.assert_allclose(tb.loc[sd, "estimate"], ta.loc[sd, "estimate"], rtol=1e-5)
    # at one theta every number is the same to rounding
    ca, cb = mixedcore.from_model_data(mem.model), mixedcore.from_model_data(st.model)
    ra, rb = ca.solve(mem.raw.theta, reml=reml), cb.solve(mem.raw.theta, reml=reml)
    assert rb.deviance == pytest.approx(ra.deviance, rel=1e-12)
    np.testing.assert_allclose(rb.beta, ra.beta, rtol=1e-9, atol=1e-12)
    for x, y in zip(ra.blups + ra.blup_cov, rb.blups + rb.blup_cov):
        np.testing.assert_allclose(y, x, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["REML", "ML"])
def test_streamed_parquet_equals_in_memory(data, parquet, method):
    mem = hc.fit(data, F, backend="native", method=method)
    st = hc.fit(parquet, F, backend="native", method=method, batch_rows=37)
    _assert_same_fit(mem, st, reml=method == "REML")
    assert st.diagnostics["stream"]["rows_read"] == len(data)
    assert st.diagnostics["stream"]["chunks"] > 10  # really read in pieces
    assert st.provenance["source"] == str(parquet)
    copy = pickle.loads(pickle.dumps(st))  # a streamed Fit pickles (Dask workers get it for predictions)
    assert isinstance(copy, StreamedFit) and copy.tidy().equals(st.tidy())
    # predictions on new rows (a DataFrame) as in memory
    np.testing.assert_allclose(st.predict(data.head(200)), mem.predict(data.head(200)), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(st.ranef("market").to_numpy(), mem.ranef("market").to_numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch_rows", [1, 7, 100_000])
def test_chunk_boundaries_and_row_order_change_nothing(tmp_path, data, batch_rows):
    """Shuffled rows: labels, levels and cells arrive in another order, groups are cut across batches."""
    small = data.sample(frac=1, random_state=batch_rows).reset_index(drop=True)
    path = tmp_path / "shuffled.parquet"
    small.to_parquet(path, row_group_size=41)
    mem = hc.fit(small, F, backend="native")
    st = hc.fit(path, F, backend="native", batch_rows=batch_rows)
    _assert_same_fit(mem, st)


def test_reference_level_first_seen_in_the_last_chunk(tmp_path, data):
    """Treatment coding's reference (the first sorted level, 'east') is known only after the last chunk."""
    d = pd.concat([data[data.region != "east"], data[data.region == "east"]], ignore_index=True)
    path = tmp_path / "late.parquet"
    d.to_parquet(path, row_group_size=100)
    mem = hc.fit(d, F, backend="native")
    st = hc.fit(path, F, backend="native", batch_rows=100)
    assert list(st.fixef.index) == ["(Intercept)", "x1", "x2", "region[T.north]", "region[T.south]"]
    assert st.model.categories == {"region": ("east", "north", "south")}
    _assert_same_fit(mem, st)
    assert st.tidy(names="r")["term"].tolist()[:5] == ["(Intercept)", "x1", "x2", "regionnorth", "regionsouth"]


def test_no_intercept_and_two_categorical_terms(tmp_path, data):
    d = data.assign(season=np.where(np.arange(len(data)) % 3 == 0, "winter", "summer"))
    f = "y ~ 0 + region + season + x1 + (1 + x1 | market) + (1 | market:submarket)"
    path = tmp_path / "cat2.parquet"
    d.to_parquet(path, row_group_size=64)
    _assert_same_fit(hc.fit(d, f, backend="native"), hc.fit(path, f, backend="native", batch_rows=50))


def test_folders_hive_partitions_csv_and_pyarrow_objects(tmp_path, data):
    mem = hc.fit(data, F, backend="native")
    folder = tmp_path / "parts"
    folder.mkdir()
    shuffled = data.sample(frac=1, random_state=1)
    for i, rows in enumerate(np.array_split(np.arange(len(data)), 3)):
        shuffled.iloc[rows].to_parquet(folder / f"part-{i}.parquet")
    _assert_same_fit(mem, hc.fit(folder, F, backend="native", batch_rows=64))
    table = pa.Table.from_pandas(data, preserve_index=False)
    ds.write_dataset(table, tmp_path / "hive", format="parquet", partitioning=["market"],
                     partitioning_flavor="hive")
    _assert_same_fit(mem, hc.fit(tmp_path / "hive", F, backend="native"))
    _assert_same_fit(mem, hc.fit(ds.dataset(folder), F, backend="native"))
    _assert_same_fit(mem, hc.fit(table, F, backend="native", batch_rows=100))
    _assert_same_fit(mem, hc.fit(pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=77)),
                                 F, backend="native"))
    csv = tmp_path / "data.csv"
    data.to_csv(csv, index=False)
    _assert_same_fit(hc.fit(pd.read_csv(csv), F, backend="native"), hc.fit(str(csv), F, backend="native"))


def test_dask_partitions_and_local_cluster(data):
    dd = pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    import dask

    from hiercompare.runenv import clean_child_environment

    mem = hc.fit(data, F, backend="native")
    ddf = dd.from_pandas(data.sample(frac=1, random_state=2), npartitions=7, sort=False)
    with dask.config.set(scheduler="sync"):
        _assert_same_fit(mem, hc.fit(ddf, F, backend="native"))
    with clean_child_environment():
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    try:
        with distributed.Client(cluster) as client:
            st = hc.fit(ddf, F, backend="native", scheduler=client)
            _assert_same_fit(mem, st)
            assert st.diagnostics["stream"]["chunks"] == 7
            for method in ("ML",):
                _assert_same_fit(hc.fit(data, F, backend="native", method=method),
                                 hc.fit(ddf, F, backend="native", method=method, scheduler=cluster), reml=False)
    finally:
        cluster.close()


# ---------------------------------------------------------------------- errors: each names the file or partition
def _write(path, frame, **kw):
    frame.to_parquet(path, **kw)
    return path


def test_missing_values_name_the_file_and_rows_or_are_dropped_and_counted(tmp_path, data):
    d = data.copy()
    d.loc[130, "x1"] = np.nan
    d.loc[131, "x2"] = np.inf
    d.loc[400, "submarket"] = None
    path = _write(tmp_path / "na.parquet", d, row_group_size=100)
    with pytest.raises(DataError, match=r"na\.parquet \(rows 100-199\): missing or non-finite values in used "
                                        r"columns: x1 \(1 rows\), x2 \(1 rows\); the first at row 30") as e:
        hc.fit(path, F, backend="native", batch_rows=100)
    assert "na_action='drop'" in str(e.value)
    mem = hc.fit(d, F, backend="native", na_action="drop")
    st = hc.fit(path, F, backend="native", na_action="drop", batch_rows=64)
    _assert_same_fit(mem, st)
    assert st.diagnostics["dropped_rows"] == mem.diagnostics["dropped_rows"] == 3
    assert st.diagnostics["notes"][0].startswith(f"na_action='drop' removed 3 of {len(d)} rows with missing values")
    for col in ("x1 (1 rows)", "x2 (1 rows)", "submarket (1 rows)"):
        assert col in st.diagnostics["notes"][0]


def test_a_label_under_two_parents_names_both_files(tmp_path, data):
    folder = tmp_path / "nest"
    folder.mkdir()
    d = data.assign(sub=data["market"] + "_" + data["submarket"])
    f = "y ~ x1 + (1 | market) + (1 | sub)"
    a, b = d[d.market != "M5"], d[d.market == "M5"].copy()
    b.loc[b.index[:3], "sub"] = "M0_S0"  # M0_S0 also appears under M5, in the second file only
    _write(folder / "a.parquet", a)
    _write(folder / "b.parquet", b)
    with pytest.raises(NestingError, match=r"sub is not nested in market: 1 of .*\('M0_S0' appears under market "
                                           r"'M0', 'M5'") as e:
        hc.fit(folder, f, backend="native")
    msg = str(e.value)
    assert msg.startswith(str(folder)) and "a.parquet (rows" in msg and "b.parquet (rows" in msg
    assert "(1 | market:sub)" in msg  # the fix, as in memory
    # the same data in memory gives the same message body
    with pytest.raises(NestingError) as e_mem:
        hc.fit(pd.concat([a, b]), f, backend="native")
    assert str(e_mem.value) in msg


def test_crossed_factors_and_single_group(tmp_path, data):
    path = _write(tmp_path / "crossed.parquet", data.assign(submarket="S" + (np.arange(len(data)) % 3).astype(str)))
    with pytest.raises(CrossedFactorsError, match=r"crossed\.parquet: submarket is not nested in market: .*crossed, "
                                                  r"not nested.* Where: 'S0' under market 'M0' first in .*crossed\.parquet"):
        hc.fit(path, "y ~ x1 + (1 | market) + (1 | submarket)", backend="native")
    one = _write(tmp_path / "one.parquet", data.assign(market="M0"))
    with pytest.raises(DataError, match=r"one\.parquet: the grouping factor market has a single level"):
        hc.fit(one, "y ~ x1 + (1 | market)", backend="native")


def test_column_types_must_agree_across_files(tmp_path, data):
    folder = tmp_path / "types"
    folder.mkdir()
    _write(folder / "a.parquet", data.iloc[:300])
    _write(folder / "b.parquet", data.iloc[300:].astype({"x1": str}))
    with pytest.raises(DataError, match=r"b\.parquet: column 'x1' has type (string|large_string) here but double "
                                        r"in .*a\.parquet; every file must hold the same column types"):
        hc.fit(folder, F, backend="native")
    # int64 in one file and double in the next is fine: numbers are numbers
    folder2 = tmp_path / "ints"
    folder2.mkdir()
    d = data.assign(x2=np.round(data["x2"] * 3))
    _write(folder2 / "a.parquet", d.iloc[:300].astype({"x2": "int64"}))
    _write(folder2 / "b.parquet", d.iloc[300:])
    _assert_same_fit(hc.fit(d, F, backend="native"), hc.fit(folder2, F, backend="native"))


def test_type_and_design_errors_name_the_source(tmp_path, data):
    def fails(frame, formula, pattern, exc=DataError):
        path = _write(tmp_path / "bad.parquet", frame)
        with pytest.raises(exc, match=pattern):
            hc.fit(path, formula, backend="native")

    fails(data.assign(y=data["y"].astype(str)), F, r"bad\.parquet: the response 'y' must be numeric \(dtype is "
                                                   r"(string|large_string)\)")
    fails(data.assign(x1=data["x1"].astype(str)), "y ~ x2 + (1 + x1 | market)",
          r"bad\.parquet: the varying slope 'x1' must be a numeric column")
    fails(data.assign(x2=data["x2"].astype(str)), "y ~ x1:x2 + (1 | market)",
          r"'x2' in the interaction x1:x2 must be numeric")
    fails(data.drop(columns="x2"), F, r"bad\.parquet: column\(s\) \['x2'\] are missing from the data")
    fails(data.assign(region="east"), F, r"bad\.parquet: the categorical predictor 'region' has a single level")
    fails(data.assign(y=2.0), F, r"bad\.parquet: the response 'y' is constant")
    fails(data.assign(x3=data["x1"] + data["x2"]), "y ~ x1 + x2 + x3 + (1 | market)",
          r"bad\.parquet: the fixed-effect design is rank deficient \(rank 3 < 4 columns")
    fails(data.assign(x1=np.nan), F, r"no rows left to fit|missing or non-finite")
    with pytest.raises(DataError, match=r"no rows left to fit \(\d+ read, every one with a missing value\)"):
        hc.fit(_write(tmp_path / "allna.parquet", data.assign(x1=np.nan)), F, backend="native", na_action="drop")
    with pytest.raises(DataError, match="no such file or folder"):
        hc.fit(tmp_path / "nope.parquet", F, backend="native")


def test_csv_with_a_word_in_a_numeric_column_names_the_file(tmp_path, data):
    path = tmp_path / "bad.csv"
    d = pd.concat([data] * 10, ignore_index=True).astype({"x1": object})  # ~300 KB: several 64 KiB blocks
    d.loc[len(d) - 1, "x1"] = "n/a?"  # in the last block: the first block's types say x1 is a number
    d.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"bad\.csv: a value cannot be read as the model needs it \(.*Row #4181.*'n/a\?'"):
        hc.fit(str(path), F, backend="native", batch_rows=50)
    d.loc[0, "x1"] = "n/a?"  # in the first block: then x1 is text, and the error says what the in-memory one says
    d.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"bad\.csv: the varying slope 'x1' must be a numeric column"):
        hc.fit(str(path), F, backend="native", batch_rows=50)


def test_dask_partition_errors_name_the_partition(data):
    dd = pytest.importorskip("dask.dataframe")
    import dask

    d = data.copy()
    d.loc[len(d) - 1, "x2"] = np.nan
    with dask.config.set(scheduler="sync"), pytest.raises(
            DataError, match=r"partition 3 of 4 of the Dask DataFrame: missing or non-finite values in used columns: "
                             r"x2 \(1 rows\)"):
        hc.fit(dd.from_pandas(d, npartitions=4, sort=False), F, backend="native")


def test_other_backends_refuse_a_source_and_options_need_one(parquet, data):
    with pytest.raises(SpecError, match=r"backend 'mixedlm' needs the rows in memory .* backend='native'"):
        hc.fit(parquet, SEED_F, backend="mixedlm")
    with pytest.raises(SpecError, match="batch_rows and scheduler are for sources read in batches"):
        hc.fit(data, F, backend="native", batch_rows=10)
    with pytest.raises(SpecError, match="scheduler= is for Dask DataFrames"):
        hc.fit(parquet, F, backend="native", scheduler="tcp://localhost:1")


# ---------------------------------------------------------------------- predictions
def test_predictions_and_decomposition_streamed_to_parquet(tmp_path, data, parquet):
    st = hc.fit(parquet, F, backend="native")
    with pytest.raises(DataError, match="kept no rows; pass the rows to decompose"):
        st.decompose()
    with pytest.raises(DataError, match="kept no rows"):
        st.predict()
    new = data.copy()
    new.loc[:9, "market"] = "M_new"  # unseen market: population level there and below
    new_path = _write(tmp_path / "new.parquet", new, row_group_size=90)
    res = st.decompose(new_path, out=tmp_path / "parts.parquet", keep=["market", "submarket"], batch_rows=70)
    got = pd.read_parquet(tmp_path / "parts.parquet")
    want = st.decompose(new)
    assert res["rows"] == len(new) and res["unseen"] == {"market": 10, "market:submarket": 10}
    assert res["unseen"] == want.attrs["unseen"]
    assert list(got.columns) == ["market", "submarket"] + list(want.columns)
    np.testing.assert_allclose(got[want.columns].to_numpy(), want.to_numpy(), rtol=1e-12, atol=1e-12)
    assert (got["market"].astype(str).to_numpy() == new["market"].to_numpy()).all()
    res = st.predict(new_path, out=tmp_path / "pred.parquet")
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "pred.parquet")["prediction"], st.predict(new),
                               rtol=1e-12, atol=1e-12)
    # any Fit: an in-memory fit streams its predictions the same way
    mem = hc.fit(data, F, backend="native")
    write_predictions(mem, new_path, tmp_path / "mem.parquet")
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "mem.parquet")["prediction"], mem.predict(new),
                               rtol=1e-12, atol=1e-12)


def test_dask_predictions_are_written_per_partition(tmp_path, data, parquet):
    dd = pytest.importorskip("dask.dataframe")
    import dask

    st = hc.fit(parquet, F, backend="native")
    with dask.config.set(scheduler="sync"):
        res = st.predict(dd.from_pandas(data, npartitions=3), out=tmp_path / "pred")
    assert res["rows"] == len(data) and sorted(p.name for p in (tmp_path / "pred").iterdir()) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "pred")["prediction"], st.predict(data), rtol=1e-12)


def test_cli_fits_a_parquet_file_in_batches(tmp_path, parquet, data):
    out, pred = tmp_path / "fit.json", tmp_path / "pred.parquet"
    cmd = [sys.executable, "-m", "hiercompare.cli", "fit", "--data", str(parquet), "--formula", F, "--backend",
           "native", "--batch-rows", "100", "--out", str(out), "--predictions", str(pred)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    got = json.loads(out.read_text())
    mem = hc.fit(data, F, backend="native")
    assert got["loglik"] == pytest.approx(mem.loglik, rel=1e-10)
    assert got["provenance"]["source"] == str(parquet) and got["nobs"] == len(data)
    assert got["diagnostics"]["stream"]["batch_rows"] == 100
    parts = pd.read_parquet(pred)
    assert list(parts.columns[:2]) == ["market", "submarket"]
    np.testing.assert_allclose(parts["prediction"], mem.predict(data), rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------- simulation straight to Parquet
def test_simulate_to_parquet_same_truth_and_independent_of_chunks(tmp_path):
    sc = hc.Scenario(levels=(
        hc.LevelScenario("market", 4, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)), label="Market_{i}"),
        hc.LevelScenario("submarket", (2, 3), {"(Intercept)": 0.4}, label="Sub{i}")), n_obs=(20_000, 40_000))
    truth_a = simulate_to_parquet(sc, tmp_path / "a.parquet", seed=5, chunk_rows=PARQUET_BLOCK)
    truth_b = simulate_to_parquet(sc, tmp_path / "b.parquet", seed=5, chunk_rows=3 * PARQUET_BLOCK + 1)
    a, b = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert a.equals(b)  # the rows do not depend on the chunk size
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups > pq.ParquetFile(
        tmp_path / "b.parquet").metadata.num_row_groups
    data, truth = hc.simulate(sc, seed=5)  # same tree, effects and leaf sizes as simulate()
    frame = a.to_pandas()
    assert len(frame) == len(data) > 2 * PARQUET_BLOCK
    pd.testing.assert_frame_equal(truth_a.tidy("ran_vals").drop(columns="realized"),
                                  truth.tidy("ran_vals").drop(columns="realized"))
    assert list(frame.columns) == list(data.columns)
    sizes = lambda d: d.groupby(["market", "submarket"], observed=True).size().sort_index().to_numpy()
    assert (sizes(frame) == sizes(data)).all()
    res = truth_a.tidy("ran_pars").set_index("group").loc["Residual", "realized"]
    fit = hc.fit(tmp_path / "a.parquet", sc.formula(), backend="native")
    assert res == pytest.approx(frame["y"].sub(fit.predict(frame)).std(), rel=2e-3)
    assert truth_a.fixef.to_dict() == truth.fixef.to_dict()
    meta = pq.ParquetFile(tmp_path / "a.parquet").schema_arrow.metadata
    assert json.loads(meta[b"hiercompare.seed"]) == 5
    assert hc.Scenario.from_dict(json.loads(meta[b"hiercompare.scenario"])) == sc


def test_cli_simulate_writes_parquet_in_chunks(tmp_path):
    from hiercompare.cli import main

    out, truth = tmp_path / "sim.parquet", tmp_path / "truth.json"
    assert main(["simulate", "--out", str(out), "--truth", str(truth), "--seed", "4", "--chunk-rows", "1"]) == 0
    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == 5000 and meta.num_row_groups == 1  # chunk_rows rounds up to whole 65,536-row blocks
    again = simulate_to_parquet(hc.Scenario(), tmp_path / "again.parquet", seed=4)
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "again.parquet"))
    pd.testing.assert_frame_equal(hc.Truth.from_json(truth).tidy(), again.tidy())
