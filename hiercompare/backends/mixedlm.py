"""``mixedlm``: statsmodels MixedLM.

The top level of the tree is MixedLM's ``groups``; its varying terms are ``exog_re`` (correlated, or with
the off-diagonal covariances fixed at 0 for ``||``). Every deeper level must be a varying intercept and
becomes a variance component (one indicator column per group inside each top-level group). A varying slope
below the top level cannot be written this way and is a SpecError, not a silently different model.

Fixed effects get statsmodels' SEs and, by ``df``, t-based 95% intervals and p-values with Satterthwaite's df
(the default) or Kenward-Roger's (with its adjusted SEs), or Wald z intervals, all computed at mixedlm's
estimates by :mod:`hiercompare.inference`; ran_vals are the BLUPs with conditional SDs from
``random_effects_cov``. L-BFGS is run first; when it does not converge, or statsmodels warns that the
optimum may be on the boundary (where L-BFGS was seen to stop up to 1.8 log-likelihood units short of lme4's
optimum while reporting convergence), Powell and Nelder-Mead (each polished by L-BFGS) are run as well and the
highest likelihood is kept. Every attempt is recorded in ``diagnostics['optimizer_attempts']``.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import inference
from ..design import ModelData
from ..errors import ConvergenceWarning, SpecError
from ..results import RESIDUAL, Fit, cor_term, sd_term, tidy_frame, wald_interval
from ..spec import INTERCEPT, ModelSpec
from .base import Backend, reml_or_ml

BOUNDARY_REL = 1e-4  # an SD below this fraction of the residual SD is reported as a boundary (singular) fit


class MixedLMBackend(Backend):
    name = "mixedlm"
    description = "statsmodels MixedLM (top level: correlated terms; deeper levels: intercept variance components)"
    requires = ("statsmodels",)

    def check(self, spec: ModelSpec) -> None:
        super().check(spec)
        levels = spec.levels
        if not levels:
            raise SpecError("mixedlm needs at least one group term such as (1 | market)")
        # the top level is the one with the fewest columns in its factor; deeper ones need intercepts only
        for lv in levels[1:]:
            if lv.slopes:
                raise SpecError(
                    f"mixedlm cannot fit the varying slope(s) {list(lv.slopes)} at the nested level {lv.group}: "
                    "statsmodels only has random slopes at its top grouping level. Use the lme4 backend"
                )
            if not lv.has_intercept:
                raise SpecError(f"mixedlm needs a varying intercept at {lv.group}")
        top = levels[0]
        if len(top.blocks) > 1 and any(len(b) > 1 for b in top.blocks):
            raise SpecError(
                f"mixedlm fits one block at {top.group} either fully correlated or fully independent; "
                "a mix of correlated and independent terms needs lme4"
            )

    def fit(self, md: ModelData, method: str = "REML", maxiter: int = 5000, df: str | None = None,
            **options) -> Fit:
        """``maxiter`` caps every optimiser's iterations (statsmodels' ``maxiter``); lower it only to
        reproduce a fit that stops early (the diagnosis tests do). ``df``: the fixed effects' intervals and
        p-values, ``"satterthwaite"`` (default), ``"kenward-roger"`` (REML) or ``"z"``, computed at mixedlm's
        estimates by :mod:`hiercompare.inference`."""
        from statsmodels.regression.mixed_linear_model import MixedLM, MixedLMParams, VCSpec

        method = reml_or_ml(method)
        if options:
            raise TypeError(f"mixedlm options are method, maxiter and df; got {sorted(options)}")
        if int(maxiter) != maxiter or maxiter < 1:
            raise SpecError(f"maxiter must be a positive integer, got {maxiter!r}")
        df = inference.df_method(df, md.spec.family)
        if df == "kenward-roger" and method != "REML":
            raise SpecError("Kenward-Roger is for REML fits (as in lmerTest and pbkrtest); use method='REML' or "
                            "df='satterthwaite'")
        levels = md.hierarchy.levels
        top = levels[0]
        if top.spec.factor != md.spec.levels[0].factor:
            raise SpecError(
                f"the data make {top.group} the top level, but its terms need the top level to be "
                f"{md.spec.levels[0].group} for mixedlm; use lme4"
            )
        Zt = md.Z[top.group]
        terms = list(top.spec.terms)
        groups = top.codes
        vc_names, vc_cols, vc_mats = [], [], []
        order = [np.flatnonzero(groups == g) for g in range(top.n_groups)]
        for lv in levels[1:]:
            names_g, mats_g = [], []
            for g, rows in enumerate(order):
                sub = lv.codes[rows]
                kids = np.unique(sub)
                names_g.append([str(lv.labels[k]) for k in kids])
                mats_g.append((sub[:, None] == kids[None, :]).astype(float))
            vc_names.append(lv.group)
            vc_cols.append(names_g)
            vc_mats.append(mats_g)
        exog_vc = VCSpec(vc_names, vc_cols, vc_mats) if vc_names else None
        model = MixedLM(md.y, md.X, groups=groups, exog_re=Zt, exog_vc=exog_vc)
        independent = not top.spec.blocks or len(top.spec.blocks) > 1
        free = None
        if independent and len(terms) > 1:
            free = MixedLMParams.from_components(fe_params=np.ones(md.X.shape[1]), cov_re=np.eye(len(terms)),
                                                 vcomp=np.ones(len(vc_names)))
        attempts = []
        res = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for opt in (["lbfgs"], ["powell", "lbfgs"], ["nm", "lbfgs"], ["bfgs"]):
                n_before = len(caught)
                try:
                    r = model.fit(reml=method == "REML", method=opt, free=free, maxiter=int(maxiter))
                except Exception as exc:  # recorded, next method tried
                    attempts.append(f"{'+'.join(opt)}: {exc}")
                    continue
                attempts.append(f"{'+'.join(opt)}: converged={r.converged}, llf={r.llf:.10g}")
                if not np.isfinite(r.llf):  # seen on mlmRev's Exam: cov_re = 0 with llf = +inf; never kept
                    continue
                better = res is None or (r.converged, r.llf) > (res.converged, res.llf + 1e-9)
                res = r if better else res
                boundary = any("boundary" in str(w.message) for w in caught[n_before:])
                # L-BFGS can stop short near the boundary while reporting convergence (seen against lme4):
                # then Powell and Nelder-Mead polish too, and the best likelihood wins
                if res.converged and not boundary and len(attempts) == 1:
                    break
                if len(attempts) >= 3 and res.converged:
                    break
        msgs = [str(w.message) for w in caught]
        if res is None:
            from ..errors import BackendError

            raise BackendError(f"mixedlm failed with every optimiser: {attempts}")
        table, singular = self._tidy(md, res, terms, vc_names)
        table, info = inference.fixed_effects(md, table, df, reml=method == "REML")
        if not res.converged:
            warnings.warn(f"mixedlm did not converge: {attempts}", ConvergenceWarning, stacklevel=2)
        return Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=float(res.llf), method=method,
            nobs=md.n, diagnostics={"converged": bool(res.converged), "singular": singular,
                                    "warnings": msgs, "optimizer_attempts": attempts,
                                    "df_method": info["df_method"], "notes": info["notes"]},
            raw=res,
        )

    def _tidy(self, md, res, terms, vc_names):
        p = md.X.shape[1]
        fe = np.asarray(res.fe_params)
        se = np.asarray(res.bse_fe)
        rows = [dict(effect="fixed", term=n, estimate=b, std_error=s, **wald_interval(b, s))
                for n, b, s in zip(md.fixed_names, fe[:p], se[:p])]
        levels = md.hierarchy.levels
        top = levels[0]
        cov = np.asarray(res.cov_re)
        sds = np.sqrt(np.clip(np.diag(cov), 0, None))
        sigma = float(np.sqrt(res.scale))
        singular = False
        for i, t in enumerate(terms):
            rows.append(dict(effect="ran_pars", group=top.group, term=sd_term(t), estimate=sds[i]))
            singular |= sds[i] < BOUNDARY_REL * sigma
            for j in range(i + 1, len(terms)):
                if any(t in b and terms[j] in b for b in top.spec.blocks):
                    c = cov[i, j] / (sds[i] * sds[j]) if sds[i] > 0 and sds[j] > 0 else np.nan
                    rows.append(dict(effect="ran_pars", group=top.group, term=cor_term(t, terms[j]), estimate=c))
                    singular |= bool(np.isfinite(c) and abs(c) > 1 - 1e-6)
        vcomp = np.asarray(res.vcomp)
        for name, v in zip(vc_names, vcomp):
            s = float(np.sqrt(max(v, 0.0)))
            rows.append(dict(effect="ran_pars", group=name, term=sd_term(INTERCEPT), estimate=s))
            singular |= s < BOUNDARY_REL * sigma
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=sigma))
        re_all = res.random_effects
        re_cov = res.random_effects_cov
        k = len(terms)
        for g, lab in enumerate(top.labels):
            vals = np.asarray(re_all[g], dtype=float)
            cv = np.asarray(re_cov[g], dtype=float)
            sd = np.sqrt(np.clip(np.diag(cv), 0, None))
            for i, t in enumerate(terms):
                rows.append(_rv(top.group, lab, t, vals[i], sd[i]))
            pos = k
            for lv in levels[1:]:
                kids = np.unique(lv.codes[top.codes == g])
                for kk in kids:
                    rows.append(_rv(lv.group, lv.labels[kk], INTERCEPT, vals[pos], sd[pos]))
                    pos += 1
        return tidy_frame(rows), bool(singular)

    def versions(self):
        import statsmodels

        return {"statsmodels": statsmodels.__version__}


def _rv(group, label, term, val, sd):
    return dict(effect="ran_vals", group=group, level=label, term=term, estimate=val, std_error=sd,
                **wald_interval(val, sd))
