"""Intervals for the variance parameters (SDs, correlations, residual SD): profile likelihood and parametric
bootstrap.

**Profile** (:func:`profile`, the default for the ``native`` and ``lme4`` backends). As lme4's
``profile()`` / ``confint(fit, method = "profile")`` (lme4 1.1-31, ``R/profile.R``), the parameters are those
of ``VarCorr`` on the sd/cor scale (``.sig01``, ..., ``.sigma``): every SD and correlation of every covariance
block, then the residual SD. For one of them, psi, fixed at a value c, the deviance is minimised over all the
others (the fixed effects are profiled out exactly) and the signed square root

    zeta(c) = sign(c - psi_hat) sqrt(deviance(c) - deviance_min)

is compared with the normal quantiles: the 95% interval is {c : |zeta(c)| <= 1.96}. lme4 traces zeta on a grid
and interpolates with a spline; here each end is found directly, by Newton's method on zeta (on the log scale for
SDs, atanh for correlations, sqrt(1 -+ cor) next to +-1), its slope from the envelope theorem (d deviance / d psi at
the inner optimum is the gradient's psi entry), safeguarded by a bracket, to |zeta - 1.96| < 1e-5. Where the
profile stays below 1.96 up to a bound (an SD at 0, a correlation at +-1), the interval ends at that bound, as
lme4 reports it; an SD estimated at 0 gets the lower limit 0. A profile point below the starting optimum (the fit
had not converged) restarts the profile from a refit there, with a note (lme4 stops with an error).

The criterion is the **ML** deviance by default, for REML fits too: lme4's ``profile()`` refits a REML fit by
ML first (``refitML`` in ``devfun2``), so its intervals for a REML fit and for an ML fit agree. ``reml=True``
profiles the REML criterion instead (not what lme4 does; the interval is then centred on the REML estimate).

Everything is evaluated on :class:`~hiercompare.mixedcore.MixedCore`'s per-leaf sums. With sigma not profiled,
the deviance at (theta, sigma) is

    D(theta, sigma) = d(theta) + dof * h(r2(theta) / (dof sigma^2)),   h(x) = x - 1 - log(x),

with d(theta) the sigma-profiled deviance (``MixedCore.deviance``), r2 the penalised residual sum of squares and
dof = n (ML) or n - p (REML). r2 comes from a second core on the same sums with y'y raised by a constant
(``MixedCore.from_sums``), whose profiled deviance differs only through r2. Both give analytic gradients
(``MixedCore.deviance_and_gradient``), so each profile point is a short box-constrained quasi-Newton run started
from the neighbouring points with the Hessian at the optimum (``docs/profile.md``). The same code serves ``lme4`` fits: the core is built on the same rows and started at
lme4's estimates, so lme4 fits get intervals without R's slower ``profile()``.

**Bootstrap** (:func:`bootstrap`, ``ran_pars_ci="bootstrap"``). :class:`~hiercompare.simulate.DesignScenario`
keeps the user's rows, tree and group sizes and draws new responses from the fit's estimates (the machinery of
:mod:`hiercompare.bootstrap`); each draw is refitted by mixedcore with the fit's criterion (REML or ML) and the
interval is the 2.5% and 97.5% percentiles of the refitted values (lme4's ``confint(method = "boot")`` with
``boot.type = "perc"``).
"""
from __future__ import annotations

import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from . import mixedcore
from .results import RESIDUAL, cor_term, sd_term

METHODS = ("profile", "bootstrap", "none")


# ---------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class VarPar:
    """One variance parameter on lme4's sd/cor scale."""

    kind: str  # "sd", "cor" or "sigma"
    level: int  # index into core.levels (-1 for sigma)
    i: int  # term index within the level (sd: the term; cor: the first term)
    j: int  # cor: the second term (else -1)
    group: str
    term: str


