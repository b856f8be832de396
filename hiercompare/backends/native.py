"""``native``: the exact Gaussian LMM of :mod:`hiercompare.mixedcore` on per-group sufficient statistics, and the
GLMM of :mod:`hiercompare.glmmcore` (binomial with trials, poisson, negative binomial) by penalised IRLS.

Any depth of nesting, correlated (``|``) or independent (``||``) varying terms at every level, REML or ML.
Fixed effects get SEs from ``sigma^2 S^-1`` and, by ``df``, t-based 95% intervals and p-values with
Satterthwaite's df (the default) or Kenward-Roger's (adjusted SEs too), or z intervals
(:mod:`hiercompare.inference`); ran_vals are BLUPs with conditional SDs that,
by default (``condvar="full"``), include the uncertainty of the fixed effects (Henderson's prediction-error
variance); ``condvar="beta_fixed"`` conditions on the fixed effects, as lme4's ``ranef(condVar = TRUE)`` does,
and matches it. ran_pars have no standard errors; their intervals are profile-likelihood intervals by default
(:mod:`hiercompare.profile`, lme4's ``confint(method = "profile")``), or parametric bootstrap ones. The derivation is
in ``docs/mixedcore.md``.

Binomial, poisson and negbinomial (NB2) formulas go to :mod:`hiercompare.glmmcore`: lme4's Laplace approximation
(``nAGQ=1``, the default) or adaptive Gauss-Hermite quadrature (``nAGQ`` up to 25, for one grouping factor with one
scalar random effect, as in lme4), theta and beta optimised jointly as glmer's second stage (``nAGQ=0``: glmer's
first stage alone), the NB size k with them. Fixed effects get Wald z intervals from lme4's Hessian-based
covariance (``vcov="hessian"``, or ``"rx"``); ran_vals are conditional modes with conditional SDs (``condvar`` as
above: ``"beta_fixed"`` is lme4's ``ranef(condVar = TRUE)``); the NB size is the ran_pars row (``Dispersion``,
``theta``); logLik is lme4's (for nAGQ > 1 lme4's sums deviance residuals: see the fit's notes). Offsets and
binomial trials are used (``offset()``, ``cbind(s, f)``). The derivation is in ``docs/glmmcore.md``.
"""
from __future__ import annotations

import numpy as np

from .. import glmmcore, inference, mixedcore, profile
from ..design import ModelData, weighted_view
from ..errors import ConvergenceWarning, SpecError
from ..results import DISPERSION, RESIDUAL, THETA, Fit, cor_term, sd_term, tidy_frame, wald_interval
from .base import Backend, reml_or_ml


