"""Simulation studies: a grid of scenarios x replications x backends, checkpointed and resumable.

A :class:`Study` simulates one data set per (scenario, replication) *unit* and fits every backend to that same
data set. The data seed of a unit is derived from ``numpy.random.SeedSequence(seed)`` by spawning on the key
(scenario index, replication), never on the worker, so results do not depend on how units are scheduled:

>>> ss = np.random.SeedSequence(7).spawn(3)[2].spawn(5)[4]     # scenario 2, replication 4
>>> int(ss.generate_state(1)[0]) == unit_seed(7, 2, 4)
True

Results are one long table (:data:`RESULT_COLUMNS`), one row per (scenario, replication, backend, parameter)
with the fit's tidy columns, the generating value (``truth``) and the value realised in that data set
(``realized``), ``converged``, ``warnings`` (joined by ``" | "``), ``seconds`` (the ``fit()`` call), ``seed``
and ``error``. A fit that raises anything becomes ONE row for that backend and unit with empty keys, no
estimates, ``converged = False``, its time and ``error = "<ExceptionType>: <message>"``; it is never redrawn
and never stops the study.

Storage under ``out_dir``::

    manifest.json        what was run (scenarios, formulas, backends, options, seed), package versions,
                         git commit, runs, status
    parts/s00000-r0000000.parquet   one file per completed unit, written atomically (tmp file + os.replace)
    results.parquet      every unit's rows, sorted by (scenario, replication, backend, effect, group,
                         level, term)

Running again into the same folder skips the units whose part file exists, so a study killed at any moment
(even by SIGKILL) resumes where it stopped and ends with the same table as an uninterrupted run. The folder
must hold the same study (scenarios, formulas, backends, options and seed); only ``replications`` may change
(seeds do not depend on it, so a study can be extended).

Executors: in-process (``workers=1``), local processes (``concurrent.futures.ProcessPoolExecutor`` with the
``spawn`` context; ``workers`` defaults to ``os.cpu_count()``), or Dask distributed (``scheduler`` =
``"tcp://host:port"``, a ``distributed.LocalCluster`` or a ``distributed.Client``). R backends (rpy2) embed
one R per process; local worker processes each start their own. On Dask, start workers with ``--nthreads 1``
when R backends are in the study (R calls in one process are serialised).

Threads: every fit of a unit runs with one BLAS/OpenMP thread, wherever it runs. Worker processes are started
with ``OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=MKL_NUM_THREADS=1`` (Dask's nanny sets the same), and
:func:`run_unit` caps the libraries already loaded with threadpoolctl (R's BLAS included, R being started
first). Two reasons: ``n`` workers with ``n`` BLAS threads each oversubscribe the cores (measured on 2 cores:
2 local workers ran slower than 1 before this), and a BLAS reduction splits differently with a different
thread count, so lme4's optimiser could stop ~1e-4 apart between executors; with one thread everywhere the
tables are identical whether the study ran in this process, on local workers or on Dask.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import sys
import time
import tomllib
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from ._version import __version__
from .errors import HierCompareError, SpecError
from .results import KEY
from .simulate import Scenario, simulate

RESULT_COLUMNS = ["scenario", "replication", "backend", "effect", "group", "level", "term", "estimate",
                  "std_error", "conf_low", "conf_high", "truth", "realized", "converged", "warnings", "seconds",
                  "seed", "error"]
SORT = ["scenario", "replication", "backend", "effect", "group", "level", "term"]
WARNING_SEP = " | "
_STRING = ["scenario", "backend", "effect", "group", "level", "term", "warnings", "error"]
_FLOAT = ["estimate", "std_error", "conf_low", "conf_high", "truth", "realized", "seconds"]
_INT = ["replication", "seed"]
_PART = re.compile(r"^s(\d{5})-r(\d{7})\.parquet$")
_STUDY_KEYS = {"name", "replications", "seed", "backends", "formula"}
_VERSION_PACKAGES = ("numpy", "pandas", "scipy", "statsmodels", "pyarrow", "dask", "distributed", "rpy2")


class StudyError(HierCompareError):
    """A study cannot be set up, resumed or run (bad config, a folder holding another study, a lost worker)."""


# ---------------------------------------------------------------------------------------------- seeds
def unit_seed(base_seed: int, scenario_index: int, replication: int) -> int:
    """The integer data seed of unit (scenario_index, replication).

    It is ``SeedSequence(base_seed).spawn(...)[scenario_index].spawn(...)[replication].generate_state(1)[0]``,
    built directly from the spawn key so it depends on nothing else (not the worker, not the number of
    replications or scenarios).

    Parameters
    ----------
    base_seed : int
        The study's seed (non-negative).
    scenario_index, replication : int
        0-based position of the scenario in the study and the replication number.

    Returns
    -------
    int
        A 32-bit seed passed to :func:`hiercompare.simulate` (and to seeded backends).

    Examples
    --------
    >>> unit_seed(1, 0, 0) == unit_seed(1, 0, 0) != unit_seed(1, 0, 1)
    True
    """
    ss = np.random.SeedSequence(base_seed, spawn_key=(int(scenario_index), int(replication)))
    return int(ss.generate_state(1)[0])


# ---------------------------------------------------------------------------------------------- one unit
def _empty_rows(n: int = 0) -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in RESULT_COLUMNS}).reindex(range(n))


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in :data:`RESULT_COLUMNS` order with fixed dtypes (strings, float64, int64, bool)."""
    out = df.reindex(columns=RESULT_COLUMNS).copy()
    for c in _STRING:
        out[c] = out[c].fillna("").astype(str).astype(object)
    for c in _FLOAT:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    for c in _INT:
        out[c] = out[c].astype("int64")
    out["converged"] = out["converged"].fillna(False).astype(bool)
    return out.reset_index(drop=True)


