"""Generalised linear mixed models on the nested tree: Laplace and adaptive Gauss-Hermite, by penalised IRLS.

Model (lme4's glmer; Bates, Maechler, Bolker & Walker 2015, section 3 and lme4's ``glmer`` documentation)::

    eta = offset + X beta + sum_l Z_l b_l,   b_l = Lambda_l(theta) u_l,   u ~ N(0, I),   y_i ~ family(mu_i = g^-1(eta_i))

for binomial (logit; ``m`` trials per row, ``y`` the successes), poisson (log) and negative binomial (NB2, log,
variance mu + mu^2 / k, with k estimated), on a nested tree of levels l = 1 (top) .. L (leaf) with the same
``LevelLayout``, ``theta`` layout and elimination as :mod:`hiercompare.mixedcore`.

The Laplace deviance, as lme4 defines it (``glmerLaplace``; ``logLik = -deviance / 2``)::

    d(theta, beta) = -2 log p(y | u*) + ||u*||^2 + log|L|^2,        L L' = Lambda' Z' W Z Lambda + I

with u* the conditional mode (the minimiser of the penalised deviance -2 log p(y | u) + ||u||^2) and W the
Fisher weights at u*. Penalised IRLS finds u*: every iteration is one pass over the rows (the working weights and
the per-leaf weighted cross-products of ``[z, x, working response]``), then a solve that works in the number of
groups only, eliminating the levels from the leaves up exactly as mixedcore does (each group's block couples only
to its ancestors). ``theta`` and ``beta`` are optimised jointly (glmer's second stage, nAGQ >= 1) with the
deviance's exact gradient: by the envelope theorem and one implicit derivative of u*, it costs one more pass over
the rows (docs/glmmcore.md derives it). Adaptive Gauss-Hermite quadrature (nAGQ > 1) is lme4's ``glmerAGQ``, where
lme4 allows it: one grouping factor with one scalar random effect.

The conditional modes ``b = Lambda u*`` and their conditional covariances ``Lambda (L L')^-1 Lambda'`` (lme4's
``ranef(condVar = TRUE)``, ``condvar="beta_fixed"``; ``"full"`` adds the fixed effects' uncertainty) come from
the same factorisation, top down.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, sparse
from scipy.special import gammaln

# _one_blas_thread: BLAS on one thread while fitting (every matrix here is tiny), as mixedcore does
from .mixedcore import LevelLayout, _one_blas_thread, lambdas_from, theta_layout

FAMILIES = ("binomial", "poisson", "negbinomial")
FAMILY_CODE = {"binomial": 0, "poisson": 1, "negbinomial": 2}
EPS = 2.220446049250313e-16
#: "numba" (compiled passes over the rows, :mod:`hiercompare.glmmcore_jit`), "numpy", or "auto" (numba where
#: installed and the data have at least ``JIT_MIN_ROWS`` rows: below that the numpy passes cost less than
#: importing numba); the environment variable ``HIERCOMPARE_GLMMCORE_ENGINE`` sets the default
ENGINE = os.environ.get("HIERCOMPARE_GLMMCORE_ENGINE", "auto")
JIT_MIN_ROWS = 20_000
LBFGS_OPTIONS = dict(ftol=1e-12, gtol=1e-6, maxiter=3000, maxls=50)
_JIT = None


def _jit_module():
    global _JIT
    if _JIT is None:
        try:
            from . import glmmcore_jit
            _JIT = glmmcore_jit
        except ImportError:
            _JIT = False
    return _JIT or None


def gh_rule(n: int) -> np.ndarray:
    """lme4's ``GHrule(n)``: columns z (nodes), w (weights of the standard normal, summing to 1), log dnorm(z)."""
    z, w = np.polynomial.hermite_e.hermegauss(int(n))
    w = w / np.sqrt(2 * np.pi)
    z = np.where(np.abs(z) < 1e-12, 0.0, z)
    return np.column_stack([z, w, -0.5 * z * z - 0.5 * np.log(2 * np.pi)])


