"""``native``: the exact Gaussian LMM of :mod:`hiercompare.mixedcore` on per-group sufficient statistics.

Any depth of nesting, correlated (``|``) or independent (``||``) varying terms at every level, REML or ML.
Fixed effects get SEs from ``sigma^2 S^-1`` and, by ``df``, t-based 95% intervals and p-values with
Satterthwaite's df (the default) or Kenward-Roger's (adjusted SEs too), or z intervals
(:mod:`hiercompare.inference`); ran_vals are BLUPs with conditional SDs that,
by default (``condvar="full"``), include the uncertainty of the fixed effects (Henderson's prediction-error
variance); ``condvar="beta_fixed"`` conditions on the fixed effects, as lme4's ``ranef(condVar = TRUE)`` does,
and matches it. ran_pars have no standard errors; their intervals are profile-likelihood intervals by default
(:mod:`hiercompare.profile`, lme4's ``confint(method = "profile")``), or parametric bootstrap ones. The derivation is
in ``docs/mixedcore.md``.
"""
from __future__ import annotations

import numpy as np

from .. import inference, mixedcore, profile
from ..design import ModelData
from ..errors import SpecError
from ..results import RESIDUAL, Fit, cor_term, sd_term, tidy_frame, wald_interval
from .base import Backend, reml_or_ml


class NativeBackend(Backend):
    name = "native"
    description = "exact Gaussian LMM on sufficient statistics (mixedcore), nested levels, REML or ML"


    def fit(self, md: ModelData, method: str = "REML", condvar: str = "full", df: str | None = None,
            ran_pars_ci: str = "profile", ran_pars_nsim: int = 500, ran_pars_seed=None, **options) -> Fit:
        """``df``: the fixed effects' intervals and p-values, ``"satterthwaite"`` (default), ``"kenward-roger"``
        (REML) or ``"z"`` (:mod:`hiercompare.inference`). ``ran_pars_ci``: the SDs' and correlations' intervals,
        ``"profile"`` (default, as lme4's ``confint(method = "profile")``), ``"bootstrap"`` (parametric,
        ``ran_pars_nsim`` draws from ``ran_pars_seed``) or ``"none"`` (:mod:`hiercompare.profile`)."""
        if options:
            raise TypeError(f"native options are method, condvar, df, ran_pars_ci, ran_pars_nsim and ran_pars_seed; "
                            f"got {sorted(options)}")
        ran_pars_ci = profile.check_method(ran_pars_ci)
        if ran_pars_ci == "bootstrap" and getattr(md, "sums", None) is not None:
            raise SpecError("ran_pars_ci='bootstrap' redraws the response on the rows; a source read in batches "
                            "keeps only per-leaf sums: use ran_pars_ci='profile'")
        method = reml_or_ml(method)
        if condvar not in ("full", "beta_fixed"):
            raise SpecError(f"condvar must be 'full' or 'beta_fixed', got {condvar!r}")
        df = inference.df_method(df, md.spec.family)
        if df == "kenward-roger" and method != "REML":
            raise SpecError("Kenward-Roger is for REML fits (as in lmerTest and pbkrtest); use method='REML' or "
                            "df='satterthwaite'")
        core = mixedcore.from_model_data(md)
        res = core.fit(reml=method == "REML", condvar=condvar)
        table, info = inference.fixed_effects(md, tidy_rows(md, res), df, reml=method == "REML", core=core,
                                              theta=res.theta, sigma=res.sigma)
        out = Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=res.loglik, method=method,
            nobs=md.n,
            diagnostics={"converged": res.converged, "singular": res.singular, "warnings": [],
                         "optimizer": res.optimizer, "deviance_evaluations": res.n_evals,
                         "theta": res.theta.tolist(), "df_method": info["df_method"], "notes": info["notes"]},
            raw=res,
        )
        return profile.add_intervals(out, ran_pars_ci, core=core, theta=res.theta, nsim=ran_pars_nsim,
                                     seed=ran_pars_seed)

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
