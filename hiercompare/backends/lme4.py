"""``lme4``: R's lmer/glmer through rpy2 (r_scripts/fit_lme4.R).

Fixed effects come with ``vcov``'s SEs and, for lmer, t-based 95% intervals and p-values with Satterthwaite's
df (the default; ``df="kenward-roger"``: pbkrtest's adjusted SEs and df; ``df="z"``: Wald z), computed at lme4's
estimates in :mod:`hiercompare.inference` (lmerTest's numbers); glmer's are Wald z; ran_vals are
``ranef(condVar = TRUE)`` with conditional SDs and Wald 95% intervals (+-1.96 SD); ran_pars are ``VarCorr`` (SDs
and correlations; no standard errors, as in broom.mixed) with lme4's profile-likelihood intervals by default, computed
on mixedcore from lme4's estimates (:mod:`hiercompare.profile`). Singular fits and lme4's convergence messages go
into ``diagnostics``.
"""
from __future__ import annotations

import re
import warnings

import numpy as np

from .. import inference, mixedcore, profile, rbridge
from ..design import ModelData, weighted_view
from ..errors import BackendError, ConvergenceWarning, SpecError
from ..results import DISPERSION, RESIDUAL, THETA, Fit, cor_term, sd_term, tidy_frame, wald_interval
from .base import Backend, reml_or_ml

OPTIMIZERS = ("default", "nloptwrap", "bobyqa", "Nelder_Mead")  # default: lme4's own for lmer / glmer


