"""``glm``: statsmodels GLM on the ols backend's sum-to-zero dummy design, for binary and count outcomes.

The no-pooling analogue of ``ols`` for the binomial (logit; a 0/1 response or ``cbind()`` trials), poisson (log)
and negbinomial (NB2, log) families: every group's deviation is a fixed coefficient, the intercept is the national
level on the link scale, and ``offset()`` terms enter the linear predictor. Binomial and poisson are fitted by
IRLS (:class:`statsmodels.genmod.generalized_linear_model.GLM`); the negative binomial by maximising the profile
log-likelihood over log(theta) (Brent), each theta's coefficients by IRLS with statsmodels' NegativeBinomial family:
the joint maximum likelihood that ``MASS::glm.nb`` reaches by alternation, with its SEs (the coefficients' at the
final theta; in NB2 they are orthogonal to theta). Intervals are Wald z (``df`` inf), as R's ``summary.glm`` for these
families. ``r_glm`` fits the same design with R's ``glm`` / ``MASS::glm.nb``.

Rows with zero binomial trials carry no information and are left out of the fit (R's glm gives them weight 0).
"""
from __future__ import annotations

import numpy as np

from ..design import ModelData
from ..errors import BackendError
from ..results import DISPERSION, THETA, Fit
from . import dummies
from .base import Backend

GLM_FAMILIES = ("binomial", "poisson", "negbinomial")
TOL = 1e-12  # IRLS convergence (relative change in the deviance), tighter than either library's default


class GLMBackend(Backend):
    name = "glm"
    families = GLM_FAMILIES
    features = frozenset({"offset", "trials"})
    requires_groups = False
    description = "statsmodels GLM (binomial, poisson, negative binomial) on the sum-to-zero dummy design (no pooling)"
    requires = ("statsmodels",)

    def fit(self, md: ModelData, **options) -> Fit:
        import statsmodels.api as sm

        if options:
            raise TypeError(f"glm takes no options, got {sorted(options)}")
        dd = dummies.build(md)
        D, y, off, n, keep, notes = glm_rows(md, dd)
        fam = md.spec.family
        extra = []
        if fam == "negbinomial":
            res, theta, converged, more = _negbin(sm, y, D, off)
            notes += more
            coef, vcov = np.asarray(res.params), np.asarray(res.cov_params())
            extra = [dict(effect="ran_pars", group=DISPERSION, term=THETA, estimate=theta)]
            llf = float(res.llf)
        else:
            if fam == "binomial":
                model = sm.GLM(np.column_stack([y, n - y]), D, family=sm.families.Binomial(), offset=off)
            else:
                model = sm.GLM(y, D, family=sm.families.Poisson(), offset=off)
            res = model.fit(tol=TOL, maxiter=200)
            # again from the optimum: IRLS's covariance uses the weights of the iteration before the last one
            res = model.fit(start_params=np.asarray(res.params), tol=TOL, maxiter=200)
            coef, vcov = np.asarray(res.params), np.asarray(res.cov_params())
            mu = np.asarray(res.fittedvalues)
            if fam == "binomial" and ((mu < 1e-10) | (mu > 1 - 1e-10)).any():
                notes.append("fitted probabilities numerically 0 or 1 occurred (as R's glm warns): some group or "
                             "predictor separates the outcomes, and its coefficient runs off to infinity")
            converged = bool(res.converged)
            llf = float(res.llf)
        if not np.all(np.isfinite(coef)):
            raise BackendError("glm: the fit did not give finite coefficients (complete separation?)")
        table = dummies.tidy_rows(md, dd, coef, vcov, None, np.inf, extra)
        return Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=llf, method="ML (IRLS)", nobs=int(keep.sum()),
            diagnostics={"converged": converged, "singular": False, "notes": dd.notes + notes,
                         "df_resid": float(len(y) - D.shape[1] - (fam == "negbinomial"))},
            raw=res,
        )

    def versions(self) -> dict[str, str]:
        import statsmodels

        return {"statsmodels": statsmodels.__version__}


def glm_rows(md: ModelData, dd: dummies.DummyDesign):
    """(design, response, offset, trials, rows kept, notes): the rows a GLM fits (binomial rows with zero trials left
    out, as R's glm weighs them 0); trials are ones for other families (unused)."""
    n = md.trials if md.trials is not None else np.ones(md.n)
    keep = n > 0
    notes = []
    if not keep.all():
        notes.append(f"{int((~keep).sum())} rows with zero binomial trials carry no information and were left out")
    return dd.D[keep], md.y[keep], md.offset[keep], n[keep], keep, notes


THETA_MAX = 1e8  # beyond it the counts are Poisson: no overdispersion left to estimate


def _negbin(sm, y, D, off):
    """NB2 maximum likelihood as ``MASS::glm.nb`` finds it, with tight tolerances: alternate the coefficients by IRLS
    at a fixed theta and theta by Newton steps on its score at the fitted means (``MASS::theta.ml``) until theta
    moves by less than 1e-11 of itself. Returns (GLM result at the final theta, theta, converged, notes)."""
    from scipy import special

    res = sm.GLM(y, D, family=sm.families.Poisson(), offset=off).fit(tol=TOL, maxiter=200)
    mu = np.asarray(res.fittedvalues)
    notes, converged = [], False
    if np.sum((y - mu) ** 2 - y) <= 0:  # the score of alpha = 1/theta at 0 (the Poisson fit) is not positive
        notes.append("negbinomial: the counts show no overdispersion beyond the Poisson fit's (the likelihood grows "
                     f"with theta up to infinity); theta is reported at {THETA_MAX:.0e}: fit family='poisson'")
        res = sm.GLM(y, D, family=sm.families.NegativeBinomial(alpha=1.0 / THETA_MAX), offset=off).fit(
            start_params=np.asarray(res.params), tol=TOL, maxiter=200)
        return res, THETA_MAX, False, notes
    theta = len(y) / max(np.sum((y / mu - 1.0) ** 2), 1e-12)  # theta.ml's starting value
    for _ in range(200):
        new = _theta_ml(special, y, mu, theta)
        if not np.isfinite(new) or new > THETA_MAX:
            notes.append(f"negbinomial: theta grows without bound ({new:.3g}): the counts show no overdispersion "
                         "beyond the model's; fit family='poisson'")
            theta = min(new, THETA_MAX) if np.isfinite(new) else THETA_MAX
            break
        done = abs(new - theta) <= 1e-11 * new
        theta = new
        res = sm.GLM(y, D, family=sm.families.NegativeBinomial(alpha=1.0 / theta), offset=off).fit(
            start_params=np.asarray(res.params), tol=TOL, maxiter=200)
        mu = np.asarray(res.fittedvalues)
        if done:
            converged = bool(res.converged)
            break
    return res, float(theta), converged, notes


def _theta_ml(special, y, mu, theta):
    """``MASS::theta.ml``: Newton steps on the NB2 log-likelihood's score in theta, the means held fixed."""
    t = theta
    for _ in range(100):
        score = np.sum(special.digamma(t + y) - special.digamma(t) + np.log(t) + 1 - np.log(t + mu) - (y + t) / (mu + t))
        info = np.sum(-special.polygamma(1, t + y) + special.polygamma(1, t) - 1 / t + 2 / (mu + t)
                      - (y + t) / (mu + t) ** 2)
        step = score / info
        t = abs(t) + step
        if not np.isfinite(t) or t > THETA_MAX:
            return t
        if abs(step) <= 1e-12 * max(1.0, t):
            break
    return t


__all__ = ["GLMBackend", "GLM_FAMILIES", "glm_rows"]