# ---------------------------------------------------------------------------------------------- the rows, numpy
def _rows_numpy(fam: int, eta, y, m, knb: float):
    """The family's per-row quantities (as :func:`hiercompare.glmmcore_jit._row`), vectorised."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        if fam == 0:
            mu = 1.0 / (1.0 + np.exp(-np.clip(eta, -30, 30)))
            mueta = mu * (1.0 - mu)
            hi, lo = eta > 30, eta < -30
            mu = np.where(hi, 1.0 - EPS, np.where(lo, EPS, mu))
            mueta = np.where(hi | lo, EPS, mueta)
            var = mu * (1.0 - mu)
            w = m * mueta * mueta / var
            s = (y - m * mu) * mueta / var
            o = w
            dw = np.where(mueta > EPS, m * mu * (1.0 - mu) * (1.0 - 2.0 * mu), 0.0)
            nll = -2.0 * (np.where(y > 0, y * np.log(mu), 0.0) + np.where(m - y > 0, (m - y) * np.log1p(-mu), 0.0))
            return mu, s, w, o, dw, nll
        mu = np.exp(eta)
        clipped = mu < EPS
        mu = np.where(clipped, EPS, mu)
        if fam == 1:
            w = mu.copy()
            s = y - mu
            o = w
            dw = np.where(clipped, 0.0, mu)
            nll = 2.0 * mu - 2.0 * np.where(y > 0, y * np.log(mu), 0.0)
            return mu, s, w, o, dw, nll
        k = knb
        w = k * mu / (k + mu)
        s = (y - mu) * k / (k + mu)
        o = k * (y + k) * mu / (k + mu) ** 2
        dw = np.where(clipped, 0.0, k * k * mu / (k + mu) ** 2)
        nll = -2.0 * (gammaln(y + k) - gammaln(k) + k * np.log(k / (k + mu))
                      + np.where(y > 0, y * np.log(mu / (k + mu)), 0.0))
        return mu, s, w, o, dw, nll


def _devresid_numpy(fam: int, mu, y, m, knb: float):
    with np.errstate(divide="ignore", invalid="ignore"):
        ylogy = np.where(y > 0, y * np.log(np.where(y > 0, y, 1.0) / (mu if fam else m * mu)), 0.0)
        if fam == 0:
            f = m - y
            return 2.0 * (ylogy + np.where(f > 0, f * np.log(np.where(f > 0, f, 1.0) / (m * (1.0 - mu))), 0.0))
        if fam == 1:
            return 2.0 * (ylogy - (y - mu))
        return 2.0 * (ylogy - (y + knb) * np.log((y + knb) / (mu + knb)))


def _segment_sums(values, starts):
    return np.add.reduceat(values, starts, axis=0)


# ---------------------------------------------------------------------------------------------- results
@dataclass
class PassState:
    """What one pass over the rows leaves: per-leaf sums at one (beta, u)."""

    C: np.ndarray  # (G, D, D) sum w [z, x, wr][z, x, wr]'
    S: np.ndarray  # (G, K + p) sum s [z, x]
    Co: np.ndarray | None  # (G, K + p, K + p) sum o [z, x][z, x]' (None: the same as C's, canonical link)
    nll: float  # -2 log p(y | u), constants included
    dw: np.ndarray | None  # (n,) dw/deta, rows in the core's order
    mu: np.ndarray | None = None  # (n,) the means, rows in the core's order


@dataclass
class Factor:
    """The penalised u-block A = Lambda' Z' W Z Lambda + I factorised level by level (leaves first)."""

    logdet: float  # log|A| (lme4's ldL2)
    F: np.ndarray  # (E, E) what remains of the extra columns at the root
    Lc: list  # per level (G_l, k, k) Cholesky factors of the pivots
    W: list  # per level (G_l, k, K_<l + E): Lc^-1 times the coupling to the ancestors and the extra columns


@dataclass
class PirlsState:
    u: list  # per level (G_l, k_l)
    beta: np.ndarray
    knb: float
    lam: list
    st: PassState
    fac: Factor
    pdev: float  # -2 log p(y | u) + ||u||^2
    iterations: int
    passes: int
    phi: np.ndarray | None = None  # (theta, beta[, log k]) where the derivative of the modes below was taken
    dudphi: list | None = None  # per level (G_l, k_l, len(phi)): d u* / d phi, to start the next PIRLS nearer

    @property
    def laplace(self) -> float:
        return self.pdev + self.fac.logdet


@dataclass
class GlmmResult:
    """What :meth:`GlmmCore.fit` returns (effects on the original scale)."""

    family: str
    nagq: int
    theta: np.ndarray
    beta: np.ndarray
    vcov_beta: np.ndarray
    nb_theta: float | None  # the negative binomial's size k (lme4's glmer.nb theta), None otherwise
    cov: list  # per level (k, k): Lambda Lambda' (the random effects' covariance)
    blups: list  # per level (G_l, k_l): conditional modes b = Lambda u*
    blup_cov: list  # per level (G_l, k_l, k_l): conditional covariances
    u: list  # per level (G_l, k_l): spherical modes
    deviance: float  # the objective (Laplace or AGQ), lme4's
    loglik: float  # -deviance / 2, lme4's logLik()
    converged: bool
    singular: bool
    message: str
    n_evals: int
    n_passes: int
    optimizer: list = field(default_factory=list)
    vcov_method: str = "hessian"
    vcov_rx: np.ndarray | None = None  # the PWRSS-based covariance (lme4's use.hessian = FALSE)
    condvar: str = "full"
    notes: list = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- the core
class GlmmCore:
    """One data set's rows (sorted by leaf group) for a nested GLMM, and everything computed from them.

    Parameters
    ----------
    levels : list of :class:`~hiercompare.mixedcore.LevelLayout`, top to leaf
    leaf_codes : (n,) leaf-group index of every row
    X : (n, p) fixed design
    y : (n,) response: 0/1, or the successes out of ``trials`` (binomial); counts (poisson, negbinomial)
    Z : list of (n, k_l) varying-term columns per level
    family : "binomial", "poisson" or "negbinomial"
    trials : (n,) binomial trials (default ones)
    offset : (n,) known part of the linear predictor (default zeros)
    """

    engine: str | None = None

    def __init__(self, levels, leaf_codes, X, y, Z, family: str, trials=None, offset=None):
        if family not in FAMILIES:
            raise ValueError(f"glmmcore fits families {FAMILIES}, not {family!r}")
        self.family = family
        self.fam = FAMILY_CODE[family]
        self.levels = list(levels)
        self.L = len(self.levels)
        if self.L == 0:
            raise ValueError("glmmcore needs at least one grouping level")
        X = np.asarray(X, dtype=float)
        self.n, self.p = X.shape
        self.k = [lv.k for lv in self.levels]
        self.K = int(sum(self.k))
        self.offs = np.concatenate([[0], np.cumsum(self.k)]).astype(int)
        leaf = np.asarray(leaf_codes, dtype=np.int64)
        order = np.argsort(leaf, kind="stable")
        self.order = order  # core row j is the caller's row order[j]
        G = self.levels[-1].n_groups
        counts = np.bincount(leaf, minlength=G)
        if (counts == 0).any():
            raise ValueError("every leaf group needs at least one row")
        self.ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.leaf = leaf[order]
        Zs = [np.asarray(z, dtype=float).reshape(self.n, -1) for z in Z]
        self.ZX = np.ascontiguousarray(np.column_stack(Zs + [X])[order])
        self.y = np.ascontiguousarray(np.asarray(y, dtype=float)[order])
        self.m = np.ascontiguousarray((np.ones(self.n) if trials is None else np.asarray(trials, dtype=float))[order])
        self.off = np.ascontiguousarray((np.zeros(self.n) if offset is None else np.asarray(offset, dtype=float))[order])
        self._check_response()
        # the constants of -2 log p that depend on y alone
        if self.fam == 0:
            self.const = float(-2.0 * (gammaln(self.m + 1) - gammaln(self.y + 1) - gammaln(self.m - self.y + 1)).sum())
        elif self.fam == 1:
            self.const = float(2.0 * gammaln(self.y + 1).sum())
        else:
            self.const = float(2.0 * gammaln(self.y + 1).sum())
        # ancestors of every leaf, level by level; sparse parent maps for the elimination
        self.anc = [None] * self.L
        cur = np.arange(G)
        for li in range(self.L - 1, -1, -1):
            self.anc[li] = cur
            if li:
                cur = np.asarray(self.levels[li].parent)[cur]
        self._sparse_parent = [
            sparse.csr_matrix((np.ones(lv.n_groups), (np.asarray(lv.parent) if i else np.zeros(lv.n_groups, int),
                                                      np.arange(lv.n_groups))),
                              shape=(self.levels[i - 1].n_groups if i else 1, lv.n_groups))
            for i, lv in enumerate(self.levels)]
        # leaf -> level-l group sums, and level-l -> level-j (j < l) ancestor sums, as sparse 0/1 matrices
        self._leaf_to = [sparse.csr_matrix((np.ones(G), (self.anc[li], np.arange(G))),
                                           shape=(self.levels[li].n_groups, G)) for li in range(self.L)]
        self._up = {}
        for li in range(self.L):
            cur = np.arange(self.levels[li].n_groups)
            for lj in range(li - 1, -1, -1):
                cur = np.asarray(self.levels[lj + 1].parent)[cur]
                self._up[li, lj] = sparse.csr_matrix((np.ones(cur.size), (cur, np.arange(cur.size))),
                                                     shape=(self.levels[lj].n_groups, cur.size))
        self._layout_theta()
        self._all_extras = np.arange(self.p + 1)  # [x, working response]
        self._wr_only = np.array([self.p])  # the working response alone (beta held fixed)
        self._newton_c = None  # PIRLS's quadratic-convergence constant, as last estimated
        self.n_evals = 0
        self.n_passes = 0
        self._warm = None  # the last PIRLS state: the next one starts from its modes

    # ------------------------------------------------------------------ set-up
    def _check_response(self) -> None:
        y, m = self.y, self.m
        if not np.isfinite(y).all():
            raise ValueError("the response has non-finite values")
        if self.fam == 0:
            if (m <= 0).any() or (y < 0).any() or (y > m).any():
                raise ValueError("binomial: need 0 <= successes <= trials and trials > 0")
        elif (y < 0).any():
            raise ValueError(f"{self.family}: counts must be non-negative")

    def _layout_theta(self) -> None:
        self.theta_index, self.lower, self.theta0 = theta_layout(self.levels)

    def lambdas(self, theta) -> list[np.ndarray]:
        return lambdas_from(theta, self.theta_index, self.k)

    def _use_jit(self) -> bool:
        engine = self.engine or ENGINE
        if engine not in ("auto", "numba", "numpy"):
            raise ValueError(f"glmmcore engine must be 'auto', 'numba' or 'numpy', got {engine!r}")
        if engine == "numpy" or (engine == "auto" and self.n < JIT_MIN_ROWS):
            return False
        if _jit_module() is None:
            if engine == "numba":
                raise ImportError("glmmcore engine 'numba' needs numba (pip install numba)")
            return False
        return True

    def zero_effects(self) -> list[np.ndarray]:
        return [np.zeros((lv.n_groups, lv.k)) for lv in self.levels]

    def _bpath(self, lam, u) -> np.ndarray:
        """(G_leaf, K): every leaf's effects b = Lambda u along its path, level by level."""
        return np.concatenate([u[li][self.anc[li]] @ lam[li].T for li in range(self.L)], axis=1)

    def _upath(self, u) -> np.ndarray:
        return np.concatenate([u[li][self.anc[li]] for li in range(self.L)], axis=1)

    def _lam_path(self, lam) -> np.ndarray:
        T = np.zeros((self.K, self.K))
        for li in range(self.L):
            a, b = self.offs[li], self.offs[li + 1]
            T[a:b, a:b] = lam[li]
        return T

    # ------------------------------------------------------------------ passes over the rows
    def _pass(self, beta, bpath, knb: float, want_o: bool = False, want_dw: bool = False) -> PassState:
        self.n_passes += 1
        beta = np.ascontiguousarray(beta, dtype=float)
        bpath = np.ascontiguousarray(bpath, dtype=float)
        want_o = want_o and self.fam == 2
        if self._use_jit():
            dw = np.empty(self.n) if want_dw else np.empty(0)
            mu = np.empty(self.n) if want_dw else np.empty(0)
            C, S, Co, nll = _jit_module().row_pass(self.ZX, self.ptr, self.y, self.m, self.off, beta, bpath,
                                                   self.fam, float(knb), self.K, want_o, dw, mu, want_dw)
            return PassState(C, S, Co if want_o else None, float(nll) + self._const(knb), dw if want_dw else None,
                             mu if want_dw else None)
        K = self.K
        zb = np.einsum("nk,nk->n", self.ZX[:, :K], bpath[self.leaf])
        eta = self.off + zb + self.ZX[:, K:] @ beta
        mu, s, w, o, dw, nll = _rows_numpy(self.fam, eta, self.y, self.m, knb)
        V = np.column_stack([self.ZX, zb + s / w])
        starts = self.ptr[:-1]
        G, D = len(starts), V.shape[1]
        C = np.empty((G, D, D))
        for a in range(D):
            wa = w * V[:, a]
            for b in range(a + 1):
                C[:, a, b] = C[:, b, a] = _segment_sums(wa * V[:, b], starts)
        S = _segment_sums(s[:, None] * self.ZX, starts)
        Co = None
        if want_o:
            KP = D - 1
            Co = np.empty((G, KP, KP))
            for a in range(KP):
                oa = o * V[:, a]
                for b in range(a + 1):
                    Co[:, a, b] = Co[:, b, a] = _segment_sums(oa * V[:, b], starts)
        return PassState(C, S, Co, float(nll.sum()) + self._const(knb), dw if want_dw else None,
                         mu if want_dw else None)

    def _const(self, knb: float) -> float:
        return self.const

    def _grad_pass(self, dw, Vz, want_h: bool = False):
        """Per leaf sum of h dw [z, x] (and the rows' h with ``want_h``)."""
        self.n_passes += 1
        if self._use_jit():
            h = np.empty(self.n) if want_h else np.empty(0)
            HW = _jit_module().grad_pass(self.ZX, self.ptr, dw, np.ascontiguousarray(Vz), self.K, h, want_h)
            return (HW, h) if want_h else HW
        K = self.K
        Z = self.ZX[:, :K]
        h = np.einsum("na,nab,nb->n", Z, Vz[self.leaf], Z)
        HW = _segment_sums((h * dw)[:, None] * self.ZX, self.ptr[:-1])
        return (HW, h) if want_h else HW

    def _leaf_devresid(self, beta, bpath, knb: float) -> np.ndarray:
        self.n_passes += 1
        if self._use_jit():
            return _jit_module().leaf_devresid(self.ZX, self.ptr, self.y, self.m, self.off,
                                               np.ascontiguousarray(beta, dtype=float),
                                               np.ascontiguousarray(bpath), self.fam, float(knb), self.K)
        K = self.K
        eta = self.off + np.einsum("nk,nk->n", self.ZX[:, :K], bpath[self.leaf]) + self.ZX[:, K:] @ beta
        mu = _rows_numpy(self.fam, eta, self.y, self.m, knb)[0]
        return _segment_sums(_devresid_numpy(self.fam, mu, self.y, self.m, knb), self.ptr[:-1])

    # ------------------------------------------------------------------ the elimination (groups only)
    def _factor(self, C, lam, extras=None) -> Factor:
        """Factorise A = Lambda' C_zz Lambda + I level by level from the leaves, carrying extra columns.

        ``C`` (G_leaf, K + E0, K + E0): per-leaf weighted cross-products of ``[z, extras]``; ``extras`` picks
        which of the E0 extra columns to carry (default all). The groups' columns are put in leaf-first order
        (``[u_L, ..., u_1, extras]``), so each level's own effects are the leading k columns and the rest a
        contiguous block (mixedcore's fast-path layout); ``W`` is stored with its ancestor columns back in
        top-first order. Raises LinAlgError where a pivot is not positive definite."""
        K = self.K
        if extras is not None:
            cols = np.r_[np.arange(K), K + np.asarray(extras, dtype=int)]
            C = C[:, cols][:, :, cols]
        D = C.shape[1]
        Lt = self._lam_path(lam).T
        M = C.copy()
        M[:, :K, :] = np.einsum("ab,gbd->gad", Lt, C[:, :K, :])
        M[:, :, :K] = np.einsum("gda,ba->gdb", M[:, :, :K], Lt)
        perm = np.r_[np.concatenate([np.arange(self.offs[li], self.offs[li + 1]) for li in range(self.L - 1, -1, -1)]),
                     np.arange(K, D)].astype(int)
        cur = M[:, perm][:, :, perm]
        logdet = 0.0
        Lcs, Ws = [None] * self.L, [None] * self.L
        for li in range(self.L - 1, -1, -1):
            k, s0 = self.k[li], self.offs[li]
            Mee = cur[:, :k, :k] + np.eye(k)
            Mer = cur[:, :k, k:]
            if k == 1:
                d = Mee[:, 0, 0]
                if not (d > 0).all():
                    raise np.linalg.LinAlgError("non-positive pivot")
                sd = np.sqrt(d)
                logdet += float(np.log(d).sum())
                Lc = sd[:, None, None]
                W = Mer / Lc
                msg = cur[:, k:, k:] - W[:, 0, :, None] * W[:, 0, None, :]
            else:
                Lc = np.linalg.cholesky(Mee)
                logdet += 2.0 * float(np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum())
                W = np.linalg.solve(Lc, Mer)
                msg = cur[:, k:, k:] - np.swapaxes(W, 1, 2) @ W
            # W's ancestor columns are [u_{l-1}, ..., u_1] here; store them top-first, then the extras
            pos, starts = 0, {}
            for lj in range(li - 1, -1, -1):
                starts[lj] = pos
                pos += self.k[lj]
            order = np.r_[np.concatenate([starts[lj] + np.arange(self.k[lj]) for lj in range(li)]) if li else
                          np.zeros(0, dtype=int), np.arange(s0, W.shape[2])].astype(int)
            Lcs[li], Ws[li] = Lc, (W if li <= 1 else W[:, :, order])
            G_up = self.levels[li - 1].n_groups if li else 1
            r = msg.shape[1]
            cur = (self._sparse_parent[li] @ msg.reshape(msg.shape[0], -1)).reshape(G_up, r, r)
        return Factor(logdet=logdet, F=cur[0], Lc=Lcs, W=Ws)

    def _agg(self, li: int, X) -> np.ndarray:
        """Sums of the leaf rows of ``X`` (G_leaf, ...) over the groups of level ``li``."""
        X = np.asarray(X)
        return (self._leaf_to[li] @ X.reshape(X.shape[0], -1)).reshape((-1,) + X.shape[1:])

    def _parent_rows(self, li: int) -> np.ndarray:
        return np.asarray(self.levels[li].parent) if li else np.zeros(self.levels[0].n_groups, dtype=int)

    def _back(self, fac: Factor, e) -> list[np.ndarray]:
        """u from the factorisation with the extra columns' values ``e`` (the response column's value -1):
        u_g = -Lc_g^-T (W_anc u_anc + W_ext e), top down."""
        u, path = [], None
        e = np.asarray(e, dtype=float)
        for li in range(self.L):
            s0 = self.offs[li]
            W = fac.W[li]
            rhs = -(W[:, :, s0:] @ e)
            if li:
                path = path[self._parent_rows(li)]
                rhs = rhs - np.einsum("gka,ga->gk", W[:, :, :s0], path)
            ul = self._solve_t(fac.Lc[li], rhs)
            u.append(ul)
            path = ul if li == 0 else np.concatenate([path, ul], axis=1)
        return u

    @staticmethod
    def _solve_t(Lc, rhs):
        """Lc^-T rhs per group; rhs (G, k) or (G, k, r)."""
        vec = rhs.ndim == 2
        r = rhs[..., None] if vec else rhs
        if Lc.shape[1] == 1:
            out = r / Lc
        else:
            out = np.linalg.solve(np.swapaxes(Lc, 1, 2), r)
        return out[..., 0] if vec else out

    @staticmethod
    def _solve_l(Lc, rhs):
        vec = rhs.ndim == 2
        r = rhs[..., None] if vec else rhs
        out = r / Lc if Lc.shape[1] == 1 else np.linalg.solve(Lc, r)
        return out[..., 0] if vec else out

    def _solve_A(self, fac: Factor, v: list) -> list[np.ndarray]:
        """A^-1 v for a right-hand side given per level, (G_l, k_l) or (G_l, k_l, r), with the factorisation."""
        vv = [np.array(x, dtype=float, copy=True) for x in v]
        zs = [None] * self.L
        for li in range(self.L - 1, -1, -1):
            z = self._solve_l(fac.Lc[li], vv[li])
            zs[li] = z
            if li:
                # the ancestors' right-hand sides lose W_anc' z, summed over each ancestor's descendants here
                s0 = self.offs[li]
                Wa = fac.W[li][:, :, :s0]
                upd = np.einsum("gka,gk...->ga...", Wa, z)
                for lj in range(li - 1, -1, -1):
                    a, b = self.offs[lj], self.offs[lj + 1]
                    part = upd[:, a:b]
                    vv[lj] -= (self._up[li, lj] @ part.reshape(part.shape[0], -1)).reshape(vv[lj].shape)
        x, path = [], None
        for li in range(self.L):
            s0 = self.offs[li]
            rhs = zs[li]
            if li:
                path = path[self._parent_rows(li)]
                rhs = rhs - np.einsum("gka,ga...->gk...", fac.W[li][:, :, :s0], path)
            xl = self._solve_t(fac.Lc[li], rhs)
            x.append(xl)
            path = xl if li == 0 else np.concatenate([path, xl], axis=1)
        return x

    def _path_cov(self, fac: Factor) -> list[np.ndarray]:
        """Per level l, (G_l, K_<=l, K_<=l): the covariance under A^-1 of [u_1, ..., u_l] along every group's
        path; the last level's is every leaf's."""
        out, Vp = [], None
        for li in range(self.L):
            s0, k = self.offs[li], self.k[li]
            Lc = fac.Lc[li]
            Linv = 1.0 / Lc if k == 1 else np.linalg.inv(Lc)
            Pinv = np.swapaxes(Linv, 1, 2) @ Linv
            if li == 0:
                V = Pinv
            else:
                Pp = Vp[self._parent_rows(li)]
                Gm = np.swapaxes(Linv, 1, 2) @ fac.W[li][:, :, :s0]
                cov = -Gm @ Pp  # Cov(u_l, path) = -P^-1 E Var(path)
                var = Pinv + Gm @ Pp @ np.swapaxes(Gm, 1, 2)
                V = np.concatenate([np.concatenate([Pp, np.swapaxes(cov, 1, 2)], axis=2),
                                    np.concatenate([cov, var], axis=2)], axis=1)
            out.append(V)
            Vp = V
        return out

    # ------------------------------------------------------------------ penalised IRLS
    def _pirls(self, lam, beta, knb: float, u0=None, joint: bool = False, tol: float = 1e-10,
               maxit: int = 100) -> PirlsState:
        """The conditional modes u* at (theta, beta) (``joint``: the modes of u and beta together, lme4's
        nAGQ = 0), by Fisher scoring with step halving on the penalised deviance."""
        p = self.p
        beta = np.asarray(beta, dtype=float).copy()
        u = [x.copy() for x in (u0 if u0 is not None else self.zero_effects())]
        passes0 = self.n_passes
        st = self._pass(beta, self._bpath(lam, u), knb, want_o=True, want_dw=True)
        pdev = st.nll + sum(float((x * x).sum()) for x in u)
        it = 0
        prev_size = None
        for it in range(1, maxit + 1):
            fac = self._factor(st.C, lam, self._all_extras if joint else self._wr_only)
            if joint:
                S, r = fac.F[:p, :p], fac.F[:p, p]
                dbeta = np.linalg.solve(S, r) if p else np.zeros(0)
            else:
                dbeta = np.zeros(p)
            e = np.append(dbeta, -1.0) if joint else np.array([-1.0])
            u_new = self._back(fac, e)
            du = [a - b for a, b in zip(u_new, u)]
            size = max([float(np.abs(d).max()) for d in du] + [float(np.abs(dbeta).max()) if p else 0.0])
            scale = 1.0 + max([float(np.abs(x).max()) for x in u] + [float(np.abs(beta).max()) if p else 0.0])
            step = 1.0
            stalled = False
            while True:
                u_try = [a + step * d for a, d in zip(u, du)]
                b_try = beta + step * dbeta
                st_try = self._pass(b_try, self._bpath(lam, u_try), knb, want_o=True, want_dw=True)
                pd_try = st_try.nll + sum(float((x * x).sum()) for x in u_try)
                if np.isfinite(pd_try) and (pd_try <= pdev or step * size < 1e-7 * scale):
                    break
                step /= 2
                if step < 1e-3:
                    if size < 1e-5 * scale:  # a step this small changes the deviance below its rounding
                        stalled = True
                        break
                    raise np.linalg.LinAlgError("penalised IRLS: step halving did not lower the penalised deviance")
            if stalled:
                break
            change = pdev - pd_try
            u, beta, st, pdev = u_try, b_try, st_try, pd_try
            if step * size < tol * scale or (step == 1.0 and abs(change) < 1e-15 * (1 + abs(pdev))
                                             and size < 1e-7 * scale):
                break
            if self.fam != 2 and step == 1.0 and size < 1e-4 * scale:
                # canonical link: Fisher scoring is Newton's method, whose next step is about c * size^2, with c
                # estimated from the last two full steps (or, with a margin of 100, from an earlier PIRLS); below
                # the tolerance, the pass just made is at the mode
                if prev_size is not None:
                    c_est = size / prev_size ** 2
                    self._newton_c = c_est if self._newton_c is None else max(c_est, 0.5 * self._newton_c)
                    if c_est * size ** 2 < tol * scale:
                        break
                elif self._newton_c is not None and 100.0 * self._newton_c * size ** 2 < tol * scale:
                    break
            prev_size = size if step == 1.0 else None
        else:
            warnings.warn("glmmcore: penalised IRLS reached its iteration limit", RuntimeWarning, stacklevel=3)
        fac = self._factor(st.C, lam, self._all_extras if joint else self._wr_only)
        return PirlsState(u=u, beta=beta, knb=knb, lam=lam, st=st, fac=fac, pdev=pdev, iterations=it,
                          passes=self.n_passes - passes0)

    def _start_u(self):
        return self._warm.u if self._warm is not None else None

    # ------------------------------------------------------------------ the objectives
    def _split(self, phi):
        nth = len(self.theta_index)
        theta = np.asarray(phi[:nth], dtype=float)
        beta = np.asarray(phi[nth:nth + self.p], dtype=float)
        knb = float(np.exp(phi[nth + self.p])) if self.fam == 2 else 1.0
        return theta, beta, knb

    def _predicted_start(self, theta, beta, knb):
        """The last modes, moved to first order towards the new parameters where their derivative is known (a
        predicted change of at most 1 in any u; else the last modes as they are)."""
        warm = self._warm
        if warm is None:
            return None
        if warm.dudphi is None:
            return warm.u
        phi = np.concatenate([theta, beta, [np.log(knb)] if self.fam == 2 else []])
        if phi.shape != warm.phi.shape:
            return warm.u
        step = [D @ (phi - warm.phi) for D in warm.dudphi]
        if max(float(np.abs(x).max()) for x in step) > 1.0:
            return warm.u
        return [u + x for u, x in zip(warm.u, step)]

    def laplace(self, theta, beta, knb: float = 1.0, want_state: bool = False):
        """lme4's Laplace deviance at (theta, beta) (and the negative binomial's size ``knb``)."""
        self.n_evals += 1
        lam = self.lambdas(theta)
        theta, beta = np.asarray(theta, dtype=float), np.asarray(beta, dtype=float)
        try:
            state = self._pirls(lam, beta, knb, self._predicted_start(theta, beta, knb))
        except np.linalg.LinAlgError:
            return (np.inf, None) if want_state else np.inf
        self._warm = state
        return (state.laplace, state) if want_state else state.laplace

    def laplace_and_gradient(self, theta, beta, knb: float = 1.0):
        """The Laplace deviance and its exact gradient w.r.t. (theta, beta) and, for the negative binomial,
        log k (docs/glmmcore.md, section 3)."""
        dev, state = self.laplace(theta, beta, knb, want_state=True)
        nth = len(self.theta_index)
        if state is None or not np.isfinite(dev):
            return np.inf, np.zeros(nth + self.p + (self.fam == 2))
        return dev, self._gradient(np.asarray(theta, dtype=float), state)

    def _gradient(self, theta, state: PirlsState) -> np.ndarray:
        K, p, L = self.K, self.p, self.L
        lam, u, fac = state.lam, state.u, state.fac
        st = state.st  # the pass at u*: its sums, dw/deta per row (and the observed information for NB2)
        C = st.C
        Co = st.Co if st.Co is not None else C[:, :K + p, :K + p]
        S = st.S
        V = self._path_cov(fac)[-1]  # (G, K, K) per leaf, u scale
        T = self._lam_path(lam)
        Vz = T @ V @ T.T
        nb = self.fam == 2
        HW = self._grad_pass(st.dw, Vz, want_h=nb)  # (G, K + p): sum h dw [z, x]
        if nb:
            HW, h = HW
        # v = Lambda' Z' (h dw), per level and group
        v = []
        for li in range(L):
            a, b = self.offs[li], self.offs[li + 1]
            v.append(self._agg(li, HW[:, a:b]) @ lam[li])
        fac_o = self._factor(Co[:, :K, :K], lam) if st.Co is not None else fac  # NB2: A_o (observed) differs
        t = self._solve_A(fac_o, v)
        tz = self._upath(t) @ T.T  # (G, K): Lambda t along every leaf's path
        upath = self._upath(u)
        tpath = self._upath(t)
        g_beta = -2.0 * S[:, K:].sum(axis=0) + HW[:, K:].sum(axis=0) - np.einsum("sa,sab->b", tz, Co[:, :K, K:])
        # 2 tr(A^-1 Lambda' Z'WZ dLambda): per leaf (V Lambda' Cw_zz)[(l, c), (l, r)]
        VLC = V @ T.T @ C[:, :K, :K]
        tzCo = np.einsum("sa,sab->sb", tz, Co[:, :K, :K])  # (G, K)
        g_theta = np.empty(len(self.theta_index))
        for idx, (li, r, c) in enumerate(self.theta_index):
            zc = self.offs[li] + r
            uc = self.offs[li] + c
            ul = upath[:, uc]
            tl = tpath[:, uc]
            g_theta[idx] = (-2.0 * S[:, zc] @ ul + 2.0 * VLC[:, uc, zc].sum() + HW[:, zc] @ ul
                            + S[:, zc] @ tl - tzCo[:, zc] @ ul)
        if not nb:
            grad = np.concatenate([g_theta, g_beta])
            self._mode_derivative(theta, state, fac_o, Co, S, upath, None)
            return grad
        # d / d log k: the explicit derivative of -2 log p, of the Fisher weights, and through u* (section 3.4)
        k, mu, y = state.knb, st.mu, self.y
        kmu = k + mu
        g_k = (-2.0 * (self._digamma_sum(k) + np.sum(np.log(k / kmu) + (mu - y) / kmu))
               + float(h @ (mu * mu / kmu ** 2)))
        ds = (y - mu) * mu / kmu ** 2
        Zds = _segment_sums(ds[:, None] * self.ZX[:, :K], self.ptr[:-1])
        g_k += float(np.einsum("sa,sa->", tz, Zds))
        self._mode_derivative(theta, state, fac_o, Co, S, upath, k * Zds)
        return np.concatenate([g_theta, g_beta, [k * g_k]])

    def _mode_derivative(self, theta, state, fac_o, Co, S, upath, kZds) -> None:
        """d u* / d phi = -A_o^-1 (d^2 f / du dphi) / 2 for every parameter (docs/glmmcore.md, section 3.3),
        stored on ``state`` for the next PIRLS's start. ``kZds``: per leaf k sum z ds/dk (NB2), else None."""
        K, p, L = self.K, self.p, self.L
        lam = state.lam
        nth = len(self.theta_index)
        npar = nth + p + (kZds is not None)
        # per leaf, the K-vector of every parameter's right-hand side in z units: (G, K, npar)
        Rz = np.zeros((Co.shape[0], K, npar))
        Rz[:, :, nth:nth + p] = Co[:, :K, K:K + p]
        for idx, (li, r, c) in enumerate(self.theta_index):
            zc = self.offs[li] + r
            Rz[:, :, idx] = Co[:, :K, zc] * upath[:, self.offs[li] + c][:, None]
        if kZds is not None:
            Rz[:, :, -1] = -kZds
        rhs = []
        for li in range(L):
            a, b = self.offs[li], self.offs[li + 1]
            rhs.append(np.einsum("ji,gjn->gin", lam[li], self._agg(li, Rz[:, a:b, :])))
        for idx, (li, r, c) in enumerate(self.theta_index):  # - dLambda' Z' s: own level, entry c, from row r
            a = self.offs[li]
            rhs[li][:, c, idx] -= self._agg(li, S[:, a + r])
        D = self._solve_A(fac_o, rhs)
        state.phi = np.concatenate([theta, state.beta, [np.log(state.knb)] if self.fam == 2 else []])
        state.dudphi = [-x for x in D]

    def set_offset(self, offset) -> None:
        """Replace the known part of the linear predictor (``offset``, (n,) in the caller's row order): the
        learners add their f(x) to the formula's offset. The last modes stay as the next start."""
        self.off = np.ascontiguousarray(np.asarray(offset, dtype=float)[self.order])

    def offset_gradient(self, state: PirlsState):
        """The Laplace deviance's exact gradient with respect to every row's offset at ``state`` (the modes at
        (theta, beta)), and the rows' Fisher weights, both (n,) in the caller's row order.

        d/d offset_i = -2 s_i + h_i dw_i - o_i z_i' Lambda t: the score at the modes, the log-determinant's
        direct dependence on the row's weight, and its dependence through the modes (docs/glmmcore.md, section
        3); summed against X it is the fixed effects' gradient. The boosting and network learners fit f(x) to
        it (working response f - g / (2 w), weight w): a Newton step on the approximate marginal likelihood."""
        K = self.K
        lam, fac = state.lam, state.fac
        bpath = self._bpath(lam, state.u)
        eta = self.off + np.einsum("nk,nk->n", self.ZX[:, :K], bpath[self.leaf]) + self.ZX[:, K:] @ state.beta
        mu, s, w, o, dw, _ = _rows_numpy(self.fam, eta, self.y, self.m, state.knb)
        V = self._path_cov(fac)[-1]
        T = self._lam_path(lam)
        HW, h = self._grad_pass(np.ascontiguousarray(dw), T @ V @ T.T, want_h=True)
        v = [self._agg(li, HW[:, self.offs[li]:self.offs[li + 1]]) @ lam[li] for li in range(self.L)]
        if self.fam == 2:
            st = self._pass(state.beta, bpath, state.knb, want_o=True)
            fac_o = self._factor(st.Co[:, :K, :K], lam)
        else:
            fac_o = fac
        tz = self._upath(self._solve_A(fac_o, v)) @ T.T
        g = -2.0 * s + h * dw - o * np.einsum("nk,nk->n", self.ZX[:, :K], tz[self.leaf])
        out_g, out_w = np.empty(self.n), np.empty(self.n)
        out_g[self.order], out_w[self.order] = g, w
        return out_g, out_w

    def modes(self, theta, beta, knb: float = 1.0, joint: bool = True) -> PirlsState:
        """The conditional modes at theta (and, with ``joint``, beta moved to its joint mode with them, glmer's
        nAGQ = 0 step; else at the given beta), warm-started from the last ones."""
        lam = self.lambdas(theta)
        state = self._pirls(lam, beta, knb, self._start_u(), joint=joint)
        self._warm = state
        return state

    def _digamma_sum(self, k: float) -> float:
        """sum_i psi(y_i + k) - psi(k), over the distinct counts."""
        from scipy.special import digamma

        if not hasattr(self, "_ycounts"):
            self._yvals, self._ycounts = np.unique(self.y, return_counts=True)
        return float(self._ycounts @ (digamma(self._yvals + k) - digamma(k)))

    def agq(self, theta, beta, nagq: int, knb: float = 1.0, want_state: bool = False):
        """lme4's adaptive Gauss-Hermite deviance (``glmerAGQ``) with ``nagq`` nodes: one level, one scalar
        effect. Deviance residuals (not -2 log p) enter it, as in lme4, so it is on a different constant than
        the Laplace deviance."""
        if self.L != 1 or self.K != 1:
            raise ValueError("adaptive Gauss-Hermite quadrature needs one grouping factor with one scalar random "
                             "effect (as in lme4)")
        self.n_evals += 1
        lam = self.lambdas(theta)
        try:
            state = self._pirls(lam, beta, knb, self._start_u())
        except np.linalg.LinAlgError:
            return (np.inf, None) if want_state else np.inf
        self._warm = state
        u0 = state.u[0][:, 0]
        sd = 1.0 / state.fac.Lc[0][:, 0, 0]
        lam0 = float(lam[0][0, 0])
        beta = state.beta
        dr0 = self._leaf_devresid(beta, (lam0 * u0)[:, None], knb)
        devc0 = dr0 + u0 * u0
        mult = np.zeros_like(u0)
        for z, w, ld in gh_rule(nagq):
            if z == 0.0:
                mult += w
                continue
            uk = u0 + z * sd
            devc = self._leaf_devresid(beta, (lam0 * uk)[:, None], knb) + uk * uk
            mult += np.exp(-0.5 * (devc - devc0) - ld) * w / np.sqrt(2 * np.pi)
        dev = float(devc0.sum() + state.fac.logdet - 2.0 * np.log(mult).sum())
        return (dev, state) if want_state else dev

    def saturated_correction(self, state: PirlsState) -> float:
        """-2 log p(y | u*) minus the sum of deviance residuals at u*: what turns lme4's AGQ deviance into
        -2 log of the marginal likelihood (comparable with the Laplace deviance)."""
        dr = self._leaf_devresid(state.beta, self._bpath(state.lam, state.u), state.knb).sum()
        return float(state.st.nll - dr)

    # ------------------------------------------------------------------ starting values
    def glm_start(self, knb: float = 1.0, maxit: int = 50) -> np.ndarray:
        """beta of the GLM without random effects (IRLS from R's mustart), the fit's starting point."""
        X = self.ZX[:, self.K:]
        y, m = self.y, self.m
        if self.p == 0:
            return np.zeros(0)
        if self.fam == 0:
            mu = (y + 0.5) / (m + 1.0)
            eta = np.log(mu / (1 - mu))
        else:
            eta = np.log(y + 0.1)
        beta = np.linalg.lstsq(X, eta - self.off, rcond=None)[0]
        prev = np.inf
        for _ in range(maxit):
            eta = self.off + X @ beta
            mu, s, w, o, dw, nll = _rows_numpy(self.fam, eta, y, m, knb)
            dev = float(nll.sum())
            z = X @ beta + s / w
            Xw = X * w[:, None]
            beta_new = np.linalg.solve(X.T @ Xw, Xw.T @ z)
            beta = beta_new
            if abs(prev - dev) < 1e-10 * (1 + abs(dev)):
                break
            prev = dev
        return beta

    def _pql_start(self, beta, knb: float, iterations: int = 2):
        """A starting (theta, beta): penalised quasi-likelihood, i.e. the Gaussian LMM of mixedcore on the per-leaf
        Fisher-weighted sums of the working response, with the weights renewed at its BLUPs (``iterations``
        times; one pass over the rows and one mixedcore fit on the sums each). theta is scaled by the LMM's sigma
        (1 for these families, were PQL exact). Close to the Laplace optimum on the benchmark's tree, it saves
        the optimiser most of its way from theta = 1. Falls back to theta = 1 where the LMM cannot be fitted."""
        from .mixedcore import MixedCore

        K, p = self.K, self.p
        theta = np.zeros(len(self.theta_index))
        u = self.zero_effects()
        D = K + p + 1
        try:
            for _ in range(iterations):
                lam = self.lambdas(theta)
                st = self._pass(beta, self._bpath(lam, u), knb)
                T = np.eye(D)
                T[K:K + p, -1] = beta  # the LMM's response: the working response plus X beta
                C = np.einsum("ba,gbc,cd->gad", T, st.C, T)
                res = MixedCore.from_sums(self.levels, C, self.n).fit(reml=False)
                if not (np.isfinite(res.loglik) and np.isfinite(res.sigma) and res.sigma > 0):
                    raise ValueError("the working LMM has no finite optimum")
                theta = np.asarray(res.theta, dtype=float) * res.sigma
                beta = np.asarray(res.beta, dtype=float)
                lam = self.lambdas(theta)
                u = [b @ np.linalg.pinv(lm).T for b, lm in zip(res.blups, lam)]
            diag = np.isfinite(self.lower)
            theta = np.where(diag, np.maximum(theta, 1e-2 * max(1.0, float(np.abs(theta).max()))), theta)
            return theta, beta, f"start: penalised quasi-likelihood ({iterations} working LMMs on the per-leaf sums)"
        except (np.linalg.LinAlgError, ValueError, FloatingPointError) as exc:
            return self.theta0.copy(), beta, f"start: theta = 1 (the working LMM failed: {exc})"

    def nb_start(self, beta) -> float:
        """A moment estimate of the negative binomial's size k at the GLM's means (clipped to [0.01, 1e4])."""
        X = self.ZX[:, self.K:]
        mu = np.exp(self.off + X @ beta)
        excess = float(((self.y - mu) ** 2 - mu).sum())
        k = float((mu ** 2).sum()) / excess if excess > 0 else 1e4
        return float(np.clip(k, 0.01, 1e4))

    # ------------------------------------------------------------------ fitting
    def fit(self, nAGQ: int = 1, condvar: str = "full", theta0=None, beta0=None, nb_theta0: float | None = None,
            vcov: str = "hessian") -> GlmmResult:
        """Maximise lme4's Laplace (nAGQ = 1) or adaptive Gauss-Hermite (nAGQ > 1) likelihood over theta and beta
        jointly (glmer's second stage; the negative binomial's size too); nAGQ = 0 optimises theta only, with
        beta at its joint mode with u (glmer's first stage / ``nAGQ = 0``).

        ``condvar``: "full" (default) adds the fixed effects' uncertainty to the conditional modes' covariances,
        "beta_fixed" conditions on them as lme4's ``ranef(condVar = TRUE)`` does. ``vcov``: "hessian" (lme4's
        default: the inverse Hessian of the deviance in (theta, beta), beta block, times 2) or "rx" (the
        penalised weighted least squares' (R_X' R_X)^-1, lme4's ``use.hessian = FALSE``)."""
        nAGQ = int(nAGQ)
        if nAGQ < 0 or nAGQ > 25:
            raise ValueError("nAGQ must be between 0 and 25 (as in lme4)")
        if nAGQ > 1 and (self.L != 1 or self.K != 1):
            raise ValueError("nAGQ > 1 needs one grouping factor with one scalar random effect (as in lme4); use "
                             "nAGQ = 1 (Laplace)")
        if condvar not in ("full", "beta_fixed"):
            raise ValueError(f"condvar must be 'full' or 'beta_fixed', got {condvar!r}")
        if vcov not in ("hessian", "rx"):
            raise ValueError(f"vcov must be 'hessian' or 'rx', got {vcov!r}")
        with _one_blas_thread():
            res = self._fit(nAGQ, condvar, theta0, beta0, nb_theta0, vcov)
            if theta0 is None and res.singular and len(self.theta0) > 1:
                # a boundary fit from the quasi-likelihood start: try theta = 0.5 and then lme4's start (theta = 1,
                # Cholesky identity), stopping at the first interior optimum, and keep the lowest deviance. In the
                # validation studies the quasi-likelihood start ended on a boundary with a log-likelihood 9.4 below
                # glmer's (count.toml poisson_exposure, replication 1: market correlation 1) and 331 below it
                # (count_nb.toml replication 3: submarket SD 0, NB size 1.39), theta = 1 once 14 below it; the
                # restarts reach glmer's optimum (or a higher one) in each.
                first = res
                best, best_warm, evals, passes = res, self._warm, self.n_evals, self.n_passes
                for scale in (0.5, 1.0):
                    try:
                        alt = self._fit(nAGQ, condvar, scale * self.theta0, beta0, nb_theta0, vcov)
                    except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                        continue
                    finally:
                        evals, passes = evals + self.n_evals, passes + self.n_passes
                    if alt.deviance < best.deviance - 1e-8:
                        best, best_warm = alt, self._warm
                        best.notes.append(f"the quasi-likelihood start ended on a boundary (deviance "
                                          f"{first.deviance:.10g}); restarted from theta = {scale:g} * lme4's start: "
                                          f"deviance lower by {first.deviance - alt.deviance:.4g}")
                    if not alt.singular:
                        break
                res, self._warm = best, best_warm
                if res is first:
                    res.notes.append("boundary fit: restarts from theta = 0.5 and 1 found no lower deviance")
                self.n_evals, self.n_passes = evals, passes
                res.n_evals, res.n_passes = evals, passes
            return res

    def _fit(self, nAGQ, condvar, theta0, beta0, nb_theta0, vcov) -> GlmmResult:
        self.n_evals = 0
        self.n_passes = 0
        self._warm = None
        used: list[str] = []
        nb = self.fam == 2
        theta = self.theta0.copy() if theta0 is None else np.asarray(theta0, dtype=float)
        beta = self.glm_start(1.0 if not nb else 1e4) if beta0 is None else np.asarray(beta0, dtype=float)
        knb = 1.0
        if nb:
            knb = self.nb_start(beta) if nb_theta0 is None else float(nb_theta0)
            used.append(f"start: negative binomial size {knb:.6g} (moments at the GLM's means)")
        if theta0 is None:
            theta, beta, note = self._pql_start(beta, knb)
            used.append(note)
        # the joint modes of (u, beta) at the starting theta: beta's start for the second stage
        st0 = self._pirls(self.lambdas(theta), beta, knb, None, joint=True)
        beta = st0.beta
        self._warm = st0
        if nAGQ == 0:
            return self._fit_nagq0(theta, beta, knb, condvar, used)
        lower = np.concatenate([self.lower, np.full(self.p + nb, -np.inf)])
        x0 = np.concatenate([theta, beta, [np.log(knb)] if nb else []])

        def fg(phi):
            return self.laplace_and_gradient(*self._split(phi))

        scale = self._scales(fg, x0, st0)
        hess: dict = {}
        x, fx, ok = _minimize(fg, x0, lower, used, "Laplace", scale, hess_out=hess)
        dev_laplace = fx
        if nAGQ > 1:
            x_l = x

            def fq(phi):
                th, be, k = self._split(phi)
                return self.agq(th, be, nAGQ, k)

            def fgq(phi):
                f0 = fq(phi)
                return f0, _central_gradient(fq, phi, lower)

            x, fx, ok = _minimize(fgq, x_l, lower, used, f"AGQ({nAGQ})", scale)
            hess = {}
        theta, beta, knb = self._split(x)
        theta, fx = self._snap(theta, beta, knb, fx, nAGQ, used)
        if hess and not np.array_equal(np.concatenate([theta, beta, [np.log(knb)] if nb else []]), hess["x"]):
            hess = {}  # snapped to the boundary: the polish's Hessian is not at the returned point
        return self._result(theta, beta, knb, fx, nAGQ, ok, used, condvar, vcov, dev_laplace, hess)

    def _scales(self, fg, x0, st0) -> np.ndarray:
        """Parameter scales for the optimiser, about 1 / sqrt of the deviance's curvature at the start: beta's
        from the penalised least squares' (R_X' R_X)^-1 at the start, theta's (and log k's) from forward
        differences of the exact gradient (one evaluation each)."""
        nth, p = len(self.theta_index), self.p
        scale = np.ones(len(x0))
        if p:
            Sinv = np.linalg.inv(st0.fac.F[:p, :p])
            scale[nth:nth + p] = np.sqrt(np.clip(2.0 * np.diag(Sinv), 1e-12, None))
        f0, g0 = fg(x0)
        warm = self._warm
        if np.isfinite(f0):
            for i in list(range(nth)) + ([len(x0) - 1] if self.fam == 2 else []):
                h = 1e-4 * max(abs(x0[i]), 1.0)
                q = x0.copy()
                q[i] += h
                f1, g1 = fg(q)
                self._warm = warm
                curv = (g1[i] - g0[i]) / h if np.isfinite(f1) else np.nan
                if np.isfinite(curv) and curv > 0:
                    scale[i] = float(np.clip(1.0 / np.sqrt(curv), 1e-3, 1e3))
        return scale

    def _objective(self, theta, beta, knb, nAGQ):
        if nAGQ > 1:
            return self.agq(theta, beta, nAGQ, knb)
        return self.laplace(theta, beta, knb)

    def _snap(self, theta, beta, knb, fx, nAGQ, used):
        """Diagonal entries of theta below 1e-7 go to 0 where that does not raise the deviance by more than
        1e-10 (lme4 reports boundary fits)."""
        diag = np.isfinite(self.lower)
        near = diag & (theta < 1e-7) & (theta != 0)
        if near.any():
            snapped = np.where(near, 0.0, theta)
            f = self._objective(snapped, beta, knb, nAGQ)
            if f <= fx + 1e-10:
                used.append(f"snapped {int(near.sum())} theta entr{'y' if near.sum() == 1 else 'ies'} to 0")
                return snapped, f
        return theta, fx

    def _fit_nagq0(self, theta, beta, knb, condvar, used):
        nb = self.fam == 2

        def f(phi):
            self.n_evals += 1
            th = phi[:len(self.theta_index)]
            k = float(np.exp(phi[-1])) if nb else knb
            try:
                st = self._pirls(self.lambdas(th), self._warm.beta if self._warm else beta, k, self._start_u(),
                                 joint=True)
            except np.linalg.LinAlgError:
                return np.inf
            self._warm = st
            return st.laplace

        lower = np.concatenate([self.lower, [-np.inf] if nb else []])

        def fg(phi):
            f0 = f(phi)
            return f0, _central_gradient(f, phi, lower)

        x0 = np.concatenate([theta, [np.log(knb)] if nb else []])
        x, fx, ok = _minimize(fg, x0, lower, used, "nAGQ=0")
        th = x[:len(self.theta_index)]
        k = float(np.exp(x[-1])) if nb else knb
        st = self._pirls(self.lambdas(th), self._warm.beta, k, self._start_u(), joint=True)
        self._warm = st
        return self._result(th, st.beta, k, st.laplace, 0, ok, used, condvar, "rx", st.laplace)

    def _result(self, theta, beta, knb, dev, nAGQ, ok, used, condvar, vcov, dev_laplace,
                hess: dict | None = None) -> GlmmResult:
        lam = self.lambdas(theta)
        state = self._pirls(lam, beta, knb, self._start_u())
        self._warm = state
        fac = self._factor(state.st.C, lam, self._all_extras)
        p = self.p
        notes = []
        S = fac.F[:p, :p]
        vcov_rx = np.linalg.inv(S) if p else np.zeros((0, 0))
        vcov_beta, vcov_used = vcov_rx, "rx"
        if vcov == "hessian" and p:
            try:
                H, free = self._polish_hessian(theta, hess) if hess else (None, None)
                if H is None:
                    H, free = self._hessian(theta, beta, knb, nAGQ)
                Hinv = np.linalg.inv(H)
                nfree_theta = int(free[:len(theta)].sum())
                V = 2.0 * Hinv[nfree_theta:, nfree_theta:]
                if np.all(np.isfinite(V)) and np.all(np.diag(V) > 0):
                    vcov_beta, vcov_used = (V + V.T) / 2, "hessian"
                else:
                    notes.append("the deviance's Hessian is not positive definite at the optimum: the fixed "
                                 "effects' covariance is the PWRSS one (lme4's use.hessian = FALSE)")
            except (np.linalg.LinAlgError, ValueError) as exc:
                notes.append(f"the deviance's Hessian could not be used ({exc}): the fixed effects' covariance "
                             "is the PWRSS one")
        # conditional modes and covariances, top down from the factorisation at u*
        pc = self._path_cov(fac)
        blups, blup_cov = [], []
        J = None
        if condvar == "full" and p:
            # du*/dbeta = -A^-1 Lambda' Z' W X: per level (G_l, k_l, p)
            CX = state.st.C[:, :self.K, self.K:self.K + p]
            rhs = []
            for li in range(self.L):
                a, b = self.offs[li], self.offs[li + 1]
                rhs.append(-np.einsum("ji,gjp->gip", lam[li], self._agg(li, CX[:, a:b, :])))
            J = self._solve_A(fac, rhs)
        for li in range(self.L):
            a, b = self.offs[li], self.offs[li + 1]
            Vu = pc[li][:, a:b, a:b]
            if J is not None:
                Vu = Vu + J[li] @ vcov_beta @ np.swapaxes(J[li], 1, 2)
            blups.append(state.u[li] @ lam[li].T)
            blup_cov.append(np.einsum("ij,gjk,lk->gil", lam[li], Vu, lam[li]))
        cov = [lm @ lm.T for lm in lam]
        singular = bool((theta[np.isfinite(self.lower)] < 1e-4).any())
        if nAGQ > 1:
            notes.append("logLik is lme4's for nAGQ > 1: the quadrature deviance sums deviance residuals, so it "
                         "leaves out the saturated model's log-likelihood and is not comparable with a Laplace "
                         f"fit's; -2 log marginal likelihood = deviance + {self.saturated_correction(state):.10g}")
        return GlmmResult(
            family=self.family, nagq=nAGQ, theta=np.asarray(theta, dtype=float), beta=np.asarray(beta, dtype=float),
            vcov_beta=vcov_beta, nb_theta=float(knb) if self.fam == 2 else None, cov=cov, blups=blups,
            blup_cov=blup_cov, u=state.u, deviance=float(dev), loglik=-float(dev) / 2, converged=bool(ok),
            singular=singular, message=used[-1] if used else "", n_evals=self.n_evals, n_passes=self.n_passes,
            optimizer=list(used), vcov_method=vcov_used, vcov_rx=vcov_rx, condvar=condvar, notes=notes)

    def _polish_hessian(self, theta, hess):
        """The certifying Newton Hessian (x units) restricted to (theta, beta), when its free set is the one the
        covariance needs (theta entries off their bound 0, every beta); else (None, None)."""
        nth = len(theta)
        want = np.ones(nth + self.p, dtype=bool)
        want[:nth] = ~(np.isfinite(self.lower) & (theta <= 0))
        idx = np.asarray(hess["idx"])
        keep = idx < nth + self.p  # the NB size is held fixed, as glmer.nb's final fit does
        have = np.zeros(nth + self.p, dtype=bool)
        have[idx[keep]] = True
        if not np.array_equal(have, want):
            return None, None
        H = hess["H"][np.ix_(keep, keep)]
        return (H + H.T) / 2, want

    def _hessian(self, theta, beta, knb, nAGQ):
        """The deviance's Hessian in (theta, beta) at the optimum (lme4's; the NB size held fixed, as glmer.nb's
        final fit does): central differences of the exact gradient (Laplace) or lme4's second differences of the
        deviance (AGQ, step 1e-4). theta entries on their bound 0 are left out."""
        nth = len(theta)
        x = np.concatenate([theta, beta])
        free = np.ones(len(x), dtype=bool)
        free[:nth] = ~(np.isfinite(self.lower) & (theta <= 0))
        idx = np.flatnonzero(free)
        n = idx.size
        H = np.empty((n, n))
        warm = self._warm
        if nAGQ <= 1:
            for a, i in enumerate(idx):
                h = 1e-4 * max(abs(x[i]), 1e-1)
                gs = []
                for sgn in (1, -1):
                    q = x.copy()
                    q[i] += sgn * h
                    d, g = self.laplace_and_gradient(q[:nth], q[nth:], knb)
                    self._warm = warm
                    gs.append(g[:len(x)][idx])
                H[:, a] = (gs[0] - gs[1]) / (2 * h)
        else:
            f = lambda q: self.agq(q[:nth], q[nth:], nAGQ, knb)  # noqa: E731
            f0 = f(x)
            hs = np.array([1e-4 * max(abs(x[i]), 1e-1) for i in idx])
            fp, fm = np.empty(n), np.empty(n)
            for a, i in enumerate(idx):
                q = x.copy()
                q[i] += hs[a]
                fp[a] = f(q)
                q[i] -= 2 * hs[a]
                fm[a] = f(q)
                H[a, a] = (fp[a] - 2 * f0 + fm[a]) / hs[a] ** 2
            for a in range(n):
                for b in range(a):
                    q = x.copy()
                    q[idx[a]] += hs[a]
                    q[idx[b]] += hs[b]
                    fpp = f(q)
                    q[idx[a]] -= 2 * hs[a]
                    q[idx[b]] -= 2 * hs[b]
                    fmm = f(q)
                    H[a, b] = H[b, a] = (fpp + fmm - fp[a] - fm[a] - fp[b] - fm[b] + 2 * f0) / (2 * hs[a] * hs[b])
            self._warm = warm
        H = (H + H.T) / 2
        if not np.all(np.isfinite(H)):
            raise ValueError("the Hessian is not finite")
        return H, free