def _error_row(base: dict, backend: str, exc: BaseException, seconds: float, caught=()) -> dict:
    return {**base, "backend": backend, "effect": "", "group": "", "level": "", "term": "",
            "converged": False, "warnings": WARNING_SEP.join(_warning_texts(caught)), "seconds": seconds,
            "error": f"{type(exc).__name__}: {exc}"}


def _warning_texts(caught) -> list[str]:
    out: list[str] = []
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in out:
            out.append(text)
    return out


def run_unit(task: Mapping[str, Any]) -> pd.DataFrame:
    """Simulate one data set and fit every backend to it (what a worker runs).

    Parameters
    ----------
    task : mapping
        ``scenario`` (a :meth:`Scenario.to_dict`), ``formula``, ``backends``, ``options`` (per backend),
        ``replication`` and ``seed`` (the unit's integer seed); built by :meth:`Study.task`.

    Returns
    -------
    DataFrame
        The unit's rows in :data:`RESULT_COLUMNS` layout (not yet sorted). Failures are rows, never raised.
    """
    sc = Scenario.from_dict(task["scenario"])
    seed = int(task["seed"])
    base = dict(scenario=sc.name, replication=int(task["replication"]), seed=seed)
    t0 = time.perf_counter()
    try:
        data, truth = simulate(sc, seed=seed)
    except Exception as exc:  # a failing simulation fails every fit of the unit, each recorded
        secs = time.perf_counter() - t0
        rows = [_error_row(base, be, exc, secs) for be in task["backends"]]
        for r in rows:
            r["error"] = "simulate: " + r["error"]
        return normalize(pd.DataFrame(rows))
    tru = truth.tidy()[KEY + ["estimate", "realized"]].rename(columns={"estimate": "truth"})
    with one_thread(task["backends"]):
        frames = _fit_all(task, sc, data, tru, base)
    return normalize(pd.concat(frames, ignore_index=True))


SINGLE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@contextmanager
def one_thread(backends: Sequence[str] = ()) -> Iterator[None]:
    """Cap BLAS and OpenMP at one thread while inside (restored on exit).

    The backends' libraries are loaded first (``backends``: their names; for the R ones this starts R, whose
    BLAS is a separate library), so that the cap reaches them; a library loaded later inside the block reads
    the ``*_NUM_THREADS`` variables, which are set to 1 here as well. torch's intra-op pool is capped too when
    torch is loaded.
    """
    from threadpoolctl import threadpool_limits

    from .backends import get_backend

    for be in backends:  # get_backend loads R / torch / lightgbm (its availability check) before the cap
        try:
            get_backend(be)
        except Exception:  # an unavailable one fails later, as a row
            pass
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(1)
        with _environ(SINGLE_THREAD_ENV), threadpool_limits(limits=1):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)


