"""hiercompare: fit one hierarchical model on many backends and see where they agree.

Public API: :func:`simulate`, :func:`fit`, :func:`compare`, :func:`recovery`, :class:`Study`,
:func:`performance`, :class:`ModelSpec`, :class:`Scenario`, :func:`backends`. Heavy libraries are imported by
the backends that need them.
"""
from ._version import __version__
from .agreement import compare
from .backends import available_backends, backends
from .errors import (BackendError, BackendUnavailable, ConvergenceWarning, CrossedFactorsError, DataError,
                     HierCompareError, NestingError, SpecError)
from .fitting import fit
from .hierarchy import Hierarchy
from .performance import performance
from .recovery import recovery
from .results import Fit, Truth
from . import demo
from .simulate import LevelScenario, Scenario, simulate
from .spec import ModelSpec
from .study import Study

__all__ = [
    "__version__", "simulate", "fit", "compare", "recovery", "backends", "available_backends",
    "Study", "performance", "ModelSpec", "Scenario", "LevelScenario", "Hierarchy", "Fit", "Truth",
    "HierCompareError", "SpecError", "DataError", "NestingError", "CrossedFactorsError", "BackendUnavailable", "BackendError",
    "ConvergenceWarning",
]
