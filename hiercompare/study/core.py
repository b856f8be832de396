"""The :class:`Study`: a grid of scenarios x replications x backends with known truth, checkpointed and resumable.

See :mod:`hiercompare.study` for the design (seeds, the long table, storage, executors, threads).
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import HierCompareError, StudyError
from ..provenance import now
from ..simulate import DesignScenario, Scenario
from . import config, storage
from .units import VARIANT_SEP, backend_name, backend_report, run_unit, unit_seed


@dataclass
class Study:
    """A grid of scenarios x replications x backends with known truth.

    Parameters
    ----------
    scenarios : Scenario or sequence of Scenario (or DesignScenario: a user's design, the parametric bootstrap)
        Data-generating processes; their ``name`` labels the results and must be unique.
    replications : int
        Data sets per scenario.
    backends : sequence of str
        Registered backend names, or variants of one named ``"<backend>:<label>"`` (``"native:kr"``: the native
        backend with the options given for ``"native:kr"``); every entry in a replication fits the same data set,
        and the results' ``backend`` column carries the entry.
    options : mapping, optional
        Per-entry keyword options for :func:`hiercompare.fit`, e.g. ``{"lme4": {"method": "ML"},
        "native:kr": {"df": "kenward-roger"}}``.
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
        from ..backends import REGISTRY
        from ..spec import ModelSpec

        if isinstance(self.scenarios, Scenario):
            self.scenarios = [self.scenarios]
        self.scenarios = tuple(self.scenarios)
        if not self.scenarios:
            raise StudyError("a study needs at least one scenario")
        bad = [type(s).__name__ for s in self.scenarios if not isinstance(s, (Scenario, DesignScenario))]
        if bad:
            raise StudyError(f"scenarios must be hiercompare.Scenario (or DesignScenario) objects, got {bad}; "
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
        unknown = [b for b in self.backends if not isinstance(b, str) or backend_name(b) not in REGISTRY
                   or b.endswith(VARIANT_SEP)]
        if unknown:
            raise StudyError(f"unknown backend(s) {unknown}; registered backends are {sorted(REGISTRY)}, or a "
                             f"variant of one as '<backend>{VARIANT_SEP}<label>' (e.g. 'native{VARIANT_SEP}kr', "
                             "with its own [options.\"native:kr\"])")
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
        """A study from a parsed TOML-like mapping (see :mod:`hiercompare.study.config` for the layout)."""
        return cls(**config.study_arguments(cfg, source=source))

    @classmethod
    def from_toml(cls, path: str | Path) -> "Study":
        """Read a study from a TOML file (layout: :mod:`hiercompare.study.config`).

        Examples
        --------
        >>> Study.from_toml("validation/seed_small.toml").replications  # doctest: +SKIP
        20
        """
        return cls.from_config(config.read_toml(path), source=str(Path(path)))

    # ------------------------------------------------------------------ running
    @staticmethod
    def part_path(out_dir: str | Path, scenario_index: int, replication: int) -> Path:
        """Where the unit's checkpoint file lives."""
        return storage.part_path(out_dir, scenario_index, replication)

    def completed_units(self, out_dir: str | Path) -> set[tuple[int, int]]:
        """Units of this study whose part file exists in ``out_dir``."""
        return storage.completed_units(out_dir, len(self.scenarios), self.replications)

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
        from .executors import dask_client, run_dask, run_processes

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if mp_context not in ("spawn", "forkserver"):
            raise StudyError(f"mp_context must be 'spawn' or 'forkserver', got {mp_context!r}")
        if scheduler is None:
            workers = (os.cpu_count() or 1) if workers is None else int(workers)
            if workers < 1:
                raise StudyError(f"workers must be >= 1, got {workers}")
        client, own_client = (None, False) if scheduler is None else dask_client(scheduler)
        try:
            if client is not None:
                report = client.submit(backend_report, list(self.backends), pure=False).result()
                executor = {"executor": "dask", "scheduler": str(client.scheduler.address)}
            else:
                report = backend_report(self.backends)
                executor = {"executor": "local" if workers > 1 else "in-process", "workers": workers,
                            "mp_context": mp_context if workers > 1 else None}
            down = {b: r["reason"] for b, r in report.items() if not r["available"]}
            if down and check_backends:
                raise StudyError(f"backend(s) unavailable where the fits would run: {down}; install them "
                                 "(make install) or remove them from the study's backends")
            manifest = storage.prepare_folder(out, self.definition(), report, executor)
            done = self.completed_units(out)
            pending = [u for u in self.units() if u not in done]
            tasks = [(u, self.task(*u)) for u in pending]
            t_start = time.perf_counter()
            failures = sum(storage.count_failures(self.part_path(out, *u)) for u in done)
            if client is not None:
                results = run_dask(client, tasks)
            elif workers == 1 or len(pending) <= 1:
                results = ((u, run_unit(task)) for u, task in tasks)
            else:
                results = run_processes(tasks, workers, mp_context)
            with _progress_bar(self.name, len(self.units()), len(done), failures, progress) as bar:
                for unit, part in results:
                    storage.write_parquet_atomic(part, self.part_path(out, *unit))
                    failures += int((part["error"] != "").sum())
                    bar.set_postfix_str(f"{failures} failed fits", refresh=False)
                    bar.update(1)
        finally:
            if own_client:
                client.close()
        table = self.collect(out)
        storage.write_parquet_atomic(table, out / "results.parquet")
        manifest["status"] = "complete"
        manifest["units"] = len(self.units())
        manifest["rows"] = len(table)
        manifest["failed_fits"] = int((table["error"] != "").sum())
        manifest["runs"][-1].update(finished=now(), units_run=len(pending),
                                    seconds=round(time.perf_counter() - t_start, 3))
        storage.write_json_atomic(manifest, out / "manifest.json")
        return table

    def collect(self, out_dir: str | Path) -> pd.DataFrame:
        """The sorted long table of every completed unit of this study in ``out_dir``."""
        return storage.read_parts(out_dir, self.completed_units(out_dir))


def _progress_bar(name: str, total: int, resumed: int, failures: int, enabled: bool):
    """A tqdm status line on stderr: units done (and how many came from an earlier run), failed fits, elapsed
    time and time left (tqdm's rate counts only the units run now, so a resumed run's estimate is right)."""
    from tqdm.auto import tqdm

    # no monitor thread: it would outlive the study, and with a second thread alive brms's chains can no longer
    # fork (rstan falls back to a socket cluster); our bars are updated at every unit anyway
    tqdm.monitor_interval = 0
    extra = f" ({resumed} from an earlier run)" if resumed else ""
    return tqdm(total=total, initial=resumed, desc=f"study {name}{extra}", unit="unit", file=sys.stderr,
                disable=not enabled, mininterval=1.0, dynamic_ncols=True, postfix=f"{failures} failed fits")


__all__ = ["Study"]