# ---------------------------------------------------------------------------------------------- optimiser
def _central_gradient(f, x, lower, rel: float = 1e-6):
    """Central differences (one-sided at a bound)."""
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in range(x.size):
        h = rel * max(abs(x[i]), 1.0)
        up = x.copy()
        up[i] += h
        dn = x.copy()
        dn[i] -= h
        if np.isfinite(lower[i]) and dn[i] < lower[i]:
            g[i] = (f(up) - f(x)) / h
        else:
            g[i] = (f(up) - f(dn)) / (2 * h)
    return g


def _minimize(fg, x0, lower, used: list, label: str, scale=None, hess_out: dict | None = None):
    """L-BFGS-B with the gradient, then Newton steps on a Hessian differenced from the gradient (they polish the
    flat directions and certify the optimum); only where that certificate fails, L-BFGS-B again and, if that
    still moved the deviance, bounded Nelder-Mead and a last L-BFGS-B. The optimisers work on x / ``scale``.
    Returns (x, f, converged); ``hess_out`` receives the certifying Newton Hessian in x's units (``H``, its free
    parameters ``idx``, the point ``x``) when the polish certified the returned point."""
    scale = np.ones(len(x0)) if scale is None else np.asarray(scale, dtype=float)
    lower = np.asarray(lower, dtype=float) / scale
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in lower]
    cache = {}

    def fun(z):
        z = np.asarray(z, dtype=float)
        key = z.tobytes()
        if key not in cache:
            d, g = fg(z * scale)
            g = np.zeros_like(z) if not np.isfinite(d) else np.asarray(g, dtype=float) * scale
            if len(cache) > 8:
                cache.clear()
            cache[key] = (d, g)
        return cache[key]

    best_x = np.asarray(x0, dtype=float) / scale
    best_f = fun(best_x)[0]
    ok = False

    def run_lbfgs():
        nonlocal best_x, best_f, ok
        res = optimize.minimize(fun, best_x, jac=True, method="L-BFGS-B", bounds=bounds,
                                options=dict(LBFGS_OPTIONS))
        used.append(f"{label} L-BFGS-B: {res.message!s} (deviance {res.fun:.12g}, {res.nfev} evaluations)")
        if res.fun <= best_f:
            best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
        ok = ok or bool(res.success)

    run_lbfgs()
    certified = False
    polish: dict = {}
    if np.isfinite(best_f):
        x, fx, certified, note = _newton_polish(fun, best_x, best_f, lower, hess_out=polish)
        used.append(f"{label} Newton: {note} (deviance {fx:.12g})")
        if fx <= best_f:
            best_x, best_f = x, fx
        if hess_out is not None and certified and polish and np.array_equal(polish["x"], best_x):
            s_ = scale[polish["idx"]]
            hess_out.update(H=polish["H"] / np.outer(s_, s_), idx=polish["idx"], x=best_x * scale)
    if not certified:
        previous = best_f
        run_lbfgs()
        if abs(previous - best_f) >= 1e-9:
            res = optimize.minimize(lambda x: fun(x)[0], best_x, method="Nelder-Mead", bounds=bounds,
                                    options=dict(xatol=1e-9, fatol=1e-12, maxfev=400 * len(best_x) + 400,
                                                 adaptive=True))
            used.append(f"{label} Nelder-Mead: {res.message!s} (deviance {res.fun:.12g})")
            if res.fun <= best_f:
                best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
            run_lbfgs()
    return best_x * scale, best_f, bool((ok or certified) and np.isfinite(best_f))


