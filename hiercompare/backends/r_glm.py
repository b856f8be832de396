"""``r_glm``: the ``glm`` backend's sum-to-zero dummy design fitted by R's ``glm`` (binomial, poisson) or
``MASS::glm.nb`` (negbinomial) through rpy2: the cross-language check of ``glm``, as ``r_lm`` is of ``ols``.

The design matrix, response, trials and offset cross as numbers (never as code); R fits ``y ~ 0 + X`` with
``cbind(y, n - y)`` for binomial trials and the offset as ``offset=`` (``offset(off)`` in glm.nb's formula), with
``glm.control(epsilon = 1e-12)``.
"""
from __future__ import annotations

import numpy as np

from .. import rbridge
from ..design import ModelData
from ..results import DISPERSION, THETA, Fit
from . import dummies
from .base import Backend
from .glm import GLM_FAMILIES, glm_rows


class RGlmBackend(Backend):
    name = "r_glm"
    families = GLM_FAMILIES
    features = frozenset({"offset", "trials"})
    requires_groups = False
    description = "R glm() / MASS::glm.nb() on the glm design matrix, through rpy2"

    def availability(self):
        return rbridge.availability(("stats", "MASS"))

    def fit(self, md: ModelData, **options) -> Fit:
        if options:
            raise TypeError(f"r_glm takes no options, got {sorted(options)}")
        dd = dummies.build(md)
        D, y, off, n, keep, notes = glm_rows(md, dd)
        out = rbridge.call("fit_glm.R", "hc_fit_glm", rbridge.matrix(D), rbridge.floats(y), rbridge.floats(n),
                           rbridge.floats(off), md.spec.family)
        coef = np.asarray(out["coef"], dtype=float)
        vcov = np.asarray(out["vcov"], dtype=float).reshape(len(coef), len(coef))
        extra = []
        if out.get("theta") is not None:
            extra = [dict(effect="ran_pars", group=DISPERSION, term=THETA, estimate=float(out["theta"]))]
        table = dummies.tidy_rows(md, dd, coef, vcov, None, np.inf, extra)
        return Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=float(out["loglik"]),
            method="ML (IRLS)", nobs=int(keep.sum()),
            diagnostics={"converged": bool(out["converged"]), "singular": False, "notes": dd.notes + notes,
                         "warnings": list(out.get("warnings") or []), "df_resid": float(out["df_residual"])},
        )

    def versions(self):
        return rbridge.versions(("stats", "MASS"))