class Layout:
    """The map between mixedcore's ``(theta, sigma)`` and lme4's sd/cor parameters ``phi``.

    ``phi`` lists, level by level (top first) and block by block, the SDs of a block's terms and then its
    correlations (pairs in the block's order), and last the residual SD. Within a block,
    ``Lambda = diag(sd / sigma) chol(R)`` with R the block's correlation matrix, so an SD of 0 is allowed.
    """

    def __init__(self, core: mixedcore.MixedCore):
        self.core = core
        pars: list[VarPar] = []
        where = {(li, i, j): t for t, (li, i, j) in enumerate(core.theta_index)}
        self.n_theta = len(core.theta_index)
        single_t, single_sd = [], []
        self._blocks = []  # (sd positions, {(a, b): cor position}, theta index of block entry (a, b), a >= b)
        for li, lv in enumerate(core.levels):
            terms = list(lv.terms)
            for block in lv.blocks:
                sd_pos = []
                for a in block:
                    sd_pos.append(len(pars))
                    pars.append(VarPar("sd", li, a, -1, lv.group, sd_term(terms[a])))
                cor_pos = {}
                for a in range(len(block)):
                    for b in range(a + 1, len(block)):
                        cor_pos[(a, b)] = len(pars)
                        pars.append(VarPar("cor", li, block[a], block[b], lv.group,
                                           cor_term(terms[block[a]], terms[block[b]])))
                nb = len(block)
                tix = np.full((nb, nb), -1)
                for a in range(nb):
                    for b in range(a + 1):
                        tix[a, b] = where[(li, block[a], block[b])]
                if nb == 1:
                    single_t.append(tix[0, 0])
                    single_sd.append(sd_pos[0])
                else:
                    self._blocks.append((np.array(sd_pos), cor_pos, tix))
        pars.append(VarPar("sigma", -1, -1, -1, RESIDUAL, sd_term("Observation")))
        self._single_t, self._single_sd = np.array(single_t, dtype=int), np.array(single_sd, dtype=int)
        self.pars = pars
        self.m = len(pars)
        kinds = np.array([p.kind for p in pars])
        self.kinds = kinds
        self.lower = np.where(kinds == "cor", -1.0, 0.0)
        self.upper = np.where(kinds == "cor", 1.0, np.inf)

    def names(self) -> list[tuple[str, str]]:
        return [(p.group, p.term) for p in self.pars]

    @staticmethod
    def _corr(phi, cor_pos, nb) -> np.ndarray:
        R = np.eye(nb)
        for (a, b), pos in cor_pos.items():
            R[a, b] = R[b, a] = phi[pos]
        return R

    def theta(self, phi) -> np.ndarray | None:
        """mixedcore's theta at ``phi``; None where a correlation matrix is not positive semi-definite."""
        sigma = phi[-1]
        th = np.zeros(self.n_theta)
        th[self._single_t] = phi[self._single_sd] / sigma
        for sd_pos, cor_pos, tix in self._blocks:
            Lr = _psd_chol(self._corr(phi, cor_pos, len(sd_pos)))
            if Lr is None:
                return None
            lam = (phi[sd_pos] / sigma)[:, None] * Lr
            low = tix >= 0
            th[tix[low]] = lam[low]
        return th

    def jacobian(self, phi, th=None) -> np.ndarray | None:
        """d theta / d phi (len(theta) x m), analytic (the Cholesky factor's derivative for correlations)."""
        sigma = phi[-1]
        th = self.theta(phi) if th is None else th
        if th is None:
            return None
        J = np.zeros((self.n_theta, self.m))
        J[:, -1] = -th / sigma
        J[self._single_t, self._single_sd] = 1.0 / sigma
        for sd_pos, cor_pos, tix in self._blocks:
            nb = len(sd_pos)
            Lr = _psd_chol(self._corr(phi, cor_pos, nb))
            low = tix >= 0
            for a in range(nb):  # d Lambda / d sd_a: row a of chol(R) / sigma
                D = np.zeros((nb, nb))
                D[a] = Lr[a] / sigma
                J[tix[low], sd_pos[a]] = D[low]
            if nb == 2:  # closed form (at |cor| = 1 both theta and this are taken just inside, _COR_EDGE)
                (pos,) = cor_pos.values()
                r = float(np.clip(phi[pos], -_COR_EDGE, _COR_EDGE))
                dL = np.array([[0.0, 0.0], [1.0, -r / np.sqrt(1.0 - r * r)]])
                J[tix[low], pos] = ((phi[sd_pos] / sigma)[:, None] * dL)[low]
            elif cor_pos:
                try:
                    Li = np.linalg.inv(Lr)
                except np.linalg.LinAlgError:
                    return None
                if not np.isfinite(Li).all() or np.abs(Li).max() > 1e8:
                    return None
                for (a, b), pos in cor_pos.items():  # dL = L Phi(L^-1 dR L^-T), Phi: lower half, diagonal halved
                    dR = np.zeros((nb, nb))
                    dR[a, b] = dR[b, a] = 1.0
                    X = Li @ dR @ Li.T
                    dL = Lr @ (np.tril(X, -1) + np.diag(np.diag(X)) / 2)
                    J[tix[low], pos] = ((phi[sd_pos] / sigma)[:, None] * dL)[low]
        return J

    # theta -> phi -------------------------------------------------------------------------------------
    def phi(self, theta, sigma: float) -> np.ndarray:
        """The sd/cor parameters of ``(theta, sigma)``; a correlation with a zero SD in it is NaN."""
        theta = np.asarray(theta, dtype=float)
        out = np.empty(self.m)
        out[self._single_sd] = sigma * np.abs(theta[self._single_t])
        for sd_pos, cor_pos, tix in self._blocks:
            L = np.where(tix >= 0, theta[np.maximum(tix, 0)], 0.0)
            cov = sigma ** 2 * (L @ L.T)
            sd = np.sqrt(np.clip(np.diag(cov), 0, None))
            out[sd_pos] = sd
            for (a, b), pos in cor_pos.items():
                out[pos] = np.clip(cov[a, b] / (sd[a] * sd[b]), -1, 1) if sd[a] > 0 and sd[b] > 0 else np.nan
        out[-1] = sigma
        return out

    def from_table(self, table: pd.DataFrame) -> np.ndarray:
        """``phi`` from a tidy frame's ran_pars rows (a fit's estimates); a missing correlation is 0."""
        rp = table[table["effect"] == "ran_pars"]
        est = {(g, t): v for g, t, v in zip(rp["group"], rp["term"], rp["estimate"])}
        out = np.empty(self.m)
        for q, p in enumerate(self.pars):
            v = est.get((p.group, p.term))
            if v is None and p.kind == "cor":  # the pair in the other order
                lv = self.core.levels[p.level]
                v = est.get((p.group, cor_term(lv.terms[p.j], lv.terms[p.i])))
            out[q] = 0.0 if v is None or not np.isfinite(v) else v
        return np.clip(out, self.lower, self.upper)