def _fit_all(task, sc, data, tru, base) -> list[pd.DataFrame]:
    from .fitting import fit

    frames: list[pd.DataFrame] = []
    for be in task["backends"]:
        opts = dict(task["options"].get(be, {}))
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                f = fit(data, task["formula"], backend=be, family=sc.family, seed=base["seed"], **opts)
                failure = None
            except Exception as exc:  # any failure is a row with its text, never a crash
                failure = exc
        secs = time.perf_counter() - t1
        if failure is not None:
            frames.append(pd.DataFrame([_error_row(base, be, failure, secs, caught)]))
            continue
        tab = f.tidy().merge(tru, on=KEY, how="left")
        texts = list(f.diagnostics.get("warnings", []))
        texts += [t for t in _warning_texts(caught) if t not in texts]
        tab = tab.assign(**base, converged=f.converged, warnings=WARNING_SEP.join(texts), seconds=secs, error="")
        frames.append(tab)
    return frames


# ---------------------------------------------------------------------------------------------- storage
def _schema():
    import pyarrow as pa

    types = {c: pa.string() for c in _STRING}
    types.update({c: pa.float64() for c in _FLOAT})
    types.update({c: pa.int64() for c in _INT})
    types["converged"] = pa.bool_()
    return pa.schema([(c, types[c]) for c in RESULT_COLUMNS])


def _write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(normalize(df), schema=_schema(), preserve_index=False)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a study's long table: ``results.parquet``, a study folder, or a part file.

    Examples
    --------
    >>> res = read_results("study_out")  # doctest: +SKIP
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        p = p / "results.parquet"
    if not p.exists():
        raise StudyError(f"no study results at {p}; run the study first (hiercompare study CONFIG.toml --out DIR)")
    return normalize(pq.read_table(p).to_pandas())


