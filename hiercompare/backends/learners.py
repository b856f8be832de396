"""Shared machinery for learners with genuine random effects (GPBoost / LMMNN style).

A learner supplies the population-level nonlinear part f(x) as an offset; :class:`RandomEffects` re-estimates
the fixed linear terms, the variance components and the BLUPs with :mod:`hiercompare.mixedcore` on that
offset. For the Gaussian marginal likelihood, profiled over beta, the gradient with respect to the offset is

    d logLik / d f = V^-1 (y - f - X beta_hat) = (y - f - X beta_hat - Z b_hat) / sigma^2,

the BLUP-conditional residual divided by sigma^2 (b_hat = G Z' V^-1 r). So a learner fits f to the
conditional residual ``y - X beta_hat - Z b_hat`` (its negative gradient, up to sigma^2), then the random
effects are re-estimated on the new offset, and so on. The varying-slope covariates keep their population
linear terms in X, so f need not (and trees cannot well) absorb them.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from .. import mixedcore
from ..design import ModelData, prepare
from ..errors import DataError, SpecError
from .base import reml_or_ml

T = TypeVar("T")


class RandomEffects:
    """mixedcore for one ModelData, re-estimated as the offset changes (warm-started at the last theta)."""

    def __init__(self, md: ModelData, method: str = "REML"):
        method = reml_or_ml(method)
        if md.spec.family != "gaussian":
            raise SpecError("the random-effects learners fit the gaussian family only")
        self.md = md
        self.reml = method == "REML"
        self.core = mixedcore.from_model_data(md)
        self.theta = self.core.theta0
        self.result: mixedcore.CoreResult | None = None

    def update(self, offset: np.ndarray, optimise: bool = True) -> mixedcore.CoreResult:
        self.core.set_response(self.md.y, offset)
        if optimise:
            self.result = self.core.fit(reml=self.reml, theta0=self.theta)
            self.theta = self.result.theta
        else:
            self.result = self.core.solve(self.theta, reml=self.reml)
        return self.result

    def linear_part(self, res: mixedcore.CoreResult | None = None) -> np.ndarray:
        """X beta_hat + Z b_hat for the training rows."""
        res = res or self.result
        out = self.md.X @ res.beta
        for li, lv in enumerate(self.md.hierarchy.levels):
            out = out + np.einsum("nk,nk->n", self.md.Z[lv.group], res.blups[li][lv.codes])
        return out

    def conditional_residual(self, offset: np.ndarray) -> np.ndarray:
        """y - f - X beta_hat - Z b_hat: the negative gradient of the marginal NLL in f (times sigma^2)."""
        return self.md.y - offset - self.linear_part()


def group_aware_split(md: ModelData, fraction: float = 0.2, seed: int | None = 0) -> np.ndarray:
    """Validation mask: ``fraction`` of the rows of every leaf group (at least one row stays in training).

    Rounds / epochs are chosen on these rows, predicted with the training fit's BLUPs for their own groups,
    so validation measures what the model is used for (prediction within known groups), not in-sample fit.
    """
    rng = np.random.default_rng(seed)
    leaf = md.hierarchy.levels[-1].codes
    mask = np.zeros(md.n, dtype=bool)
    order = np.argsort(leaf, kind="stable")
    bounds = np.flatnonzero(np.diff(leaf[order])) + 1
    for rows in np.split(order, bounds):
        k = int(np.floor(fraction * len(rows)))
        k = min(k, len(rows) - 1)
        if k > 0:
            mask[rng.choice(rows, size=k, replace=False)] = True
    return mask


def validate_then_refit(md: ModelData, fraction: float, seed: int | None, maximum: int, unit: str,
                        validate: Callable[[np.ndarray], int], refit: Callable[[int], T]) -> tuple[T, int, str | None]:
    """The learners' one loop: choose the number of rounds / epochs on held-out rows, then refit on all rows.

    ``fraction`` of the rows of every leaf group are held out (:func:`group_aware_split`, seeded by ``seed``);
    ``validate(mask)`` trains on the other rows with early stopping judged on the held-out ones (``mask``
    True) and returns the count it chose; ``refit(count)`` then trains on every row. Without held-out rows
    (``fraction`` 0, or too few rows per leaf group), or when the training rows cannot be modelled alone
    (``validate`` raises DataError, e.g. a category only among the held-out rows), the count is ``maximum``.

    Returns
    -------
    (refit's result, the count used, a note saying why validation did not run, or None)
    """
    count, note = int(maximum), None
    mask = group_aware_split(md, fraction, seed) if fraction > 0 else np.zeros(md.n, dtype=bool)
    if fraction > 0 and not mask.any():
        note = f"every leaf group has too few rows for a validation split; trained the maximum {maximum} {unit}"
    elif mask.any():
        try:
            count = int(validate(mask))
        except DataError as exc:
            note = f"validation skipped ({exc}); trained the maximum {maximum} {unit}"
    return refit(count), count, note


def subset(md: ModelData, rows: np.ndarray) -> ModelData:
    """ModelData for a subset of the rows (same spec and category levels)."""
    return prepare(md.spec, md.data.loc[rows].reset_index(drop=True))


def feature_matrix(md: ModelData, data: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    """The learners' features: numeric predictor columns, checked for NaN with a clear error."""
    from ..design import check_columns
    from ..errors import DataError

    check_columns(data, features, what="newdata")
    F = data[list(features)].to_numpy(dtype=float)
    if not np.isfinite(F).all():
        bad = [c for c in features if not np.isfinite(data[c].to_numpy(dtype=float)).all()]
        raise DataError(f"features {bad} contain NaN or infinite values; clean them before predicting")
    return F


def default_features(md: ModelData) -> tuple[str, ...]:
    """Every numeric fixed or slope variable of the spec (categoricals are left to the linear part)."""
    feats = []
    for v in md.spec.fixed_variables + md.spec.slope_variables:
        if v not in md.categories and v not in feats:
            feats.append(v)
    if not feats:
        raise SpecError("the learners need at least one numeric predictor to learn f(x) from")
    return tuple(feats)
