"""``native``: the exact Gaussian LMM of :mod:`hiercompare.mixedcore` on per-group sufficient statistics.

Any depth of nesting, correlated (``|``) or independent (``||``) varying terms at every level, REML or ML.
Fixed effects get Wald 95% intervals from ``sigma^2 S^-1``; ran_vals are BLUPs with conditional SDs that,
by default (``condvar="full"``), include the uncertainty of the fixed effects (Henderson's prediction-error
variance); ``condvar="beta_fixed"`` conditions on the fixed effects, as lme4's ``ranef(condVar = TRUE)`` does,
and matches it. ran_pars have no standard errors. The derivation is in ``docs/mixedcore.md``.
"""
from __future__ import annotations

import numpy as np

from .. import mixedcore
from ..design import ModelData
from ..errors import SpecError
from ..results import RESIDUAL, Fit, cor_term, sd_term, tidy_frame, wald_interval
from .base import Backend, reml_or_ml


class NativeBackend(Backend):
    name = "native"
    description = "exact Gaussian LMM on sufficient statistics (mixedcore), nested levels, REML or ML"


    def fit(self, md: ModelData, method: str = "REML", condvar: str = "full", **options) -> Fit:
        if options:
            raise TypeError(f"native options are method and condvar; got {sorted(options)}")
        method = reml_or_ml(method)
        if condvar not in ("full", "beta_fixed"):
            raise SpecError(f"condvar must be 'full' or 'beta_fixed', got {condvar!r}")
        core = mixedcore.from_model_data(md)
        res = core.fit(reml=method == "REML", condvar=condvar)
        return Fit(
            backend=self.name, spec=md.spec, table=tidy_rows(md, res), model=md, loglik=res.loglik, method=method,
            nobs=md.n,
            diagnostics={"converged": res.converged, "singular": res.singular, "warnings": [],
                         "optimizer": res.optimizer, "deviance_evaluations": res.n_evals,
                         "theta": res.theta.tolist()},
            raw=res,
        )

    def versions(self):
        import scipy

        return {"scipy": scipy.__version__}


def tidy_rows(md: ModelData, res: "mixedcore.CoreResult"):
    """The Fit schema's rows from a mixedcore result (shared with the learners that use mixedcore)."""
    se = np.sqrt(np.clip(np.diag(res.vcov_beta), 0, None))
    rows = [dict(effect="fixed", term=n, estimate=b, std_error=s, **wald_interval(b, s))
            for n, b, s in zip(md.fixed_names, res.beta, se)]
    for li, lv in enumerate(md.hierarchy.levels):
        terms = lv.spec.terms
        cov = res.cov[li]
        sds = np.sqrt(np.clip(np.diag(cov), 0, None))
        for i, t in enumerate(terms):
            rows.append(dict(effect="ran_pars", group=lv.group, term=sd_term(t), estimate=sds[i]))
        for block in lv.spec.blocks:
            for a in range(len(block)):
                for b in range(a + 1, len(block)):
                    i, j = terms.index(block[a]), terms.index(block[b])
                    c = cov[i, j] / (sds[i] * sds[j]) if sds[i] > 0 and sds[j] > 0 else np.nan
                    rows.append(dict(effect="ran_pars", group=lv.group, term=cor_term(terms[i], terms[j]),
                                     estimate=c))
    rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=res.sigma))
    for li, lv in enumerate(md.hierarchy.levels):
        b = res.blups[li]
        sd = np.sqrt(np.clip(np.diagonal(res.blup_cov[li], axis1=1, axis2=2), 0, None))
        for g, lab in enumerate(lv.labels):
            for i, t in enumerate(lv.spec.terms):
                rows.append(dict(effect="ran_vals", group=lv.group, level=lab, term=t, estimate=b[g, i],
                                 std_error=sd[g, i], **wald_interval(b[g, i], sd[g, i])))
    return tidy_frame(rows)
