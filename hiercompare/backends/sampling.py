"""The convergence rule of the MCMC backends (``pymc``, ``brms``), written once.

A run has converged when the largest R-hat is at most :data:`RHAT_MAX`, the smallest bulk and tail ESS are at
least :data:`ESS_MIN` and no transition diverged (the thresholds of Vehtari et al. 2021, as the posterior and
arviz documentation recommend). Each backend computes R-hat and ESS with its own library (arviz; posterior or
rstan in R) and hands the per-variable values to :func:`convergence`; a run that fails gets one
:class:`~hiercompare.errors.ConvergenceWarning` from :func:`warn_if_unconverged` that says what to change.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import ConvergenceWarning

RHAT_MAX, ESS_MIN = 1.01, 400
THRESHOLDS = f"R-hat <= {RHAT_MAX}, ESS >= {ESS_MIN}, no divergences"


def convergence(variables, rhat, ess_bulk, ess_tail, divergences: int) -> dict:
    """The convergence summary of one run from per-variable R-hat, bulk and tail ESS.

    Non-finite values (e.g. R-hat of a constant) are left out of the extremes and counted in
    ``nonfinite_rhat``. Returns ``converged``, ``rhat_max``, ``ess_bulk_min``, ``ess_tail_min`` (NaN where no
    value is finite, which does not converge), the variable behind each (``*_variable``), ``divergences``,
    ``nonfinite_rhat`` and ``warnings`` (the threshold note when not converged).

    >>> convergence(["a", "b"], [1.002, 1.02], [900.0, 800.0], [700.0, 650.0], 0)["rhat_max_variable"]
    'b'
    """
    variables = list(variables)
    rhat, ess_b, ess_t = (np.asarray(v, dtype=float) for v in (rhat, ess_bulk, ess_tail))

    def pick(values, fn):
        ok = np.isfinite(values)
        if not ok.any():
            return float("nan"), None
        i = np.flatnonzero(ok)[fn(values[ok])]
        return float(values[i]), variables[i]

    rhat_max, rhat_var = pick(rhat, np.argmax)
    ess_b_min, ess_b_var = pick(ess_b, np.argmin)
    ess_t_min, ess_t_var = pick(ess_t, np.argmin)
    divergences = int(divergences)
    converged = bool(rhat_max <= RHAT_MAX and ess_b_min >= ESS_MIN and ess_t_min >= ESS_MIN and divergences == 0)
    return {"converged": converged, "rhat_max": rhat_max, "rhat_max_variable": rhat_var,
            "ess_bulk_min": ess_b_min, "ess_bulk_min_variable": ess_b_var,
            "ess_tail_min": ess_t_min, "ess_tail_min_variable": ess_t_var,
            "nonfinite_rhat": int((~np.isfinite(rhat)).sum()), "divergences": divergences,
            "warnings": [] if converged else [f"sampling diagnostics below thresholds ({THRESHOLDS})"]}


def warn_if_unconverged(backend: str, diag: dict, advice: str, stacklevel: int = 3) -> None:
    """One ConvergenceWarning naming the failing numbers, the thresholds and ``advice`` (what to change)."""
    if diag["converged"]:
        return
    warnings.warn(
        f"{backend} sampling diagnostics failed: R-hat max {diag['rhat_max']:.4f} ({diag['rhat_max_variable']}), "
        f"bulk ESS min {diag['ess_bulk_min']:.0f}, tail ESS min {diag['ess_tail_min']:.0f}, "
        f"{diag['divergences']} divergences (thresholds: {THRESHOLDS}); {advice}",
        ConvergenceWarning, stacklevel=stacklevel)
