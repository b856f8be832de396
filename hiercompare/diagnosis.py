"""Why two backends disagree: evidence from one exact likelihood, the fits' own flags and known conventions.

:mod:`hiercompare.agreement` measures (a tolerance and a verdict per parameter); this module explains. For the
fits of ONE model on ONE data set, :func:`diagnose` returns

* ``likelihood``: every frequentist linear mixed engine's estimates evaluated under ONE exact likelihood,
  mixedcore's profiled deviance (:mod:`hiercompare.mixedcore`, REML or ML as that engine fitted). Each fit's
  SDs, correlations and residual SD (its tidy ``ran_pars``) are turned into mixedcore's ``theta`` (the relative
  Cholesky factors, ``Sigma_l = sigma^2 Lambda_l Lambda_l'``); the fixed effects are profiled out (their GLS
  values given theta) and so is sigma, so the exact log-likelihood depends on the engine's variance
  parameters only. An engine whose estimates lie more than :data:`DELTA_LOGLIK` (1e-4, the log-likelihood
  tolerance of :mod:`hiercompare.agreement`) below the best engine of the same method stopped early or at a
  worse local optimum: the likelihood is the one criterion all of them maximise, so the higher one is the
  better answer whatever each engine reports.
* ``causes``: one row per disagreeing pair and cause, unexplained first. The causes (``cause`` codes):

  ``worse_optimum``
      one side's estimates have a lower exact likelihood (by more than :data:`DELTA_LOGLIK`).
  ``convergence_flag``
      one side reported ``converged=False`` (``None`` means "not assessed" and is no flag).
  ``singular``
      a side reports a boundary (singular) fit and both reach the same likelihood: the likelihood is flat
      there, so the variance parameters and group effects of the boundary terms are weakly determined.
  ``optimizer_tolerance``
      both sides reach the same exact likelihood and every disagreeing estimate differs by less than
      :data:`NEGLIGIBLE_SE` of its standard error (a relative tolerance failed on a value near 0).
  ``se_convention``
      mixedlm's fixed-effect SEs against lme4's / native's, verified by recomputing each convention from the
      other side's estimates (see below).
  ``condvar_convention``
      BLUP conditional SDs with the fixed effects' uncertainty (native's default ``condvar="full"``) against
      lme4's and statsmodels' beta-conditional ones, verified by recomputing ``"beta_fixed"``.
  ``method``, ``prior``, ``pooling``, ``different_model``
      information, never a disagreement: REML against ML; a posterior (priors) against point estimates; no
      pooling (ols, r_lm: group dummies) against partial pooling; a learner's f(x) against a linear model.
  ``unexplained``
      what is left: the disagreements a user must look at.

* ``allfit`` (``allfit=True``, where lme4 is in a disagreeing pair): lme4 refitted under every optimizer of
  :data:`hiercompare.backends.lme4.OPTIMIZERS`, with each one's exact log-likelihood and its largest parameter
  difference from the best of them (lme4's ``allFit``).

The SE conventions, checked numerically (``tests/test_diagnosis.py``): lme4 and native report
``Var(beta_hat) = sigma^2 (X' V^-1 X)^-1``, conditional on the variance parameters (the expected information,
block diagonal between beta and theta). statsmodels' MixedLM (``MixedLM.hessian``, used by ``fit``) inverts the
*observed* Hessian of the profiled log-likelihood jointly in the fixed effects and the variance parameters; its
cross block ``d2 l / d beta d theta = -X' V^-1 (dV/dtheta) V^-1 (y - X beta) / sigma^2`` is zero in expectation
but not on the data, so the fixed-effect block of the inverse, ``(H_bb - H_bt H_tt^-1 H_tb)^-1``, is larger
(most for a covariate that varies between groups only). The diagnosis recomputes that joint Hessian by central
differences of the same profiled likelihood at the other engine's estimates and requires it to reproduce
mixedlm's SEs, and the conditional SEs at mixedlm's estimates to reproduce the other engine's, both within
:data:`REPRODUCE_REL` (relative). The Hessian's fixed-effect block does not depend on how the variance
parameters are parameterised at a stationary point, so theta stands in for statsmodels' covariance
parameters; at a boundary (singular) fit it does, and the check is not made.

>>> import hiercompare as hc
>>> data = hc.datasets.load("exam")  # doctest: +SKIP
>>> f = "normexam ~ standLRT + schavg + (1 + standLRT | school)"
>>> fits = [hc.fit(data, f, backend=b) for b in ("native", "lme4", "mixedlm")]  # doctest: +SKIP
>>> d = diagnose(fits)  # doctest: +SKIP
>>> d.causes[["pair", "cause", "explained"]]  # doctest: +SKIP
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from . import agreement, mixedcore
from .results import RESIDUAL, Fit, cor_term, sd_term

DELTA_LOGLIK = 1e-4
"""Log-likelihood units below the best engine (same method) at which an engine "stopped early or at a worse
local optimum" (the log-likelihood tolerance of :mod:`hiercompare.agreement`)."""
REPRODUCE_REL = 1e-3
"""Relative tolerance within which a convention recomputed from the other side's numbers must reproduce the
disagreeing value for the convention to count as the explanation."""
NEGLIGIBLE_SE = 0.01
"""A difference below this fraction of the estimate's standard error is statistically negligible."""
REPORTED_ABS = 1e-6
"""A reported log-likelihood further than this from the exact one at the engine's own estimates is noted."""

CAUSES = {
    "worse_optimum": "stopped early or at a worse local optimum (lower exact log-likelihood)",
    "convergence_flag": "a side reported that it did not converge",
    "singular": "a boundary (singular) fit: the likelihood is flat in the boundary terms",
    "optimizer_tolerance": "the same optimum; the differences are negligible against the standard errors",
    "se_convention": "fixed-effect SEs conditional on the variance parameters or not",
    "condvar_convention": "BLUP conditional SDs with or without the fixed effects' uncertainty",
    "method": "REML against ML: different criteria (information)",
    "prior": "a posterior under priors against point estimates (information)",
    "pooling": "no pooling against partial pooling (information)",
    "different_model": "a learned f(x) or a different model (information)",
    "unexplained": "no cause found: look at these",
}
INFO_CAUSES = frozenset({"method", "prior", "pooling", "different_model"})
LIKELIHOOD_COLUMNS = ["backend", "method", "loglik_reported", "loglik_exact", "delta_to_best", "verdict",
                      "reported_minus_exact", "converged", "singular", "theta", "note"]