def _newton_polish(fun, x, fx, lower, max_iter: int = 6, hess_out: dict | None = None):
    """Newton steps on the Hessian differenced (forward) from the gradient, over the free parameters (a bounded
    entry at its bound with the gradient pushing outward stays fixed). Certified when the Hessian on the free
    set is positive definite and the Newton decrement is below max(1e-10, 1e-14 |f|). After a step the decrement
    is first measured on the Hessian already made (the point moved by that step alone); a new one is differenced
    only when that does not certify. ``hess_out`` receives the certifying Hessian, its free parameters, the point."""
    diag = np.isfinite(lower)
    x = np.asarray(x, dtype=float).copy()
    note = "no free parameters"
    H = idx_H = None
    for it in range(max_iter):
        fcur, g = fun(x)
        if not np.isfinite(fcur):
            return x, fx, False, "deviance not finite"
        free = ~(diag & (x <= lower) & (g >= 0.0))
        idx = np.flatnonzero(free)
        if idx.size == 0:
            return x, fcur, True, note
        for fresh in ((False, True) if H is not None and np.array_equal(idx, idx_H) else (True,)):
            if fresh:
                H = np.empty((idx.size, idx.size))
                for a, i in enumerate(idx):
                    h = 1e-6 * max(abs(x[i]), 1e-1)
                    e = np.zeros_like(x)
                    e[i] = h
                    H[:, a] = (fun(x + e)[1][idx] - g[idx]) / h
                H = (H + H.T) / 2
                idx_H = idx
            try:
                Lh = np.linalg.cholesky(H)
            except np.linalg.LinAlgError:
                if fresh:
                    return x, fcur, False, f"Hessian not positive definite on the free set (iteration {it + 1})"
                continue
            step = np.zeros_like(x)
            step[idx] = -np.linalg.solve(Lh.T, np.linalg.solve(Lh, g[idx]))
            decrement = -float(g[idx] @ step[idx]) / 2
            note = f"decrement {decrement:.3g} after {it} step(s)"
            if decrement < max(1e-10, 1e-14 * abs(fcur)):
                if hess_out is not None:
                    hess_out.update(H=H, idx=idx, x=x.copy())
                return x, fcur, True, note
        for _ in range(8):
            trial = np.where(diag, np.maximum(x + step, lower), x + step)
            ft = fun(trial)[0]
            if ft < fcur:
                break
            step /= 2
        else:
            return x, fcur, decrement < 1e-6, f"no Newton step lowered the deviance ({note})"
        x, fx = trial, ft
    fcur, g = fun(x)
    return x, fcur, False, f"{note}; {max_iter} Newton steps"


