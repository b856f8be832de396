"""Data larger than memory: one place that reads Parquet, CSV, pyarrow datasets and Dask DataFrames and hands
the native engine per-leaf sums chunk by chunk.

``hc.fit(source, formula, backend="native")`` with ``source`` one of

* a path: a Parquet file, a folder of Parquet files (hive partitions too) or a CSV file;
* a ``pyarrow.dataset.Dataset``, a ``pyarrow.Table`` or a ``pyarrow.RecordBatchReader``;
* a ``dask.dataframe.DataFrame``: each partition's sums are computed where it lives (on the Dask scheduler
  given by ``scheduler=``: a ``distributed.Client``, a cluster, an address such as ``"tcp://host:8786"``, or
  None for Dask's default, which is the last ``Client`` created) and combined by a tree reduction;

reads only the model's columns in row batches of ``batch_rows`` and accumulates per-leaf cross-products
(:mod:`hiercompare.leafsums`), then fits on the sums. Memory grows with the number of groups and columns,
never with the rows. The in-memory checks are made on every chunk and their errors name the file (and row
range) or the partition: column types (a column must hold one type in every file), missing values
(``na_action``), nesting, categorical levels, a constant response, a rank-deficient design.

The Fit is an ordinary :class:`~hiercompare.results.Fit` (a :class:`StreamedFit`); its rows were not kept, so
``predict()`` / ``decompose()`` need new data: a DataFrame (returned as usual) or a source, whose predictions
are written to Parquet batch by batch (:func:`write_predictions`, which takes any Fit).

Labels are read as pandas' ``astype(str)`` writes them, as the in-memory path does; a CSV's label columns are
read as text, as written (``01`` stays ``01``).
"""
from __future__ import annotations

import time
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd

from .design import _is_numeric
from .errors import DataError, SpecError
from .leafsums import NUMERIC, TEXT, Sums, SummaryData, make_plan
from .results import Fit, check_unseen
from .spec import ModelSpec

BATCH_ROWS = 1 << 20
SPLIT_EVERY = 8  # fan-in of the Dask tree reduction


# ---------------------------------------------------------------------- what counts as a source
def _is_dask(obj) -> bool:
    return type(obj).__module__.split(".")[0] in ("dask", "dask_expr") and hasattr(obj, "to_delayed")


def is_source(obj) -> bool:
    """True for what :func:`prepare_source` reads: a path, a pyarrow dataset/table/reader, a Dask DataFrame."""
    if isinstance(obj, (str, Path)) or _is_dask(obj):
        return True
    mod = type(obj).__module__
    return mod.startswith("pyarrow") and type(obj).__name__ in ("FileSystemDataset", "UnionDataset", "Dataset",
                                                                 "Table", "RecordBatchReader", "InMemoryDataset")


def source_name(obj) -> str:
    if isinstance(obj, (str, Path)):
        return str(obj)
    if _is_dask(obj):
        return f"the Dask DataFrame ({obj.npartitions} partitions)"
    return f"the pyarrow {type(obj).__name__}"


# ---------------------------------------------------------------------- chunks
def _arrow_kind(t) -> str:
    import pyarrow as pa

    return NUMERIC if (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)) else TEXT


