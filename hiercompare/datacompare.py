"""``compare_data``: every engine on a user's own data set, and why any two of them differ.

One call (``hc.compare_data``, ``hiercompare compare DATA``, R's ``hc_compare_data()``) runs, for each formula:

1. the data: the tree each formula finds (levels, groups, rows per group, singletons), the rows dropped and why,
   the column types;
2. every backend (a skip says why: unavailable here, a family or spec it cannot fit, a failure);
3. agreement (:mod:`hiercompare.agreement`) and the diagnosis of each disagreement (:mod:`hiercompare.diagnosis`);
4. model comparison across the formulas: likelihood-ratio tests, AIC and BIC on ML refits, PSIS-LOO for the
   Bayesian fits (:mod:`hiercompare.comparison`);
5. K-fold cross-validation grouped at each chosen level (:mod:`hiercompare.crossval`);
6. the pictures: shrinkage, caterpillars, the decomposition, the hierarchy diagram (:mod:`hiercompare.report`).

Every step's result is saved under ``out/units/`` as it completes (a pickle written atomically), so a killed
run resumes where it stopped when it is started again with the same arguments into the same folder; a folder
that holds a different comparison is refused. The outputs are ``out/report.html`` (self-contained),
``out/tables/*.csv`` (every table of the report) and ``out/results.json``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import DataError, HierCompareError, SpecError
from .spec import ModelSpec

# The samplers run short first, and longer only where the short run misses the sampling rule (R-hat <= 1.01, bulk
# and tail ESS >= 400, no divergences): the short runs are the demo's (enough on the simulated default scenario,
# 5,000 rows), the long ones what lme4's Oats (6 blocks) needed (there the short runs gave brms bulk ESS 319-399
# with a divergence, pymc tail ESS 222). A user's own options for a sampler replace both stages. Every fit's
# diagnostics still say whether its (last) run was enough, and its notes say when a first run was not.
SAMPLER_STAGES: dict[str, tuple[dict, ...]] = {
    "brms": ({"iter": 800, "warmup": 300, "adapt_delta": 0.8}, {"iter": 1500, "warmup": 500, "adapt_delta": 0.95}),
    "pymc": ({"sampler": "pymc", "tune": 500, "draws": 500},
             {"sampler": "pymc", "tune": 1000, "draws": 1000, "target_accept": 0.95}),
}
# backends that take method=REML/ML (Gaussian family)
METHOD_BACKENDS = frozenset({"lme4", "mixedlm", "native", "lightgbm", "torch"})
# backends whose likelihood enters the model comparison (ML refits)
DEFAULT_CV_BACKENDS = ("native", "lme4", "mixedlm", "ols", "lightgbm")
CV_LEVELS = ("top", "leaf", "rows")
# fitted in a second process while the others fit in this one (in-process runs with more than these to fit)
ASIDE = ("brms",)
ASIDE_TIMEOUT = 6 * 3600.0


# ---------------------------------------------------------------------------------------------------- input
def read_data(path: str | os.PathLike) -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``, ``.tsv``) or Parquet file (or folder) as a DataFrame."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"no data at {p}; give a CSV or Parquet file")
    name = p.name.lower()
    if name.endswith((".csv", ".csv.gz", ".txt")):
        return pd.read_csv(p)
    if name.endswith((".tsv", ".tsv.gz")):
        return pd.read_csv(p, sep="\t")
    if name.endswith((".parquet", ".pq")) or p.is_dir():
        return pd.read_parquet(p)
    raise DataError(f"{p}: unknown file type; give a .csv, .tsv or .parquet file")


def _specs(formulas, family) -> list[ModelSpec]:
    if isinstance(formulas, (str, ModelSpec)):
        formulas = [formulas]
    formulas = list(formulas)
    if not formulas:
        raise SpecError("give at least one formula")
    specs = []
    for f in formulas:
        if isinstance(f, ModelSpec):
            specs.append(f if family is None else ModelSpec.from_formula(f.source, family=family))
        else:
            specs.append(ModelSpec.from_formula(f, family=family or "gaussian"))
    seen = [s.formula for s in specs]
    twice = sorted({f for f in seen if seen.count(f) > 1})
    if twice:
        raise SpecError(f"formula(s) {twice} given more than once; give each model once")
    return specs


def _used_columns(spec: ModelSpec) -> list[str]:
    return list(spec.variables)


def clean_rows(data: pd.DataFrame, specs: list[ModelSpec], na_action: str = "error") -> tuple[pd.DataFrame, pd.DataFrame]:
    """The rows every formula is fitted on, and a table of rows dropped per column and why.

    All formulas use the SAME rows (a likelihood-ratio test or an information criterion across formulas is
    meaningless otherwise): a row missing a value in any column that any formula uses is dropped when
    ``na_action="drop"``, and is an error naming the columns otherwise.
    """
    if na_action not in ("error", "drop"):
        raise SpecError(f"na_action must be 'error' or 'drop', got {na_action!r}")
    used = list(dict.fromkeys(c for s in specs for c in _used_columns(s)))
    missing_cols = [c for c in used if c not in data.columns]
    if missing_cols:
        raise DataError(f"column(s) {missing_cols} used by the formulas are not in the data; its columns are "
                        f"{list(data.columns)}")
    na = data[used].isna()
    counts = na.sum()
    rows = []
    for c in used:
        if counts[c]:
            rows.append({"column": c, "rows_missing": int(counts[c]),
                         "used_by": "; ".join(s.formula for s in specs if c in _used_columns(s))})
    bad = na.any(axis=1)
    dropped = pd.DataFrame(rows, columns=["column", "rows_missing", "used_by"])
    if bad.any():
        if na_action == "error":
            raise DataError(f"{int(bad.sum())} of {len(data)} rows miss a value in a column the formulas use "
                            f"({dict((r['column'], r['rows_missing']) for r in rows)}); drop them with "
                            "na_action='drop' (--na-action drop), which the report then lists")
        dropped.loc[len(dropped)] = {"column": "(any of the above)", "rows_missing": int(bad.sum()),
                                     "used_by": "rows dropped before every fit"}
    return data.loc[~bad].reset_index(drop=True), dropped


def describe_columns(data: pd.DataFrame, specs: list[ModelSpec]) -> pd.DataFrame:
    """One row per column: its type, role in each formula, missing values, distinct values, an example."""
    rows = []
    for c in data.columns:
        s = data[c]
        roles = []
        for s_ in specs:
            if c == s_.response:
                roles.append("response")
            elif c in s_.grouping_variables:
                roles.append("grouping")
            elif c in _used_columns(s_):
                roles.append("predictor")
        kind = ("numeric" if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)
                else "categorical")
        rows.append({"column": c, "dtype": str(s.dtype), "kind": kind,
                     "role": ", ".join(sorted(set(roles))) or "unused",
                     "missing": int(s.isna().sum()), "distinct": int(s.nunique(dropna=True)),
                     "example": str(s.dropna().iloc[0]) if s.notna().any() else ""})
    return pd.DataFrame(rows)


def describe_tree(md, formula: str) -> pd.DataFrame:
    """Per grouping level of one formula's tree: groups, rows per group (min/median/max), singletons,
    and groups per parent group."""
    rows = []
    levels = md.hierarchy.levels
    leaf_rows = getattr(md, "leaf_rows", None)
    per_level = {}
    if leaf_rows is not None and levels:  # a streamed fit kept rows per leaf only: add them up the tree
        per_level[len(levels) - 1] = np.asarray(leaf_rows, dtype=np.int64)
        for i in range(len(levels) - 1, 0, -1):
            per_level[i - 1] = np.bincount(np.asarray(levels[i].parent), weights=per_level[i],
                                           minlength=levels[i - 1].n_groups).astype(np.int64)
    for i, lv in enumerate(levels):
        counts = per_level[i] if i in per_level else np.bincount(lv.codes, minlength=lv.n_groups)
        row = {"formula": formula, "level": lv.group, "depth": i + 1, "groups": lv.n_groups,
               "rows_min": int(counts.min()), "rows_median": float(np.median(counts)), "rows_max": int(counts.max()),
               "singletons": int((counts == 1).sum()), "varying_terms": ", ".join(lv.spec.terms)}
        if i > 0 and getattr(lv, "parent", None) is not None:
            per_parent = np.bincount(np.asarray(lv.parent), minlength=levels[i - 1].n_groups)
            row.update(children_min=int(per_parent.min()), children_median=float(np.median(per_parent)),
                       children_max=int(per_parent.max()))
        rows.append(row)
    return pd.DataFrame(rows)


def data_fingerprint(data: pd.DataFrame) -> str:
    """A hash of the values, column names and dtypes (what a resumed run must find unchanged)."""
    h = hashlib.sha256()
    h.update(json.dumps([(str(c), str(t)) for c, t in data.dtypes.items()]).encode())
    h.update(pd.util.hash_pandas_object(data, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- storage
class UnitStore:
    """Completed steps of one comparison, one pickle each under ``out/units/`` (no folder: in memory only)."""

    def __init__(self, out: Path | None, definition: dict):
        self.out = out
        self.memory: dict[str, Any] = {}
        if out is None:
            return
        from .study.storage import write_json_atomic
        from .provenance import git_commit, now, package_versions

        (out / "units").mkdir(parents=True, exist_ok=True)
        for p in (out / "units").glob("*.tmp"):  # half-written by a killed run
            p.unlink()
        man = out / "manifest.json"
        if man.exists():
            old = json.loads(man.read_text())
            a, b = old.get("comparison", {}), json.loads(json.dumps(definition, default=str))
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise HierCompareError(f"{out} holds a different comparison (differs in {diff}); use another "
                                       f"--out folder or delete {out} to start over")
            manifest = old
        else:
            manifest = {"hiercompare_compare": 1, "created": now(), "runs": []}
        manifest.update({"comparison": definition, "versions": package_versions(), "git_commit": git_commit()})
        manifest["runs"] = list(manifest.get("runs", [])) + [{"started": now()}]
        write_json_atomic(manifest, man)

    def _path(self, key: str) -> Path:
        safe = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.out / "units" / f"{safe}.pkl"

    def has(self, key: str) -> bool:
        return key in self.memory or (self.out is not None and self._path(key).exists())

    def get(self, key: str):
        if key not in self.memory and self.out is not None and self._path(key).exists():
            with open(self._path(key), "rb") as fh:
                stored_key, value = pickle.load(fh)
            if stored_key != key:  # a hash collision or a foreign file: recompute
                return None
            self.memory[key] = value
        return self.memory.get(key)

    def put(self, key: str, value) -> None:
        self.memory[key] = value
        if self.out is None:
            return
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            pickle.dump((key, value), fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------------- fits
def fit_unit(task: dict) -> dict:
    """One (formula, backend) fit: ``{"status": "ok", "fit": Fit}`` or a status with its reason.

    Top level so that worker processes (local or Dask) can run it.
    """
    from .backends import get_backend
    from .errors import BackendUnavailable
    from .fitting import fit

    name, spec = task["backend"], task["spec"]
    t0 = time.perf_counter()
    try:
        be = get_backend(name)
    except BackendUnavailable as exc:
        return {"status": "unavailable", "reason": str(exc)}
    try:
        be.check(spec)
    except SpecError as exc:
        return {"status": "not applicable", "reason": str(exc)}
    options = dict(task.get("options", {}))
    if name in METHOD_BACKENDS and spec.family == "gaussian":
        options.setdefault("method", task["method"])
    stages = (options,) if options or name not in SAMPLER_STAGES else SAMPLER_STAGES[name]
    try:
        for k, stage in enumerate(stages):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # fit() records every warning in the Fit's diagnostics
                f = fit(task["data"], spec, backend=name, seed=task.get("seed"), **stage)
            if f.diagnostics.get("converged") is not False or k == len(stages) - 1:
                break
            first = (f"a first run with {stage} missed the sampling rule ("
                     f"{'; '.join(f.diagnostics.get('warnings', [])[-1:]) or 'not converged'}); refitted with "
                     f"{stages[k + 1]}")
        if k > 0:
            f.diagnostics.setdefault("notes", []).append(first)
    except SpecError as exc:  # what this backend cannot fit on this data (e.g. a learner without a numeric x)
        return {"status": "not applicable", "reason": str(exc), "seconds": time.perf_counter() - t0}
    except HierCompareError as exc:
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    except Exception as exc:  # a backend library's own error: recorded, never silently dropped
        return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}", "seconds": time.perf_counter() - t0}
    return {"status": "ok", "fit": f, "seconds": time.perf_counter() - t0}


def _first_stage(opts: dict[str, dict], backend: str) -> dict:
    """A backend's options for the CV and the bootstrap's many refits: the user's, else the first (short) stage of
    :data:`SAMPLER_STAGES` for a sampler, else none."""
    return dict(opts.get(backend) or SAMPLER_STAGES.get(backend, ({},))[0])


def fit_units(tasks: list[dict]) -> list[dict]:
    """:func:`fit_unit` of each task in turn (what the second process runs)."""
    return [fit_unit(t) for t in tasks]


def _run_tasks(tasks: list[tuple[str, dict]], fn: Callable[[dict], Any], store: UnitStore, workers: int,
               scheduler, say) -> dict[str, Any]:
    """Run the tasks not yet in the store (in this process, on local processes, or on Dask); store each."""
    out = {k: store.get(k) for k, _ in tasks if store.has(k)}
    todo = [(k, t) for k, t in tasks if k not in out]
    if len(out):
        say(f"  {len(out)} step(s) found done in the output folder, {len(todo)} to run")
    if not todo:
        return out
    if scheduler is None and workers <= 1:
        aside = [(k, t) for k, t in todo if fn is fit_unit and t["backend"] in ASIDE]
        here = [(k, t) for k, t in todo if (k, t) not in aside] if len(aside) < len(todo) else todo
        aside = aside if here is not todo else []
        job = None
        limits = contextlib.ExitStack()
        try:
            if aside:  # brms's chains take both cores for a while: it fits in a second process meanwhile
                from .aside import SecondProcess
                from .runenv import one_thread

                say(f"  {', '.join(t['label'] for _, t in aside)}: fitting in a second process meanwhile ...")
                job = SecondProcess(fit_units, [t for _, t in aside])
                limits.enter_context(one_thread())
            for i, (k, t) in enumerate(here, 1):
                say(f"  [{i}/{len(here)}] {t.get('label', k)} ...")
                res = fn(t)
                store.put(k, res)
                out[k] = res
                _say_result(say, res)
            if job is not None:
                say("  waiting for the second process ...")
                died = False
                try:
                    answers = job.wait(ASIDE_TIMEOUT)
                except Exception as exc:  # died or timed out: every one of its fits says so
                    died = True
                    answers = [{"status": "failed", "reason": f"the second process failed: {type(exc).__name__}: "
                                                              f"{exc}"}] * len(aside)
                job = None
                for (k, t), res in zip(aside, answers):
                    if not died:  # what a dead process did not answer is tried again by a resumed run
                        store.put(k, res)
                    out[k] = res
                    say(f"  {t['label']}:")
                    _say_result(say, res)
        finally:
            limits.close()
            if job is not None:
                job.cancel()
        return out
    from .study.executors import dask_client, run_dask, run_processes

    if scheduler is not None:
        client, owned = dask_client(scheduler)
        try:
            for k, res in run_dask(client, todo, fn=fn):
                store.put(k, res)
                out[k] = res
                say(f"  done: {dict(todo)[k].get('label', k)}")
        finally:
            if owned:
                client.close()
    else:
        for k, res in run_processes(todo, workers, "spawn", fn=fn):
            store.put(k, res)
            out[k] = res
            say(f"  done: {dict(todo)[k].get('label', k)}")
    return out


def _say_result(say, res) -> None:
    if not isinstance(res, dict) or "status" not in res:
        return
    if res["status"] == "ok":
        f = res["fit"]
        say(f"      {f.timing['fit_seconds']:.2f} s (converged={f.diagnostics.get('converged')}, "
            f"singular={f.diagnostics.get('singular')})")
    else:
        say(f"      {res['status']}: {res['reason'][:300]}")


# ---------------------------------------------------------------------------------------------------- result
@dataclass
class DataComparison:
    """What :func:`compare_data` found: the tables (``tables[name]`` are DataFrames, each also written to
    ``out/tables/name.csv``), the fits by formula and backend, and the results dictionary behind the report."""

    results: dict
    tables: dict[str, pd.DataFrame]
    fits: dict[str, dict[str, Any]] = field(repr=False, default_factory=dict)
    out: Path | None = None

    def table(self, name: str) -> pd.DataFrame:
        if name not in self.tables:
            raise KeyError(f"no table {name!r}; the tables are {sorted(self.tables)}")
        return self.tables[name]

    def report(self, path: str | os.PathLike) -> Path:
        """Write the self-contained HTML report to ``path``."""
        from .report.compare import render_compare

        p = Path(path)
        p.write_text(render_compare(self.results))
        return p

    def __repr__(self) -> str:
        n_fits = sum(1 for fs in self.fits.values() for f in fs.values())
        return (f"<DataComparison: {len(self.results['formulas'])} formula(s), {n_fits} fit(s); tables: "
                f"{', '.join(sorted(self.tables))}>")


def _records(df: pd.DataFrame) -> list[dict]:
    if df is None or df.empty:
        return []
    return json.loads(df.to_json(orient="records", double_precision=15, default_handler=str))


def _resolve_backends(backends) -> list[str]:
    from .backends import REGISTRY

    if backends is None or backends == "all" or backends == ["all"]:
        return list(REGISTRY)
    names = [backends] if isinstance(backends, str) else list(backends)
    names = [n.strip() for b in names for n in str(b).split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SpecError(f"unknown backend(s) {unknown}; registered backends are {sorted(REGISTRY)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpecError(f"backend(s) {twice} listed more than once; name each backend once")
    return names


def _cv_levels(cv, md) -> list[str]:
    """CV fold kinds -> grouping factors as written in the formula, root to leaf (or ``rows``)."""
    if cv is None or cv is False or cv == "none":
        return []
    kinds = [cv] if isinstance(cv, str) else list(cv)
    kinds = [k.strip() for c in kinds for k in str(c).split(",") if k.strip()]
    spec = md.spec
    groups = [lv.group for lv in md.hierarchy.levels]
    out = []
    for k in kinds:
        if k in ("top", "leaf"):
            if not groups:
                raise SpecError(f"cv {k!r} needs a grouping factor; {spec.formula!r} has none (use cv='rows')")
            out.append(groups[0] if k == "top" else groups[-1])
        elif k == "rows" or k in groups:
            out.append(k)
        else:
            raise SpecError(f"cv level {k!r} is not 'top', 'leaf', 'rows' or a grouping factor of "
                            f"{spec.formula!r} ({groups})")
    return list(dict.fromkeys(out))


def _one_thread_unless_streamed(fn):
    """Run ``fn`` (compare_data) under :func:`hiercompare.runenv.one_thread` unless its ``stream`` is true (see
    compare_data's Notes)."""
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .runenv import one_thread

        stream = sig.bind(*args, **kwargs).arguments.get("stream", False)
        with contextlib.nullcontext() if stream else one_thread():
            return fn(*args, **kwargs)

    return wrapper


@_one_thread_unless_streamed
def compare_data(
    data: pd.DataFrame | str | os.PathLike,
    formulas: str | list[str],
    backends: str | list[str] | None = None,
    family: str | None = None,
    method: str = "REML",
    out: str | os.PathLike | None = None,
    cv: str | list[str] | None = "top",
    cv_folds: int = 5,
    cv_backends: list[str] | None = None,
    bootstrap: int = 0,
    workers: int = 1,
    scheduler=None,
    seed: int = 0,
    na_action: str = "error",
    options: dict[str, dict] | None = None,
    allfit: bool = False,
    stream: bool = False,
    subsample: int | None = None,
    batch_rows: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> DataComparison:
    """Fit every backend on every formula on ``data`` and explain where they differ.

    Parameters
    ----------
    data : DataFrame or path
        The user's data (a CSV or Parquet path is read with :func:`read_data`).
    formulas : str or list of str
        lme4-style formulas; two or more get a model comparison (nested pairs a likelihood-ratio test).
    backends : list of str or "all" (default)
        Backends to fit; one that cannot run here is listed with its reason.
    family, method : the family (default gaussian) and REML/ML for the backends that take it.
    out : folder, optional
        Writes ``report.html``, ``tables/*.csv``, ``results.json``; completed steps are kept in ``units/`` so
        a killed run resumes.
    cv : "top", "leaf", "rows", a grouping factor, a list of them, or None
        Grouped K-fold cross-validation: ``top`` leaves whole top-level groups out (prediction for new groups),
        ``leaf`` leaves leaf groups out, ``rows`` leaves rows out within groups.
    cv_folds : int
    cv_backends : list of str, optional
        Default: native, lme4, mixedlm, ols and lightgbm (those of ``backends``); torch, pymc and brms are
        opt-in.
    bootstrap : int
        Parametric bootstrap replications on this design (0: none).
    workers, scheduler : parallel fits on local processes, or on a Dask cluster (an address or a Client).
    seed : int
        Seeds every backend that draws random numbers, the CV folds and the bootstrap.
    na_action : {"error", "drop"}
        Rows missing a value in a used column are an error unless dropped; every formula uses the same rows.
    options : dict backend -> dict, optional
        Backend options. pymc and brms without options run :data:`SAMPLER_STAGES`: short, then longer only
        where the short run misses the sampling rule.
    allfit : bool
        Where lme4 disagrees with another engine, refit it under every optimizer and show the spread.
    stream : bool
        Read ``data`` (a Parquet or CSV path, a pyarrow dataset or a Dask DataFrame, with ``scheduler``) in
        batches: native fits every formula on ALL rows, memory bounded by groups and columns
        (:mod:`hiercompare.sources`), and the likelihood-ratio tests and information criteria use those fits.
        The other backends need the rows in memory: they are listed as not applicable, unless ``subsample``
        is given.
    subsample : int, optional
        With ``stream``: every backend (native too) is also fitted on a uniform random sample of this many rows
        (drawn by ``seed``; :func:`hiercompare.sources.subsample`), and agreement, diagnosis, cross-validation,
        pictures and the bootstrap run on that sample; the report says so.
    batch_rows : int, optional
        Rows per batch when streaming.

    Notes
    -----
    Everything in this process runs with one BLAS/OpenMP thread (and one torch thread), as a study's fits do
    (:func:`hiercompare.runenv.one_thread`): the comparison is many small fits, which a second BLAS thread
    slows down on a busy 2-core machine (an SVD of the 5,000 x 61 dummy design: 0.33 s with two threads beside
    another process, 0.034 s with one), and the numbers then do not depend on the thread count. A streamed
    comparison (``stream=True``) keeps the machine's threads: its per-batch sums over all rows are large
    products.
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    from .sources import is_source, source_name

    specs = _specs(formulas, family)
    if subsample is not None and not stream:
        raise SpecError("subsample= is for a source read in batches (stream=True, --stream); data read whole is "
                        "fitted on every row")
    if stream:
        if isinstance(data, pd.DataFrame) or not is_source(data):
            raise SpecError("stream=True reads a Parquet or CSV file, a pyarrow dataset or a Dask DataFrame in "
                            "batches; this data is already in memory, so leave stream off")
        if bootstrap and not subsample:
            raise SpecError("the bootstrap refits every backend on rows in memory: with stream=True pass "
                            "subsample=N (--subsample N) to run it on a random sample")
        source = source_name(data)
        frame = None
        if subsample:
            from .sources import subsample as draw_sample

            used = list(dict.fromkeys(c for sp in specs for c in sp.variables))
            labels = tuple(dict.fromkeys(c for sp in specs for c in sp.grouping_variables))
            frame = draw_sample(data, int(subsample), seed=seed, columns=used, labels=labels, batch_rows=batch_rows)
    else:
        source = str(data) if not isinstance(data, pd.DataFrame) else "DataFrame"
        frame = data if isinstance(data, pd.DataFrame) else read_data(data)
    if len({s.family for s in specs}) > 1:
        raise SpecError("every formula must have the same family")
    fam = specs[0].family
    method = method.upper()
    if method not in ("REML", "ML"):
        raise SpecError(f"method must be 'REML' or 'ML', got {method!r}")
    names = _resolve_backends(backends)
    if cv_backends is not None:
        cv_names = _resolve_backends(cv_backends)
    else:
        cv_names = [b for b in DEFAULT_CV_BACKENDS if b in names]
    if int(cv_folds) < 2:
        raise SpecError(f"cv_folds must be at least 2, got {cv_folds}")
    opts = {b: dict(o) for b, o in (options or {}).items()}
    from .design import prepare

    if frame is not None:
        rows, dropped = clean_rows(frame, specs, na_action)
        if len(rows) == 0:
            raise DataError("no rows left after dropping rows with missing values")
        # the trees (errors on bad nesting, single groups, ... come here, before any fit)
        models = {s.formula: prepare(s, rows) for s in specs}
        levels = {s.formula: _cv_levels(cv, models[s.formula]) for s in specs}
    else:  # streamed, no sample: native on all rows only
        rows, dropped, models, levels = None, pd.DataFrame(columns=["column", "rows_missing", "used_by"]), {}, {}
    definition = {"data": source, "data_sha256": data_fingerprint(rows) if rows is not None else None,
                  "rows": len(rows) if rows is not None else None,
                  "formulas": [s.formula for s in specs], "family": fam, "method": method, "backends": names,
                  "cv": levels, "cv_folds": int(cv_folds), "cv_backends": cv_names, "bootstrap": int(bootstrap),
                  "seed": int(seed), "na_action": na_action, "options": opts, "allfit": bool(allfit),
                  "sampler_stages": SAMPLER_STAGES}
    if stream:
        definition.update(stream=True, subsample=int(subsample) if subsample else None,
                          source_fingerprint=source_fingerprint(data))
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    store = UnitStore(out_dir, definition)
    stages: dict[str, float] = {}
    tables: dict[str, pd.DataFrame] = {}
    full: dict[str, Any] = {}
    if stream:  # native on ALL rows, read in batches
        t0 = time.perf_counter()
        full = _streamed_fits(data, specs, method, na_action, batch_rows, scheduler, store, say)
        stages["streamed_native_fits"] = time.perf_counter() - t0
        if rows is None:
            models = {s.formula: full[s.formula][method].model for s in specs if method in full[s.formula]}

    # 1. the data
    tables["data_columns"] = (describe_columns(frame, specs) if frame is not None and not stream
                              else describe_source_columns(data, specs, sample=frame))
    tables["data_dropped"] = dropped
    trees = [describe_tree(models[s.formula], s.formula) for s in specs if s.formula in models]
    if stream and rows is not None:  # the tree of ALL rows, from the streamed fits
        trees = [describe_tree(full[s.formula][method].model, s.formula).assign(rows_of="all rows")
                 for s in specs if method in full[s.formula]]
    tables["data_tree"] = pd.concat(trees, ignore_index=True) if trees else pd.DataFrame()

    # 2. fits
    t0 = time.perf_counter()
    if rows is not None:
        say(f"fitting {len(names)} backend(s) on {len(specs)} formula(s), {len(rows)} rows"
            + (f" (a random sample of the source's rows, seed {seed})" if stream else "") + " ...")
        tasks = [(f"fit|{s.formula}|{b}", {"label": f"{b}: {s.formula}", "backend": b, "spec": s, "data": rows,
                                           "method": method, "seed": seed, "options": opts.get(b, {})})
                 for s in specs for b in names]
        done = _run_tasks(tasks, fit_unit, store, workers, scheduler, say)
    else:
        why = ("needs the rows in memory and the data is read in batches (stream); pass subsample=N "
               "(--subsample N) to fit it on a random sample of N rows")
        tasks = [(f"fit|{s.formula}|{b}", {"backend": b, "spec": s}) for s in specs for b in names if b != "native"]
        done = {k: {"status": "not applicable", "reason": f"{t['backend']} {why}"} for k, t in tasks}
    stages["fits"] = time.perf_counter() - t0
    fits: dict[str, dict] = {s.formula: {} for s in specs}
    status_rows, tidy_frames = [], []
    for s in specs:  # native on all rows first
        f = full.get(s.formula, {}).get(method)
        if f is None:
            continue
        d = f.diagnostics
        status_rows.append({"formula": s.formula, "backend": ALL_ROWS, "status": "ok",
                            "reason": f"{f.nobs} rows read in batches from {source}", "method": f.method,
                            "converged": d.get("converged"), "singular": d.get("singular"), "loglik": f.loglik,
                            "fit_seconds": f.timing.get("total_seconds"),
                            "warnings": " | ".join(d.get("warnings", []))[:2000]})
        t = f.tidy().assign(backend=ALL_ROWS)
        t.insert(0, "formula", s.formula)
        tidy_frames.append(t)
    for (key, task) in tasks:
        res = done[key]
        f_ = task["spec"].formula
        row = {"formula": f_, "backend": task["backend"], "status": res["status"], "reason": res.get("reason", "")}
        if res["status"] == "ok":
            f = res["fit"]
            fits[f_][task["backend"]] = f
            d = f.diagnostics
            row.update(method=f.method or "", converged=d.get("converged"), singular=d.get("singular"),
                       loglik=f.loglik, fit_seconds=f.timing.get("fit_seconds"),
                       warnings=" | ".join(d.get("warnings", []))[:2000])
            t = f.tidy()
            t.insert(0, "formula", f_)
            tidy_frames.append(t)
        status_rows.append(row)
    tables["fits"] = pd.DataFrame(status_rows)
    tables["estimates"] = pd.concat(tidy_frames, ignore_index=True) if tidy_frames else pd.DataFrame()

    if rows is None:  # streamed without a sample: native on all rows, the model comparison, nothing else
        t0 = time.perf_counter()
        tables.update(_model_comparison(None, specs, fits, store, say,
                                        ml=[full[s.formula]["ML"] for s in specs if "ML" in full[s.formula]]))
        stages["model_comparison"] = time.perf_counter() - t0
        return _finish(source, rows, specs, fits, tables, definition, names, [], models, [], stages, out_dir,
                       t_start, say)

    # 3. agreement and diagnosis
    from .agreement import compare, summary

    t0 = time.perf_counter()
    agree_frames, summ_frames, cause_frames, lik_frames, allfit_frames = [], [], [], [], []
    for s in specs:
        fs = list(fits[s.formula].values())
        if len(fs) < 2:
            continue
        table = compare(fs)
        table.insert(0, "formula", s.formula)
        agree_frames.append(table)
        sm = summary(table.drop(columns="formula"))
        sm.insert(0, "formula", s.formula)
        summ_frames.append(sm)
        key = f"diagnosis|{s.formula}|{int(allfit)}"
        diag = store.get(key) if store.has(key) else None
        if diag is None:
            from .diagnosis import diagnose

            say(f"diagnosing disagreements: {s.formula}")
            diag = diagnose(fs, table.drop(columns="formula"), allfit=allfit)
            diag = {"causes": diag.causes, "likelihood": diag.likelihood,
                    "allfit": getattr(diag, "allfit", None)}
            store.put(key, diag)
        for name, frames in (("causes", cause_frames), ("likelihood", lik_frames), ("allfit", allfit_frames)):
            df = diag.get(name)
            if df is not None and not df.empty:
                df = df.copy()
                df.insert(0, "formula", s.formula)
                frames.append(df)
    tables["agreement"] = pd.concat(agree_frames, ignore_index=True) if agree_frames else pd.DataFrame()
    tables["agreement_summary"] = pd.concat(summ_frames, ignore_index=True) if summ_frames else pd.DataFrame()
    tables["diagnosis"] = pd.concat(cause_frames, ignore_index=True) if cause_frames else pd.DataFrame()
    tables["likelihood_check"] = pd.concat(lik_frames, ignore_index=True) if lik_frames else pd.DataFrame()
    if allfit_frames:
        tables["allfit"] = pd.concat(allfit_frames, ignore_index=True)
    stages["agreement_and_diagnosis"] = time.perf_counter() - t0

    # 4. model comparison across formulas
    t0 = time.perf_counter()
    tables.update(_model_comparison(rows, specs, fits, store, say,
                                    ml=[full[s.formula]["ML"] for s in specs if "ML" in full[s.formula]]
                                    if stream else None))
    stages["model_comparison"] = time.perf_counter() - t0

    # 5. cross-validation
    t0 = time.perf_counter()
    cv_rows = [(s, lv) for s in specs for lv in levels[s.formula]]
    cv_fold_frames, cv_summ_frames = [], []
    for s, lv in cv_rows:
        key = f"cv|{s.formula}|{lv}|{cv_folds}|{','.join(cv_names)}|{seed}"
        res = store.get(key) if store.has(key) else None
        if res is None:
            from .crossval import cross_validate

            say(f"cross-validating ({cv_folds} folds, leaving out {lv}): {s.formula}")
            cvr = cross_validate(rows, s.formula, backends=cv_names, level=lv, k=int(cv_folds), seed=seed,
                                 family=fam, options={b: _first_stage(opts, b) for b in cv_names})
            res = {"folds": cvr.folds, "summary": cvr.summary}
            store.put(key, res)
        summ = res["summary"]  # the CV lists its opt-in backends as 'not run'; keep those the user asked for
        res = {**res, "summary": summ[(summ["status"] != "not run") | summ["backend"].isin(names)]}
        for name, frames in (("folds", cv_fold_frames), ("summary", cv_summ_frames)):
            df = res[name].copy()
            df.insert(0, "formula", s.formula)
            if "level" not in df.columns:
                df.insert(1, "level", lv)
            frames.append(df)
    tables["cv_folds"] = pd.concat(cv_fold_frames, ignore_index=True) if cv_fold_frames else pd.DataFrame()
    tables["cv_summary"] = pd.concat(cv_summ_frames, ignore_index=True) if cv_summ_frames else pd.DataFrame()
    stages["cross_validation"] = time.perf_counter() - t0

    # 6. bootstrap on this design
    if bootstrap:
        t0 = time.perf_counter()
        from .bootstrap import bootstrap_design

        ok = [b for b in names if b in fits[specs[0].formula]]  # the backends that fit the user's data
        boot_opts = {b: {**_first_stage(opts, b),
                         **({"method": method} if b in METHOD_BACKENDS and fam == "gaussian" else {})} for b in ok}
        boot = bootstrap_design(rows, specs[0], ok, int(bootstrap), seed=seed, workers=workers,
                                scheduler=scheduler, out=(out_dir / "bootstrap") if out_dir else None,
                                options=boot_opts, method=method, progress=say)
        tables.update(boot)
        stages["bootstrap"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    figures = _figures(rows, specs, fits, tables, say)
    stages["pictures"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    figures += _predictive_checks(specs, fits, tables, seed, say)
    stages["predictive_checks"] = time.perf_counter() - t0
    return _finish(source, rows, specs, fits, tables, definition, names, cv_names, models, figures, stages, out_dir,
                   t_start, say)


PPC_DRAWS = 200
PPC_PLOTS = ("native", "lme4", "mixedlm", "pymc", "brms", "lightgbm", "torch")  # density overlays: first found + Bayes


def _predictive_checks(specs, fits, tables, seed, say) -> list[dict]:
    """Each fit's replicated data against the observed (:mod:`hiercompare.ppc`): every top-level group's mean and
    SD against their replicated distribution, per backend (table ``ppc_groups``; ``ppc_summary`` counts the groups
    with p < 0.05), and density overlays of the first mixed engine and the Bayesian fits."""
    from .ppc import PredictiveCheckUnavailable, check_summary, density_overlay_plot, group_checks

    frames, skipped, figures = [], [], []
    for k, spec in enumerate(specs, 1):
        tag = f"formula {k}" if len(specs) > 1 else "the formula"
        fs = fits[spec.formula]
        for b, f in fs.items():
            try:
                g = group_checks(f, draws=PPC_DRAWS, seed=seed)
            except PredictiveCheckUnavailable as exc:
                skipped.append({"formula": spec.formula, "backend": b, "reason": str(exc)})
                continue
            except Exception as exc:  # recorded, never stops the comparison
                skipped.append({"formula": spec.formula, "backend": b, "reason": f"{type(exc).__name__}: {exc}"})
                continue
            g.insert(0, "formula", spec.formula) if "formula" not in g.columns else None
            frames.append(g)
        plotted = [b for b in PPC_PLOTS if b in fs]
        plotted = plotted[:1] + [b for b in plotted[1:] if b in ("pymc", "brms")]
        for b in plotted:
            try:
                png = density_overlay_plot(fs[b], seed=seed, title=f"{b}: observed vs 50 replicated data sets")
            except Exception as exc:
                say(f"  density overlay of {b} ({spec.formula}): {type(exc).__name__}: {exc}")
                continue
            figures.append({"section": "ppc", "title": f"Predictive check, {b} ({tag})", "png": png,
                            "caption": "The observed response's density (black) against 50 data sets replicated "
                                       "from the fit (as ArviZ's plot_ppc draws them).", "table": ""})
    if frames:
        groups = pd.concat(frames, ignore_index=True)
        tables["ppc_groups"] = groups
        tables["ppc_summary"] = check_summary(groups)
    if skipped:
        tables["ppc_skipped"] = pd.DataFrame(skipped)
    return figures


def _finish(source, rows, specs, fits, tables, definition, names, cv_names, models, figures, stages, out_dir,
            t_start, say) -> "DataComparison":
    """The results dictionary, the DataComparison, and (with a folder) the report, tables and results.json."""
    results = _results(source, rows, specs, fits, tables, definition, names, cv_names, models)
    results["figures"] = figures
    stages["total"] = time.perf_counter() - t_start
    results["timing_stages"] = stages
    comp = DataComparison(results=results, tables=tables, fits=fits, out=out_dir)
    if out_dir is not None:
        t0 = time.perf_counter()
        (out_dir / "tables").mkdir(exist_ok=True)
        for name, df in tables.items():
            df.to_csv(out_dir / "tables" / f"{name}.csv", index=False)
        from .results import _json_default

        comp.report(out_dir / "report.html")
        results["timing_stages"]["report"] = time.perf_counter() - t0
        (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
        say(f"wrote {out_dir / 'report.html'}, {out_dir / 'results.json'} and {len(tables)} tables in "
            f"{out_dir / 'tables'} ({time.perf_counter() - t_start:.1f} s)")
    return comp


def _model_comparison(rows, specs, fits, store: UnitStore, say, ml=None) -> dict[str, pd.DataFrame]:
    """ML refits (native) for the information criteria and the likelihood-ratio tests (``ml``: given, e.g. the
    streamed fits on all rows); PSIS-LOO of the Bayesian fits."""
    from .comparison import information_criteria, loo_table, lrt_table

    out: dict[str, pd.DataFrame] = {}
    if ml is not None:
        if ml:
            out["information_criteria"] = information_criteria(ml)
            if len(ml) >= 2:
                out["lrt"] = lrt_table(ml)
    elif specs[0].family != "gaussian" and all(s.groups for s in specs):
        # GLMMs: the fits themselves are ML (Laplace); native's, else lme4's, on every formula
        for b in ("native", "lme4"):
            ml = [fits[s.formula][b] for s in specs if b in fits[s.formula]]
            if len(ml) == len(specs):
                out["information_criteria"] = information_criteria(ml)
                if len(ml) >= 2:
                    out["lrt"] = lrt_table(ml)
                break
    elif specs[0].family == "gaussian" and all(s.groups for s in specs):
        key = "ml_refits|native"
        ml = store.get(key) if store.has(key) else None
        if ml is None:
            from .fitting import fit

            say("ML refits (native) for the likelihood-ratio tests and information criteria ...")
            ml = []
            for s in specs:
                try:
                    ml.append(fit(rows, s, backend="native", method="ML"))
                except HierCompareError as exc:
                    say(f"  native ML refit of {s.formula} failed: {exc}")
            store.put(key, ml)
        if ml:
            out["information_criteria"] = information_criteria(ml)
            if len(ml) >= 2:
                out["lrt"] = lrt_table(ml)
    bayes = [f for fs in fits.values() for b, f in fs.items() if b in ("pymc", "brms")]
    if bayes:
        try:
            out["loo"] = loo_table(bayes)
        except HierCompareError as exc:
            say(f"  PSIS-LOO unavailable: {exc}")
    return out


ALL_ROWS = "native (all rows)"
LONG_TABLES = frozenset({"agreement"})  # written to tables/*.csv, left out of results.json


def _streamed_fits(data, specs, method, na_action, batch_rows, scheduler, store: UnitStore, say) -> dict:
    """native on every row of a source read in batches, per formula: the fit at ``method`` and an ML fit (the
    model comparison's), each saved as it completes."""
    from .fitting import fit

    out: dict[str, dict] = {}
    for s in specs:
        out[s.formula] = {}
        for m in dict.fromkeys([method, "ML"]):
            if s.family != "gaussian" and m == "ML" and m != method:
                continue
            key = f"stream|{s.formula}|{m}"
            f = store.get(key) if store.has(key) else None
            if f is None:
                say(f"native ({m}) on all rows, read in batches: {s.formula} ...")
                f = fit(data, s, backend="native", method=m, na_action=na_action, batch_rows=batch_rows,
                        scheduler=scheduler)
                say(f"      {f.nobs} rows in {f.timing['total_seconds']:.1f} s")
                store.put(key, f)
            out[s.formula][m] = f
    return out


def source_fingerprint(data) -> str:
    """What a resumed streamed run must find unchanged: each file's name, size and modification time (a pyarrow
    or Dask object: its name)."""
    from .sources import source_name

    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        text = json.dumps([(str(q), q.stat().st_size, q.stat().st_mtime_ns) for q in files])
        return hashlib.sha256(text.encode()).hexdigest()[:16]
    return source_name(data)


def describe_source_columns(data, specs: list[ModelSpec], sample: pd.DataFrame | None = None) -> pd.DataFrame:
    """The columns of a source read in batches: name, type and role from its schema (missing values are counted
    by the fits, which drop or refuse them); with a sample, its distinct values and an example."""
    import pyarrow as pa

    from .sources import _dataset, _is_dask

    if _is_dask(data):
        schema = [(c, str(t)) for c, t in data.dtypes.items()]
    else:
        ds_ = _dataset(data)
        sch = ds_.schema if hasattr(ds_, "schema") else pa.schema([])
        schema = [(f.name, str(f.type)) for f in sch]
    rows = []
    for c, t in schema:
        roles = sorted({("response" if c == s.response else "grouping" if c in s.grouping_variables else
                         "predictor") for s in specs if c in s.variables})
        row = {"column": c, "dtype": t, "role": ", ".join(roles) or "unused"}
        if sample is not None and c in sample.columns:
            row.update(distinct_in_sample=int(sample[c].nunique()), example=str(sample[c].dropna().iloc[0])
                       if sample[c].notna().any() else "")
        rows.append(row)
    return pd.DataFrame(rows)


PARTIAL_POOLING = ("native", "lme4", "mixedlm", "pymc", "brms", "lightgbm", "torch")


def _figures(rows, specs, fits, tables, say) -> list[dict]:
    """The pictures of the report, per formula, each with its table added to ``tables``.

    Shrinkage (ols's no-pooling deviations against the first partial-pooling engine's, against group size) at
    every level, caterpillar plots of every level's intercept deviations across engines, the decomposition of a
    few rows' predictions, the hierarchy diagram with each group's offset, the first LightGBM tree.
    """
    from .report import plots

    figures: list[dict] = []

    def add(section, title, png, caption="", table=None, name=None):
        if png:
            figures.append({"section": section, "title": title, "png": png, "caption": caption,
                            "table": name or ""})
        if table is not None and name:
            t = table.copy()
            t.insert(0, "formula", spec.formula)
            tables[name] = pd.concat([tables[name], t], ignore_index=True) if name in tables else t

    for k, spec in enumerate(specs, 1):
        fs = fits[spec.formula]
        if not fs:
            continue
        tag = f"formula {k}" if len(specs) > 1 else "the formula"
        tidy = pd.concat([f.tidy() for f in fs.values()], ignore_index=True)
        engine = next((b for b in PARTIAL_POOLING if b in fs), None)
        try:
            for lv in fs[next(iter(fs))].model.hierarchy.levels:
                for term in lv.spec.terms[:2]:
                    if "ols" in fs and engine is not None:
                        sh = plots.shrinkage_table(tidy, plots.group_sizes(rows, lv.group), lv.group, term,
                                                   no_pooling="ols", partial_pooling=engine)
                        add("pictures", f"Shrinkage, {lv.group} {term} ({tag}): ols (no pooling) vs {engine}",
                            plots.shrinkage_plot(sh, title=f"{lv.group}: {term}"),
                            "Each group's deviation without pooling (ols's dummy coefficients) and with partial "
                            f"pooling ({engine}), against the group's rows: small groups are pulled towards 0 most.",
                            sh, "shrinkage")
                    cat = plots.caterpillar_table(tidy, lv.group, term)
                    add("pictures", f"Caterpillar, {lv.group} {term} ({tag})",
                        plots.caterpillar_plot(cat, title=f"{lv.group}: {term} deviations, 95% intervals"),
                        "Every engine's deviations in the same order (the first engine's ranking); past 60 groups "
                        "the extremes are drawn and the gap says how many are hidden.", cat, "caterpillar")
            ref = fs.get(engine) if engine else next(iter(fs.values()))
            if ref is not None and ref.model is not None:
                parts = ref.decompose()
                leaf = ref.model.hierarchy.levels[-1] if ref.model.hierarchy.levels else None
                labels = pd.Series(leaf.labels[leaf.codes], index=parts.index) if leaf is not None else None
                dec = plots.decomposition_table(parts, labels)
                add("pictures", f"Decomposition of predictions ({ref.backend}, {tag})",
                    plots.decomposition_plot(dec, title=f"national part + each level's deviation ({ref.backend})"),
                    "A few rows' predictions split into the fixed part and each level's deviation; they add up "
                    "to the prediction.", dec, "decomposition")
                root, root_value, levels = plots.hierarchy_inputs(ref)
                table = plots.hierarchy_table(root, root_value, levels)
                add("pictures", f"The tree with each group's offset ({ref.backend}, {tag})",
                    plots.hierarchy_plot(root, root_value, levels, title=f"intercept offsets ({ref.backend})"),
                    plots.hierarchy_note(table), table, "hierarchy")
            if "lightgbm" in fs:
                try:
                    rec = plots.lightgbm_tree_record(fs["lightgbm"])
                    add("pictures", f"LightGBM: its first tree ({tag})", plots.lightgbm_tree_from_record(rec),
                        rec.get("title", ""))
                except Exception as exc:  # graphviz missing: said, not drawn
                    say(f"  the LightGBM tree is not drawn: {exc}")
        except Exception as exc:  # a picture never stops the comparison; the report says which one failed
            say(f"  pictures of {spec.formula}: {type(exc).__name__}: {exc}")
            figures.append({"section": "pictures", "title": f"Pictures of {tag} stopped", "png": "",
                            "caption": f"{type(exc).__name__}: {exc}", "table": ""})
    return figures


def _results(source, rows, specs, fits, tables, definition, names, cv_names, models) -> dict:
    from ._version import __version__
    from .provenance import git_commit, package_versions

    hier = {s.formula: models[s.formula].hierarchy.describe() for s in specs if s.formula in models}
    all_rows = tables["fits"].loc[tables["fits"]["backend"] == ALL_ROWS, "reason"] if "fits" in tables else []
    return {
        "title": f"hiercompare: {len(names)} backends on {Path(source).name if source != 'DataFrame' else 'a data frame'}",
        "source": source,
        "formulas": [s.formula for s in specs],
        "family": specs[0].family,
        "nobs": len(rows) if rows is not None else None,
        "stream": ({"subsample": definition.get("subsample"), "native_all_rows": list(all_rows)}
                   if definition.get("stream") else None),
        "hierarchy": hier,
        "backends": names,
        "cv_backends": cv_names,
        "cv_opt_in": [b for b in ("torch", "torch-embed", "pymc", "brms") if b in names and b not in cv_names],
        "definition": definition,
        "fits": {f_: {b: f.to_dict() for b, f in fs.items()} for f_, fs in fits.items()},
        # every table but the long per-parameter agreement rows (tables/agreement.csv; the report shows their
        # summary): on dietox with every backend they were 12 of results.json's 19 MB
        "tables": {name: _records(df) for name, df in tables.items() if name not in LONG_TABLES},
        "tables_only_as_csv": sorted(n for n in tables if n in LONG_TABLES),
        "provenance": {"hiercompare": __version__, "git_commit": git_commit(), "python": sys.version.split()[0],
                       "versions": package_versions(), "seed": definition["seed"],
                       "options": definition["options"],
                       "backend_versions": {f"{b} ({f_})": f.provenance for f_, fs in fits.items()
                                            for b, f in fs.items()}},
    }


__all__ = ["compare_data", "DataComparison", "read_data", "clean_rows", "describe_columns", "describe_tree",
           "fit_unit", "SAMPLER_STAGES", "DEFAULT_CV_BACKENDS"]
