"""Exact Gaussian linear mixed model on per-group sufficient statistics (lme4's formulation).

Model (Bates, Maechler, Bolker & Walker 2015, J. Stat. Softw. 67(1), section 3)::

    y = X beta + sum_l Z_l b_l + e,   e ~ N(0, sigma^2 I),   b_l = Lambda_l(theta) u_l,   u ~ N(0, sigma^2 I)

for a nested tree of levels l = 1 (top) .. L (leaf). Every group of level l has k_l varying terms with
relative covariance factor Lambda_l (lower triangular, block diagonal over the level's ``||`` blocks; diagonal
bounded below by 0, as in lme4, so fits can reach the boundary).

One pass over the rows gives, per leaf group, the cross-product of ``[z_1 .. z_L, X, y]``. Everything else
works on those sums: the penalised system is eliminated level by level from the leaves up (each group's
varying terms are a k_l x k_l block coupled only to its ancestors, X and y), so one deviance evaluation costs
O(number of leaf groups x D^3) with D = sum_l k_l + p + 1, whatever the number of rows, and no N x N matrix
is ever formed. BLUPs and their conditional covariances come from the stored per-level blocks, top down.
The gradient of the deviance w.r.t. theta comes from one reverse pass through the same elimination
(:meth:`MixedCore.deviance_and_gradient`), and the optimiser uses it; the evaluation is compiled with numba where
it is installed (:mod:`hiercompare.mixedcore_jit`), vectorised numpy otherwise (``ENGINE``).

Profiled deviance for given theta (sigma profiled out), with A the penalised u-block, S the Schur complement
of X'X, r2 the penalised residual sum of squares::

    ML:   log|A| + n (1 + log(2 pi r2 / n))
    REML: log|A| + log|S| + (n - p)(1 + log(2 pi r2 / (n - p)))

``logLik = -deviance / 2`` (what lme4's logLik() prints for the same method).

The derivation (notation, ML and REML, the elimination, BLUPs and both ``condvar`` conventions, the optimiser,
the analytic gradient and the compiled evaluation) is in ``docs/mixedcore.md``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, sparse

LOG2PI = np.log(2 * np.pi)

#: which implementation evaluates the deviance and its gradient and builds the per-leaf sums: "numba" (compiled,
#: :mod:`hiercompare.mixedcore_jit`), "numpy" (vectorised over groups) or "auto" (numba where it is installed
#: and the tree has at least ``JIT_MIN_LEAVES`` leaf groups or the data ``JIT_MIN_ROWS`` rows). Both give the
#: same numbers to rounding; the environment variable ``HIERCOMPARE_MIXEDCORE_ENGINE`` sets the default.
ENGINE = os.environ.get("HIERCOMPARE_MIXEDCORE_ENGINE", "auto")
JIT_MIN_LEAVES = 200
JIT_MIN_ROWS = 100_000
LBFGS_OPTIONS = dict(ftol=1e-12, gtol=1e-10, maxiter=2000, maxls=50)
_JIT = None  # the compiled kernels' module once imported, False where numba is missing


def _jit_module():
    """:mod:`hiercompare.mixedcore_jit`, imported on first use (importing numba costs about 0.5 s), or None."""
    global _JIT
    if _JIT is None:
        try:
            from . import mixedcore_jit
            _JIT = mixedcore_jit
        except ImportError:
            _JIT = False
    return _JIT or None


def _readonly(a) -> np.ndarray:
    """A C-contiguous float64 read-only view (a copy only where the input is not already C-contiguous
    float64): the compiled passes then see one array type whatever pandas handed over."""
    a = np.ascontiguousarray(a, dtype=float).view()
    a.flags.writeable = False
    return a


_BLAS = None  # a threadpoolctl controller, made on first use


def _one_blas_thread():
    """A context in which BLAS runs on one thread. Every matrix here is tiny; L-BFGS-B's own BLAS calls on
    vectors of length len(theta) cost milliseconds each when OpenBLAS wakes its threads on a busy machine
    (measured: 270 ms instead of 60 ms for one fit of 30,000 rows on 2 shared cores)."""
    global _BLAS
    from contextlib import nullcontext

    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController
            _BLAS = ThreadpoolController()
        except Exception:  # pragma: no cover - threadpoolctl is a dependency; never fail a fit over it
            _BLAS = False
    if not _BLAS:
        return nullcontext()
    try:
        return _BLAS.limit(limits=1, user_api="blas")
    except Exception:  # pragma: no cover
        return nullcontext()


def _use_jit(size: int, threshold: int, engine: str | None = None) -> bool:
    engine = ENGINE if engine is None else engine
    if engine not in ("auto", "numba", "numpy"):
        raise ValueError(f"mixedcore engine must be 'auto', 'numba' or 'numpy', got {engine!r}")
    if engine == "numpy" or (engine == "auto" and size < threshold):
        return False
    if _jit_module() is None:
        if engine == "numba":
            raise ImportError("mixedcore engine 'numba' needs numba (pip install numba)")
        return False
    return True


def theta_layout(levels) -> tuple[list, np.ndarray, np.ndarray]:
    """theta's layout over the levels' covariance blocks: ``(index, lower, theta0)``, ``index`` the
    ``(level, row, column)`` of each lower-triangular Cholesky entry, ``lower`` its bound (0 on the diagonal),
    ``theta0`` the start (1 on the diagonal). Shared by mixedcore and glmmcore."""
    idx, lower = [], []
    for li, lv in enumerate(levels):
        for block in lv.blocks:
            for a in range(len(block)):
                for b in range(a + 1):
                    idx.append((li, block[a], block[b]))
                    lower.append(0.0 if a == b else -np.inf)
    lower = np.array(lower)
    return idx, lower, np.where(np.isfinite(lower), 1.0, 0.0)


def lambdas_from(theta, theta_index, k) -> list[np.ndarray]:
    """Each level's relative Cholesky factor Lambda (k x k) from theta laid out by :func:`theta_layout`."""
    lam = [np.zeros((kk, kk)) for kk in k]
    for t, (li, i, j) in zip(theta, theta_index):
        lam[li][i, j] = t
    return lam


