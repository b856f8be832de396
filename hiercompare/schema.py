"""What results.py and predictions.py share, in a module that imports neither (no import cycle): the Fit
schema's fixed group names, the inverse links, the draw of a response from a fitted family, and the check of group
labels unseen in fitting."""
from __future__ import annotations

import warnings

import numpy as np

from .errors import DataError, SpecError, UnseenLevelsWarning

RESIDUAL = "Residual"
# the negative binomial's (NB2) dispersion: one ran_pars row, group DISPERSION, term THETA, var = mu + mu^2 / theta
# (lme4's glmer.nb theta, brms's shape, PyMC's alpha); not under RESIDUAL, whose row is a residual SD
DISPERSION = "Dispersion"
THETA = "theta"

# The tidy frame's ``interval`` column: what a row's std_error / conf_low / conf_high are conditional on.
# "" -- the backend's own inference, as its docs and the ``df`` column describe (Wald z or t, profile, posterior).
# INTERVAL_CONDITIONAL -- the learners' (lightgbm, torch) Wald / BLUP intervals computed as if the learned f(x)
#   were known: they leave f's estimation out, are too narrow, and are never to be read as ordinary intervals.
# INTERVAL_BOOTSTRAP -- the learners' cluster bootstrap (top-level groups resampled, the whole learner refitted).
INTERVAL_ORDINARY = ""
INTERVAL_CONDITIONAL = "conditional_on_f"
INTERVAL_BOOTSTRAP = "cluster_bootstrap"
INTERVAL_KINDS = (INTERVAL_ORDINARY, INTERVAL_CONDITIONAL, INTERVAL_BOOTSTRAP)
#: How reports name each kind (the study, demo and compare reports)
INTERVAL_TEXT = {INTERVAL_ORDINARY: "", INTERVAL_CONDITIONAL: "conditional on f(x)",
                 INTERVAL_BOOTSTRAP: "cluster bootstrap"}



def check_unseen(unseen: dict, groups: dict, seen: dict, allow_new_levels: bool | None, where: str,
                 rows: int | None = None, stacklevel: int = 2) -> None:
    """Warn about (None), accept (True) or refuse (False) rows whose group label was not seen in fitting.

    ``unseen``: rows per level; ``groups``: distinct labels per level; ``seen``: ``{"examples": some labels
    per level, "notes": per level, grouping columns whose dtype changed since fitting}``;
    ``rows``: rows predicted; ``stacklevel``: the warning's, as seen from the function that calls this one.
    """
    if allow_new_levels not in (None, True, False):
        raise ValueError(f"allow_new_levels must be True, False or None, got {allow_new_levels!r}")
    bad = {g: n for g, n in unseen.items() if n}
    if not bad or allow_new_levels is True:
        return
    of = f" of {rows}" if rows is not None else ""
    examples, notes = seen.get("examples", {}), seen.get("notes", {})
    text = "; ".join(
        f"{n}{of} rows have a {g} not seen in fitting ({groups.get(g, '?')} label"
        f"{'' if groups.get(g) == 1 else 's'}, e.g. {', '.join(repr(x) for x in examples.get(g, [])[:5])})"
        + "".join(f" ({x})" for x in notes.get(g, []))
        for g, n in bad.items())
    if allow_new_levels is False:
        raise DataError(f"{where}(): {text}; allow_new_levels=False refuses new groups. Check that the labels are "
                        "the fitted groups' (same values, same coding), or pass allow_new_levels=True to predict "
                        "them at the population level")
    warnings.warn(f"{where}(): {text}; they get the population level (deviation 0) there. Pass "
                  "allow_new_levels=True to accept new groups silently, or False to refuse them",
                  UnseenLevelsWarning, stacklevel=stacklevel + 1)


def inverse_link(family: str, eta):
    """The mean on the response scale for a linear predictor ``eta``: identity (gaussian), logistic (binomial: the
    probability per trial), exp (poisson, negbinomial). The one place the links live (predictions here, marginal
    predictions and replicated data elsewhere)."""
    eta = np.asarray(eta, dtype=float)
    if family == "gaussian":
        return eta
    if family == "binomial":
        return 0.5 * (1.0 + np.tanh(0.5 * eta))  # the logistic, without overflow for large |eta|
    if family in ("poisson", "negbinomial"):
        return np.exp(eta)
    raise ValueError(f"no inverse link for family {family!r}")


def draw_response(family: str, eta, rng: np.random.Generator, *, sigma: float | None = None, weights=None,
                  trials=None, size: float | None = None) -> np.ndarray:
    """Responses drawn from a fitted family at the linear predictor ``eta`` (offsets already in it), any shape
    whose last axis is the rows.

    * ``gaussian``: ``eta + e``, ``e ~ N(0, sigma^2 / w)`` with the rows' prior ``weights`` ``w`` (lme4/lm
      semantics; all 1 when None);
    * ``binomial``: successes out of each row's ``trials`` (1 when None: a 0/1 response) at the inverse logit;
    * ``poisson``: ``Poisson(exp(eta))`` (an exposure offset is in ``eta``, so it scales the mean);
    * ``negbinomial``: NB2 with ``size`` (theta; mean ``mu = exp(eta)``, variance ``mu + mu^2 / size``), drawn as
      the gamma-Poisson mixture ``Poisson(Gamma(size, scale = mu / size))``.

    The one place where the bootstrap's designs (:class:`~hiercompare.simulate.DesignScenario`), the predictive checks
    (:mod:`hiercompare.ppc`) and the prediction intervals (:func:`hiercompare.predictions.prediction_interval`)
    draw a response from a fitted model.

    >>> rng = np.random.default_rng(0)
    >>> draw_response("binomial", np.zeros((2, 3)), rng, trials=[1, 5, 10]).max(axis=0) <= [1, 5, 10]
    array([ True,  True,  True])
    """
    eta = np.asarray(eta, dtype=float)
    mu = inverse_link(family, eta)
    if family == "gaussian":
        if sigma is None or not np.isfinite(sigma) or sigma < 0:
            raise SpecError(f"a gaussian response needs a residual SD >= 0, got {sigma!r}")
        scale = float(sigma) if weights is None else float(sigma) / np.sqrt(np.asarray(weights, dtype=float))
        return mu + rng.standard_normal(mu.shape) * scale
    if family == "binomial":
        n = np.ones(mu.shape[-1], dtype=np.int64) if trials is None else np.asarray(trials, dtype=float)
        if np.any(n != np.round(n)) or np.any(n < 0):
            raise SpecError("binomial trials must be non-negative whole numbers")
        return rng.binomial(n.astype(np.int64), np.clip(mu, 0.0, 1.0)).astype(float)
    if family == "poisson":
        return rng.poisson(mu).astype(float)
    if family == "negbinomial":
        if size is None or not np.isfinite(size) or size <= 0:
            raise SpecError(f"a negative binomial response needs its size (theta > 0), got {size!r}")
        return rng.poisson(rng.gamma(float(size), mu / float(size))).astype(float)
    raise SpecError(f"no response can be drawn for family {family!r}")


__all__ = ["RESIDUAL", "DISPERSION", "THETA", "INTERVAL_ORDINARY", "INTERVAL_CONDITIONAL", "INTERVAL_BOOTSTRAP",
           "INTERVAL_KINDS", "INTERVAL_TEXT", "check_unseen", "inverse_link", "draw_response"]
