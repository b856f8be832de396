"""One unit of a study: simulate one data set (its seed keyed by scenario and replication) and fit every backend.

This is what a worker runs, wherever it runs (this process, a local worker process, a Dask worker). A fit that
raises anything becomes ONE row for that backend and unit with empty keys, no estimates, ``converged`` missing
(nothing ran to assess), its time and ``error = "<ExceptionType>: <message>"``; it is never redrawn and never
stops the study. ``converged`` of a fit is :attr:`Fit.converged`: missing where the backend does not assess it.
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import HierCompareError
from ..results import KEY
from ..runenv import one_thread
from ..simulate import scenario_from_dict, simulate
from .storage import normalize

WARNING_SEP = " | "


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
    >>> ss = np.random.SeedSequence(7).spawn(3)[2].spawn(5)[4]     # scenario 2, replication 4
    >>> int(ss.generate_state(1)[0]) == unit_seed(7, 2, 4)
    True
    """
    ss = np.random.SeedSequence(base_seed, spawn_key=(int(scenario_index), int(replication)))
    return int(ss.generate_state(1)[0])


def _error_row(base: dict, backend: str, exc: BaseException, seconds: float, caught=()) -> dict:
    return {**base, "backend": backend, "effect": "", "group": "", "level": "", "term": "",
            "converged": None, "warnings": WARNING_SEP.join(_warning_texts(caught)), "seconds": seconds,
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
        ``scenario`` (a :meth:`Scenario.to_dict` or :meth:`DesignScenario.to_dict`), ``formula``, ``backends``,
        ``options`` (per backend), ``replication`` and ``seed`` (the unit's integer seed); built by
        :meth:`Study.task`.

    Returns
    -------
    DataFrame
        The unit's rows in :data:`~hiercompare.study.storage.RESULT_COLUMNS` layout (not yet sorted). Failures
        are rows, never raised.
    """
    sc = scenario_from_dict(task["scenario"])
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


def _fit_all(task, sc, data, tru, base) -> list[pd.DataFrame]:
    from ..fitting import fit

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


def backend_report(backends: Sequence[str]) -> dict[str, dict]:
    """Per backend: available, reason, versions (run where the fits run)."""
    from ..backends import get_backend

    out = {}
    for name in backends:
        try:
            be = get_backend(name)
            out[name] = {"available": True, "reason": "", "versions": be.versions()}
        except HierCompareError as exc:
            out[name] = {"available": False, "reason": str(exc), "versions": {}}
    return out


__all__ = ["WARNING_SEP", "unit_seed", "run_unit", "backend_report"]