# a 2 x 2 block's correlation is evaluated at most this close to +-1: its Cholesky factor's second diagonal entry is
# then 1.4e-6 (the deviance moves by ~1e-12), and the gradient's two terms through it cancel as they should
_COR_EDGE = 1.0 - 1e-12


def _psd_chol(R: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a correlation matrix, allowing it to be singular (|cor| = 1); None if not PSD."""
    if R.shape[0] == 2:
        r = R[1, 0]
        if abs(r) > 1 + 1e-12:
            return None
        r = float(np.clip(r, -_COR_EDGE, _COR_EDGE))
        return np.array([[1.0, 0.0], [r, np.sqrt(1.0 - r * r)]])
    try:
        return np.linalg.cholesky(R)
    except np.linalg.LinAlgError:
        pass
    n = R.shape[0]
    L = np.zeros_like(R)
    for j in range(n):
        d = R[j, j] - L[j, :j] @ L[j, :j]
        if d < -1e-10:
            return None
        L[j, j] = np.sqrt(max(d, 0.0))
        for i in range(j + 1, n):
            num = R[i, j] - L[i, :j] @ L[j, :j]
            if L[j, j] > 1e-12:
                L[i, j] = num / L[j, j]
            elif abs(num) > 1e-8:
                return None
    return L


# ---------------------------------------------------------------------------------------------- the deviance
class Deviance:
    """D(phi): the ML (or REML) deviance at given SDs, correlations and residual SD, the fixed effects profiled
    out, and its gradient. lme4's ``devfun2``, evaluated on mixedcore's sums."""

    def __init__(self, core: mixedcore.MixedCore, reml: bool = False, r2_scale: float | None = None):
        self.core = core
        self.layout = Layout(core)
        self.reml = bool(reml)
        self.dof = core.n - core.p if reml else core.n
        # a second core on the same sums with y'y raised by delta: its profiled deviance differs only through r2
        C = np.array(core.C, dtype=float, copy=True)
        self.delta = float(r2_scale) if r2_scale else max(float(np.sum(C[:, -1, -1])), 1e-300)
        C[0, -1, -1] += self.delta
        self.shadow = mixedcore.MixedCore.from_sums(core.levels, C, core.n)
        self.evaluations = 0

    def at_theta(self, theta, sigma: float, grad: bool = True):
        """D(theta, sigma) and its gradient in (theta, sigma); (inf, None) where theta is not admissible."""
        self.evaluations += 1
        if grad:
            d1, g1 = self.core.deviance_and_gradient(theta, self.reml)
            d2, g2 = self.shadow.deviance_and_gradient(theta, self.reml)
        else:
            d1, d2 = self.core.deviance(theta, self.reml), self.shadow.deviance(theta, self.reml)
        if not (np.isfinite(d1) and np.isfinite(d2)) or d2 <= d1:
            return np.inf, None
        dof, delta = self.dof, self.delta
        gap = (d2 - d1) / dof  # = log(1 + delta / r2)
        r2 = delta / np.expm1(gap)
        x = r2 / (dof * sigma ** 2)
        value = d1 + dof * (x - 1.0 - np.log(x))
        if not grad:
            return value, None
        dr2 = -r2 * (r2 + delta) / (dof * delta) * (np.asarray(g2) - np.asarray(g1))
        g_theta = np.asarray(g1) + (1.0 - 1.0 / x) * dr2 / sigma ** 2
        g_sigma = -2.0 * dof * (x - 1.0) / sigma
        return value, (g_theta, g_sigma)

    def __call__(self, phi, grad: bool = True):
        """D(phi) and d D / d phi."""
        phi = np.asarray(phi, dtype=float)
        if phi[-1] <= 0:
            return np.inf, None
        th = self.layout.theta(phi)
        if th is None:
            return np.inf, None
        value, g = self.at_theta(th, phi[-1], grad)
        if not grad or g is None:
            return value, None
        J = self.layout.jacobian(phi, th)
        if J is None:
            return np.inf, None
        out = J.T @ g[0]
        out[-1] += g[1]
        return value, out


# ---------------------------------------------------------------------------------------------- the profile
@dataclass
class Profile:
    """What :func:`profile` returns."""

    intervals: pd.DataFrame  # group, term, estimate (at the profiled criterion's optimum), conf_low, conf_high
    points: pd.DataFrame  # every profile point computed: group, term, value, zeta
    deviance: float  # the minimum of the profiled criterion
    reml: bool
    level: float
    evaluations: int  # deviance-and-gradient evaluations (each is two of mixedcore's)
    seconds: float
    notes: list[str] = field(default_factory=list)
    _profiler: "_Profiler | None" = field(default=None, repr=False)

    def zeta(self, group: str, term: str, value: float) -> float:
        """The signed square root of the profiled deviance at one value of one parameter."""
        if self._profiler is None:
            raise ValueError("this profile no longer holds its data")
        return self._profiler.zeta(group, term, value)


def profile(core: mixedcore.MixedCore, theta=None, reml: bool = False, level: float = 0.95,
            tol: float = 1e-5) -> Profile:
    """Profile-likelihood intervals for every SD, correlation and the residual SD of a Gaussian LMM.

    Parameters
    ----------
    core : MixedCore
        The model's sufficient statistics (:func:`hiercompare.mixedcore.from_model_data`).
    theta : array, optional
        A start for the optimum (a fit's theta, e.g. the REML fit's or lme4's); the criterion is minimised from it.
    reml : bool
        Profile the REML criterion instead of the ML deviance (lme4 profiles ML, for REML fits too).
    level : float
        Confidence level (0.95: zeta = +-1.96).
    tol : float
        Each end is found to |zeta - z_level| < tol.

    Examples
    --------
    >>> import hiercompare as hc
    >>> from hiercompare import datasets, mixedcore
    >>> from hiercompare.design import prepare
    >>> md = prepare(hc.ModelSpec.from_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)"),
    ...              datasets.load("pastes"))
    >>> pr = profile(mixedcore.from_model_data(md))
    >>> pr.intervals.round(3)[["group", "term", "conf_low", "conf_high"]]  # doctest: +NORMALIZE_WHITESPACE
            group             term  conf_low  conf_high
    0       batch  sd__(Intercept)     0.000      2.947
    1  batch:cask  sd__(Intercept)     2.158      4.054
    2    Residual  sd__Observation     0.652      1.085
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    t0 = time.perf_counter()
    with _one_blas_thread():
        pf = _Profiler(core, theta, reml, level, tol)
        out = pf.run()
    out.seconds = time.perf_counter() - t0
    return out


class _LowerDeviance(Exception):
    """A profile point below the optimum: the starting fit was not at the criterion's minimum."""

    def __init__(self, phi):
        super().__init__("lower deviance")
        self.phi = phi


class _Profiler:
    def __init__(self, core, theta, reml, level, tol):
        self.q = float(stats.norm.ppf(0.5 + level / 2))
        self.core, self.level, self.tol, self.reml = core, level, tol, reml
        self.dev = None
        self.notes: list[str] = []
        self.strict = True  # a point below the optimum restarts from a refit there
        self._optimum(theta)

    def _optimum(self, theta) -> None:
        core, reml = self.core, self.reml
        res = core.fit(reml=reml, theta0=theta)
        self.sigma = res.sigma
        if self.dev is None:
            self.dev = Deviance(core, reml=reml, r2_scale=(core.n - core.p if reml else core.n) * res.sigma ** 2)
            self.layout = self.dev.layout
        lay = self.layout
        phi = lay.phi(res.theta, res.sigma)
        self.undefined = ~np.isfinite(phi)  # a correlation whose SD is 0
        self.phi_hat = np.where(self.undefined, 0.0, phi)
        self.base, g = self.dev(self.phi_hat)
        self.g_hat = g if g is not None else np.zeros(lay.m)
        self.lower = lay.lower.copy()
        self.lower[-1] = 1e-6 * res.sigma
        self.upper = lay.upper.copy()
        self.H = _hessian(self.dev, self.phi_hat, self.lower, self.upper, res.sigma, self.undefined)

    def run(self) -> Profile:
        for _ in range(3):
            try:
                return self._run()
            except _LowerDeviance as low:
                old = self.base
                self._optimum(self.layout.theta(low.phi))
                self.notes.append(f"profiling found a deviance {old - self.base:.3g} below the start's: it was not "
                                  f"the {'REML' if self.reml else 'ML'} optimum; the intervals are around the better "
                                  "one")
        self.strict = False
        return self._run()

    def _run(self) -> Profile:
        rows, points, notes = [], [], []
        lay, phi_hat = self.layout, self.phi_hat
        for w, par in enumerate(lay.pars):
            points.append((par.group, par.term, phi_hat[w], 0.0))
            if self.undefined[w]:
                rows.append((par.group, par.term, np.nan, np.nan, np.nan))
                notes.append(f"{par.group} {par.term}: undefined (an SD of its block is 0); no interval")
                continue
            ends = []
            for side in (-1, 1):
                bound = self.lower[w] if side < 0 else self.upper[w]
                if (phi_hat[w] - bound) * side >= -1e-12:  # at the bound already: that end is the bound
                    ends.append(0.0 if par.kind != "cor" and side < 0 else bound)
                    continue
                sd = _Side(self, w, side)
                ends.append(sd.solve())
                points.extend((par.group, par.term, c, z) for c, z in sd.trace())
                notes.extend(sd.notes)
            if par.kind in ("sd", "sigma") and ends[0] <= self.lower[w]:
                ends[0] = 0.0
            rows.append((par.group, par.term, phi_hat[w], ends[0], ends[1]))
        intervals = pd.DataFrame(rows, columns=["group", "term", "estimate", "conf_low", "conf_high"])
        pts = pd.DataFrame(points, columns=["group", "term", "value", "zeta"]).sort_values(
            ["group", "term", "value"], kind="stable").reset_index(drop=True)
        self.notes.extend(notes)
        return Profile(intervals=intervals, points=pts, deviance=float(self.base), reml=bool(self.reml),
                       level=float(self.level), evaluations=self.dev.evaluations, seconds=0.0, notes=self.notes,
                       _profiler=self)

    def zeta(self, group: str, term: str, value: float) -> float:
        names = self.layout.names()
        if (group, term) not in names:
            raise KeyError(f"no variance parameter {group} {term}; they are {names}")
        w = names.index((group, term))
        value = float(value)
        if value == self.phi_hat[w]:
            return 0.0
        with _one_blas_thread():
            return _Side(self, w, 1 if value > self.phi_hat[w] else -1).zeta(value)[0]


def _hessian(dev: Deviance, phi, lower, upper, sigma, skip) -> np.ndarray:
    """Hessian of D at phi by central differences of the analytic gradient (one-sided at a bound); NaN rows and
    columns for parameters in ``skip``."""
    m = len(phi)
    H = np.full((m, m), np.nan)
    g0 = None
    for i in range(m):
        if skip[i]:
            continue
        h = 1e-4 if lower[i] == -1 else 1e-4 * (abs(phi[i]) if phi[i] > 0 else sigma)
        up, dn = phi.copy(), phi.copy()
        up[i] = min(phi[i] + h, upper[i])
        dn[i] = max(phi[i] - h, lower[i])
        if up[i] == dn[i]:
            continue
        if g0 is None and (up[i] == phi[i] or dn[i] == phi[i]):
            g0 = dev(phi)[1]
        gu = g0 if up[i] == phi[i] else dev(up)[1]
        gd = g0 if dn[i] == phi[i] else dev(dn)[1]
        if gu is None or gd is None:
            continue
        H[:, i] = (gu - gd) / (up[i] - dn[i])
    H = (H + H.T) / 2
    H[skip] = np.nan
    H[:, skip] = np.nan
    return H


def _spd(H: np.ndarray, fallback_diag: np.ndarray) -> np.ndarray:
    """A symmetric positive definite stand-in for H: unknown rows replaced by ``fallback_diag``, eigenvalues
    floored."""
    B = np.array(H, dtype=float)
    bad = ~np.isfinite(np.diag(B)) | ~np.isfinite(B).all(axis=1)
    B[bad] = 0.0
    B[:, bad] = 0.0
    B[bad, bad] = fallback_diag[bad]
    B = np.where(np.isfinite(B), B, 0.0)
    w, V = np.linalg.eigh((B + B.T) / 2)
    top = max(w.max(), 1e-12)
    return (V * np.maximum(w, 1e-8 * top)) @ V.T


def _newton_box(fg, x0, lo, hi, B, tol: float, maxit: int = 60):
    """Minimise within the box [lo, hi]: quasi-Newton steps from the Hessian guess B (BFGS-updated), variables
    held at a bound when the gradient pushes out, projected backtracking. Returns x, f, the full gradient
    info of the last evaluation, B."""
    x = np.clip(x0, lo, hi)
    f, g, full = fg(x)
    if not np.isfinite(f):
        return x, f, full, B
    for _ in range(maxit):
        held = ((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0))
        free = ~held
        if not free.any():
            break
        d = np.zeros_like(x)
        try:
            d[free] = -np.linalg.solve(B[np.ix_(free, free)], g[free])
        except np.linalg.LinAlgError:
            d[free] = -g[free] / np.maximum(np.diag(B)[free], 1e-12)
        dec = -g @ d
        if not np.isfinite(dec) or dec <= 0:
            d = np.where(free, -g / np.maximum(np.diag(B), 1e-12), 0.0)
            dec = -g @ d
        if dec < 2 * tol:
            break
        t, done = 1.0, False
        for _ in range(40):
            xn = np.clip(x + t * d, lo, hi)
            fn, gn, fulln = fg(xn)
            if np.isfinite(fn) and fn <= f + 1e-4 * (g @ (xn - x)):
                done = True
                break
            t *= 0.25
        if not done:
            break
        s, y = xn - x, gn - g
        sy = s @ y
        if sy > 1e-12 * np.linalg.norm(s) * np.linalg.norm(y):
            Bs = B @ s
            B = B - np.outer(Bs, Bs) / (s @ Bs) + np.outer(y, y) / sy
        x, f, g, full = xn, fn, gn, fulln
    return x, f, full, B


class _Side:
    """One end of one parameter's interval: Newton's method on zeta (its slope from the envelope theorem:
    d deviance / d psi at the inner optimum is the gradient's psi entry), on the log scale for SDs and atanh for
    correlations, safeguarded by a bracket."""

    def __init__(self, pf: _Profiler, w: int, side: int):
        self.pf, self.w, self.side = pf, w, side
        m = len(pf.phi_hat)
        self.free = np.array([i for i in range(m) if i != w])
        self.target = side * pf.q
        self.notes: list[str] = []
        c0 = pf.phi_hat[w]
        self.c0 = c0
        scale = np.array([0.1 if k == "cor" else max(abs(v), 0.1 * pf.sigma) * 0.1
                          for k, v in zip(pf.layout.kinds, pf.phi_hat)])
        Bfull = _spd(pf.H, 2.0 / scale ** 2)
        try:
            Hi = np.linalg.inv(Bfull)
            self.curv = 1.0 / Hi[w, w]  # the profiled second derivative of D in psi
            self.slope = Hi[:, w] / Hi[w, w]  # d phi / d psi along the profile (quadratic model)
        except np.linalg.LinAlgError:
            self.curv, self.slope = np.nan, np.zeros(m)
        self.B = Bfull[np.ix_(self.free, self.free)]
        self.pts: list[tuple[float, float, np.ndarray]] = []
        kind = pf.layout.kinds[w]
        if kind == "cor" and 1.0 - abs(c0) < 1e-3:
            # a correlation at (or next to) +-1: the deviance is about linear in 1 -+ cor there, so zeta is about
            # linear in u = sqrt(1 -+ cor) (taken increasing in cor)
            if c0 > 0:
                self.fwd = lambda c: -np.sqrt(max(1.0 - c, 0.0))
                self.inv = lambda u: 1.0 - u * u
            else:
                self.fwd = lambda c: np.sqrt(max(1.0 + c, 0.0))
                self.inv = lambda u: u * u - 1.0
            self.dcdu = lambda c: 2.0 * np.sqrt(max(1.0 - abs(c), 0.0))
        elif kind == "cor":
            self.fwd, self.inv, self.dcdu = np.arctanh, np.tanh, (lambda c: 1.0 - c * c)
        elif c0 > 1e-4 * pf.sigma:
            self.fwd, self.inv, self.dcdu = np.log, np.exp, (lambda c: c)
        else:  # an SD at the boundary: zeta grows about linearly from 0 there
            self.fwd, self.inv, self.dcdu = (lambda c: c), (lambda u: u), (lambda c: 1.0)

    def zeta(self, c: float) -> tuple[float, float]:
        """zeta and d zeta / d c at c."""
        pf, w, free = self.pf, self.w, self.free
        phi = pf.phi_hat.copy()
        phi[w] = c

        def fg(x):
            phi[free] = x
            v, g = pf.dev(phi)
            if not np.isfinite(v) or g is None:
                return np.inf, np.zeros(len(x)), None
            return v - pf.base, g[free], g

        x, d, full, self.B = _newton_box(fg, self._start(c), pf.lower[free], pf.upper[free], self.B, tol=1e-10)
        if d < -1e-6:
            if pf.strict:
                raise _LowerDeviance(phi.copy())
            self.notes.append(f"profiling {self._name()} found a deviance {-d:.3g} below the optimum")
        z = np.sign(c - self.c0) * np.sqrt(max(d, 0.0))
        dzdc = full[w] / (2.0 * z) if full is not None and z != 0 else np.nan
        self.pts.append((c, z, x))
        return z, dzdc

    def _start(self, c: float) -> np.ndarray:
        """The others' values at c: interpolated between the two nearest profile points, else the quadratic
        model's drift from the optimum."""
        pts = sorted(self.pts, key=lambda p: abs(p[0] - c))
        if len(pts) >= 2 and pts[0][0] != pts[1][0]:
            (c1, _, x1), (c2, _, x2) = pts[0], pts[1]
            return x1 + (x2 - x1) * (c - c1) / (c2 - c1)
        if len(pts) == 1 and pts[0][0] != self.c0:
            (c1, _, x1) = pts[0]
            x0 = self.pf.phi_hat[self.free]
            return x0 + (x1 - x0) * (c - self.c0) / (c1 - self.c0)
        return self.pf.phi_hat[self.free] + self.slope[self.free] * (c - self.c0)

    def solve(self) -> float:
        """The value where zeta reaches the target, or the bound where the profile stays below it."""
        pf, w, side, target = self.pf, self.w, self.side, self.target
        c0 = self.c0
        bound = pf.lower[w] if side < 0 else pf.upper[w]
        fwd, inv = self.fwd, self.inv
        lin = (lambda v: v)

        def near_bound(c):
            if not np.isfinite(bound):
                return False
            if (c - bound) * side >= 0:
                return True
            if fwd is np.log:
                return c < 1e-3 * c0
            if fwd is np.arctanh:
                return abs(c) > 0.9999
            return False

        # first guess: the quadratic model D - min = g dpsi + curv dpsi^2 / 2 = q^2 (g: the slope at a bound)
        curv = self.curv if np.isfinite(self.curv) and self.curv > 0 else 2.0 / (0.1 * max(c0, pf.sigma)) ** 2
        if fwd is np.log or fwd is np.arctanh:
            u = fwd(c0) + side * min(pf.q * np.sqrt(2.0 / curv) / self.dcdu(c0), 3.0)
            c = float(inv(u))
            if fwd is np.log:
                c = float(np.clip(c, 0.3 * c0, 3.0 * c0))
        elif pf.layout.kinds[w] == "cor":  # at +-1: D - min is about g (1 - |cor|) with g the slope there
            g = abs(pf.g_hat[w])
            c = c0 + side * (pf.q ** 2 / g if g > pf.q ** 2 else 0.5)
        else:
            c = c0 + side * pf.q * np.sqrt(2.0 / curv)
        if near_bound(c):
            c = bound
        inside, outside = (c0, -pf.q), None  # (c, f) with f = side (zeta - target): < 0 inside, > 0 beyond
        u_last = fwd(c0) if np.isfinite(fwd(c0)) else c0
        for _ in range(40):
            z, dzdc = self.zeta(c)
            f = side * (z - target)
            if abs(f) < pf.tol:
                return c
            if f < 0:
                if c == bound:  # the profile stays below the level up to the bound
                    return bound
                inside = (c, f)
            else:
                outside = (c, f)
            with np.errstate(divide="ignore", invalid="ignore"):
                u = fwd(c)
                dzdu = dzdc * self.dcdu(c)
            un = u - (z - target) / dzdu if np.isfinite(dzdu) and dzdu > 0 and np.isfinite(u) else np.nan
            if outside is not None:
                (ci, fi), (co, fo) = inside, outside
                with np.errstate(divide="ignore", invalid="ignore"):
                    finite = np.isfinite(fwd(ci)) and np.isfinite(fwd(co))
                tf, ti = (fwd, inv) if finite else (lin, lin)
                ui, uo = tf(ci), tf(co)
                if not finite and np.isfinite(un):
                    un = float(inv(un))  # Newton's proposal on the plain scale
                if not (np.isfinite(un) and min(ui, uo) < un < max(ui, uo)):
                    un = uo - fo * (uo - ui) / (fo - fi)  # regula falsi
                    if not (min(ui, uo) < un < max(ui, uo)):
                        un = 0.5 * (ui + uo)
                c_next = float(ti(un))
            else:
                step_cap = 10.0 * max(abs(u - u_last), 0.05)  # lme4's maxmult
                if not np.isfinite(un) or (un - u) * side <= 0:
                    un = u + side * step_cap / 5.0
                elif abs(un - u) > step_cap:
                    un = u + np.sign(un - u) * step_cap
                c_next = float(inv(un))
                if near_bound(c_next):
                    c_next = bound
                if not np.isfinite(c_next) or abs(c_next - c0) > 1e6 * max(abs(c0), pf.sigma):
                    self.notes.append(f"{self._name()}: the profile does not reach zeta = {target:.2f}; the "
                                      "interval is open on that side")
                    return bound
            u_last = u if np.isfinite(u) else u_last
            if c_next == c:
                return c
            c = c_next
        self.notes.append(f"{self._name()}: the profile end did not converge in 40 steps")
        return c

    def _name(self) -> str:
        p = self.pf.layout.pars[self.w]
        return f"{p.group} {p.term}"

    def trace(self):
        return [(c, z) for c, z, _ in self.pts]


# ---------------------------------------------------------------------------------------------- the bootstrap
@dataclass
class Bootstrap:
    """What :func:`bootstrap` returns."""

    intervals: pd.DataFrame  # group, term, estimate (the fit's), conf_low, conf_high, n_used
    draws: pd.DataFrame  # one row per simulated data set, one column per "group|term" (NaN: a failed refit)
    reml: bool
    level: float
    nsim: int
    seed: int | list  # SeedSequence entropy: bootstrap(..., seed=this) draws the same data sets again
    seconds: float
    notes: list[str] = field(default_factory=list)


def bootstrap(fit, nsim: int = 500, seed=None, level: float = 0.95) -> Bootstrap:
    """Parametric bootstrap percentile intervals for the SDs, correlations and residual SD of a Gaussian fit.

    :class:`~hiercompare.simulate.DesignScenario` redraws the response ``nsim`` times on the fit's own rows, tree and
    group sizes from the fit's estimates (fixed effects, covariance matrices, residual SD); each draw is refitted by
    mixedcore with the fit's criterion (REML or ML), started at the fit's estimates, and the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` percentiles of the refitted values (lme4's ``confint(fit,
    method = "boot")``, ``boot.type = "perc"``, which refits with lme4 itself). A refit that fails is left out
    and counted (``n_used``).

    Examples
    --------
    >>> import hiercompare as hc
    >>> from hiercompare import datasets, profile
    >>> f = hc.fit(datasets.load("pastes"), "strength ~ 1 + (1 | batch:cask)", backend="native", ran_pars_ci="none")
    >>> b = profile.bootstrap(f, nsim=50, seed=1)
    >>> list(b.intervals.columns)
    ['group', 'term', 'estimate', 'conf_low', 'conf_high', 'n_used']
    """
    from .errors import SpecError
    from .simulate import DesignScenario

    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level!r}")
    nsim = int(nsim)
    if nsim < 2:
        raise ValueError(f"nsim must be at least 2, got {nsim}")
    md = fit.model
    if md is None or md.data is None or getattr(md, "sums", None) is not None:
        raise SpecError("the parametric bootstrap redraws the response on the fit's rows; this fit holds only "
                        "per-leaf sums (a streamed source): use ran_pars_ci='profile'")
    if fit.spec.family != "gaussian":
        raise SpecError(f"the parametric bootstrap of the variance parameters is for Gaussian fits, not "
                        f"{fit.spec.family!r}")
    t0 = time.perf_counter()
    reml = fit.method == "REML"
    ss = np.random.SeedSequence(seed)
    sc = DesignScenario.from_fit(fit, md.data, name="ran_pars_bootstrap")
    core = mixedcore.from_model_data(md)
    lay = Layout(core)
    est = lay.from_table(fit.table)
    theta0 = lay.theta(est)
    draws = np.full((nsim, lay.m), np.nan)
    failed = 0
    with _one_blas_thread():
        for b in range(nsim):
            data, _ = sc.simulate([*np.atleast_1d(ss.entropy).tolist(), b])
            try:
                core.set_response(data[fit.spec.response].to_numpy(dtype=float))
                r = core.fit(reml=reml, theta0=theta0)
            except (np.linalg.LinAlgError, ValueError):
                failed += 1
                continue
            if not np.isfinite(r.deviance):
                failed += 1
                continue
            draws[b] = lay.phi(r.theta, r.sigma)
    a = (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column (an undefined correlation)
        lo, hi = np.nanquantile(draws, [a, 1 - a], axis=0)
    used = np.isfinite(draws).sum(axis=0)
    names = lay.names()
    intervals = pd.DataFrame({"group": [g for g, _ in names], "term": [t for _, t in names], "estimate": est,
                              "conf_low": lo, "conf_high": hi, "n_used": used})
    notes = [f"{failed} of {nsim} bootstrap refits failed and were left out"] if failed else []
    frame = pd.DataFrame(draws, columns=[f"{g}|{t}" for g, t in names])
    return Bootstrap(intervals=intervals, draws=frame, reml=reml, level=float(level), nsim=nsim, seed=ss.entropy,
                     seconds=time.perf_counter() - t0, notes=notes)


# ---------------------------------------------------------------------------------------------- on a Fit
def check_method(method) -> str:
    """``ran_pars_ci`` validated: ``"profile"``, ``"bootstrap"`` or ``"none"``."""
    from .errors import SpecError

    out = "none" if method is None or method is False else str(method).lower()
    if out not in METHODS:
        raise SpecError(f"ran_pars_ci must be one of {list(METHODS)}, got {method!r}")
    return out


def add_intervals(fit, method: str = "profile", *, core: mixedcore.MixedCore | None = None, theta=None,
                  nsim: int = 500, seed=None, level: float = 0.95):
    """Fill ``conf_low`` / ``conf_high`` of ``fit``'s ran_pars rows in place and say how in its diagnostics.

    ``method``: ``"profile"`` (:func:`profile`; ``core`` and ``theta``, when given, are the fit's own
    sufficient statistics and estimates), ``"bootstrap"`` (:func:`bootstrap` with ``nsim`` and ``seed``) or
    ``"none"``. ``fit.diagnostics`` gets ``ran_pars_ci`` (the method, in words), ``ran_pars_ci_seconds`` and, for
    the profile, ``ran_pars_ci_deviance_evaluations``; anything to say goes to ``notes``. A non-Gaussian fit gets no
    intervals (a note says why). Returns ``fit``.
    """
    method = check_method(method)
    diag = fit.diagnostics
    notes = diag.setdefault("notes", [])
    if method == "none":
        diag["ran_pars_ci"] = "none"
        return fit
    if fit.spec.family != "gaussian":
        diag["ran_pars_ci"] = "none"
        notes.append(f"ran_pars intervals: the profile and the bootstrap here are for Gaussian models; this "
                     f"{fit.spec.family} fit's SDs have none")
        return fit
    if method == "profile":
        if core is None:
            core = mixedcore.from_model_data(fit.model)
        if theta is None:
            lay = Layout(core)
            theta = lay.theta(lay.from_table(fit.table))
        res = profile(core, theta=theta, level=level)
        iv = res.intervals
        diag["ran_pars_ci"] = ("profile likelihood (ML deviance, as lme4's profile(), which refits a REML fit by "
                               f"ML), {level:.0%}")
        diag["ran_pars_ci_deviance_evaluations"] = res.evaluations
        extra = res.notes
    else:
        res = bootstrap(fit, nsim=nsim, seed=seed, level=level)
        iv = res.intervals
        diag["ran_pars_ci"] = (f"parametric bootstrap, {res.nsim} draws refitted by mixedcore "
                               f"({'REML' if res.reml else 'ML'}), percentile {level:.0%}")
        diag["ran_pars_ci_seed"] = res.seed
        extra = res.notes
    diag["ran_pars_ci_seconds"] = res.seconds
    notes.extend(f"ran_pars intervals: {n}" for n in extra)
    table = fit.table
    key = dict(zip(zip(iv["group"], iv["term"]), zip(iv["conf_low"], iv["conf_high"])))
    for lv in fit.model.hierarchy.levels:  # a correlation may be named with its pair in the other order
        terms = list(lv.spec.terms)
        for a in terms:
            for b in terms:
                if (lv.group, cor_term(a, b)) in key:
                    key.setdefault((lv.group, cor_term(b, a)), key[(lv.group, cor_term(a, b))])
    for i in table.index[table["effect"] == "ran_pars"]:
        k = (table.at[i, "group"], table.at[i, "term"])
        if k in key:
            table.at[i, "conf_low"], table.at[i, "conf_high"] = key[k]
    return fit


def _one_blas_thread():
    """BLAS on one thread while profiling (every matrix is tiny; waking BLAS threads costs more than it saves)."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - never fail over it
        return nullcontext()