CAUSE_COLUMNS = ["pair", "backend_a", "backend_b", "param_classes", "n_disagree", "cause", "explanation",
                 "evidence", "explained", "info"]
ALLFIT_COLUMNS = ["optimizer", "loglik_reported", "loglik_exact", "delta_to_best", "max_abs_diff", "max_rel_diff",
                  "worst_parameter", "converged", "singular", "messages"]
ESTIMATE_CLASSES = ("fixed", "sd", "cor", "ran_vals", "loglik")
# which conditional-variance convention each backend's ran_vals std_error follows (docs/mixedcore.md, 5.2)
BETA_FIXED_CONDVAR = frozenset({"lme4", "mixedlm"})


@dataclass
class Diagnosis:
    """What :func:`diagnose` returns: ``likelihood``, ``causes`` and ``allfit`` (None unless asked for and
    lme4 disagrees). ``threshold`` is :data:`DELTA_LOGLIK`."""

    likelihood: pd.DataFrame
    causes: pd.DataFrame
    allfit: pd.DataFrame | None = None
    threshold: float = DELTA_LOGLIK

    @property
    def unexplained(self) -> pd.DataFrame:
        return self.causes[~self.causes["explained"]]

    def to_dict(self) -> dict:
        return {
            "threshold_loglik": self.threshold,
            "reproduce_rel": REPRODUCE_REL,
            "cause_codes": CAUSES,
            "likelihood": _records(self.likelihood),
            "causes": _records(self.causes),
            "allfit": None if self.allfit is None else _records(self.allfit),
        }

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    def __repr__(self) -> str:
        n_un = int((~self.causes["explained"]).sum()) if len(self.causes) else 0
        return (f"<Diagnosis: {len(self.likelihood)} fits, {len(self.causes)} causes, {n_un} unexplained; "
                f"threshold {self.threshold:g} log-likelihood units>")


# ---------------------------------------------------------------------------------------------- public API
def diagnose(fits: list[Fit], agreement_table: pd.DataFrame | None = None, allfit: bool = False) -> Diagnosis:
    """Explain every disagreement between fits of one model on one data set.

    Parameters
    ----------
    fits : list of Fit
        Fits of the same formula on the same rows (any backends; at least two).
    agreement_table : DataFrame, optional
        :func:`hiercompare.compare` of these fits; computed here (every pair) when not given. Only the pairs
        it holds are diagnosed.
    allfit : bool
        Refit lme4 under every optimizer where lme4 is in a disagreeing pair (R calls: seconds to minutes).

    Returns
    -------
    Diagnosis
        ``.likelihood`` (one row per fit), ``.causes`` (one row per pair and cause, unexplained first),
        ``.allfit`` (DataFrame or None), ``.to_dict()``.

    Examples
    --------
    >>> d = diagnose([fit_native, fit_lme4, fit_mixedlm])  # doctest: +SKIP
    >>> d.likelihood[["backend", "loglik_exact", "delta_to_best", "verdict"]]  # doctest: +SKIP
    """
    fits = list(fits)
    if len(fits) < 2:
        raise ValueError("diagnose() needs at least two fits")
    formulas = {f.spec.formula for f in fits}
    if len(formulas) > 1:
        raise ValueError(f"diagnose() explains fits of one model; these have formulas {sorted(formulas)}")
    nobs = {f.nobs for f in fits if f.nobs}
    if len(nobs) > 1:
        raise ValueError(f"diagnose() explains fits on the same rows; these have {sorted(nobs)} observations")
    labels = _labels(fits)
    ctx = _Context(fits, labels)
    likelihood = ctx.likelihood_table()
    pair_tables = _pair_tables(fits, labels, agreement_table)
    rows = []
    for (i, j), table in pair_tables.items():
        rows.extend(ctx.explain_pair(i, j, table))
    allfit_table = None
    if allfit:
        allfit_table = ctx.allfit(rows)
        if allfit_table is not None:
            _add_allfit_evidence(rows, allfit_table, ctx)
    causes = pd.DataFrame(rows, columns=CAUSE_COLUMNS)
    if len(causes):
        order = causes["explained"].astype(int) * 2 + causes["info"].astype(int)
        causes = causes.assign(_o=order).sort_values(["_o"], kind="stable").drop(columns="_o").reset_index(drop=True)
    return Diagnosis(likelihood=likelihood, causes=causes, allfit=allfit_table)


def theta_from_fit(fit: Fit, core: mixedcore.MixedCore) -> np.ndarray:
    """mixedcore's ``theta`` (relative Cholesky factors, ``core.theta_index`` order) from a fit's tidy
    ``ran_pars``: per covariance block, ``Sigma = D R D`` from the SDs and correlations, divided by the
    residual variance, then its lower Cholesky factor (zero SDs give zero columns, as at lme4's boundary)."""
    rp = fit.table[fit.table["effect"] == "ran_pars"]
    values = {(g, t): float(v) for g, t, v in zip(rp["group"], rp["term"], rp["estimate"])}
    sigma = values.get((RESIDUAL, sd_term("Observation")))
    if sigma is None or not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"{fit.backend}: no positive residual SD among its ran_pars")
    lams = []
    for lv in core.levels:
        lam = np.zeros((lv.k, lv.k))
        for block in lv.blocks:
            names = [lv.terms[b] for b in block]
            sds = []
            for t in names:
                v = values.get((lv.group, sd_term(t)))
                if v is None or not np.isfinite(v):
                    raise ValueError(f"{fit.backend}: no SD for {t!r} of {lv.group!r} among its ran_pars")
                sds.append(max(v, 0.0))
            cov = np.diag(np.square(sds))
            for a in range(len(names)):
                for b in range(a + 1, len(names)):
                    c = values.get((lv.group, cor_term(names[a], names[b])),
                                   values.get((lv.group, cor_term(names[b], names[a])), 0.0))
                    c = 0.0 if not np.isfinite(c) else c
                    cov[a, b] = cov[b, a] = c * sds[a] * sds[b]
            lam[np.ix_(block, block)] = _cholesky_psd(cov / sigma ** 2)
        lams.append(lam)
    return np.array([lams[li][i, j] for li, i, j in core.theta_index])


