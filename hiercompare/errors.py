"""One error hierarchy, rooted at :class:`HierCompareError`.

Messages name the problem, quote the offending value and say how to fix it.
"""
from __future__ import annotations


class HierCompareError(Exception):
    """Root of every error raised by hiercompare."""


class SpecError(HierCompareError, ValueError):
    """The model specification (formula, family, options) is invalid or unsupported."""


class DataError(HierCompareError, ValueError):
    """The data do not fit the specification (missing columns, NaN, wrong types, ...)."""


class NestingError(DataError):
    """Grouping labels do not form a nested tree."""


class CrossedFactorsError(NestingError, SpecError):
    """The data show crossed grouping factors (every label shared across parents): a spec hiercompare refuses."""


class BackendUnavailable(HierCompareError, RuntimeError):
    """A backend cannot run here (library or R missing); the message says how to install it."""


class BackendError(HierCompareError, RuntimeError):
    """A backend ran but failed; the message carries the backend's own error text."""


class StudyError(HierCompareError):
    """A study cannot be set up, resumed or run (bad config, a folder holding another study, a lost worker)."""


class ConvergenceWarning(UserWarning):
    """An optimiser or sampler reported a convergence problem (also recorded in Fit.diagnostics)."""


class UnseenLevelsWarning(UserWarning):
    """predict() / decompose() met group labels not seen in fitting: those rows get the population level there
    (deviation 0). ``allow_new_levels=True`` accepts them silently, ``False`` refuses them (a DataError)."""