def _concat_sorted(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return normalize(_empty_rows())
    out = normalize(pd.concat(frames, ignore_index=True))
    return out.sort_values(SORT, kind="mergesort").reset_index(drop=True)


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages a study's numbers depend on (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"hiercompare": __version__, "python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _backend_report(backends: Sequence[str]) -> dict[str, dict]:
    """Per backend: available, reason, versions (run where the fits run)."""
    from .backends import get_backend

    out = {}
    for name in backends:
        try:
            be = get_backend(name)
            out[name] = {"available": True, "reason": "", "versions": be.versions()}
        except HierCompareError as exc:
            out[name] = {"available": False, "reason": str(exc), "versions": {}}
    return out


# ---------------------------------------------------------------------------------------------- progress
def _fmt(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class _Progress:
    """One status line on stderr: units done, failed fits, elapsed and estimated time left."""

    def __init__(self, name: str, total: int, resumed: int, failures: int, enabled: bool = True,
                 every: float = 1.0):
        self.name, self.total, self.resumed, self.failures = name, total, resumed, failures
        self.done = resumed
        self.enabled, self.every = enabled, every
        self.t0 = time.perf_counter()
        self.last = -np.inf
        self.tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        run_now = self.done - self.resumed
        left = elapsed / run_now * (self.total - self.done) if run_now else np.inf
        if self.done == self.total:
            left = 0.0
        extra = f" ({self.resumed} from an earlier run)" if self.resumed else ""
        return (f"study {self.name}: {self.done}/{self.total} units done{extra}, {self.failures} failed fits, "
                f"elapsed {_fmt(elapsed)}, left ~{_fmt(left)}")

    def update(self, failures: int = 0, force: bool = False) -> None:
        self.failures += failures
        if not self.enabled:
            return
        now = time.perf_counter()
        if force or now - self.last >= self.every or self.done == self.total:
            self.last = now
            end = "\r" if self.tty and self.done < self.total else "\n"
            print(self.line(), file=sys.stderr, end=end, flush=True)

    def unit_done(self, failures: int) -> None:
        self.done += 1
        self.update(failures)


# ---------------------------------------------------------------------------------------------- the study
@dataclass
class Study:
    """A grid of scenarios x replications x backends with known truth.

    Parameters
    ----------
    scenarios : Scenario or sequence of Scenario
        Data-generating processes; their ``name`` labels the results and must be unique.
    replications : int
        Data sets per scenario.
    backends : sequence of str
        Registered backend names; every backend in a replication fits the same data set.
    options : mapping, optional
        Per-backend keyword options for :func:`hiercompare.fit`, e.g. ``{"lme4": {"method": "ML"}}``.
    seed : int
        Base seed of the ``SeedSequence`` the unit seeds are spawned from.
    formula : str, optional
        The model fitted to every scenario; default: each scenario's own :meth:`Scenario.formula`.
    name : str
        A label for progress lines and the manifest.

    Examples
    --------
    >>> import hiercompare as hc
    >>> st = Study([hc.Scenario()], replications=20, backends=["ols", "mixedlm"], seed=1)
    >>> res = st.run("study_out", workers=2)  # doctest: +SKIP
    """

    scenarios: Sequence[Scenario]
    replications: int
    backends: Sequence[str]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    seed: int = 0
    formula: str | None = None
    name: str = "study"

    def __post_init__(self):
        from .backends import REGISTRY
        from .spec import ModelSpec

        if isinstance(self.scenarios, Scenario):
            self.scenarios = [self.scenarios]
        self.scenarios = tuple(self.scenarios)
        if not self.scenarios:
            raise StudyError("a study needs at least one scenario")
        bad = [type(s).__name__ for s in self.scenarios if not isinstance(s, Scenario)]
        if bad:
            raise StudyError(f"scenarios must be hiercompare.Scenario objects, got {bad}; "
                             "build them with Scenario(...) or Scenario.from_dict(...)")
        names = [s.name for s in self.scenarios]
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            raise StudyError(f"scenario names must be unique (they label the results); repeated: {dups}. "
                             "Give each scenario its own name")
        if isinstance(self.replications, bool) or not isinstance(self.replications, (int, np.integer)) \
                or self.replications < 1:
            raise StudyError(f"replications must be a positive integer, got {self.replications!r}")
        self.replications = int(self.replications)
        if isinstance(self.backends, str):
            self.backends = [self.backends]
        self.backends = tuple(self.backends)
        if not self.backends:
            raise StudyError("a study needs at least one backend")
        unknown = [b for b in self.backends if b not in REGISTRY]
        if unknown:
            raise StudyError(f"unknown backend(s) {unknown}; registered backends are {sorted(REGISTRY)}")
        if len(set(self.backends)) != len(self.backends):
            raise StudyError(f"backends are listed twice: {list(self.backends)}")
        opts = {}
        for be, o in dict(self.options or {}).items():
            if be not in self.backends:
                raise StudyError(f"options given for {be!r}, which is not among the study's backends "
                                 f"{list(self.backends)}; add it to backends or drop its options")
            if not isinstance(o, Mapping):
                raise StudyError(f"options for {be!r} must be a table of keyword options, got {o!r}")
            opts[be] = dict(o)
        self.options = opts
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise StudyError(f"seed must be a non-negative integer, got {self.seed!r}")
        self.seed = int(self.seed)
        for sc, f in zip(self.scenarios, self.formulas()):
            try:
                ModelSpec.from_formula(f, family=sc.family)  # a bad formula fails here, not in every unit
            except HierCompareError as exc:
                raise StudyError(f"scenario {sc.name!r}: formula {f!r} cannot be used: {exc}") from exc

    # ------------------------------------------------------------------ definition
    def formulas(self) -> list[str]:
        """The formula fitted to each scenario (the study's, or each scenario's own)."""
        return [self.formula or sc.formula() for sc in self.scenarios]

    def units(self) -> list[tuple[int, int]]:
        """Every (scenario index, replication) pair, scenario-major."""
        return [(i, r) for i in range(len(self.scenarios)) for r in range(self.replications)]

    def seed_for(self, scenario_index: int, replication: int) -> int:
        """The unit's data seed (see :func:`unit_seed`)."""
        return unit_seed(self.seed, scenario_index, replication)

    def task(self, scenario_index: int, replication: int) -> dict:
        """Everything a worker needs for one unit, as plain picklable values."""
        return {
            "scenario": self.scenarios[scenario_index].to_dict(),
            "formula": self.formulas()[scenario_index],
            "backends": list(self.backends),
            "options": {k: dict(v) for k, v in self.options.items()},
            "scenario_index": scenario_index,
            "replication": replication,
            "seed": self.seed_for(scenario_index, replication),
        }

    def definition(self) -> dict:
        """What determines the results (the manifest's ``study`` entry; a resumed folder must match it)."""
        return json.loads(json.dumps({
            "name": self.name,
            "scenarios": [sc.to_dict() for sc in self.scenarios],
            "formulas": self.formulas(),
            "formula": self.formula,
            "backends": list(self.backends),
            "options": self.options,
            "seed": self.seed,
            "replications": self.replications,
        }))

    # ------------------------------------------------------------------ config files
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], source: str = "config") -> "Study":
        """A study from a parsed TOML-like mapping (see :meth:`from_toml` for the layout)."""
        extra = sorted(set(cfg) - {"study", "scenario", "options"})
        if extra:
            raise StudyError(f"{source}: unknown top-level table(s) {extra}; use [study], [[scenario]] and "
                             "[options.<backend>]")
        st = dict(cfg.get("study") or {})
        unknown = sorted(set(st) - _STUDY_KEYS)
        if unknown:
            raise StudyError(f"{source}: unknown key(s) {unknown} in [study]; valid keys are {sorted(_STUDY_KEYS)}")
        missing = [k for k in ("replications", "seed", "backends") if k not in st]
        if missing:
            raise StudyError(f"{source}: [study] needs {missing} (e.g. replications = 20, seed = 1, "
                             'backends = ["ols", "mixedlm"])')
        raw = cfg.get("scenario", [])
        if isinstance(raw, Mapping):
            raise StudyError(f"{source}: write scenarios as [[scenario]] (an array of tables), not [scenario]")
        scenarios = []
        for k, d in enumerate(raw or [{}]):
            try:
                scenarios.append(Scenario.from_dict(d))
            except TypeError as exc:
                fields_ = sorted(Scenario.__dataclass_fields__)
                raise StudyError(f"{source}: scenario #{k + 1} ({d.get('name', 'unnamed')}): {exc}. Scenario keys "
                                 f"are {fields_}; [[scenario.levels]] keys are name, size, sd, corr, label, "
                                 "correlated") from exc
            except HierCompareError as exc:
                raise StudyError(f"{source}: scenario #{k + 1} ({d.get('name', 'unnamed')}): {exc}") from exc
        return cls(scenarios=scenarios, replications=st["replications"], backends=st["backends"],
                   options=cfg.get("options") or {}, seed=st["seed"], formula=st.get("formula"),
                   name=st.get("name", Path(source).stem if source != "config" else "study"))

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """Read a study from a TOML file.

        Layout::

            [study]
            name = "seed_small"            # optional (default: the file name)
            replications = 20
            seed = 20240501
            backends = ["ols", "mixedlm", "lme4"]
            formula = "y ~ x1 + ..."       # optional (default: each scenario's own formula)

            [[scenario]]                   # any number; keys as in Scenario.from_dict
            name = "seed"                  # a scenario with no other keys is the default tree

            [options.lme4]                 # keyword options for one backend
            method = "ML"

        Examples
        --------
        >>> Study.from_toml("validation/seed_small.toml").replications  # doctest: +SKIP
        20
        """
        p = Path(path)
        try:
            with open(p, "rb") as fh:
                cfg = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise StudyError(f"study config {p} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise StudyError(f"study config {p} is not valid TOML: {exc}") from exc
        return cls.from_config(cfg, source=str(p))

    # ------------------------------------------------------------------ running
    @staticmethod
    def part_path(out_dir: str | Path, scenario_index: int, replication: int) -> Path:
        """Where the unit's checkpoint file lives."""
        return Path(out_dir) / "parts" / f"s{scenario_index:05d}-r{replication:07d}.parquet"

    def completed_units(self, out_dir: str | Path) -> set[tuple[int, int]]:
        """Units of this study whose part file exists in ``out_dir``."""
        parts = Path(out_dir) / "parts"
        done = set()
        if parts.is_dir():
            for p in parts.iterdir():
                m = _PART.match(p.name)
                if m:
                    i, r = int(m.group(1)), int(m.group(2))
                    if i < len(self.scenarios) and r < self.replications:
                        done.add((i, r))
        return done

    def _prepare_folder(self, out: Path, backend_report: dict, executor: dict) -> dict:
        parts = out / "parts"
        man_path = out / "manifest.json"
        definition = self.definition()
        if man_path.exists():
            old = json.loads(man_path.read_text())
            a = {k: v for k, v in old.get("study", {}).items() if k != "replications"}
            b = {k: v for k, v in definition.items() if k != "replications"}
            if a != b:
                diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                raise StudyError(f"{out} holds a different study (differs in {diff}); use another output folder "
                                 f"or delete {out} to start over")
            manifest = old
        elif parts.is_dir() and any(_PART.match(p.name) for p in parts.iterdir()):
            raise StudyError(f"{parts} holds part files but {man_path} is missing, so they cannot be checked "
                             f"against this study; delete {out} or use another output folder")
        else:
            manifest = {"created": _now(), "runs": []}
        parts.mkdir(parents=True, exist_ok=True)
        for p in parts.glob("*.tmp"):  # half-written files of a killed run
            p.unlink()
        manifest.update({
            "hiercompare_study": 1,
            "study": definition,
            "versions": package_versions(),
            "backend_report": backend_report,
            "git_commit": _git_commit(),
            "status": "running",
            "results": "results.parquet",
            "parts": "parts/",
            "columns": RESULT_COLUMNS,
        })
        manifest["runs"] = list(manifest.get("runs", [])) + [{"started": _now(), **executor}]
        _write_json_atomic(manifest, man_path)
        return manifest

    def run(
        self,
        out_dir: str | Path,
        workers: int | None = None,
        scheduler: Any = None,
        progress: bool = True,
        mp_context: str = "spawn",
        check_backends: bool = True,
    ) -> pd.DataFrame:
        """Run (or resume) the study; write part files, ``results.parquet`` and ``manifest.json``.

        Parameters
        ----------
        out_dir : path
            Output folder; created if needed. Units with a part file there are skipped.
        workers : int, optional
            Local worker processes (default ``os.cpu_count()``); ``1`` runs every unit in this process.
            Ignored when ``scheduler`` is given.
        scheduler : str or distributed.LocalCluster or distributed.Client, optional
            Run on Dask distributed: a scheduler address such as ``"tcp://10.0.0.5:8786"``, a cluster
            object, or a connected client (left open).
        progress : bool
            Print a status line on stderr (units done, failed fits, elapsed, time left).
        mp_context : {"spawn", "forkserver"}
            Start method of local worker processes (never ``fork``: R and BLAS threads do not survive it).
        check_backends : bool
            Refuse to start when a backend is unavailable where the fits run (checked in this process for
            local runs, on a worker for Dask runs); its reason is in the error.

        Returns
        -------
        DataFrame
            The long table (:data:`RESULT_COLUMNS`), sorted by :data:`SORT`; identical to
            ``read_results(out_dir)``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if mp_context not in ("spawn", "forkserver"):
            raise StudyError(f"mp_context must be 'spawn' or 'forkserver', got {mp_context!r}")
        if scheduler is None:
            workers = (os.cpu_count() or 1) if workers is None else int(workers)
            if workers < 1:
                raise StudyError(f"workers must be >= 1, got {workers}")
        client, own_client = (None, False) if scheduler is None else _dask_client(scheduler)
        try:
            if client is not None:
                report = client.submit(_backend_report, list(self.backends), pure=False).result()
                executor = {"executor": "dask", "scheduler": str(client.scheduler.address)}
            else:
                report = _backend_report(self.backends)
                executor = {"executor": "local" if workers > 1 else "in-process", "workers": workers,
                            "mp_context": mp_context if workers > 1 else None}
            down = {b: r["reason"] for b, r in report.items() if not r["available"]}
            if down and check_backends:
                raise StudyError(f"backend(s) unavailable where the fits would run: {down}; install them "
                                 "(make install) or remove them from the study's backends")
            manifest = self._prepare_folder(out, report, executor)
            done = self.completed_units(out)
            pending = [u for u in self.units() if u not in done]
            t_start = time.perf_counter()
            prior_failures = sum(_count_failures(self.part_path(out, *u)) for u in done)
            prog = _Progress(self.name, len(self.units()), len(done), prior_failures, enabled=progress)
            prog.update(force=True)
            if client is not None:
                results = _run_dask(client, self, pending)
            elif workers == 1 or len(pending) <= 1:
                results = ((u, run_unit(self.task(*u))) for u in pending)
            else:
                results = _run_processes(self, pending, workers, mp_context)
            for unit, part in results:
                _write_parquet_atomic(part, self.part_path(out, *unit))
                prog.unit_done(int((part["error"] != "").sum()))
        finally:
            if own_client:
                client.close()
        table = self.collect(out)
        _write_parquet_atomic(table, out / "results.parquet")
        manifest["status"] = "complete"
        manifest["units"] = len(self.units())
        manifest["rows"] = len(table)
        manifest["failed_fits"] = int((table["error"] != "").sum())
        manifest["runs"][-1].update(finished=_now(), units_run=len(pending),
                                    seconds=round(time.perf_counter() - t_start, 3))
        _write_json_atomic(manifest, out / "manifest.json")
        return table

    def collect(self, out_dir: str | Path) -> pd.DataFrame:
        """The sorted long table of every completed unit of this study in ``out_dir``."""
        import pyarrow.parquet as pq

        frames = [pq.read_table(self.part_path(out_dir, *u)).to_pandas()
                  for u in sorted(self.completed_units(out_dir))]
        return _concat_sorted(frames)


def _count_failures(path: Path) -> int:
    import pyarrow.parquet as pq

    err = pq.read_table(path, columns=["error"]).column("error").to_pylist()
    return sum(1 for e in err if e)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    from .demo import git_commit

    return git_commit()


def child_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment for child Python processes, without the library path that starting R added.

    When rpy2 starts R it prepends R's library folders (on Debian ``/usr/lib/R/lib:/usr/lib/x86_64-linux-gnu``)
    to ``LD_LIBRARY_PATH``. A Python started afterwards with that setting can load the system's libpython
    instead of its own (seen with a pyenv Python beside Debian's python3.11: ``undefined symbol:
    _PyModule_Add``, ``'_thread.RLock' object has no attribute '_recursion_count'``). Worker processes start
    their own R when they need it, so they are given the path as it was before R started.

    Parameters
    ----------
    env : mapping, optional
        The environment to clean (default ``os.environ``).

    Returns
    -------
    dict
        The environment with rpy2's prefix removed from ``LD_LIBRARY_PATH`` (the variable is dropped when
        nothing else was in it).
    """
    out = dict(os.environ if env is None else env)
    out.update(SINGLE_THREAD_ENV)
    openrlib = sys.modules.get("rpy2.rinterface_lib.openrlib")
    added = getattr(openrlib, "LD_LIBRARY_PATH", None)
    ld = out.get("LD_LIBRARY_PATH")
    if added and ld is not None:
        prefix = f"{added}:"
        while ld.startswith(prefix):
            ld = ld[len(prefix):]
        if ld.strip(":"):
            out["LD_LIBRARY_PATH"] = ld
        else:
            out.pop("LD_LIBRARY_PATH")
    return out


@contextmanager
def clean_child_environment() -> Iterator[None]:
    """While inside, ``os.environ`` is :func:`child_environment` (so processes started here get it).

    That is: without the library path that starting R added, and with one BLAS/OpenMP thread
    (:data:`SINGLE_THREAD_ENV`) so that n worker processes do not run n x cores threads.

    Examples
    --------
    >>> with clean_child_environment():  # doctest: +SKIP
    ...     cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1)
    """
    clean = child_environment()
    with _environ({k: clean.get(k) for k in ("LD_LIBRARY_PATH", *SINGLE_THREAD_ENV)}):
        yield


@contextmanager
def _environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) these environment variables while inside; restore them on exit."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_processes(study: Study, pending, workers: int, mp_context: str) -> Iterator[tuple[tuple[int, int], pd.DataFrame]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context(mp_context)
    with clean_child_environment():  # the pool starts its processes on the first submits
        ex = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=ctx)
        try:
            futures = {ex.submit(run_unit, study.task(*u)): u for u in pending}
        except BaseException:
            ex.shutdown(wait=False, cancel_futures=True)
            raise
    try:
        for fut in as_completed(futures):
            try:
                part = fut.result()
            except BrokenProcessPool as exc:
                raise StudyError("a worker process died (killed, out of memory, or a crash inside R or a "
                                 "compiled library; from a script, also check that the study runs under "
                                 "`if __name__ == '__main__':`, which spawned workers need); every completed unit "
                                 "is saved: run the same study into the same folder to resume") from exc
            yield futures[fut], part
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _dask_client(scheduler):
    try:
        import distributed
    except ImportError as exc:
        raise StudyError("Dask runs need dask[distributed]: pip install 'hiercompare[study]'") from exc
    if isinstance(scheduler, distributed.Client):
        return scheduler, False
    if isinstance(scheduler, str) or hasattr(scheduler, "scheduler_address"):
        return distributed.Client(scheduler, set_as_default=False), True
    raise StudyError(f"scheduler must be an address like 'tcp://host:8786', a distributed cluster or a Client; "
                     f"got {type(scheduler).__name__}")