def joint_hessian_se(core: mixedcore.MixedCore, theta, reml: bool = True, step: float = 1e-3) -> np.ndarray:
    """Fixed-effect SEs as statsmodels' MixedLM computes them: ``sqrt(diag((-H)^-1))`` over the fixed
    effects, H the Hessian of the log-likelihood profiled over sigma only, jointly in (beta, theta), at
    theta and beta = its GLS value (central differences, steps of ``step`` times the conditional SE for
    beta and ``step * max(|theta|, 0.1)`` for theta)."""
    theta = np.asarray(theta, dtype=float)
    res = core.solve(theta, reml=reml)
    p = core.p
    x0 = np.r_[res.beta, theta]
    scale = np.r_[np.sqrt(np.diag(res.vcov_beta)), np.maximum(np.abs(theta), 0.1)]
    fn = lambda z: _loglik_beta_theta(core, x0[:p] + scale[:p] * z[:p], x0[p:] + scale[p:] * z[p:], reml)
    m = len(x0)
    H = np.empty((m, m))
    f0 = fn(np.zeros(m))
    e = np.eye(m) * step
    for a in range(m):
        H[a, a] = (fn(e[a]) - 2 * f0 + fn(-e[a])) / step ** 2
        for b in range(a):
            H[a, b] = H[b, a] = (fn(e[a] + e[b]) - fn(e[a] - e[b]) - fn(e[b] - e[a]) + fn(-e[a] - e[b])) / (
                4 * step ** 2)
    H = H / np.outer(scale, scale)
    cov = np.linalg.inv(-H)
    return np.sqrt(np.diag(cov)[:p])


# ---------------------------------------------------------------------------------------------- internals
def _loglik_beta_theta(core, beta, theta, reml) -> float:
    """The log-likelihood profiled over sigma only (statsmodels' objective, up to a constant): ML
    ``-(n log r(beta) + log|A|) / 2``; REML adds ``-log|X'V^-1X| / 2`` and uses n - p, with
    ``r(beta) = (y - X beta)' V^-1 (y - X beta) = q - 2 beta'r + beta'S beta`` from mixedcore's elimination."""
    try:
        logdet, F, _, _ = core._eliminate(theta)
    except np.linalg.LinAlgError:
        return -np.inf
    p, n = core.p, core.n
    S, r, q = F[:p, :p], F[:p, p], F[p, p]
    rss = q - 2 * beta @ r + beta @ S @ beta
    fac = n - p if reml else n
    out = -0.5 * (logdet + fac * np.log(rss))
    if reml and p:
        out -= 0.5 * np.linalg.slogdet(S)[1]
    return float(out)