class NativeBackend(Backend):
    name = "native"
    families = ("gaussian", "binomial", "poisson", "negbinomial")
    features = frozenset({"offset", "trials", "weights"})  # weights: Gaussian prior weights (design.weighted_view)
    description = ("exact Gaussian LMM on sufficient statistics (mixedcore), nested levels, REML or ML; binomial, "
                   "poisson and negative binomial GLMMs by Laplace / adaptive Gauss-Hermite (glmmcore)")


    def fit(self, md: ModelData, method: str = "REML", condvar: str = "full", df: str | None = None,
            ran_pars_ci: str = "profile", ran_pars_nsim: int = 500, ran_pars_seed=None, **options) -> Fit:
        """``df``: the fixed effects' intervals and p-values, ``"satterthwaite"`` (default), ``"kenward-roger"``
        (REML) or ``"z"`` (:mod:`hiercompare.inference`). ``ran_pars_ci``: the SDs' and correlations' intervals,
        ``"profile"`` (default, as lme4's ``confint(method = "profile")``), ``"bootstrap"`` (parametric,
        ``ran_pars_nsim`` draws from ``ran_pars_seed``) or ``"none"`` (:mod:`hiercompare.profile`).

        Binomial, poisson and negbinomial models (:mod:`hiercompare.glmmcore`) take ``nAGQ`` (1: Laplace, the
        default; 2-25: adaptive Gauss-Hermite, one scalar random effect; 0: glmer's first stage) and ``vcov``
        (``"hessian"``, lme4's default, or ``"rx"``); ``method`` does not apply (maximum likelihood)."""
        if md.spec.family != "gaussian":
            return self._fit_glmm(md, condvar=condvar, df=df, ran_pars_ci=ran_pars_ci, **options)
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
        if ran_pars_ci == "bootstrap" and md.weights is not None:
            raise SpecError("ran_pars_ci='bootstrap' simulates without the prior weights; use 'profile'")
        # prior weights: the LMM on rows scaled by sqrt(w), whose likelihood lacks only 0.5 * sum(log w)
        gmd = weighted_view(md)
        core = mixedcore.from_model_data(gmd, offset=gmd.offset if getattr(md, "has_offset", False) else None)
        res = core.fit(reml=method == "REML", condvar=condvar)
        loglik = res.loglik + (0.5 * float(np.log(md.weights).sum()) if md.weights is not None else 0.0)
        table, info = inference.fixed_effects(gmd, tidy_rows(md, res), df, reml=method == "REML", core=core,
                                              theta=res.theta, sigma=res.sigma)
        out = Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=loglik, method=method,
            nobs=md.n,
            diagnostics={"converged": res.converged, "singular": res.singular, "warnings": [],
                         "optimizer": res.optimizer, "deviance_evaluations": res.n_evals,
                         "theta": res.theta.tolist(), "df_method": info["df_method"], "notes": info["notes"]},
            raw=res,
        )
        return profile.add_intervals(out, ran_pars_ci, core=core, theta=res.theta, nsim=ran_pars_nsim,
                                     seed=ran_pars_seed)

    def _fit_glmm(self, md: ModelData, condvar: str = "full", df: str | None = None, ran_pars_ci: str = "profile",
                  nAGQ: int = 1, vcov: str = "hessian", method: str | None = None, **options) -> Fit:
        if options:
            raise TypeError(f"native options for a {md.spec.family} model are nAGQ, vcov, condvar, df and "
                            f"ran_pars_ci; got {sorted(options)}")
        if method is not None:
            reml_or_ml(method)  # REML does not apply to a GLMM: the fit maximises the likelihood, as glmer
        if condvar not in ("full", "beta_fixed"):
            raise SpecError(f"condvar must be 'full' or 'beta_fixed', got {condvar!r}")
        if vcov not in ("hessian", "rx"):
            raise SpecError(f"vcov must be 'hessian' or 'rx', got {vcov!r}")
        df = inference.df_method(df, md.spec.family)
        nAGQ = int(nAGQ)
        if not 0 <= nAGQ <= 25:
            raise SpecError(f"nAGQ must be between 0 and 25 (as in lme4), got {nAGQ}")
        levels = md.hierarchy.levels
        if nAGQ > 1 and (len(levels) != 1 or len(levels[0].spec.terms) != 1):
            raise SpecError("nAGQ > 1 (adaptive Gauss-Hermite quadrature) needs one grouping factor with one scalar "
                            "random effect, as in lme4; use nAGQ=1 (Laplace) for this formula")
        if getattr(md, "sums", None) is not None:
            raise SpecError(f"a {md.spec.family} model needs the rows (its working weights change every iteration); "
                            "a source read in batches keeps only per-leaf sums")
        core = glmmcore.from_model_data(md)
        res = core.fit(nAGQ=nAGQ, condvar=condvar, vcov=vcov)
        table, info = inference.fixed_effects(md, tidy_rows(md, res), df)
        warns = []
        if not res.converged:
            warns.append(f"ConvergenceWarning: native ({md.spec.family}) did not converge: {res.message}")
            import warnings

            warnings.warn(f"native did not converge: {res.message}", ConvergenceWarning, stacklevel=3)
        what = "Laplace" if nAGQ == 1 else ("nAGQ=0" if nAGQ == 0 else f"adaptive Gauss-Hermite, nAGQ={nAGQ}")
        out = Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=res.loglik, method=f"ML ({what})",
            nobs=md.n,
            diagnostics={"converged": res.converged, "singular": res.singular, "warnings": warns,
                         "optimizer": res.optimizer, "deviance_evaluations": res.n_evals,
                         "passes_over_rows": res.n_passes, "theta": res.theta.tolist(), "nAGQ": nAGQ,
                         "vcov": res.vcov_method, "df_method": info["df_method"],
                         "notes": info["notes"] + res.notes},
            raw=res,
        )
        return profile.add_intervals(out, ran_pars_ci)

    def versions(self):
        import scipy

        return {"scipy": scipy.__version__}


def tidy_rows(md: ModelData, res):
    """The Fit schema's rows from a mixedcore or glmmcore result (shared with the learners that use them): a
    Gaussian fit has the residual SD row, a negative binomial one its size (``Dispersion``, ``theta``)."""
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
    if getattr(res, "sigma", None) is not None:
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=res.sigma))
    if getattr(res, "nb_theta", None) is not None:
        rows.append(dict(effect="ran_pars", group=DISPERSION, term=THETA, estimate=res.nb_theta))
    for li, lv in enumerate(md.hierarchy.levels):
        b = res.blups[li]
        sd = np.sqrt(np.clip(np.diagonal(res.blup_cov[li], axis1=1, axis2=2), 0, None))
        for g, lab in enumerate(lv.labels):
            for i, t in enumerate(lv.spec.terms):
                rows.append(dict(effect="ran_vals", group=lv.group, level=lab, term=t, estimate=b[g, i],
                                 std_error=sd[g, i], **wald_interval(b[g, i], sd[g, i])))
    return tidy_frame(rows)