def _run_dask(client, study: Study, pending) -> Iterator[tuple[tuple[int, int], pd.DataFrame]]:
    from distributed import as_completed

    threaded = {w: n for w, n in client.nthreads().items() if n > 1}
    if threaded:
        warnings.warn(f"Dask workers with more than one thread ({len(threaded)} of them): fits record their "
                      "warnings through Python's process-wide warnings machinery and R runs one call at a time "
                      "per process, so start workers with --nthreads 1 (or LocalCluster(threads_per_worker=1))",
                      UserWarning, stacklevel=3)
    paused = client.run(_pause_profiler)  # {worker address: True where this call stopped the sampler}
    token = uuid.uuid4().hex[:8]
    futures = {}
    for u in pending:
        fut = client.submit(run_unit, study.task(*u), key=f"hiercompare-{token}-s{u[0]}-r{u[1]}", pure=False)
        futures[fut] = u
    try:
        for fut in as_completed(list(futures), loop=client.loop):
            try:
                part = fut.result()
            except Exception as exc:
                raise StudyError(f"unit {futures[fut]} was lost on the Dask cluster ({type(exc).__name__}: {exc}); "
                                 "every completed unit is saved: run the same study into the same folder to "
                                 "resume") from exc
            yield futures[fut], part
            fut.release()
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()
        again = [w for w, stopped in paused.items() if stopped]
        if again:
            try:
                client.run(_resume_profiler, workers=again)
            except Exception:  # a worker that left the cluster has no sampler to restart
                pass


_PROFILER_CALLBACKS = ("profile", "profile-cycle")


def _pause_profiler(dask_worker) -> bool:
    """Stop a Dask worker's statistical profiler for the study (restarted afterwards by :func:`_resume_profiler`).

    The worker samples every thread's stack every 10 ms for its dashboard; with one compute thread that holds
    the GIL this cost the fits about 15% (measured: the same 60 units' fit seconds 46.7 with it, 42.6 without,
    local processes 41.0). Returns whether it was running.
    """
    running = False
    for name in _PROFILER_CALLBACKS:
        pc = dask_worker.periodic_callbacks.get(name)
        if pc is not None and pc.is_running():
            pc.stop()
            running = True
    return running


def _resume_profiler(dask_worker) -> None:
    for name in _PROFILER_CALLBACKS:
        pc = dask_worker.periodic_callbacks.get(name)
        if pc is not None and not pc.is_running():
            pc.start()


__all__ = ["Study", "StudyError", "run_unit", "unit_seed", "read_results", "normalize", "RESULT_COLUMNS", "SORT",
           "package_versions", "child_environment", "clean_child_environment", "one_thread"]
