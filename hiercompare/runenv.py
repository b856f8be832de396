"""The environment fits run in: one BLAS/OpenMP thread, and a clean environment for child processes.

Studies, the demo and its second process (:mod:`hiercompare.aside`) all need the same two things:

* :func:`one_thread`: cap BLAS, OpenMP and torch at one thread while inside. With ``n`` workers of ``n`` BLAS
  threads each the cores are oversubscribed (measured on 2 cores: 2 local workers ran slower than 1), and a
  BLAS reduction splits differently with another thread count, so lme4's optimiser could stop ~1e-4 apart
  between executors.
* :func:`child_environment` / :func:`clean_child_environment`: the environment for child Python processes,
  without the library path that starting R added and with one thread each.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

#: What every worker process gets (Dask's nanny sets the same).
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
        except Exception:  # an unavailable one fails later, where it is fitted
            pass
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    try:
        if torch is not None:
            torch.set_num_threads(1)
        with environ(SINGLE_THREAD_ENV), threadpool_limits(limits=1):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(torch_threads)


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
        nothing else was in it) and :data:`SINGLE_THREAD_ENV` set.
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
    with environ({k: clean.get(k) for k in ("LD_LIBRARY_PATH", *SINGLE_THREAD_ENV)}):
        yield


@contextmanager
def environ(values: Mapping[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) these environment variables while inside; restore them on exit."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        _set(values)
        yield
    finally:
        _set(saved)


def _set(values: Mapping[str, str | None]) -> None:
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


__all__ = ["SINGLE_THREAD_ENV", "one_thread", "child_environment", "clean_child_environment", "environ"]