def _cholesky_psd(a: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite matrix; a zero pivot gives a zero column."""
    k = a.shape[0]
    L = np.zeros_like(a)
    for j in range(k):
        d = a[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-300:
            continue
        L[j, j] = math.sqrt(d)
        for i in range(j + 1, k):
            L[i, j] = (a[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L


def _criterion(f: Fit) -> str:
    """The criterion a fit maximised, for comparing two fits' likelihoods: "REML", "ML" (native's GLMM reports
    "ML (Laplace)", lme4's glmer "ML"; both are the Laplace approximation) or the method as reported."""
    method = str(f.method or "")
    return "ML" if method.startswith("ML") else method


def _kind(f: Fit) -> str:
    method = str(f.method or "")
    if f.backend in agreement.BAYES or method.startswith("NUTS"):
        return "bayes"
    if f.backend in agreement.LEAST_SQUARES | agreement.GLM or method == "OLS":
        return "no_pooling"
    if f.spec.family != "gaussian" and f.backend in agreement.MIXED and f.nonlinear is None:
        return "glmm"  # a Laplace likelihood: compared as reported (the exact check below is Gaussian)
    if method in ("REML", "ML") and f.spec.family == "gaussian":
        if f.nonlinear is not None:
            return "learner"
        if f.backend in agreement.MIXED:
            return "mixed"
    return "other"


def _labels(fits) -> list[str]:
    names = [f.backend for f in fits]
    out = []
    for i, f in enumerate(fits):
        if names.count(f.backend) == 1:
            out.append(f.backend)
        else:
            alt = f"{f.backend} ({f.method})"
            same = [g for g in fits if f"{g.backend} ({g.method})" == alt]
            out.append(alt if len(same) == 1 else f"{f.backend} #{i}")
    return out


def _pair_tables(fits, labels, table) -> dict:
    pairs = list(combinations(range(len(fits)), 2))
    if table is None:
        return {(i, j): agreement.compare([fits[i], fits[j]]) for i, j in pairs}
    names = [f.backend for f in fits]
    if len(set(names)) < len(names):
        raise ValueError("two fits share a backend name, so the agreement table's pairs are ambiguous; "
                         "call diagnose() with agreement_table=None")
    out = {}
    for i, j in pairs:
        sub = table[(table["backend_a"] == names[i]) & (table["backend_b"] == names[j])]
        if not len(sub):
            sub = table[(table["backend_a"] == names[j]) & (table["backend_b"] == names[i])]
            if len(sub):
                i, j = j, i
        if len(sub):
            out[(i, j)] = sub
    return out


def _fmt(x, digits: int = 6) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "NA"
    return f"{x:.{digits}g}"


def _pct(x) -> str:
    return "NA" if x is None or not np.isfinite(x) else f"{100 * x:.3g}%"


def _param_name(r) -> str:
    if r["effect"] == "fixed":
        return str(r["term"])
    if r["effect"] == "model":
        return "logLik"
    if r["effect"] == "ran_vals":
        return f"{r['group']}={r['level']} {r['term']}"
    return f"{r['group']} {r['term']}"


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (np.integer, int)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        return float(o) if np.isfinite(o) else None
    if o is None or isinstance(o, str):
        return o
    return str(o)


def _records(df: pd.DataFrame) -> list[dict]:
    return [_jsonable(r) for r in df.to_dict(orient="records")]


class _Context:
    """The fits, their exact likelihoods and the cores they were evaluated on (one per offset)."""

    def __init__(self, fits, labels):
        self.fits = fits
        self.labels = labels
        self.kinds = [_kind(f) for f in fits]
        self._core = None
        self.theta: dict[int, np.ndarray] = {}
        self.exact: dict[int, float] = {}
        self.errors: dict[int, str] = {}

    # -------------------------------------------------------------------------- the exact likelihood
    def core(self) -> mixedcore.MixedCore | None:
        if self._core is None:
            for f, k in zip(self.fits, self.kinds):
                if k == "mixed" and f.model is not None:
                    self._core = mixedcore.from_model_data(f.model)
                    break
        return self._core

    def likelihood_table(self) -> pd.DataFrame:
        rows = []
        for i, f in enumerate(self.fits):
            kind = self.kinds[i]
            row = dict(backend=self.labels[i], method=f.method, loglik_reported=f.loglik, loglik_exact=np.nan,
                       delta_to_best=np.nan, verdict="not_applicable", reported_minus_exact=np.nan,
                       converged=f.diagnostics.get("converged"), singular=f.diagnostics.get("singular"),
                       theta=None, note="")
            if kind in ("mixed", "learner"):
                try:
                    core = self.core() if kind == "mixed" else self._learner_core(f)
                    if core is None:
                        raise ValueError("the fit carries no data (loaded without its ModelData)")
                    theta = theta_from_fit(f, core)
                    ll = -core.deviance(theta, reml=f.method == "REML") / 2
                    row.update(loglik_exact=ll, theta=tuple(float(t) for t in theta))
                    if f.loglik is not None:
                        row["reported_minus_exact"] = float(f.loglik) - ll
                    if kind == "mixed":
                        self.theta[i], self.exact[i] = theta, ll
                    else:
                        row["verdict"] = "not_comparable"
                        row["note"] = (f"{f.backend}'s likelihood is that of y - f(x) with its own learned f(x): "
                                       "evaluated at its estimates, not comparable with the linear engines'")
                except Exception as exc:  # one fit that cannot be evaluated is reported, the others still are
                    self.errors[i] = str(exc)
                    row["note"] = f"not evaluated: {exc}"
            elif kind == "glmm" and f.loglik is not None and np.isfinite(f.loglik):
                self.exact[i] = float(f.loglik)
                row.update(loglik_exact=float(f.loglik), reported_minus_exact=0.0,
                           note="the Laplace log-likelihood as the engine reports it (the exact check is for "
                                "Gaussian models): compared across engines as reported")
            elif kind == "bayes":
                row["note"] = "a posterior under priors: no likelihood optimum to check"
            elif kind == "no_pooling":
                row["note"] = "no pooling (group dummies as fixed effects): a different model, no variance parameters"
            else:
                row["note"] = "not a linear mixed model (a learner baseline or another family)"
            rows.append(row)
        out = pd.DataFrame(rows, columns=LIKELIHOOD_COLUMNS)
        for method in ("REML", "ML"):
            idx = [i for i in self.exact if _criterion(self.fits[i]) == method]
            if not idx:
                continue
            best = max(self.exact[i] for i in idx)
            for i in idx:
                d = self.exact[i] - best
                out.loc[i, "delta_to_best"] = d
                out.loc[i, "verdict"] = "worse_optimum" if d < -DELTA_LOGLIK else "best"
                if not np.isfinite(self.exact[i]):
                    out.loc[i, "verdict"] = "failed"
        for i in self.exact:
            rme = out.loc[i, "reported_minus_exact"]
            if np.isfinite(rme) and abs(rme) > REPORTED_ABS:
                out.loc[i, "note"] = (f"the reported log-likelihood differs by {_fmt(rme, 3)} from the exact one at "
                                      "its own estimates")
        return out

    def _learner_core(self, f):
        if f.model is None:
            return None
        offset = np.asarray(f.nonlinear(f.model.data), dtype=float)
        return mixedcore.from_model_data(f.model, offset=offset)

    # -------------------------------------------------------------------------- one pair
    def explain_pair(self, i, j, table) -> list[dict]:
        fa, fb = self.fits[i], self.fits[j]
        la, lb = self.labels[i], self.labels[j]
        dis = table[table["verdict"].isin(["disagree", "missing"])]
        base = dict(pair=f"{la} vs {lb}", backend_a=la, backend_b=lb)

        def row(cause, classes, text, evidence, explained=True):
            sub = dis[dis["param_class"].isin(classes)] if classes is not None else dis
            cl = sorted(set(sub["param_class"])) if classes is not None else sorted(set(dis["param_class"]))
            return dict(base, param_classes=", ".join(cl), n_disagree=int(len(sub)), cause=cause,
                        explanation=text, evidence=_jsonable(evidence), explained=bool(explained),
                        info=cause in INFO_CAUSES)

        info = self._info_cause(i, j, table)
        if info is not None:
            cause, text, ev = info
            return [row(cause, None, text, ev)]
        if dis.empty:
            return []
        remaining = set(dis["param_class"])
        out = []
        se_check = None  # mixedlm's SE convention, checked and not reproduced: evidence for 'unexplained' 
        # 1. the likelihood check
        both_exact = i in self.exact and j in self.exact and _criterion(fa) == _criterion(fb)
        same_optimum = False
        if both_exact:
            d = self.exact[i] - self.exact[j]
            same_optimum = abs(d) <= DELTA_LOGLIK
            if not same_optimum:
                lo, hi = (i, j) if d < 0 else (j, i)
                ev = self._likelihood_evidence(lo, hi)
                text = (f"{self.labels[lo]} stopped early or at a worse local optimum: at its estimates the exact "
                        f"{self.fits[lo].method} log-likelihood is {_fmt(self.exact[lo], 10)}, "
                        f"{_fmt(abs(d), 3)} below {self.labels[hi]}'s {_fmt(self.exact[hi], 10)} "
                        f"(threshold {DELTA_LOGLIK:g}); {self.labels[lo]} reported "
                        f"{_fmt(self.fits[lo].loglik, 10)} and converged={self.fits[lo].diagnostics.get('converged')}")
                out.append(row("worse_optimum", None, text, ev))
                remaining.clear()
        # 2. convergence flags
        for me, other in ((i, j), (j, i)):
            f = self.fits[me]
            if f.diagnostics.get("converged") is False:
                ev = dict(backend=self.labels[me], converged=False,
                          other=self.labels[other], other_converged=self.fits[other].diagnostics.get("converged"),
                          messages=_convergence_messages(f))
                text = (f"{self.labels[me]} reported that it did not converge "
                        f"({'; '.join(ev['messages'][:2]) or 'no message'}), "
                        f"{self.labels[other]} converged={ev['other_converged']}")
                if both_exact:
                    dd = self.exact[me] - self.exact[other]
                    ev["delta_loglik_exact"] = dd
                    text += f"; at its estimates the exact log-likelihood is {_fmt(dd, 3)} from {self.labels[other]}'s"
                out.append(row("convergence_flag", None, text, ev))
                remaining.clear()
        if not remaining:
            return out
        # 3. a boundary fit with the same likelihood
        sing = [k for k in (i, j) if self.fits[k].diagnostics.get("singular")]
        bclasses = {"sd", "cor", "ran_vals", "ran_vals_se"} & remaining
        if sing and bclasses and (same_optimum or not both_exact):
            ev = dict(singular=[self.labels[k] for k in sing], boundary_terms=self._boundary_terms(sing))
            text = (f"{' and '.join(self.labels[k] for k in sing)} reported a boundary (singular) fit "
                    f"({'; '.join(ev['boundary_terms']) or 'no SD below 1e-4 of the residual SD'})")
            if both_exact:
                ev["delta_loglik_exact"] = self.exact[i] - self.exact[j]
                text += (f"; both reach the same exact log-likelihood (difference {_fmt(abs(ev['delta_loglik_exact']), 3)}"
                         f" <= {DELTA_LOGLIK:g}), so the likelihood is flat where they differ")
            out.append(row("singular", sorted(bclasses), text, ev))
            remaining -= bclasses
        # 4. mixedlm's SE convention
        if "fixed_se" in remaining and both_exact and {fa.backend, fb.backend} & {"mixedlm"} and \
                {fa.backend, fb.backend} - {"mixedlm"}:
            m, o = (i, j) if fa.backend == "mixedlm" else (j, i)
            res = self._guarded(self._se_convention, m, o, dis[dis["param_class"] == "fixed_se"])
            if res is not None:
                text, ev, ok = res
                if ok:
                    out.append(row("se_convention", ["fixed_se"], text, ev))
                    remaining.discard("fixed_se")
                else:
                    se_check = ev
        # 5. BLUP conditional-variance convention
        if "ran_vals_se" in remaining and both_exact:
            res = self._guarded(self._condvar_convention, i, j, dis[dis["param_class"] == "ran_vals_se"])
            if res is not None:
                text, ev, ok = res
                if ok:
                    out.append(row("condvar_convention", ["ran_vals_se"], text, ev))
                    remaining.discard("ran_vals_se")
        # 6. the same optimum, differences negligible against the SEs
        if same_optimum and remaining & set(ESTIMATE_CLASSES):
            res = self._negligible(i, j, table, dis, remaining)
            if res is not None:
                classes, text, ev = res
                out.append(row("optimizer_tolerance", classes, text, ev))
                remaining -= set(classes)
        # 7. what is left
        if remaining:
            out.append(row("unexplained", sorted(remaining), self._unexplained_text(i, j, dis, remaining, se_check),
                           self._unexplained_evidence(i, j, dis, remaining, se_check), explained=False))
        return out

    @staticmethod
    def _guarded(check, *args):
        """A convention check that fails to compute leaves the disagreement unexplained, with the reason."""
        try:
            return check(*args)
        except Exception as exc:
            return (f"the check could not be computed ({type(exc).__name__}: {exc})",
                    dict(check=check.__name__, error=str(exc), max_rel_diff_joint=np.nan,
                         max_rel_diff_conditional=np.nan), False)

    def _info_cause(self, i, j, table):
        fa, fb = self.fits[i], self.fits[j]
        la, lb = self.labels[i], self.labels[j]
        ka, kb = self.kinds[i], self.kinds[j]
        kinds = {ka, kb}
        largest = _largest_differences(table)
        tail = f"; largest differences: {largest}" if largest else ""
        ev = dict(method_a=fa.method, method_b=fb.method, largest=_largest_records(table))
        if "bayes" in kinds and kinds != {"bayes"}:
            bay, oth = (la, lb) if ka == "bayes" else (lb, la)
            text = (f"{bay} reports posterior means and SDs under its priors, {oth} "
                    f"{fb.method if ka == 'bayes' else fa.method} point estimates: different by design{tail}")
            return "prior", text, ev
        if "no_pooling" in kinds and kinds != {"no_pooling"}:
            nop, oth = (i, j) if ka == "no_pooling" else (j, i)
            spread = _spread(self.fits[nop], self.fits[oth])
            ev["spread"] = spread
            sp = "; ".join(f"{s['group']} {s['term']}: SD across {s['n']} groups {_fmt(s['sd_a'], 4)} ({self.labels[nop]}) "
                           f"vs {_fmt(s['sd_b'], 4)} ({self.labels[oth]}), ratio {_fmt(s['ratio'], 3)}" for s in spread)
            text = (f"{self.labels[nop]} estimates every group's deviation without pooling (dummy coefficients), "
                    f"{self.labels[oth]} shrinks them towards 0 (partial pooling)"
                    f"{': ' + sp if sp else ''}{tail}")
            return "pooling", text, ev
        if kinds & {"learner", "other"} and (ka != kb or fa.backend != fb.backend):
            other_kind = [self.labels[k] for k in (i, j) if self.kinds[k] in ("learner", "other")]
            text = (f"{' and '.join(other_kind)} fit{'s' if len(other_kind) == 1 else ''} a different model "
                    f"(a learned f(x) beside or instead of the linear fixed part){tail}")
            return "different_model", text, ev
        if _criterion(fa) != _criterion(fb):
            text = (f"{la} fitted {fa.method}, {lb} {fb.method}: different criteria, so the estimates differ by "
                    f"design (REML corrects the variance parameters for the fixed effects' degrees of freedom){tail}")
            return "method", text, ev
        return None

    def _likelihood_evidence(self, lo, hi) -> dict:
        return dict(lower=self.labels[lo], higher=self.labels[hi], method=self.fits[lo].method,
                    loglik_exact_lower=self.exact[lo], loglik_exact_higher=self.exact[hi],
                    delta_loglik=self.exact[lo] - self.exact[hi], threshold=DELTA_LOGLIK,
                    loglik_reported_lower=self.fits[lo].loglik, loglik_reported_higher=self.fits[hi].loglik,
                    theta_lower=self.theta.get(lo), theta_higher=self.theta.get(hi),
                    converged_lower=self.fits[lo].diagnostics.get("converged"),
                    converged_higher=self.fits[hi].diagnostics.get("converged"))

    def _boundary_terms(self, idx) -> list[str]:
        out = []
        for k in idx:
            rp = self.fits[k].table[self.fits[k].table["effect"] == "ran_pars"]
            resid = rp.loc[rp["group"] == RESIDUAL, "estimate"]
            scale = float(resid.iloc[0]) if len(resid) else 1.0
            for g, t, v in zip(rp["group"], rp["term"], rp["estimate"]):
                if g == RESIDUAL:
                    continue
                if t.startswith("sd__") and v < 1e-4 * scale:
                    out.append(f"{self.labels[k]}: {g} {t} = {_fmt(v, 3)}")
                if t.startswith("cor__") and np.isfinite(v) and abs(v) > 1 - 1e-6:
                    out.append(f"{self.labels[k]}: {g} {t} = {_fmt(v, 7)}")
        return out

    # -------------------------------------------------------------------------- conventions
    def _se_convention(self, m, o, rows):
        """mixedlm (index m) against a conditional-SE engine (index o): recompute each side's convention from
        the other side's estimates."""
        core = self.core()
        fm, fo = self.fits[m], self.fits[o]
        reml = fm.method == "REML"
        tm, to = self.theta[m], self.theta[o]
        diag = np.isfinite(core.lower)
        if (tm[diag] < 1e-4).any() or (to[diag] < 1e-4).any():
            return None  # boundary: the joint Hessian's parameterisation matters there; not checked
        names = list(fm.model.fixed_names)
        se_m, se_o = (f.table[f.table["effect"] == "fixed"].set_index("term")["std_error"].reindex(names)
                      .to_numpy(dtype=float) for f in (fm, fo))
        joint_at_o = joint_hessian_se(core, to, reml)
        cond_at_m = np.sqrt(np.diag(core.solve(tm, reml=reml).vcov_beta))
        rel_joint = np.abs(joint_at_o - se_m) / se_m
        rel_cond = np.abs(cond_at_m - se_o) / se_o
        ok = bool(np.nanmax(rel_joint) <= REPRODUCE_REL and np.nanmax(rel_cond) <= REPRODUCE_REL)
        terms = [t for t in names if t in set(rows["term"])] or names
        per = {t: dict(se_mixedlm=se_m[names.index(t)], se_other=se_o[names.index(t)],
                       ratio=se_m[names.index(t)] / se_o[names.index(t)],
                       joint_hessian_at_other=joint_at_o[names.index(t)], rel_diff_joint=rel_joint[names.index(t)],
                       conditional_at_mixedlm=cond_at_m[names.index(t)], rel_diff_conditional=rel_cond[names.index(t)])
               for t in names}
        lm, lo = self.labels[m], self.labels[o]
        parts = "; ".join(
            f"{t}: {lm} {_fmt(per[t]['se_mixedlm'])} vs {lo} {_fmt(per[t]['se_other'])} "
            f"({_pct(per[t]['ratio'] - 1)}); the joint Hessian at {lo}'s estimates gives "
            f"{_fmt(per[t]['joint_hessian_at_other'])} (rel. diff {_fmt(per[t]['rel_diff_joint'], 2)}), "
            f"sigma^2 (X'V^-1X)^-1 at {lm}'s gives {_fmt(per[t]['conditional_at_mixedlm'])} "
            f"(rel. diff {_fmt(per[t]['rel_diff_conditional'], 2)})" for t in terms)
        text = (f"{lm}'s fixed-effect SEs invert statsmodels' observed Hessian of the profiled likelihood jointly in "
                f"the fixed effects and the variance parameters (the beta-by-variance cross terms are zero only in "
                f"expectation), {lo}'s are sigma^2 (X'V^-1X)^-1, conditional on the variance parameters. {parts}"
                + ("" if ok else f". NOT reproduced within {REPRODUCE_REL:g}"))
        ev = dict(convention_mixedlm="inverse observed Hessian, joint in (beta, variance parameters)",
                  convention_other="sigma^2 (X'V^-1 X)^-1 given the variance parameters",
                  tolerance_rel=REPRODUCE_REL, reproduced=ok, terms=per,
                  max_rel_diff_joint=float(np.nanmax(rel_joint)), max_rel_diff_conditional=float(np.nanmax(rel_cond)))
        return text, ev, ok

    def _condvar_convention(self, i, j, rows):
        """native (or a learner) with condvar 'full' against a beta-conditional engine: recompute 'beta_fixed'
        at the other side's variance parameters."""
        conv = {k: self._condvar(k) for k in (i, j)}
        if set(conv.values()) != {"full", "beta_fixed"}:
            return None
        full, bf = (i, j) if conv[i] == "full" else (j, i)
        core = self.core()
        ff, fb = self.fits[full], self.fits[bf]
        reml = ff.method == "REML"
        res_bf = core.solve(self.theta[bf], reml=reml, condvar="beta_fixed")
        res_full = core.solve(self.theta[full], reml=reml, condvar="full")
        sd_bf, sd_full = _blup_sds(ff, res_bf), _blup_sds(ff, res_full)
        rep_full = _reported_ran_val_se(ff)
        rep_bf = _reported_ran_val_se(fb)
        keys = [k for k in rep_bf.index if k in sd_bf.index]
        rel_bf = (np.abs(sd_bf.loc[keys] - rep_bf.loc[keys]) / rep_bf.loc[keys]).max()
        keys_f = [k for k in rep_full.index if k in sd_full.index]
        rel_full = (np.abs(sd_full.loc[keys_f] - rep_full.loc[keys_f]) / rep_full.loc[keys_f]).max()
        ratio = (rep_full.reindex(keys) / rep_bf.loc[keys]).replace([np.inf], np.nan)
        ok = bool(rel_bf <= REPRODUCE_REL and rel_full <= REPRODUCE_REL)
        lf, lb = self.labels[full], self.labels[bf]
        text = (f"{lf}'s BLUP SDs include the fixed effects' uncertainty (condvar='full', Henderson's prediction-"
                f"error variance), {lb}'s condition on the fixed effects (beta_fixed): {lf}'s are "
                f"{_fmt(ratio.min(), 4)} to {_fmt(ratio.max(), 4)} times {lb}'s; condvar='beta_fixed' at {lb}'s "
                f"variance parameters reproduces {lb}'s to {_fmt(rel_bf, 2)} (relative), condvar='full' at "
                f"{lf}'s reproduces {lf}'s to {_fmt(rel_full, 2)}" + ("" if ok else f"; NOT within {REPRODUCE_REL:g}"))
        ev = dict(full=lf, beta_fixed=lb, ratio_min=ratio.min(), ratio_max=ratio.max(),
                  max_rel_diff_beta_fixed=rel_bf, max_rel_diff_full=rel_full, tolerance_rel=REPRODUCE_REL,
                  reproduced=ok)
        return text, ev, ok

    def _condvar(self, k) -> str | None:
        f = self.fits[k]
        if self.kinds[k] != "mixed":
            return None
        if f.backend in BETA_FIXED_CONDVAR:
            return "beta_fixed"
        if f.backend == "native":
            return (f.provenance.get("options") or {}).get("condvar", "full")
        return None

    def _negligible(self, i, j, table, dis, remaining):
        classes, worst = [], []
        for cl in sorted(remaining & {"fixed", "ran_vals"}):
            sub = dis[dis["param_class"] == cl]
            ses = []
            maps = _se_map(self.fits[i]), _se_map(self.fits[j])
            for r in sub.to_dict(orient="records"):
                key = (r["effect"], r["group"], str(r["level"]), r["term"])
                se = np.array([m.get(key, np.nan) for m in maps])
                se = np.nanmax(se) if np.isfinite(se).any() else np.nan
                ses.append(abs(r["diff"]) / se if np.isfinite(se) and se > 0 else np.inf)
            if ses and max(ses) <= NEGLIGIBLE_SE:
                classes.append(cl)
                k = int(np.argmax(ses))
                r = sub.iloc[k]
                worst.append(dict(param_class=cl, parameter=_param_name(r), value_a=r["value_a"],
                                  value_b=r["value_b"], diff=r["diff"], rel_diff=r["rel_diff"], diff_in_se=ses[k]))
        if not classes:
            return None
        d = self.exact[i] - self.exact[j]
        parts = "; ".join(f"{w['parameter']}: {_fmt(w['value_a'])} vs {_fmt(w['value_b'])} (relative "
                          f"{_fmt(w['rel_diff'], 2)}, {_fmt(w['diff_in_se'], 2)} standard errors)" for w in worst)
        text = (f"both reach the same exact log-likelihood (difference {_fmt(abs(d), 3)} <= {DELTA_LOGLIK:g}) and "
                f"every disagreeing estimate differs by less than {NEGLIGIBLE_SE:g} of its standard error (a "
                f"relative tolerance failed on a value near 0): {parts}")
        return classes, text, dict(delta_loglik_exact=d, negligible_se=NEGLIGIBLE_SE, worst=worst)

    def _unexplained_text(self, i, j, dis, remaining, se_check) -> str:
        parts = []
        for cl in sorted(remaining):
            sub = dis[dis["param_class"] == cl]
            if not len(sub):
                continue
            r = sub.loc[sub["rel_diff"].fillna(np.inf).idxmax()] if sub["rel_diff"].notna().any() else sub.iloc[0]
            parts.append(f"{cl}: {len(sub)} disagree, largest {_param_name(r)} {_fmt(r['value_a'])} vs "
                         f"{_fmt(r['value_b'])} (relative {_fmt(r['rel_diff'], 2)}, tolerance {_fmt(r['tolerance'], 2)})")
        text = "no cause found: " + "; ".join(parts)
        if i in self.exact and j in self.exact:
            text += (f"; exact log-likelihoods {_fmt(self.exact[i], 10)} ({self.labels[i]}) and "
                     f"{_fmt(self.exact[j], 10)} ({self.labels[j]})")
        if se_check is not None and "fixed_se" in remaining:
            text += (f"; mixedlm's SE convention was checked and did not reproduce (joint Hessian rel. diff "
                     f"{_fmt(se_check['max_rel_diff_joint'], 2)}, conditional "
                     f"{_fmt(se_check['max_rel_diff_conditional'], 2)})")
        return text

    def _unexplained_evidence(self, i, j, dis, remaining, se_check) -> dict:
        ev = dict(disagreements=_largest_records(dis[dis["param_class"].isin(remaining)], n=10))
        if i in self.exact and j in self.exact:
            ev.update(loglik_exact_a=self.exact[i], loglik_exact_b=self.exact[j])
        if se_check is not None and "fixed_se" in remaining:
            ev["se_convention_check"] = se_check
        return ev

    # -------------------------------------------------------------------------- allFit
    def allfit(self, cause_rows) -> pd.DataFrame | None:
        from .backends.lme4 import OPTIMIZERS
        from .fitting import fit as _fit

        bad = {r["backend_a"] for r in cause_rows if not r["info"] and r["n_disagree"]} | \
              {r["backend_b"] for r in cause_rows if not r["info"] and r["n_disagree"]}
        idx = [k for k, f in enumerate(self.fits) if f.backend == "lme4" and self.labels[k] in bad
               and f.model is not None and self.kinds[k] == "mixed"]
        if not idx:
            return None
        k = idx[0]
        f = self.fits[k]
        core = self.core()
        rows, tables = [], []
        for opt in OPTIMIZERS:
            try:
                g = _fit(f.model.data, f.spec, backend="lme4", method=f.method, optimizer=opt)
            except Exception as exc:  # one optimizer failing is a result, not an error
                rows.append(dict(optimizer=opt, messages=f"failed: {exc}"))
                tables.append(None)
                continue
            ll = -core.deviance(theta_from_fit(g, core), reml=g.method == "REML") / 2
            msgs = "; ".join(_convergence_messages(g))
            rows.append(dict(optimizer=opt, loglik_reported=g.loglik, loglik_exact=ll,
                             converged=g.diagnostics.get("converged"), singular=g.diagnostics.get("singular"),
                             messages=msgs))
            tables.append(g.table[g.table["effect"].isin(["fixed", "ran_pars"])])
        lls = [r.get("loglik_exact", np.nan) for r in rows]
        if np.isfinite(lls).any():
            same = [self.exact[q] for q in self.exact if self.fits[q].method == f.method]
            best = max([*(x for x in lls if np.isfinite(x)), *same])
            ref = tables[int(np.nanargmax(lls))]
            key = ["effect", "group", "term"]
            for r, t in zip(rows, tables):
                if t is None:
                    continue
                r["delta_to_best"] = r["loglik_exact"] - best
                m = t.merge(ref, on=key, suffixes=("", "_ref"))
                if not len(m):
                    continue
                diff = (m["estimate"] - m["estimate_ref"]).abs().to_numpy()
                rel = diff / np.maximum(np.maximum(m["estimate"].abs(), m["estimate_ref"].abs()), 1e-300).to_numpy()
                w = int(np.nanargmax(rel))
                r.update(max_abs_diff=float(np.nanmax(diff)), max_rel_diff=float(np.nanmax(rel)),
                         worst_parameter=f"{m['group'].iloc[w]} {m['term'].iloc[w]}".strip())
        out = pd.DataFrame(rows, columns=ALLFIT_COLUMNS)
        out.attrs["refitted"] = self.labels[k]
        return out


def _add_allfit_evidence(rows, table, ctx) -> None:
    """Add the optimizers' spread to lme4's worse-optimum / convergence rows."""
    who = table.attrs.get("refitted")
    ok = table.dropna(subset=["loglik_exact"])
    if not len(ok):
        return
    best = ok.loc[ok["loglik_exact"].idxmax()]
    spread = float(ok["loglik_exact"].max() - ok["loglik_exact"].min())
    sentence = (f" Refitted under {len(ok)} optimizers, {who} reaches at best {_fmt(best['loglik_exact'], 10)} "
                f"({best['optimizer']}, {_fmt(best['delta_to_best'], 3)} from the best engine); the optimizers' "
                f"log-likelihoods span {_fmt(spread, 3)}")
    for r in rows:
        about = {"worse_optimum": r["evidence"].get("lower"), "convergence_flag": r["evidence"].get("backend"),
                 "unexplained": who if who in (r["backend_a"], r["backend_b"]) else None}.get(r["cause"])
        if about == who:
            r["explanation"] += "." + sentence
            r["evidence"] = {**r["evidence"], "allfit": _records(table)}


def _convergence_messages(f: Fit) -> list[str]:
    d = f.diagnostics
    msgs = list(d.get("convergence_messages") or [])
    msgs += [m for m in d.get("optimizer_attempts") or [] if "converged=False" in m]
    msgs += [w for w in d.get("warnings") or [] if "converg" in w.lower() or "gradient" in w.lower()]
    return list(dict.fromkeys(str(m) for m in msgs))


def _se_map(f: Fit) -> dict:
    """(effect, group, level, term) -> std_error of the fixed effects and group effects."""
    t = f.table[f.table["effect"].isin(["fixed", "ran_vals"])]
    return {(e, g, str(lv), tm): float(se) for e, g, lv, tm, se in
            zip(t["effect"], t["group"], t["level"], t["term"], t["std_error"])}


def _blup_sds(f: Fit, res) -> pd.Series:
    out = {}
    for li, lv in enumerate(f.model.hierarchy.levels):
        sd = np.sqrt(np.clip(np.diagonal(res.blup_cov[li], axis1=1, axis2=2), 0, None))
        for g, lab in enumerate(lv.labels):
            for t_i, t in enumerate(lv.spec.terms):
                out[(lv.group, str(lab), t)] = sd[g, t_i]
    return pd.Series(out, dtype=float)


def _reported_ran_val_se(f: Fit) -> pd.Series:
    rv = f.table[f.table["effect"] == "ran_vals"]
    idx = pd.MultiIndex.from_arrays([rv["group"].to_numpy(), rv["level"].astype(str).to_numpy(),
                                     rv["term"].to_numpy()])
    return pd.Series(rv["std_error"].to_numpy(dtype=float), index=idx)


def _spread(nop: Fit, oth: Fit) -> list[dict]:
    """Per group and term: the SD across groups of the no-pooling deviations and of the pooled ones."""
    out = []
    a, b = nop.ranef(), oth.ranef()
    for g in a:
        if g not in b:
            continue
        for t in a[g].columns:
            if t not in b[g].columns:
                continue
            common = a[g].index.intersection(b[g].index)
            va, vb = a[g].loc[common, t].astype(float), b[g].loc[common, t].astype(float)
            sa, sb = float(np.nanstd(va, ddof=1)), float(np.nanstd(vb, ddof=1))
            out.append(dict(group=g, term=t, n=int(len(common)), sd_a=sa, sd_b=sb, ratio=sb / sa if sa > 0 else np.nan))
    return out


def _largest_records(table: pd.DataFrame, n: int = 3) -> list[dict]:
    """The largest relative differences, one per parameter class (or the n largest overall)."""
    t = table[np.isfinite(table["rel_diff"].astype(float))]
    if not len(t):
        return []
    out = []
    for cl, sub in t.groupby("param_class", sort=False):
        r = sub.loc[sub["rel_diff"].astype(float).idxmax()]
        out.append(dict(param_class=cl, parameter=_param_name(r), value_a=r["value_a"], value_b=r["value_b"],
                        rel_diff=r["rel_diff"], verdict=r["verdict"]))
    out.sort(key=lambda d: -d["rel_diff"])
    return out[:max(n, 1)] if n else out


def _largest_differences(table: pd.DataFrame) -> str:
    recs = _largest_records(table[table["param_class"].isin(["fixed", "sd", "cor", "loglik"])], n=4)
    return "; ".join(f"{r['param_class']} {r['parameter']}: {_fmt(r['value_a'], 5)} vs {_fmt(r['value_b'], 5)} "
                     f"({_pct(r['rel_diff'])})" for r in recs)


__all__ = ["Diagnosis", "diagnose", "theta_from_fit", "joint_hessian_se", "DELTA_LOGLIK", "REPRODUCE_REL",
           "NEGLIGIBLE_SE", "CAUSES"]