class Lme4Backend(Backend):
    name = "lme4"
    families = ("gaussian", "binomial", "poisson", "negbinomial")
    features = frozenset({"offset", "trials", "weights"})
    description = "R lme4 (lmer / glmer / glmer.nb) through rpy2"

    def availability(self):
        return rbridge.availability(("lme4",))


    def fit(self, md: ModelData, method: str = "REML", optimizer: str = "default", df: str | None = None,
            ran_pars_ci: str = "profile", ran_pars_nsim: int = 500, ran_pars_seed=None, **options) -> Fit:
        """``df``: the fixed effects' intervals and p-values for lmer fits, ``"satterthwaite"`` (default),
        ``"kenward-roger"`` (REML) or ``"z"``, computed at lme4's estimates by :mod:`hiercompare.inference`
        (lmerTest's and pbkrtest's numbers); glmer fits are Wald z (``df="z"``, the default for them).
        ``ran_pars_ci``: the SDs' and correlations' intervals for lmer fits, ``"profile"`` (default: lme4's
        ``confint(method = "profile")`` computed on mixedcore from lme4's estimates, not by R), ``"bootstrap"``
        (parametric, ``ran_pars_nsim`` draws from ``ran_pars_seed``, refitted by mixedcore) or ``"none"``
        (:mod:`hiercompare.profile`); glmer fits get none."""
        if options:
            raise TypeError(f"lme4 options are method, optimizer, df, ran_pars_ci, ran_pars_nsim and ran_pars_seed; "
                            f"got {sorted(options)}")
        ran_pars_ci = profile.check_method(ran_pars_ci)
        method = reml_or_ml(method)
        if optimizer not in OPTIMIZERS:
            raise SpecError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
        if md.spec.family != "gaussian" and method == "REML":
            method = "ML"  # glmer maximises the (Laplace) likelihood; REML does not apply
        df = inference.df_method(df, md.spec.family)
        if df == "kenward-roger" and method != "REML":
            raise SpecError("Kenward-Roger is for REML fits (as in lmerTest and pbkrtest); use method='REML' or "
                            "df='satterthwaite'")
        spec = md.spec
        weighted = md.weights is not None
        if ran_pars_ci == "bootstrap" and (md.has_offset or weighted):
            raise SpecError("ran_pars_ci='bootstrap' simulates without the offset and prior weights; use 'profile'")
        rdf = rbridge.model_frame(md)
        w = rbridge.floats(md.weights) if weighted else rbridge.null()
        out = rbridge.call("fit_lme4.R", "hc_fit_lme4", rdf, rbridge.r_formula(spec), spec.family,
                           method == "REML", optimizer, w)
        # df and profiles on mixedcore: with offset and weights when the model has them (weighted_view)
        gmd, core = md, None
        if spec.family == "gaussian" and (md.has_offset or weighted):
            gmd = weighted_view(md)
            core = mixedcore.from_model_data(gmd, offset=gmd.offset)
        table, info = inference.fixed_effects(gmd, self._tidy(md, out), df, reml=method == "REML", core=core)
        conv = list(out.get("conv_messages") or [])
        msgs = list(out.get("messages") or [])
        warns = list(out.get("warnings") or [])
        singular = bool(out["singular"])
        # lme4 lists "boundary (singular) fit" among its convergence messages; it is a singular fit, not a failure
        failures = [m for m in conv if "singular" not in m]
        converged = not failures and out.get("optimizer_code", 0) == 0
        if not converged:
            warnings.warn(f"lme4 did not converge cleanly: {failures}", ConvergenceWarning, stacklevel=2)
        fit = Fit(
            backend=self.name, spec=spec, table=table, model=md, loglik=float(out["loglik"]),
            method=method if spec.family == "gaussian" else "ML (Laplace)", nobs=int(out["nobs"]),
            diagnostics={"converged": converged, "singular": singular, "warnings": warns + msgs,
                         "convergence_messages": conv, "optimizer": optimizer, "df_method": info["df_method"],
                         "notes": info["notes"]},
        )
        # the ran_pars intervals on mixedcore, started at lme4's estimates (R's profile() takes far longer)
        return profile.add_intervals(fit, ran_pars_ci, core=core, nsim=ran_pars_nsim, seed=ran_pars_seed)

    def _tidy(self, md: ModelData, out: dict):
        names = out["fixef_names"]
        p = len(names)
        r_to_ours = {c.r_name: c.name for c in md.columns}
        missing = [n for n in names if n not in r_to_ours]
        if missing or p != len(md.columns):
            raise BackendError(
                f"lme4 returned fixed effects {names}, which do not match the design {md.fixed_names}"
            )
        est = np.asarray(out["fixef"], dtype=float)
        se = np.sqrt(np.diag(np.asarray(out["vcov"], dtype=float).reshape(p, p)))
        rows = [dict(effect="fixed", term=r_to_ours[n], estimate=b, std_error=s, **wald_interval(b, s))
                for n, b, s in zip(names, est, se)]
        groups = set(md.hierarchy.groups)
        vc = out["varcorr"]
        for grp, v1, v2, val in zip(vc["grp"], vc["var1"], vc["var2"], vc["sdcor"]):
            if grp == RESIDUAL:
                rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=val))
                continue
            grp = _base_group(grp, groups)
            term = sd_term(v1) if v2 is None else cor_term(v1, v2)
            rows.append(dict(effect="ran_pars", group=grp, term=term, estimate=val))
        if out.get("theta") is not None:
            rows.append(dict(effect="ran_pars", group=DISPERSION, term=THETA, estimate=float(out["theta"])))
        re_ = out["ranef"]
        for gv, term, lab, val, sd in zip(re_["grpvar"], re_["term"], re_["grp"], re_["condval"], re_["condsd"]):
            rows.append(dict(effect="ran_vals", group=_base_group(gv, groups), level=lab, term=term, estimate=val,
                             std_error=sd, **wald_interval(val, sd)))
        return tidy_frame(rows)

    def versions(self):
        return rbridge.versions(("lme4", "Matrix"))


def _base_group(name: str, groups: set[str]) -> str:
    """Map lme4's group names back to ours.

    With ``||`` lme4 splits a term into several blocks named ``g``, ``g.1``, ... and passes names through
    make.names (``market:submarket`` becomes ``market.submarket``).
    """
    norm = {re.sub(r"[^A-Za-z0-9._]", ".", g): g for g in groups}
    for candidate in (name, re.sub(r"\.\d+$", "", name)):
        if candidate in groups:
            return candidate
        if candidate in norm:
            return norm[candidate]
    raise BackendError(f"lme4 returned an unknown grouping factor {name!r} (expected one of {sorted(groups)})")
