"""``fit()``: spec + data -> validated ModelData -> backend.fit -> Fit with timing, diagnostics, provenance."""
from __future__ import annotations

import platform
import time
import warnings

import numpy as np
import pandas as pd

from ._version import __version__
from .backends import get_backend
from .design import prepare
from .errors import ConvergenceWarning, SpecError
from .results import Fit
from .sources import as_streamed_fit, is_source, prepare_source
from .spec import ModelSpec


def as_spec(formula_or_spec: str | ModelSpec, family: str | None = None) -> ModelSpec:
    if isinstance(formula_or_spec, ModelSpec):
        if family is not None and family != formula_or_spec.family:
            from dataclasses import replace

            return replace(formula_or_spec, family=family)
        return formula_or_spec
    return ModelSpec.from_formula(formula_or_spec, family=family or "gaussian")


def fit(
    data: pd.DataFrame,
    formula_or_spec: str | ModelSpec,
    backend: str = "lme4",
    family: str | None = None,
    na_action: str = "error",
    seed: int | None = None,
    batch_rows: int | None = None,
    scheduler=None,
    weights=None,
    **options,
) -> Fit:
    """Fit one hierarchical model on one backend.

    Parameters
    ----------
    data : DataFrame, or a source larger than memory
        One row per observation, with the response, the predictors and the grouping columns. For
        ``backend="native"`` also a Parquet file or folder, a CSV file, a pyarrow dataset / Table /
        RecordBatchReader, or a Dask DataFrame: read in batches into per-leaf sums (:mod:`hiercompare.sources`).
    formula_or_spec : str or ModelSpec
        An lme4-style formula such as ``"y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"``.
    backend : str
        A registered backend name (see :func:`hiercompare.backends`).
    family : {"gaussian", "binomial", "poisson", "negbinomial"}, optional
        ``negbinomial`` is NB2 (variance ``mu + mu^2 / theta``, lme4's glmer.nb). A binomial outcome is a 0/1
        response, or successes out of trials written ``cbind(successes, failures) ~ ...`` or
        ``cbind(successes, n - successes) ~ ...``. ``offset(column)`` terms add a known column to the linear
        predictor (e.g. ``offset(log_exposure)`` for a Poisson rate).
    na_action : {"error", "drop"}
        Missing values in used columns are an error unless ``"drop"`` is asked for; the number of dropped
        rows is then recorded in ``fit.diagnostics["notes"]``.
    seed : int, optional
        Recorded in the provenance and passed to backends that draw random numbers.
    batch_rows : int, optional
        Rows per batch when ``data`` is a file or a pyarrow source (default 1,048,576).
    scheduler : optional
        For a Dask DataFrame: a ``distributed.Client``, a cluster or an address ``"tcp://host:8786"``
        (default: Dask's default scheduler, i.e. the last Client created).
    weights : str or array-like, optional
        Gaussian prior weights with lme4's and lm's meaning (row i's residual variance is ``sigma^2 / w_i``): a
        column of ``data`` or one positive number per row. Backends that cannot use them refuse (SpecError).
    **options
        Backend options, e.g. ``method="ML"`` for mixedlm and lme4.

    Examples
    --------
    >>> import hiercompare as hc
    >>> data, truth = hc.simulate(hc.Scenario(), seed=1)
    >>> f = hc.fit(data, "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)", backend="mixedlm")
    >>> round(f.fixef["(Intercept)"], 1)  # doctest: +SKIP
    1.0
    """
    t0 = time.perf_counter()
    spec = as_spec(formula_or_spec, family)
    be = get_backend(backend)
    be.check(spec)
    streamed = not isinstance(data, pd.DataFrame) and is_source(data)
    if streamed:
        if weights is not None:
            raise SpecError("weights= are not read from a source read in batches; load the rows into a DataFrame")
        md = prepare_source(spec, data, backend=be.name, na_action=na_action, batch_rows=batch_rows,
                            scheduler=scheduler)
    elif batch_rows is not None or scheduler is not None:
        raise SpecError("batch_rows and scheduler are for sources read in batches (a file, a pyarrow dataset, a "
                        "Dask DataFrame); this data is already in memory")
    else:
        md = prepare(spec, data, na_action=na_action, weights=weights)
    be.check_data(md)
    if be.takes_seed:
        options = {"seed": seed, **options}
    t1 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = be.fit(md, **options)
    t2 = time.perf_counter()
    diag = result.diagnostics
    diag.setdefault("converged", None)  # None: this backend does not assess convergence (never assumed True)
    diag.setdefault("singular", False)
    diag.setdefault("warnings", [])
    diag["notes"] = list(md.notes) + list(diag.get("notes", []))
    diag["dropped_rows"] = md.dropped_rows
    for w in caught:
        text = f"{w.category.__name__}: {w.message}"
        if text not in diag["warnings"]:
            diag["warnings"].append(text)
        if issubclass(w.category, ConvergenceWarning):
            warnings.warn(str(w.message), ConvergenceWarning, stacklevel=2)
    result.timing = {"fit_seconds": t2 - t1, "total_seconds": t2 - t0}
    result.provenance = {
        "backend": be.name,
        "hiercompare": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        **be.versions(),
        "formula": spec.formula,
        "formula_as_given": spec.source,
        "family": spec.family,
        "seed": seed,
        "weights": None if weights is None else (weights if isinstance(weights, str) else "array"),
        "options": {k: v for k, v in options.items()},
        "nobs": md.n,
    }
    return as_streamed_fit(result, md) if streamed else result