# relative SDs (theta diagonals) probed off a boundary stop: see MixedCore._fit
BOUNDARY_PROBES = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


@dataclass
class LevelLayout:
    group: str
    k: int
    terms: tuple[str, ...]
    blocks: tuple[tuple[int, ...], ...]  # term indices per covariance block
    n_groups: int
    parent: np.ndarray  # group -> parent group index (level above), zeros for the top level


@dataclass
class CoreResult:
    """What :meth:`MixedCore.fit` returns (all on the original scale).

    ``blups`` and ``blup_cov`` are computed on first access (one top-down pass over the groups): callers that
    need only the likelihood, beta and its covariance at many theta (profiles, Satterthwaite's derivatives)
    do not pay for them. They are computed from the sums the core held when :meth:`MixedCore.solve` ran.
    """

    theta: np.ndarray
    reml: bool
    deviance: float
    loglik: float
    beta: np.ndarray
    vcov_beta: np.ndarray
    sigma: float
    cov: list[np.ndarray]  # per level: k x k covariance of the varying terms (sigma^2 Lambda Lambda')
    converged: bool
    singular: bool
    message: str
    n_evals: int
    optimizer: list[str] = field(default_factory=list)
    # (blups, blup_cov), or the pending top-down pass that computes them
    effects: object = field(default=None, repr=False, compare=False)

    def _resolve(self):
        if isinstance(self.effects, _PendingEffects):
            self.effects = self.effects()
        return self.effects

    @property
    def blups(self) -> list[np.ndarray]:
        """Per level: (G_l, k_l) BLUPs b = Lambda_l u (docs/mixedcore.md, section 5.1)."""
        return self._resolve()[0]

    @property
    def blup_cov(self) -> list[np.ndarray]:
        """Per level: (G_l, k_l, k_l) conditional covariances (``condvar``'s convention; section 5.2)."""
        return self._resolve()[1]

    def __getstate__(self):  # a pickled or copied result carries its effects, not the core's sums
        self._resolve()
        return self.__dict__


class _PendingEffects:
    """The top-down pass of :meth:`MixedCore.solve`, run when a result's BLUPs are first read."""

    def __init__(self, core, C, theta, beta, sigma2, Sinv, condvar):
        self.args = (core, C, theta, beta, sigma2, Sinv, condvar)

    def __call__(self):
        core, C, theta, beta, sigma2, Sinv, condvar = self.args
        self.args = None
        return core._effects(C, theta, beta, sigma2, Sinv, condvar)