class ArrowChunk:
    """A pyarrow RecordBatch as :class:`~hiercompare.leafsums.Chunk`."""

    def __init__(self, batch):
        self.batch = batch
        self.n = batch.num_rows

    def kind(self, column):
        t = self.batch.schema.field(column).type
        return _arrow_kind(t), str(t)

    def numeric(self, column):
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = self.batch.column(column)
        if pa.types.is_boolean(arr.type):
            miss = arr.is_null().to_numpy(zero_copy_only=False)
            return pc.fill_null(arr, False).to_numpy(zero_copy_only=False).astype(float), miss
        values = arr.to_numpy(zero_copy_only=False).astype(float, copy=False)  # nulls -> NaN
        return values, ~np.isfinite(values)

    def labels(self, column):
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = self.batch.column(column)
        if not pa.types.is_dictionary(arr.type):
            arr = pc.dictionary_encode(arr)
        codes = pc.fill_null(arr.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return codes, arr.dictionary.to_pandas().astype(str).to_numpy(dtype=object)


class PandasChunk:
    """A pandas DataFrame (a Dask partition) as :class:`~hiercompare.leafsums.Chunk`."""

    def __init__(self, frame: pd.DataFrame):
        self.frame = frame
        self.n = len(frame)

    def kind(self, column):
        s = self.frame[column]
        return (NUMERIC if _is_numeric(s) else TEXT), str(s.dtype)

    def numeric(self, column):
        values = self.frame[column].to_numpy(dtype=float, na_value=np.nan)
        return values, ~np.isfinite(values)

    def labels(self, column):
        codes, uniques = pd.factorize(self.frame[column])
        return codes.astype(np.int64), pd.Series(uniques).astype(str).to_numpy(dtype=object)


# ---------------------------------------------------------------------- pyarrow sources
def _dataset(obj, labels=(), batch_rows: int = BATCH_ROWS):
    """A pyarrow dataset for a path (Parquet file or folder, CSV file) or a dataset / table as given."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if isinstance(obj, (str, Path)):
        path = Path(obj)
        if not path.exists():
            raise DataError(f"{path}: no such file or folder; give a Parquet file, a folder of Parquet files or a "
                            "CSV file")
        name = path.name.lower()
        if name.endswith((".csv", ".csv.gz", ".tsv")):
            return _csv_dataset(path, labels, batch_rows)
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=list(labels)))
        try:
            return ds.dataset(str(path), format=fmt, partitioning="hive")
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc}); give Parquet files or a .csv file") from None
    if isinstance(obj, pa.Table):
        return ds.dataset(obj)
    return obj


def _csv_dataset(path: Path, labels, batch_rows: int):
    """CSV: types inferred from the first block, then numbers read as float64 and label columns as text in
    every block (so a later block cannot change a column's type). A block is about ``batch_rows`` rows of
    ~64 bytes (between 64 KiB and 64 MiB)."""
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.dataset as ds

    read = pcsv.ReadOptions(block_size=int(min(max(64 * batch_rows, 1 << 16), 1 << 26)))
    schema = ds.dataset(str(path), format=ds.CsvFileFormat(read_options=read)).schema
    types = {}
    for f in schema:
        if f.name in labels:
            types[f.name] = pa.string()
        elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            types[f.name] = pa.float64()
    fmt = ds.CsvFileFormat(read_options=read, convert_options=pcsv.ConvertOptions(column_types=types))
    return ds.dataset(str(path), format=fmt)


def _fragments(dataset) -> list:
    try:
        return list(dataset.get_fragments())
    except AttributeError:
        return [dataset]


def _arrow_chunks(obj, columns, kinds, batch_rows, name, labels=()) -> Iterator[tuple[str, Any]]:
    """``(where, RecordBatch)`` for every batch of ``columns``: file by file, checking each file's types.

    Numeric columns that are not ``labels`` are read as float64 whatever each file stores (int64 in one file,
    double in the next), label columns as the dataset's first file has them."""
    import pyarrow as pa

    if type(obj).__name__ == "RecordBatchReader":
        start = 0
        for batch in obj:
            batch = batch.select(columns)
            yield f"{name} (rows {start}-{start + batch.num_rows - 1})", batch
            start += batch.num_rows
        return
    dataset = obj
    schema = pa.schema([pa.field(c, pa.float64() if kinds[c][0] == NUMERIC and c not in labels
                                 and kinds[c][1] != "bool" else dataset.schema.field(c).type) for c in columns])
    frags = _fragments(dataset)
    first = getattr(frags[0], "path", None) if frags else None
    for frag in frags:
        path = getattr(frag, "path", None) or name
        phys = getattr(frag, "physical_schema", None)
        if phys is not None:
            for c in columns:
                i = phys.get_field_index(c)
                if i >= 0 and _arrow_kind(phys.field(i).type) != kinds[c][0]:
                    raise DataError(f"{path}: column {c!r} has type {phys.field(i).type} here but {kinds[c][1]} in "
                                    f"{first or name}; every file must hold the same column types, so convert it")
        start = 0
        for scanner in _scanners(frag, schema, columns, batch_rows):
            it = iter(scanner.to_batches())
            while True:
                try:
                    batch = next(it)
                except StopIteration:
                    break
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
                    raise DataError(f"{path}: a value cannot be read as the model needs it ({exc}); numeric columns "
                                    "must hold numbers in every row, so clean the file or drop the column from the "
                                    "formula") from None
                yield f"{path} (rows {start}-{start + batch.num_rows - 1})", batch
                start += batch.num_rows


def _scanners(frag, schema, columns, batch_rows):
    """Scanners over one fragment. A Parquet file is scanned one row group at a time, without pre-buffering:
    a scanner over the whole file reads row groups ahead of a slower consumer without bound (1.6 GB resident
    on a 2.4 GB file of 96 row groups here), so memory holds one row group and one batch."""
    import pyarrow.dataset as ds

    if isinstance(frag, ds.ParquetFileFragment):
        opts = ds.ParquetFragmentScanOptions(pre_buffer=False)
        for rg in frag.split_by_row_group():
            yield ds.Scanner.from_fragment(rg, schema=schema, columns=columns, batch_size=batch_rows,
                                           batch_readahead=1, use_threads=True, fragment_scan_options=opts)
    elif isinstance(frag, ds.Fragment):
        yield ds.Scanner.from_fragment(frag, schema=schema, columns=columns, batch_size=batch_rows,
                                       batch_readahead=1, use_threads=True)
    else:
        yield ds.Scanner.from_dataset(frag, columns=columns, batch_size=batch_rows, batch_readahead=1)


def _arrow_kinds(dataset) -> dict:
    return {f.name: (_arrow_kind(f.type), str(f.type)) for f in dataset.schema}


# ---------------------------------------------------------------------- Dask
def _dask_kinds(ddf) -> dict:
    return {c: ((NUMERIC if (pd.api.types.is_numeric_dtype(t) or pd.api.types.is_bool_dtype(t)) else TEXT), str(t))
            for c, t in ddf.dtypes.items()}


def _partition_sums(frame: pd.DataFrame, plan, na_action: str, index: int, count: int) -> Sums:
    sums = Sums(plan, na_action=na_action)
    sums.add(PandasChunk(frame[list(plan.spec.variables)]), f"partition {index} of {count} of the Dask DataFrame")
    return sums.trimmed()


def _merge_sums(*parts: Sums) -> Sums:
    out = parts[0]
    for p in parts[1:]:
        out.merge(p)
    return out.trimmed()


def _compute(obj, scheduler):
    """Compute a Dask object on ``scheduler`` (a Client, a cluster, an address, or None: Dask's default)."""
    import dask

    if scheduler is None:
        return dask.compute(obj)[0]
    import distributed

    if isinstance(scheduler, distributed.Client):
        return scheduler.compute(obj).result()
    if isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address"):
        with distributed.Client(scheduler, set_as_default=False) as client:
            return client.compute(obj).result()
    raise SpecError(f"scheduler must be a distributed.Client, a cluster or an address like 'tcp://host:8786'; "
                    f"got {type(scheduler).__name__}")


def _dask_sums(ddf, plan, na_action, scheduler, split_every=SPLIT_EVERY) -> Sums:
    from dask import delayed

    parts = ddf[list(plan.spec.variables)].to_delayed()
    level = [delayed(_partition_sums)(p, plan, na_action, i, len(parts)) for i, p in enumerate(parts)]
    while len(level) > 1:  # the tree reduction: split_every partials at a time
        level = [delayed(_merge_sums)(*level[i:i + split_every]) for i in range(0, len(level), split_every)]
    return _compute(level[0], scheduler)


# ---------------------------------------------------------------------- the entry point
def prepare_source(spec: ModelSpec, source, backend: str = "native", na_action: str = "error",
                   batch_rows: int | None = None, scheduler=None) -> SummaryData:
    """Read ``source`` once in batches (or per Dask partition) and return its per-leaf sums as a ModelData."""
    if backend != "native":
        raise SpecError(f"backend {backend!r} needs the rows in memory and cannot read {source_name(source)} in "
                        "batches; fit backend='native' (exact Gaussian LMM on per-leaf sums), or read the data (or a "
                        "random subsample of it) into a pandas DataFrame first")
    if spec.offsets or spec.has_trials or spec.family != "gaussian":
        raise SpecError(f"a source read in batches is fitted by the Gaussian per-leaf sums, which carry no offset(), "
                        f"cbind() trials or family {spec.family!r}; read the rows into a DataFrame for {spec.formula!r}")
    if na_action not in ("error", "drop"):
        raise SpecError(f"na_action must be 'error' or 'drop', got {na_action!r}")
    batch_rows = int(batch_rows or BATCH_ROWS)
    if batch_rows < 1:
        raise SpecError(f"batch_rows must be a positive number of rows, got {batch_rows}")
    t0 = time.perf_counter()
    name = source_name(source)
    if _is_dask(source):
        plan = make_plan(spec, _dask_kinds(source), name)
        sums = _dask_sums(source, plan, na_action, scheduler)
    else:
        if scheduler is not None:
            raise SpecError("scheduler= is for Dask DataFrames; read the files with dask.dataframe.read_parquet "
                            "to fit on a cluster")
        dataset = _dataset(source, spec.grouping_variables, batch_rows)
        frags = _fragments(dataset)
        plan = make_plan(spec, _arrow_kinds(dataset), getattr(frags[0], "path", None) if frags else name)
        sums = Sums(plan, na_action=na_action)
        for where, batch in _arrow_chunks(dataset, list(spec.variables), plan.kinds, batch_rows, name,
                                          plan.labels + plan.categorical):
            sums.add(ArrowChunk(batch), where)
    md = sums.finalize(name)
    md.stream["seconds"] = time.perf_counter() - t0
    md.stream["batch_rows"] = None if _is_dask(source) else batch_rows
    return md


def subsample(source, n: int, seed: int = 0, columns=None, labels=(), batch_rows: int | None = None) -> pd.DataFrame:
    """A uniform random sample of ``n`` rows (without replacement) of a file or pyarrow source, read in batches.

    The row numbers are drawn first (``numpy.random.default_rng(seed).choice(rows, n, replace=False)``, sorted),
    then each batch keeps its drawn rows, so memory holds the sample and one batch. The same source, ``n`` and
    seed give the same rows. ``labels`` are read as text (as :func:`prepare_source` reads them). A Dask DataFrame
    is not accepted: sample it with ``ddf.sample(frac=..., random_state=...).compute()``.
    """
    if _is_dask(source):
        raise SpecError("subsample() reads files and pyarrow sources; sample a Dask DataFrame with "
                        "ddf.sample(frac=..., random_state=...).compute()")
    n = int(n)
    if n < 1:
        raise SpecError(f"the subsample needs at least one row, got {n}")
    dataset = _dataset(source, labels, int(batch_rows or BATCH_ROWS))
    if type(dataset).__name__ == "RecordBatchReader":
        raise SpecError("a RecordBatchReader can be read once only; give the file or a pyarrow dataset to subsample")
    total = dataset.count_rows()
    if n >= total:
        raise SpecError(f"the subsample of {n} rows is not smaller than the data ({total} rows); read it whole")
    picks = np.sort(np.random.default_rng(np.random.SeedSequence(seed)).choice(total, size=n, replace=False))
    cols = list(columns) if columns is not None else dataset.schema.names
    frames, start = [], 0
    for batch in dataset.to_batches(columns=cols, batch_size=int(batch_rows or BATCH_ROWS)):
        lo, hi = np.searchsorted(picks, [start, start + batch.num_rows])
        if hi > lo:
            frames.append(batch.take(picks[lo:hi] - start).to_pandas())
        start += batch.num_rows
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
    for c in labels:
        if c in out.columns:
            out[c] = out[c].astype(str)
    out.attrs["subsample"] = {"rows": n, "of": int(total), "seed": int(seed), "source": source_name(source)}
    return out


# ---------------------------------------------------------------------- the Fit and predictions
class StreamedFit(Fit):
    """A Fit made from a streamed source: as any Fit, except that its rows were not kept, so ``predict()`` and
    ``decompose()`` take new data: a DataFrame (returned in memory), or a source with ``out=`` (written to
    Parquet batch by batch by :func:`write_predictions`)."""

    def decompose(self, newdata=None, out=None, keep=(), batch_rows=None, scheduler=None, allow_new_levels=None):
        if newdata is None:
            raise DataError(f"this fit read {self.provenance.get('source', 'a source')} in batches and kept no rows; "
                            "pass the rows to decompose: a DataFrame, or the source with out='parts.parquet'")
        if isinstance(newdata, pd.DataFrame) and out is None:
            return super().decompose(newdata, allow_new_levels=allow_new_levels)
        return write_predictions(self, newdata, out, what="decompose", keep=keep, batch_rows=batch_rows,
                                 scheduler=scheduler, allow_new_levels=allow_new_levels)

    def predict(self, newdata=None, type="link", out=None, keep=(), batch_rows=None, scheduler=None,
                allow_new_levels=None):
        if newdata is None or (isinstance(newdata, pd.DataFrame) and out is None):
            if newdata is None:
                self.decompose(None)
            return super().predict(newdata, type=type, allow_new_levels=allow_new_levels)
        if type != "link" and self.spec.family != "gaussian":
            raise SpecError("streamed predictions are on the link scale; type='response' needs a DataFrame")
        return write_predictions(self, newdata, out, what="predict", keep=keep, batch_rows=batch_rows,
                                 scheduler=scheduler, allow_new_levels=allow_new_levels)


def as_streamed_fit(fit: Fit, md: SummaryData) -> StreamedFit:
    """The same Fit as a :class:`StreamedFit`, with the source and the pass over it in provenance/diagnostics."""
    out = StreamedFit(**{f.name: getattr(fit, f.name) for f in fields(Fit)})
    out.provenance["source"] = md.source
    out.diagnostics["stream"] = dict(md.stream)
    out.timing["read_seconds"] = md.stream.get("seconds")
    return out


def _parts(fit: Fit, frame: pd.DataFrame, what: str, keep, allow_new_levels=None) -> tuple[pd.DataFrame, dict]:
    """One batch's predictions or parts, and what it saw: rows per level whose label is unseen, those labels and
    notes. ``allow_new_levels=False`` refuses a batch with unseen labels (DataError); otherwise nothing is
    said here: :func:`write_predictions` warns once for the whole source."""
    parts, seen = Fit._decompose(fit, frame.reset_index(drop=True))
    seen = {"unseen": dict(parts.attrs.get("unseen", {})), **seen}
    if allow_new_levels is False:
        check_unseen(seen["unseen"], parts.attrs.get("unseen_groups", {}), seen, False, "predict",
                     rows=len(parts))
    if what == "predict":
        parts = parts[["prediction"]]
    if keep:
        parts = pd.concat([frame[list(keep)].reset_index(drop=True), parts], axis=1)
    return parts, seen


def _add_seen(total: dict, part: dict) -> None:
    """Sum rows per level, unite the unseen labels and notes (in order of first appearance)."""
    for k, v in part["unseen"].items():
        total.setdefault("unseen", {})[k] = total.get("unseen", {}).get(k, 0) + int(v)
    for key in ("examples", "notes"):
        for k, labels in part.get(key, {}).items():
            book = total.setdefault(key, {}).setdefault(k, {})
            book.update(dict.fromkeys(labels))


def _finish_seen(total: dict, rows: int, allow_new_levels, stacklevel: int = 3) -> tuple[dict, dict]:
    """Rows and distinct labels per level unseen in fitting, over the whole source; warns once (None)."""
    unseen = dict(total.get("unseen", {}))
    examples = {k: list(v) for k, v in total.get("examples", {}).items()}
    notes = {k: list(v) for k, v in total.get("notes", {}).items()}
    groups = {k: len(examples.get(k, [])) for k in unseen}
    check_unseen(unseen, groups, {"examples": examples, "notes": notes}, allow_new_levels, "predict", rows=rows,
                 stacklevel=stacklevel)
    return unseen, groups


def _write_partition(frame, fit, out: str, what: str, keep, index: int, allow_new_levels=None) -> tuple[int, dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts, seen = _parts(fit, frame, what, keep, allow_new_levels)
    pq.write_table(pa.Table.from_pandas(parts, preserve_index=False), str(Path(out) / f"part-{index:05d}.parquet"))
    return len(parts), seen


def write_predictions(fit: Fit, source, out, what: str = "predict", keep=(), batch_rows: int | None = None,
                      scheduler=None, allow_new_levels: bool | None = None) -> dict:
    """Predictions (``what="predict"``: one column ``prediction``) or the decomposition (``"decompose"``:
    national + each level's parts + prediction, as :meth:`Fit.decompose`) of every row of ``source``, written to
    the Parquet file ``out`` batch by batch, in the source's row order; ``keep`` columns are copied in front.
    A Dask DataFrame is written as the folder ``out`` with one file per partition (``part-00000.parquet``, in
    partition order). Returns ``{"path", "rows", "unseen", "unseen_groups"}`` (rows, and distinct labels, per
    level whose label was not seen in fitting: they get the population-level part there, as in memory).
    ``allow_new_levels`` as in :meth:`Fit.predict`: None warns once for the whole source, True accepts new
    groups silently, False stops at the first batch that has one (a DataError naming where; what was written
    before stays). Works for any Fit that has its design.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if out is None:
        raise SpecError("out= is needed: the Parquet file (a folder for a Dask DataFrame) the predictions go to")
    if what not in ("predict", "decompose"):
        raise SpecError(f"what must be 'predict' or 'decompose', got {what!r}")
    md = fit._require_model()
    spec = md.spec
    keep = list(dict.fromkeys(keep))
    columns = list(dict.fromkeys(spec.fixed_variables + spec.slope_variables + spec.grouping_variables
                                 + tuple(keep)))
    seen: dict = {}
    rows = 0
    if _is_dask(source):
        from dask import delayed

        Path(out).mkdir(parents=True, exist_ok=True)
        parts = source[columns].to_delayed()
        tasks = [delayed(_write_partition)(p, fit, str(out), what, keep, i, allow_new_levels)
                 for i, p in enumerate(parts)]
        for n, u in _compute(tasks, scheduler):
            rows += n
            _add_seen(seen, u)
        unseen, groups = _finish_seen(seen, rows, allow_new_levels)
        return {"path": str(out), "rows": rows, "unseen": unseen, "unseen_groups": groups}
    name = source_name(source)
    if isinstance(source, pd.DataFrame):
        source = pa.Table.from_pandas(source[columns], preserve_index=False)
    batch_rows = int(batch_rows or BATCH_ROWS)
    dataset = _dataset(source, spec.grouping_variables, batch_rows)
    kinds = _arrow_kinds(dataset)
    missing = [c for c in columns if c not in kinds]
    if missing:
        raise DataError(f"{name}: column(s) {missing} are missing; predictions need {columns}")
    labels = tuple(spec.grouping_variables) + tuple(md.categories) + tuple(keep)
    writer = None
    try:
        for where, batch in _arrow_chunks(dataset, columns, kinds, batch_rows, name, labels):
            try:
                parts, u = _parts(fit, batch.to_pandas(), what, keep, allow_new_levels)
            except DataError as exc:
                raise DataError(f"{where}: {exc}") from None
            table = pa.Table.from_pandas(parts, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(str(out), table.schema)
            writer.write_table(table)
            rows += len(parts)
            _add_seen(seen, u)
    finally:
        if writer is not None:
            writer.close()
    unseen, groups = _finish_seen(seen, rows, allow_new_levels)
    return {"path": str(out), "rows": rows, "unseen": unseen, "unseen_groups": groups}


__all__ = ["is_source", "prepare_source", "StreamedFit", "as_streamed_fit", "write_predictions", "ArrowChunk",
           "PandasChunk", "BATCH_ROWS"]