# ---------------------------------------------------------------------------------------------- ModelData
def levels_of(md) -> list[LevelLayout]:
    out = []
    for lv in md.hierarchy.levels:
        terms = lv.spec.terms
        pos = {t: i for i, t in enumerate(terms)}
        blocks = tuple(tuple(pos[t] for t in b) for b in lv.spec.blocks)
        out.append(LevelLayout(group=lv.group, k=len(terms), terms=terms, blocks=blocks, n_groups=lv.n_groups,
                               parent=lv.parent))
    return out


def from_model_data(md, offset=None) -> GlmmCore:
    """A GlmmCore for a validated :class:`~hiercompare.design.ModelData` of family binomial, poisson or
    negbinomial (its trials and offset; ``offset`` adds a known part, e.g. a learner's f(x))."""
    if getattr(md, "sums", None) is not None:
        raise ValueError("a GLMM needs the rows (its weights change every iteration); this ModelData holds only "
                         "per-leaf sums")
    off = np.asarray(getattr(md, "offset", None) if getattr(md, "offset", None) is not None else np.zeros(md.n),
                     dtype=float)
    if offset is not None:
        off = off + np.asarray(offset, dtype=float)
    trials = getattr(md, "trials", None)
    leaf = md.hierarchy.levels[-1].codes
    return GlmmCore(levels_of(md), leaf, md.X, md.y, [md.Z[lv.group] for lv in md.hierarchy.levels],
                    md.spec.family, trials=trials if md.spec.family == "binomial" else None, offset=off)


__all__ = ["GlmmCore", "GlmmResult", "FAMILIES", "from_model_data", "gh_rule", "levels_of"]
