"""``r_lm``: the same sum-to-zero dummy design as ``ols``, fitted by R's lm through rpy2 (cross-language check);
``offset()`` terms and prior weights go to lm's ``offset=`` and ``weights=``."""
from __future__ import annotations

import numpy as np

from .. import rbridge
from ..design import ModelData
from ..results import CLOSED_FORM_NOTE, Fit
from . import dummies
from .base import Backend


class RLmBackend(Backend):
    name = "r_lm"
    requires_groups = False
    features = frozenset({"offset", "weights"})
    description = "R lm() on the ols design matrix, through rpy2"

    def availability(self):
        return rbridge.availability(("stats",))

    def fit(self, md: ModelData, **options) -> Fit:
        if options:
            raise TypeError(f"r_lm takes no options, got {sorted(options)}")
        dd = dummies.build(md)
        w = rbridge.null() if md.weights is None else rbridge.floats(md.weights)
        off = rbridge.floats(md.offset) if md.has_offset else rbridge.null()
        out = rbridge.call("fit_lm.R", "hc_fit_lm", rbridge.matrix(dd.D), rbridge.floats(md.y), w, off)
        coef = np.asarray(out["coef"], dtype=float)
        vcov = np.asarray(out["vcov"], dtype=float).reshape(len(coef), len(coef))
        table = dummies.tidy_rows(md, dd, coef, vcov, float(out["sigma"]), float(out["df_residual"]))
        return Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=float(out["loglik"]),
            method="OLS" if md.weights is None else "WLS",
            nobs=md.n, diagnostics={"converged": None, "singular": False, "notes": dd.notes + [CLOSED_FORM_NOTE],
                                    "warnings": out.get("warnings", []), "df_resid": float(out["df_residual"])},
        )

    def versions(self):
        return rbridge.versions(("stats",))
