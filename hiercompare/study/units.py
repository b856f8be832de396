"""One unit of a study: simulate one data set (its seed keyed by scenario and replication) and fit every backend.

This is what a worker runs, wherever it runs (this process, a local worker process, a Dask worker). A fit that
raises anything becomes ONE row for that backend and unit with empty keys, no estimates, ``converged`` missing
(nothing ran to assess), its time and ``error = "<ExceptionType>: <message>"``; it is never redrawn and never
stops the study. ``converged`` of a fit is :attr:`Fit.converged`: missing where the backend does not assess it.

A study's backend entry is a registered backend name (``"native"``) or a *variant* of one, ``"<backend>:<label>"``
(``"native:kr"``): the fit is made by the backend before the colon with the options given for the whole entry
(``[options."native:kr"]``), and the rows carry the entry as their ``backend``. So one backend can run under
several option sets on the same data sets (:func:`backend_name`). A parametric bootstrap of the variance
parameters (``ran_pars_ci = "bootstrap"``) without its own ``ran_pars_seed`` is seeded by the unit's seed, so a
study reruns to the same intervals.
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
#: Separates a registered backend name from a variant label in a study's backend entry (``"native:kr"``).
VARIANT_SEP = ":"


def backend_name(entry: str) -> str:
    """The registered backend that fits a study's backend entry: the entry itself, or its part before ``:``.

    Examples
    --------
    >>> backend_name("native:kr"), backend_name("native"), backend_name("lightgbm-cat")
    ('native', 'native', 'lightgbm-cat')
    """
    return str(entry).split(VARIANT_SEP, 1)[0]


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
    with one_thread(list(dict.fromkeys(backend_name(b) for b in task["backends"]))):
        frames = _fit_all(task, sc, data, tru, base)
    return normalize(pd.concat(frames, ignore_index=True))


def _fit_all(task, sc, data, tru, base) -> list[pd.DataFrame]:
    from ..fitting import fit

    frames: list[pd.DataFrame] = []
    for be in task["backends"]:
        opts = {**getattr(sc, "fit_options", {}), **task["options"].get(be, {})}  # a design's weights= column
        if opts.get("ran_pars_ci") == "bootstrap" and opts.get("ran_pars_seed") is None:
            opts["ran_pars_seed"] = base["seed"]  # the bootstrap's draws keyed by the unit too (entropy [seed, b])
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                f = fit(data, task["formula"], backend=backend_name(be), family=sc.family, seed=base["seed"], **opts)
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
        tab = tab.assign(**base, backend=be, converged=f.converged, warnings=WARNING_SEP.join(texts), seconds=secs, error="")
        frames.append(tab)
    return frames


def backend_report(backends: Sequence[str]) -> dict[str, dict]:
    """Per backend entry (a variant is reported as its backend): available, reason, versions (run where the fits
    run)."""
    from ..backends import get_backend

    out = {}
    for name in backends:
        try:
            be = get_backend(backend_name(name))
            out[name] = {"available": True, "reason": "", "versions": be.versions()}
        except HierCompareError as exc:
            out[name] = {"available": False, "reason": str(exc), "versions": {}}
    return out


__all__ = ["WARNING_SEP", "VARIANT_SEP", "backend_name", "unit_seed", "run_unit", "backend_report"]
