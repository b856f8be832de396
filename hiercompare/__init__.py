"""hiercompare: fit one hierarchical model on many backends and see where they agree.

Public API: :func:`simulate`, :func:`fit`, :func:`compare`, :func:`recovery`, :class:`Study`,
:func:`performance`, :class:`ModelSpec`, :class:`Scenario`, :func:`backends`. Heavy libraries are imported by
the backends that need them, and the package face is lazy: ``Study`` and the ``demo``, ``study``, ``report``
and ``aside`` modules are imported on first use (PEP 562), so ``import hiercompare`` loads neither the demo
nor the second-process machinery.
"""
import importlib as _importlib

from ._version import __version__
from .agreement import compare
from .backends import available_backends, backends
from .errors import (BackendError, BackendUnavailable, ConvergenceWarning, CrossedFactorsError, DataError,
                     HierCompareError, NestingError, SpecError, StudyError, UnseenLevelsWarning)
from .fitting import fit
from .hierarchy import Hierarchy
from .performance import performance
from .recovery import recovery
from .results import Fit, Truth
from .simulate import LevelScenario, Scenario, simulate
from .spec import ModelSpec

# names imported on first use: attribute -> (module, attribute or None for the module itself)
_LAZY = {"Study": ("hiercompare.study", "Study"), "demo": ("hiercompare.demo", None),
         "compare_data": ("hiercompare.datacompare", "compare_data"), "datasets": ("hiercompare.datasets", None),
         "study": ("hiercompare.study", None), "report": ("hiercompare.report", None),
         "aside": ("hiercompare.aside", None)}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'hiercompare' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = _importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__", "simulate", "fit", "compare", "recovery", "backends", "available_backends",
    "Study", "compare_data", "datasets", "performance", "ModelSpec", "Scenario", "LevelScenario", "Hierarchy", "Fit", "Truth",
    "HierCompareError", "SpecError", "DataError", "NestingError", "CrossedFactorsError", "BackendUnavailable", "BackendError",
    "StudyError",
    "ConvergenceWarning", "UnseenLevelsWarning",
]