class MixedCore:
    """Sufficient statistics of one data set for a nested Gaussian LMM, and everything computed from them.

    Parameters
    ----------
    levels : list of LevelLayout, top to leaf
    leaf_codes : (n,) leaf-group index of every row
    level_codes : list of (n,) group index at each level (used only for the one pass over rows)
    X : (n, p) fixed design
    y : (n,) response
    Z : list of (n, k_l) varying-term columns per level
    offset : (n,) optional known part subtracted from y (the learners' f(x))
    """

    def __init__(self, levels, leaf_codes, X, y, Z, offset=None):
        X = np.asarray(X, dtype=float)
        self._setup(levels, *X.shape)
        self.X = X
        self.leaf_codes = np.asarray(leaf_codes)
        self.Z = [np.asarray(z, dtype=float) for z in Z]
        self._W = None  # (n, K + p) = [Z_1 .. Z_L, X], made when the numpy pass needs it
        self._cross_fixed = None  # (G_L, K+p, K+p): never changes; made by the first set_response
        self.set_response(y, offset)

    #: "auto", "numba" or "numpy" for this core (None: the module's ``ENGINE``)
    engine: str | None = None

    def _setup(self, levels, n: int, p: int) -> None:
        self.levels = list(levels)
        self.L = len(self.levels)
        if self.L == 0:
            raise ValueError("mixedcore needs at least one grouping level")
        self.n, self.p = int(n), int(p)
        self.k = [lv.k for lv in self.levels]
        self.K = int(sum(self.k))
        self._sparse_parent = [
            sparse.csr_matrix((np.ones(lv.n_groups), (lv.parent, np.arange(lv.n_groups))),
                              shape=(self.levels[i - 1].n_groups if i else 1, lv.n_groups))
            for i, lv in enumerate(self.levels)
        ]
        self._layout_theta()
        self._layout_leaf_first()

    @classmethod
    def from_sums(cls, levels, C, n: int) -> "MixedCore":
        """A core on per-leaf cross-products ``C`` (G_leaf, K+p+1, K+p+1) of ``[z_1 .. z_L, X, y]`` over ``n``
        rows, summed elsewhere (chunk by chunk, or per partition: :mod:`hiercompare.leafsums`). Everything but
        :meth:`set_response` works; the rows were never here."""
        self = cls.__new__(cls)
        C = np.asarray(C, dtype=float)
        self._setup(levels, n, C.shape[1] - 1 - sum(lv.k for lv in levels))
        if C.shape != (self.levels[-1].n_groups, self.K + self.p + 1, self.K + self.p + 1):
            raise ValueError(f"sums of shape {C.shape} do not fit the levels (K={self.K}, p={self.p})")
        self.X = self.y = self.Z = self.leaf_codes = self._W = None
        self.C = C
        return self

    # ------------------------------------------------------------------ sufficient statistics
    def _cross(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """Per-leaf sums of A_i B_i' (one pass over the rows, by bincount)."""
        G = self.levels[-1].n_groups
        out = np.empty((G, A.shape[1], B.shape[1]))
        same = A is B
        for a in range(A.shape[1]):
            for b in range(a + 1) if same else range(B.shape[1]):
                s = np.bincount(self.leaf_codes, weights=A[:, a] * B[:, b], minlength=G)
                out[:, a, b] = s
                if same:
                    out[:, b, a] = s
        return out

    def _codes64(self) -> np.ndarray:
        if getattr(self, "_leaf64", None) is None:
            self._leaf64 = np.ascontiguousarray(self.leaf_codes, dtype=np.int64)
        return self._leaf64

    def set_response(self, y, offset=None) -> None:
        """Replace the response (or the offset): only the y cross-products are recomputed."""
        if self.X is None:
            raise ValueError("this core was built from sums (MixedCore.from_sums): it has no rows to re-weight")
        y = np.asarray(y, dtype=float)
        if offset is not None:
            y = y - np.asarray(offset, dtype=float)
        self.y = y
        G = self.levels[-1].n_groups
        D0 = self.K + self.p + 1
        if _use_jit(len(y), JIT_MIN_ROWS, self.engine):  # compiled, reading the columns in place
            blocks = tuple(_readonly(b) for b in self.Z + [self.X])  # one numba type for every block
            if self._cross_fixed is None:
                C = _jit_module().leaf_cross(blocks + (_readonly(y[:, None]),), self._codes64(), G)
                self._cross_fixed = C[:, :-1, :-1].copy()
                self.C = C
                return
            Wy, yy = _jit_module().leaf_cross_y(blocks, _readonly(y), self._codes64(), G)
        else:
            if self._W is None:
                self._W = np.column_stack(self.Z + [self.X])
            if self._cross_fixed is None:
                self._cross_fixed = self._cross(self._W, self._W)
            Wy = self._cross(self._W, y[:, None])[:, :, 0]
            yy = np.bincount(self.leaf_codes, weights=y * y, minlength=G)
        C = np.empty((G, D0, D0))
        C[:, :-1, :-1] = self._cross_fixed
        C[:, :-1, -1] = Wy
        C[:, -1, :-1] = Wy
        C[:, -1, -1] = yy
        self.C = C

    # ------------------------------------------------------------------ theta <-> Lambda
    def _layout_theta(self) -> None:
        self.theta_index, self.lower, self.theta0 = theta_layout(self.levels)

    def lambdas(self, theta) -> list[np.ndarray]:
        return lambdas_from(theta, self.theta_index, self.k)

    def _layout_leaf_first(self) -> None:
        """Index maps for the fast path (docs/mixedcore.md, section 9.1): the leaf-first column order
        ``[z_L, ..., z_1, X, y]``; where theta's entries sit in ``T2 = T P`` (top-first rows, leaf-first columns:
        the numpy engine's ``M_s = T2' C_s T2``) and in the leaf-first T (the compiled engine); the structure of
        T below the leaf block; the parents level by level, leaf first."""
        L, K, D = self.L, self.K, self.K + self.p + 1
        offs = np.cumsum([0] + self.k)
        perm = np.concatenate([np.arange(offs[li], offs[li + 1]) for li in range(L - 1, -1, -1)]
                              + [np.arange(K, D)]).astype(np.int64)
        inv = np.empty(D, dtype=np.int64)
        inv[perm] = np.arange(D)
        rows = np.array([offs[li] + i for li, i, _ in self.theta_index], dtype=np.int64)
        cols = np.array([inv[offs[li] + j] for li, _, j in self.theta_index], dtype=np.int64)
        pattern = np.zeros((D, D), dtype=bool)
        pattern[rows, cols] = True
        pattern[np.arange(K, D), np.arange(K, D)] = True
        # the compiled kernel: T fully in leaf-first order, the structure of its part T_r below the leaf block
        k0 = self.k[-1]
        lrows, lcols = inv[rows], cols
        rpat = np.zeros((D - k0, D - k0), dtype=bool)
        rest = lrows >= k0
        rpat[lrows[rest] - k0, lcols[rest] - k0] = True
        rpat[np.arange(K - k0, D - k0), np.arange(K - k0, D - k0)] = True
        self._fl = dict(
            perm=perm, grow=rows, gcol=cols, lrow=lrows, lcol=lcols,
            tptr=np.concatenate([[0], np.cumsum(rpat.sum(axis=0))]).astype(np.int64),
            tidx=np.concatenate([np.flatnonzero(rpat[:, j]) for j in range(D - k0)]).astype(np.int64),
            ks=np.array(self.k[::-1], dtype=np.int64),
            parents=np.concatenate([np.asarray(self.levels[li].parent, dtype=np.int64)
                                    for li in range(L - 1, 0, -1)] + [np.zeros(0, dtype=np.int64)]),
            goff=np.concatenate([[0], np.cumsum([self.levels[li].n_groups for li in range(L - 1, 0, -1)])]
                                + [[0]]).astype(np.int64)[:L],
            ngroups=np.array([lv.n_groups for lv in self.levels[::-1]], dtype=np.int64),
        )

    def _Tlf(self, theta) -> np.ndarray:
        """The relative factor T = blockdiag(Lambda_L, ..., Lambda_1, I) in leaf-first order."""
        D = self.K + self.p + 1
        T = np.zeros((D, D))
        T[self._fl["lrow"], self._fl["lcol"]] = theta
        T[np.arange(self.K, D), np.arange(self.K, D)] = 1.0
        return T

    def _leaf_sums(self):
        """What the compiled kernel needs from the sums, computed once per set of sums (theta-free): per leaf
        the cross-products of its own terms with themselves (czz) and with the other columns (czr), and per
        parent the sum of its leaves' other-by-other block (Pm), all in leaf-first order."""
        cached = getattr(self, "_leaf_cache", None)
        if cached is not None and cached[0] is self.C:
            return cached[1]
        perm = self._fl["perm"]
        k0 = self.k[-1]
        Cp = self.C[:, perm][:, :, perm]
        rr = Cp[:, k0:, k0:]
        G_up = self.levels[-2].n_groups if self.L > 1 else 1
        Pm = (self._sparse_parent[-1] @ rr.reshape(rr.shape[0], -1)).reshape(G_up, *rr.shape[1:])
        out = (np.ascontiguousarray(Cp[:, :k0, :k0]), np.ascontiguousarray(Cp[:, :k0, k0:]),
               np.ascontiguousarray(Pm))
        self._leaf_cache = (self.C, out)
        return out

    def _kernel(self, theta, reml: bool, want_grad: bool):
        fl = self._fl
        czz, czr, Pm = self._leaf_sums()
        return _jit_module().devgrad(czz, czr, Pm, self._Tlf(theta), fl["tptr"], fl["tidx"], fl["ks"],
                                     fl["parents"], fl["goff"], fl["ngroups"], self.p, float(self.n), bool(reml),
                                     bool(want_grad), fl["lrow"], fl["lcol"])

    def _T2(self, theta) -> np.ndarray:
        """The relative factor with its columns in leaf-first order: ``M_s = T2' C_s T2``."""
        D = self.K + self.p + 1
        T2 = np.zeros((D, D))
        T2[self._fl["grow"], self._fl["gcol"]] = theta
        T2[np.arange(self.K, D), np.arange(self.K, D)] = 1.0
        return T2

    # ------------------------------------------------------------------ deviance and gradient (fast path)
    def deviance_and_gradient(self, theta, reml: bool = True, engine: str | None = None):
        """The profiled deviance (as :meth:`deviance`) and its analytic gradient w.r.t. ``theta``.

        Reverse mode through the level-by-level elimination (docs/mixedcore.md, section 8): one evaluation and
        gradient cost about two deviance evaluations, whatever the length of theta. Returns ``(deviance,
        gradient)``; ``(inf, zeros)`` where theta gives a non-positive pivot or penalised RSS.
        ``engine``: "numba", "numpy" or "auto" (default: this core's ``engine``, else the module's ``ENGINE``).
        """
        theta = np.asarray(theta, dtype=float)
        return self._devgrad(theta, reml, True, engine)

    def gradient(self, theta, reml: bool = True) -> np.ndarray:
        """d deviance / d theta (analytic): :meth:`deviance_and_gradient`'s second part."""
        return self.deviance_and_gradient(theta, reml)[1]

    def _devgrad(self, theta, reml: bool, want_grad: bool, engine: str | None = None):
        engine = engine or self.engine
        if _use_jit(self.C.shape[0], JIT_MIN_LEAVES, engine):
            dev, grad, _, _, _ = self._kernel(theta, reml, want_grad)
            return float(dev), grad
        try:
            return self._devgrad_numpy(theta, reml, want_grad)
        except np.linalg.LinAlgError:
            return np.inf, np.zeros(len(theta))

    def _devgrad_numpy(self, theta, reml: bool, want_grad: bool):
        """The same as :func:`hiercompare.mixedcore_jit.devgrad`, vectorised over the groups of each level."""
        fl = self._fl
        C = self.C
        G, D = C.shape[0], C.shape[1]
        T2 = self._T2(theta)
        CT = (C.reshape(G * D, D) @ T2).reshape(G, D, D)  # C_s T2
        cur = (CT.transpose(0, 2, 1).reshape(G * D, D) @ T2).reshape(G, D, D)  # T2' C_s T2
        logdet = 0.0
        tape = []
        for j in range(self.L):
            li = self.L - 1 - j
            k = self.k[li]
            Mee = cur[:, :k, :k] + np.eye(k)
            Mer = cur[:, :k, k:]
            if k == 1:
                d = Mee[:, 0, 0]
                if not (d > 0).all():
                    raise np.linalg.LinAlgError("non-positive pivot")
                logdet += np.log(d).sum()
                Minv = (1.0 / d)[:, None, None]
                X = Mer * Minv
            else:
                Lc = np.linalg.cholesky(Mee)
                logdet += 2.0 * np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum()
                Li = np.linalg.inv(Lc)
                Minv = np.swapaxes(Li, 1, 2) @ Li
                X = Minv @ Mer
            msg = cur[:, k:, k:] - np.swapaxes(Mer, 1, 2) @ X
            tape.append((X, Minv))
            G_up = self.levels[li - 1].n_groups if li else 1
            cur = (self._sparse_parent[li] @ msg.reshape(msg.shape[0], -1)).reshape(G_up, *msg.shape[1:])
        dev, Fbar = self._root(logdet, cur[0], reml)
        if not want_grad or not np.isfinite(dev):
            return dev, np.zeros(len(theta))
        H = Fbar[None]
        for j in range(self.L - 1, -1, -1):
            li = self.L - 1 - j
            X, Minv = tape[j]
            Hg = H[self.levels[li].parent] if li else np.broadcast_to(H[0], (X.shape[0],) + H.shape[1:])
            k = X.shape[1]
            XH = X @ Hg
            Mbar = np.empty((X.shape[0], k + X.shape[2], k + X.shape[2]))
            Mbar[:, :k, :k] = Minv + XH @ np.swapaxes(X, 1, 2)
            Mbar[:, :k, k:] = -XH
            Mbar[:, k:, :k] = -np.swapaxes(XH, 1, 2)
            Mbar[:, k:, k:] = Hg
            H = Mbar
        Tbar2 = 2.0 * (CT.transpose(1, 0, 2).reshape(D, G * D) @ H.reshape(G * D, D))
        return dev, Tbar2[fl["grow"], fl["gcol"]]

    def _root(self, logdet: float, F: np.ndarray, reml: bool):
        """The deviance from log|A| and F = [[S, r], [r', q]], and its adjoint d deviance / d F (symmetric):
        (dof / r2) g g' with g = [-beta_hat, 1], plus S^-1 for REML (docs/mixedcore.md, section 8.1)."""
        p = self.p
        try:
            dev, beta, r2 = self._deviance_from(logdet, F, reml)
        except np.linalg.LinAlgError:
            return np.inf, None
        if not np.isfinite(dev):
            return np.inf, None
        dof = self.n - p if reml else self.n
        g = np.append(-beta, 1.0)
        Fbar = (dof / r2) * np.outer(g, g)
        if reml and p:
            Fbar[:p, :p] += np.linalg.inv(F[:p, :p])
        return dev, Fbar

    # ------------------------------------------------------------------ the elimination
    def _eliminate(self, theta, keep: bool = False):
        return self._eliminate_lam(self.lambdas(theta), keep)

    def _eliminate_lam(self, lam, keep: bool = False, C=None):
        T = np.zeros((self.K + self.p + 1,) * 2)
        off = 0
        for li, k in enumerate(self.k):
            T[off:off + k, off:off + k] = lam[li]
            off += k
        T[off:, off:] = np.eye(self.p + 1)
        M = T.T @ (self.C if C is None else C) @ T
        logdet = 0.0
        stored = []
        for li in range(self.L - 1, -1, -1):
            k = self.k[li]
            start = int(sum(self.k[:li]))
            M[:, np.arange(start, start + k), np.arange(start, start + k)] += 1.0
            if keep:
                stored.append(M)
            e = np.arange(start, start + k)
            r = np.r_[np.arange(start), np.arange(start + k, M.shape[1])]
            Mee = M[:, e][:, :, e]
            Mer = M[:, e][:, :, r]
            Mrr = M[:, r][:, :, r]
            if k == 1:  # scalar blocks (varying intercepts): no factorisation needed
                d = Mee[:, 0, 0]
                if (d <= 0).any():
                    raise np.linalg.LinAlgError("non-positive pivot")
                logdet += np.log(d).sum()
                Wm = Mer / np.sqrt(d)[:, None, None]
            else:
                Lc = np.linalg.cholesky(Mee)
                logdet += 2.0 * np.log(np.diagonal(Lc, axis1=1, axis2=2)).sum()
                Wm = np.linalg.solve(Lc, Mer)
            msg = Mrr - np.swapaxes(Wm, 1, 2) @ Wm
            G_up = self.levels[li - 1].n_groups if li else 1
            P = self._sparse_parent[li]
            M = (P @ msg.reshape(msg.shape[0], -1)).reshape(G_up, msg.shape[1], msg.shape[2])
        F = M[0]  # (p+1, p+1): [[S, r], [r', q]]
        return logdet, F, stored[::-1], lam

    def deviance(self, theta, reml: bool = True) -> float:
        """The profiled REML or ML deviance at ``theta`` (+inf where theta gives a non-positive pivot)."""
        return self._devgrad(np.asarray(theta, dtype=float), reml, False)[0]

    def _deviance_from(self, logdet, F, reml):
        p, n = self.p, self.n
        S, rr, q = F[:p, :p], F[:p, p], F[p, p]
        if p:
            Rs = np.linalg.cholesky(S)
            beta = np.linalg.solve(S, rr)
            logdet_S = 2.0 * np.log(np.diag(Rs)).sum()
        else:
            beta, logdet_S = np.zeros(0), 0.0
        r2 = q - rr @ beta
        if r2 <= 0:
            return np.inf, beta, r2
        if reml:
            dof = n - p
            dev = logdet + logdet_S + dof * (1.0 + np.log(2 * np.pi * r2 / dof))
        else:
            dev = logdet + n * (1.0 + np.log(2 * np.pi * r2 / n))
        return float(dev), beta, r2

    # ------------------------------------------------------------------ fitting
    def fit(self, reml: bool = True, theta0=None, condvar: str = "full") -> CoreResult:
        """Minimise the profiled deviance: L-BFGS-B with the analytic gradient (:meth:`deviance_and_gradient`),
        then Newton steps on a Hessian differenced from that gradient, which polish the flat directions and
        certify the optimum; only where the certificate fails, L-BFGS-B restarted and, when that still moved the
        deviance, bounded Nelder-Mead and a last L-BFGS-B (the likelihood is flat along weakly identified SDs;
        docs/mixedcore.md, section 4). The best point found is kept."""
        with _one_blas_thread():
            return self._fit(reml, theta0, condvar)

    def _fit(self, reml: bool, theta0, condvar: str) -> CoreResult:
        nev = [0]

        def f(t):
            nev[0] += 1
            return self._devgrad(np.asarray(t, dtype=float), reml, False)[0]

        def fg(t):
            nev[0] += 1
            return self._devgrad(np.asarray(t, dtype=float), reml, True)

        x0 = self.theta0 if theta0 is None else np.asarray(theta0, dtype=float)
        bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.lower]
        used = []
        best_x, best_f = x0, f(x0)
        ok = False
        msg = ""
        lbfgs = ("L-BFGS-B", fg, dict(method="L-BFGS-B", jac=True, bounds=bounds,
                                      options=dict(LBFGS_OPTIONS)))
        nm = ("Nelder-Mead", f, dict(method="Nelder-Mead", bounds=bounds,
                                     options=dict(xatol=1e-8, fatol=1e-11, maxfev=300 * len(x0) + 200,
                                                  adaptive=True)))

        def run(name, fun, kw):
            nonlocal best_x, best_f, ok, msg
            res = optimize.minimize(fun, best_x, **kw)
            used.append(f"{name}: {res.message!s} (deviance {res.fun:.12g})")
            if res.fun <= best_f:
                best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
            if name == "L-BFGS-B":  # Nelder-Mead only polishes; its budget running out is not a failure
                ok = ok or bool(res.success)
                msg = str(res.message)

        # L-BFGS-B with the exact gradient, then Newton steps on a Hessian differenced from that gradient: they
        # polish the flat directions and certify the optimum (a small Newton decrement on the free set, a
        # positive definite Hessian there). Only where that certificate fails: L-BFGS-B again (a restart drops
        # a stale curvature estimate), and, when the restart still moved the deviance, bounded Nelder-Mead and
        # a last L-BFGS-B
        run(*lbfgs)
        newton_ok = False
        if np.isfinite(best_f):
            x, fx, newton_ok, note = self._newton_polish(best_x, best_f, fg)
            used.append(f"Newton: {note} (deviance {fx:.12g})")
            if fx <= best_f:
                best_x, best_f = x, fx
        if not newton_ok:
            previous = best_f
            run(*lbfgs)
            if abs(previous - best_f) >= 1e-9:
                run(*nm)
                run(*lbfgs)
        ok = ok or newton_ok
        # a diagonal at its bound 0 with a zero gradient may be a saddle, not a minimum: the deviance depends on
        # it only through its square, so the gradient vanishes there whatever the curvature (seen on Exam, a
        # correlated slope: L-BFGS-B and the Newton certificate stopped at correlation +1, 6.03 log-likelihood
        # units below lme4's interior optimum). Start again off the bound; keep whichever is lower.
        at_bound = np.isfinite(self.lower) & (best_x <= 1e-7)
        if at_bound.any() and np.isfinite(best_f):
            # along each such coordinate (the others held) look for a lower deviance on a log grid; L-BFGS-B
            # from a far start overshoots back onto the bound, where the gradient vanishes again
            start, f_start = best_x.copy(), best_f
            for j in np.flatnonzero(at_bound):
                for c in BOUNDARY_PROBES:
                    trial = start.copy()
                    trial[j] = c
                    ft = f(trial)
                    if ft < f_start - 1e-9:
                        cand, f_start = trial, ft
                if f_start < best_f - 1e-9:
                    start = cand
            previous_x, previous_f = best_x, best_f
            best_x, best_f = start, f_start
            if f_start < previous_f - 1e-9:
                run(*lbfgs)
            x, fx, escaped_ok, note = self._newton_polish(best_x, best_f, fg)
            used.append(f"Newton after a restart off the boundary: {note} (deviance {fx:.12g})")
            if fx <= best_f:
                best_x, best_f = x, fx
            if best_f < previous_f - 1e-9:
                ok = escaped_ok or ok
            else:
                best_x, best_f = previous_x, previous_f
        theta = best_x
        # snap tiny diagonal values to the boundary, as lme4 reports singular fits
        diag = np.isfinite(self.lower)
        near = diag & (theta < 1e-7)
        if near.any():
            snapped = np.where(near, 0.0, theta)
            f_snapped = f(snapped)
            if f_snapped <= best_f + 1e-10:
                theta, best_f = snapped, f_snapped
        return self.solve(theta, reml, converged=ok and np.isfinite(best_f), message=msg, n_evals=nev[0],
                          optimizer=used, condvar=condvar)

    def _newton_polish(self, x, fx, fg, max_iter: int = 4):
        """Newton steps from a point L-BFGS-B returned, on the Hessian differenced (centrally) from the exact
        gradient, over the free parameters (a diagonal entry at its bound 0 with a gradient pushing it outward
        stays fixed). Returns (theta, deviance, certified, note): certified when the Hessian on the free set is
        positive definite and the Newton decrement g' H^-1 g / 2 is below max(1e-11, 1e-15 |deviance|) at the
        returned point, or below 1e-6 where no step lowers the deviance any more (rounding)."""
        lower = self.lower
        diag = np.isfinite(lower)
        x = np.asarray(x, dtype=float).copy()
        note = "no free parameters"
        for it in range(max_iter):
            fcur, g = fg(x)
            if not np.isfinite(fcur):
                return x, fx, False, "deviance not finite"
            free = ~(diag & (x <= 0.0) & (g >= 0.0))
            idx = np.flatnonzero(free)
            if idx.size == 0:
                return x, fcur, True, note
            H = np.empty((idx.size, idx.size))
            for a, i in enumerate(idx):  # forward differences of the exact gradient: len(idx) evaluations
                h = 1e-5 * max(abs(x[i]), 1e-2)
                e = np.zeros_like(x)
                e[i] = h
                H[:, a] = (fg(x + e)[1][idx] - g[idx]) / h
            H = (H + H.T) / 2
            try:
                Lh = np.linalg.cholesky(H)
            except np.linalg.LinAlgError:
                return x, fcur, False, f"Hessian not positive definite on the free set (iteration {it + 1})"
            step = np.zeros_like(x)
            step[idx] = -np.linalg.solve(Lh.T, np.linalg.solve(Lh, g[idx]))
            decrement = -float(g[idx] @ step[idx]) / 2
            note = f"decrement {decrement:.3g} after {it} step(s)"
            if decrement < max(1e-11, 1e-15 * abs(fcur)):  # below what rounding lets the deviance resolve
                return x, fcur, True, note
            for _ in range(6):  # damped: the full step first, then halves, projected on the bounds
                trial = np.where(diag, np.maximum(x + step, 0.0), x + step)
                ft = fg(trial)[0]
                if ft < fcur:
                    break
                step /= 2
            else:
                return x, fcur, decrement < 1e-6, f"no Newton step lowered the deviance ({note})"
            x, fx = trial, ft
        fcur, g = fg(x)
        return x, fcur, False, f"{note}; {max_iter} Newton steps"

    def solve(self, theta, reml: bool = True, converged: bool = True, message: str = "", n_evals: int = 0,
              optimizer=None, condvar: str = "full") -> CoreResult:
        """Everything at a given theta: beta, sigma, covariances, BLUPs and their conditional covariances.

        ``condvar='full'`` includes the uncertainty of beta in the BLUPs' conditional covariance (Henderson's
        prediction-error variance); ``'beta_fixed'`` conditions on beta, as lme4's ``ranef(condVar = TRUE)``
        does (docs/mixedcore.md, section 5.2).
        """
        theta = np.asarray(theta, dtype=float)
        logdet, F = self._logdet_F(theta)
        dev, beta, r2 = self._deviance_from(logdet, F, reml)
        p = self.p
        sigma2 = r2 / (self.n - p if reml else self.n)
        S = F[:p, :p]
        Sinv = np.linalg.inv(S) if p else np.zeros((0, 0))
        cov = [sigma2 * lm @ lm.T for lm in self.lambdas(theta)]
        diag_theta = theta[np.isfinite(self.lower)]
        singular = bool((diag_theta < 1e-4).any())
        return CoreResult(
            theta=theta, reml=reml, deviance=dev, loglik=-dev / 2, beta=beta, vcov_beta=sigma2 * Sinv,
            sigma=float(np.sqrt(sigma2)), cov=cov, converged=converged, singular=singular, message=message,
            n_evals=n_evals, optimizer=list(optimizer or []),
            effects=_PendingEffects(self, self.C, theta, beta, sigma2, Sinv, condvar),
        )

    def _logdet_F(self, theta):
        """log|A| and F = [[S, r], [r', q]] at theta (compiled where the deviance is)."""
        if _use_jit(self.C.shape[0], JIT_MIN_LEAVES, self.engine):
            _, _, ok, logdet, F = self._kernel(theta, True, False)
            if ok:
                return float(logdet), F
        return self._eliminate(theta)[:2]  # (raises LinAlgError where a pivot is not positive)

    def _effects(self, C, theta, beta, sigma2, Sinv, condvar):
        """BLUPs and their conditional covariances, top down (docs/mixedcore.md, section 5)."""
        p = self.p
        _, _, stored, lam = self._eliminate_lam(self.lambdas(theta), keep=True, C=C)
        # top-down: u for each level, and the covariance of each group's path [beta, u_1, ..., u_l]
        blups, blup_cov = [], []
        u_path = np.broadcast_to(beta, (1, p)).copy()  # per group of the level above: [beta, u_1..u_{l-1}]
        P_path = (Sinv if condvar == "full" else np.zeros_like(Sinv))[None].copy()
        for li in range(self.L):
            M = stored[li]
            k = self.k[li]
            start = int(sum(self.k[:li]))
            G = M.shape[0]
            par = self.levels[li].parent if li else np.zeros(G, dtype=int)
            e = np.arange(start, start + k)
            anc_u = np.arange(start)
            # after eliminating deeper levels, M's columns are [u_1..u_l, X, y]
            xcols = np.arange(start + k, start + k + p)
            ycol = start + k + p
            Aee = M[:, e][:, :, e]
            A_anc = np.concatenate([M[:, e][:, :, xcols], M[:, e][:, :, anc_u]], axis=2)  # [beta, u_1..u_{l-1}]
            c = M[:, e, ycol]
            path = u_path[par]
            rhs = c - np.einsum("gij,gj->gi", A_anc, path)
            u = np.linalg.solve(Aee, rhs[..., None])[..., 0]
            Ainv = np.linalg.inv(Aee)
            Gm = np.einsum("gij,gjk->gik", Ainv, A_anc)
            Pp = P_path[par]
            var_u = Ainv + np.einsum("gij,gjk,glk->gil", Gm, Pp, Gm)
            cov_u_path = -np.einsum("gij,gjk->gik", Gm, Pp)
            blups.append(u @ lam[li].T)
            blup_cov.append(sigma2 * np.einsum("ij,gjk,lk->gil", lam[li], var_u, lam[li]))
            if li + 1 < self.L:
                u_path = np.concatenate([path, u], axis=1)
                top = np.concatenate([Pp, np.transpose(cov_u_path, (0, 2, 1))], axis=2)
                bottom = np.concatenate([cov_u_path, var_u], axis=2)
                P_path = np.concatenate([top, bottom], axis=1)
        return blups, blup_cov

    def sample_effects(self, lam, beta, sigma: float, rng: np.random.Generator) -> list[np.ndarray]:
        """One exact draw of every group effect b from p(b | beta, sigma, Lambda, y) (Gaussian), top down.

        ``lam`` are the relative factors (Sigma_l = sigma^2 Lambda_l Lambda_l'); used by the Bayesian backend
        to complete posterior draws when the random effects were integrated out while sampling.
        """
        _, _, stored, _ = self._eliminate_lam(lam, keep=True)
        p = self.p
        path = np.broadcast_to(np.asarray(beta, dtype=float), (1, p))
        out = []
        for li in range(self.L):
            M = stored[li]
            k = self.k[li]
            start = int(sum(self.k[:li]))
            par = self.levels[li].parent if li else np.zeros(M.shape[0], dtype=int)
            e = np.arange(start, start + k)
            xcols = np.arange(start + k, start + k + p)
            Aee = M[:, e][:, :, e]
            A_anc = np.concatenate([M[:, e][:, :, xcols], M[:, e][:, :, np.arange(start)]], axis=2)
            c = M[:, e, start + k + p]
            rhs = c - np.einsum("gij,gj->gi", A_anc, path[par])
            Lc = np.linalg.cholesky(Aee)
            mean = np.linalg.solve(Aee, rhs[..., None])[..., 0]
            # u = mean + sigma * L^-T z has covariance sigma^2 A^-1
            z = rng.standard_normal(mean.shape)
            u = mean + sigma * np.linalg.solve(np.swapaxes(Lc, 1, 2), z[..., None])[..., 0]
            out.append(u @ lam[li].T)
            path = np.concatenate([path[par], u], axis=1)
        return out


def from_model_data(md, offset=None) -> MixedCore:
    """A MixedCore for a validated :class:`~hiercompare.design.ModelData` (gaussian family)."""
    levels = []
    for lv in md.hierarchy.levels:
        terms = lv.spec.terms
        pos = {t: i for i, t in enumerate(terms)}
        blocks = tuple(tuple(pos[t] for t in b) for b in lv.spec.blocks)
        levels.append(LevelLayout(group=lv.group, k=len(terms), terms=terms, blocks=blocks, n_groups=lv.n_groups,
                                  parent=lv.parent))
    sums = getattr(md, "sums", None)  # a streamed source's per-leaf sums (leafsums.SummaryData)
    if sums is not None:
        if offset is not None:
            raise ValueError("an offset needs the rows; this ModelData holds only per-leaf sums")
        return MixedCore.from_sums(levels, sums, md.n)
    leaf = md.hierarchy.levels[-1].codes
    return MixedCore(levels, leaf, md.X, md.y, [md.Z[lv.group] for lv in md.hierarchy.levels], offset=offset)
