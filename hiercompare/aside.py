"""Fit one backend in a second Python process while this one goes on.

The demo fits brms this way: brms's two chains run in forked R processes for about a minute, and the other
backends fit meanwhile in the demo's own process instead of waiting their turn.

The second process is a one-worker ``loky`` executor (the process pool joblib uses): a new Python started in
:func:`~hiercompare.runenv.clean_child_environment` (one BLAS/OpenMP thread, no library path left by R), which
gets the data, formula, family, seed and options by pickle and sends back the Fit, or why there is none
(backend unavailable, family not applicable, fit failed: the backend's error, or the worker's exit code when it
died). Its worker has no thread besides its main one, so brms can fork its chains there.

Why loky rather than ``concurrent.futures.ProcessPoolExecutor`` (both tried): cancelling must stop brms's
forked chains too, and loky's ``shutdown(kill_workers=True)`` kills the worker's whole process tree, while the
standard pool can neither stop a running task nor reach the processes its worker forked without private
attributes; a worker that dies is reported by loky with its exit code (``SIGKILL(-9)``), by the standard pool
only as a broken pool. This replaced a hand-written runner (``python -m hiercompare.aside IN.pkl OUT.pkl`` with
hand-over files, a log and a process group of its own) that did the same in 130 lines.
"""
from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import pandas as pd

from .runenv import clean_child_environment


class SecondProcess:
    """``fn(*args)`` running in a new single-worker process; ``wait()`` returns its value or raises its error.

    ``cancel()`` kills the worker and every process it started (its whole process tree), so nothing it forked
    outlives it.
    """

    def __init__(self, fn: Callable, *args: Any):
        from loky import ProcessPoolExecutor

        self._t0 = time.perf_counter()
        with clean_child_environment():  # the worker starts in submit(), with this environment
            # os.setsid: the worker leads a session of its own, as the runner before it did, so with the
            # kernel's autogroup scheduling it and its forked chains share the cores with this process as one
            # group instead of as many equal tasks
            self._executor = ProcessPoolExecutor(max_workers=1, initializer=os.setsid)
            self._future = self._executor.submit(fn, *args)
        self._closed = False

    def wait(self, timeout: float | None = None) -> Any:
        """The value of ``fn(*args)``; raises what it raised, ``TimeoutError`` (after cancelling it) when it is
        not done within ``timeout`` seconds, or loky's ``TerminatedWorkerError`` (with the exit code) when the
        process died."""
        try:
            value = self._future.result(timeout=timeout)
        except FutureTimeout:
            self.cancel()
            raise TimeoutError(f"no answer from the second process within {timeout:.0f} s") from None
        except BaseException:
            self.cancel()
            raise
        self._executor.shutdown(wait=True)
        self._closed = True
        return value

    def cancel(self) -> None:
        """Stop the worker and its descendants (brms's forked chains); nothing if it has already finished."""
        if not self._closed:
            self._closed = True
            self._executor.shutdown(wait=True, kill_workers=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._t0


class AsideFit:
    """A fit running in a second process. ``result()`` waits for it and returns its answer.

    Parameters
    ----------
    backend : str
        Registered backend name.
    data, formula, family, seed, options
        What :func:`hiercompare.fit` gets.
    """

    def __init__(self, backend: str, data: pd.DataFrame, formula: str, family: str, seed: int | None,
                 options: dict):
        self.backend = backend
        self.waited = 0.0
        self.seconds = None
        self._process = SecondProcess(_answer, {"backend": backend, "data": data, "formula": formula,
                                                "family": family, "seed": seed, "options": dict(options)})

    def result(self, timeout: float = 3600.0) -> dict:
        """Wait for the process. Returns ``{"status": "ok", "fit": Fit, "warnings": [texts]}`` or ``{"status": s, "reason": why}``
        with s one of "unavailable", "not applicable", "failed"."""
        from loky.process_executor import TerminatedWorkerError

        t = time.perf_counter()
        try:
            return self._process.wait(timeout)
        except TimeoutError as exc:
            return {"status": "failed", "reason": str(exc)}
        except TerminatedWorkerError as exc:
            codes = str(exc).split("The exit codes of the workers are", 1)[-1].split("\n", 1)[0].strip()
            return {"status": "failed", "reason": f"the second process died without an answer (exit code {codes})"}
        except Exception as exc:  # not a HierCompareError (those are answers): a bug or a bad option
            return {"status": "failed", "reason": f"the second process raised {type(exc).__name__}: {exc}"}
        finally:
            self.waited = time.perf_counter() - t
            self.seconds = self._process.elapsed

    def cancel(self) -> None:
        """Stop the process and whatever it forked (brms's chains)."""
        self._process.cancel()


def _answer(job: dict) -> dict:
    """What the second process runs: the backend's availability check, then the fit."""
    from .backends import backends
    from .errors import HierCompareError
    from .fitting import fit

    name = job["backend"]
    info = backends([name])[name]  # the demo's own check, here where the backend runs
    if not info["available"]:
        return {"status": "unavailable", "reason": info["reason"]}
    if job["family"] not in info["families"]:
        return {"status": "not applicable", "reason": f"fits families {info['families']}, not {job['family']}"}
    with warnings.catch_warnings(record=True) as caught:  # sent back with the answer, not printed there
        warnings.simplefilter("always")
        try:
            f = fit(job["data"], job["formula"], backend=name, family=job["family"], seed=job["seed"],
                    **job["options"])
        except HierCompareError as exc:
            return {"status": "failed", "reason": str(exc)}
    texts = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))
    return {"status": "ok", "fit": f, "warnings": texts}


__all__ = ["SecondProcess", "AsideFit"]
