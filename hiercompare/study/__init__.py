"""Simulation studies: a grid of scenarios x replications x backends, checkpointed and resumable.

A :class:`Study` simulates one data set per (scenario, replication) *unit* and fits every backend to that same
data set. The data seed of a unit is derived from ``numpy.random.SeedSequence(seed)`` by spawning on the key
(scenario index, replication), never on the worker, so results do not depend on how units are scheduled
(:func:`unit_seed`).

Results are one long table (:data:`RESULT_COLUMNS`), one row per (scenario, replication, backend, parameter)
with the fit's tidy columns, the generating value (``truth``) and the value realised in that data set
(``realized``), ``converged`` (missing where the backend does not assess it), ``warnings`` (joined by
``" | "``), ``seconds`` (the ``fit()`` call), ``seed`` and ``error``. A fit that raises anything becomes ONE
row for that backend and unit (:mod:`.units`).

Running again into the same folder skips the units whose part file exists (:mod:`.storage`), so a study killed
at any moment (even by SIGKILL) resumes where it stopped and ends with the same table as an uninterrupted run.
The folder must hold the same study (scenarios, formulas, backends, options and seed); only ``replications``
may change (seeds do not depend on it, so a study can be extended).

Executors (:mod:`.executors`): in-process (``workers=1``), local processes (``spawn`` context; ``workers``
defaults to ``os.cpu_count()``), or Dask distributed (``scheduler`` = ``"tcp://host:port"``, a
``distributed.LocalCluster`` or a ``distributed.Client``).

Threads: every fit of a unit runs with one BLAS/OpenMP thread, wherever it runs (:mod:`hiercompare.runenv`),
so the tables are identical whether the study ran in this process, on local workers or on Dask.

The modules: :mod:`.config` (TOML configs), :mod:`.units` (seeds and the unit runner), :mod:`.storage` (parts,
manifest, the long table), :mod:`.executors` (local processes, Dask), :mod:`.core` (the :class:`Study`);
versions and the git commit come from :mod:`hiercompare.provenance`.
"""
from ..errors import StudyError
from ..provenance import package_versions
from ..runenv import SINGLE_THREAD_ENV, child_environment, clean_child_environment, one_thread
from .core import Study
from .storage import RESULT_COLUMNS, SORT, normalize, read_results
from .units import WARNING_SEP, run_unit, unit_seed

__all__ = ["Study", "StudyError", "run_unit", "unit_seed", "read_results", "normalize", "RESULT_COLUMNS", "SORT",
           "WARNING_SEP", "package_versions", "child_environment", "clean_child_environment", "one_thread",
           "SINGLE_THREAD_ENV"]
