"""``ols``: statsmodels OLS on the sum-to-zero dummy design (no pooling; the intercept is the national level).

``offset()`` terms are subtracted from the response; prior weights (``fit(..., weights=)``) make it WLS, with lm's
meaning (row i's residual variance ``sigma^2 / w_i``; the log-likelihood includes ``0.5 * sum(log w)``)."""
from __future__ import annotations

import numpy as np

from ..design import ModelData
from ..results import CLOSED_FORM_NOTE, Fit
from . import dummies
from .base import Backend


class OLSBackend(Backend):
    name = "ols"
    requires_groups = False
    description = "statsmodels OLS, group dummies + slope interactions, sum-to-zero coding (no pooling)"
    requires = ("statsmodels",)
    features = frozenset({"offset", "weights"})

    def fit(self, md: ModelData, **options) -> Fit:
        import statsmodels.api as sm

        if options:
            raise TypeError(f"ols takes no options, got {sorted(options)}")
        dd = dummies.build(md)
        y = md.y - md.offset
        res = (sm.OLS(y, dd.D) if md.weights is None else sm.WLS(y, dd.D, weights=md.weights)).fit()
        table = dummies.tidy_rows(md, dd, np.asarray(res.params), np.asarray(res.cov_params()),
                                  float(np.sqrt(res.scale)), float(res.df_resid))
        return Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=float(res.llf),
            method="OLS" if md.weights is None else "WLS",
            nobs=md.n, diagnostics={"converged": None, "singular": False, "notes": dd.notes + [CLOSED_FORM_NOTE],
                                    "df_resid": float(res.df_resid)},
            raw=res,
        )

    def versions(self) -> dict[str, str]:
        import statsmodels

        return {"statsmodels": statsmodels.__version__}
