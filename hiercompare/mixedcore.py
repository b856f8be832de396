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

Profiled deviance for given theta (sigma profiled out), with A the penalised u-block, S the Schur complement
of X'X, r2 the penalised residual sum of squares::

    ML:   log|A| + n (1 + log(2 pi r2 / n))
    REML: log|A| + log|S| + (n - p)(1 + log(2 pi r2 / (n - p)))

``logLik = -deviance / 2`` (what lme4's logLik() prints for the same method).

The derivation (notation, ML and REML, the elimination, BLUPs and both ``condvar`` conventions, the optimiser)
is in ``docs/mixedcore.md``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, sparse

LOG2PI = np.log(2 * np.pi)


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
    """What :meth:`MixedCore.fit` returns (all on the original scale)."""

    theta: np.ndarray
    reml: bool
    deviance: float
    loglik: float
    beta: np.ndarray
    vcov_beta: np.ndarray
    sigma: float
    cov: list[np.ndarray]  # per level: k x k covariance of the varying terms (sigma^2 Lambda Lambda')
    blups: list[np.ndarray]  # per level: (G_l, k_l)
    blup_cov: list[np.ndarray]  # per level: (G_l, k_l, k_l) conditional covariance
    converged: bool
    singular: bool
    message: str
    n_evals: int
    optimizer: list[str] = field(default_factory=list)


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
        self._W = np.column_stack(self.Z + [self.X])  # (n, K + p), response appended on demand
        self._cross_fixed = self._cross(self._W, self._W)  # (G_L, K+p, K+p): never changes
        self.set_response(y, offset)

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

    def set_response(self, y, offset=None) -> None:
        """Replace the response (or the offset): only the y cross-products are recomputed."""
        if self._W is None:
            raise ValueError("this core was built from sums (MixedCore.from_sums): it has no rows to re-weight")
        y = np.asarray(y, dtype=float)
        if offset is not None:
            y = y - np.asarray(offset, dtype=float)
        self.y = y
        G = self.levels[-1].n_groups
        Wy = self._cross(self._W, y[:, None])[:, :, 0]
        yy = np.bincount(self.leaf_codes, weights=y * y, minlength=G)
        D0 = self.K + self.p + 1
        C = np.empty((G, D0, D0))
        C[:, :-1, :-1] = self._cross_fixed
        C[:, :-1, -1] = Wy
        C[:, -1, :-1] = Wy
        C[:, -1, -1] = yy
        self.C = C

    # ------------------------------------------------------------------ theta <-> Lambda
    def _layout_theta(self) -> None:
        idx, lower = [], []
        for li, lv in enumerate(self.levels):
            for block in lv.blocks:
                for a in range(len(block)):
                    for b in range(a + 1):
                        idx.append((li, block[a], block[b]))
                        lower.append(0.0 if a == b else -np.inf)
        self.theta_index = idx
        self.lower = np.array(lower)
        self.theta0 = np.where(np.isfinite(self.lower), 1.0, 0.0)

    def lambdas(self, theta) -> list[np.ndarray]:
        lam = [np.zeros((k, k)) for k in self.k]
        for t, (li, i, j) in zip(theta, self.theta_index):
            lam[li][i, j] = t
        return lam

    # ------------------------------------------------------------------ the elimination
    def _eliminate(self, theta, keep: bool = False):
        return self._eliminate_lam(self.lambdas(theta), keep)

    def _eliminate_lam(self, lam, keep: bool = False):
        T = np.zeros((self.K + self.p + 1,) * 2)
        off = 0
        for li, k in enumerate(self.k):
            T[off:off + k, off:off + k] = lam[li]
            off += k
        T[off:, off:] = np.eye(self.p + 1)
        M = T.T @ self.C @ T
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
        try:
            logdet, F, _, _ = self._eliminate(np.asarray(theta, dtype=float))
        except np.linalg.LinAlgError:
            return np.inf
        return self._deviance_from(logdet, F, reml)[0]

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
        """Minimise the profiled deviance: L-BFGS-B with central-difference gradients, restarted once, then,
        only when the restart still moved the deviance, bounded Nelder-Mead and a last L-BFGS-B pass to polish
        (the likelihood is flat along weakly identified SDs; see docs/mixedcore.md, section 4). The best point
        found is kept."""
        f = lambda t: self.deviance(t, reml)
        x0 = self.theta0 if theta0 is None else np.asarray(theta0, dtype=float)
        bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.lower]
        used = []
        best_x, best_f = x0, f(x0)
        nev = 1
        lbfgs = ("L-BFGS-B", dict(method="L-BFGS-B", jac="3-point", bounds=bounds,
                                  options=dict(ftol=1e-15, gtol=1e-10, maxiter=2000, maxls=50)))
        nm = ("Nelder-Mead", dict(method="Nelder-Mead", bounds=bounds,
                                  options=dict(xatol=1e-8, fatol=1e-11, maxfev=300 * len(x0) + 200, adaptive=True)))
        # L-BFGS-B twice (a restart drops a stale curvature estimate); Nelder-Mead and a last L-BFGS-B only
        # when the restart still moved the deviance, i.e. the surface is flat or awkward there
        runs = [lbfgs, lbfgs, nm, lbfgs]
        ok = False
        msg = ""
        previous = np.inf
        for i, (name, kw) in enumerate(runs):
            if i == 2 and abs(previous - best_f) < 1e-9:
                break
            previous = best_f
            res = optimize.minimize(f, best_x, **kw)
            nev += res.nfev
            used.append(f"{name}: {res.message!s} (deviance {res.fun:.12g})")
            if res.fun <= best_f:
                best_x, best_f = np.asarray(res.x, dtype=float), float(res.fun)
            if name == "L-BFGS-B":  # Nelder-Mead only polishes; its budget running out is not a failure
                ok = ok or bool(res.success)
                msg = str(res.message)
        theta = best_x
        # snap tiny diagonal values to the boundary, as lme4 reports singular fits
        diag = np.isfinite(self.lower)
        near = diag & (theta < 1e-7)
        if near.any():
            snapped = np.where(near, 0.0, theta)
            if f(snapped) <= best_f + 1e-10:
                theta = snapped
                best_f = f(snapped)
        return self.solve(theta, reml, converged=ok and np.isfinite(best_f), message=msg, n_evals=nev,
                          optimizer=used, condvar=condvar)

    def solve(self, theta, reml: bool = True, converged: bool = True, message: str = "", n_evals: int = 0,
              optimizer=None, condvar: str = "full") -> CoreResult:
        """Everything at a given theta: beta, sigma, covariances, BLUPs and their conditional covariances.

        ``condvar='full'`` includes the uncertainty of beta in the BLUPs' conditional covariance (Henderson's
        prediction-error variance); ``'beta_fixed'`` conditions on beta, as lme4's ``ranef(condVar = TRUE)``
        does (docs/mixedcore.md, section 5.2).
        """
        theta = np.asarray(theta, dtype=float)
        logdet, F, stored, lam = self._eliminate(theta, keep=True)
        dev, beta, r2 = self._deviance_from(logdet, F, reml)
        p = self.p
        sigma2 = r2 / (self.n - p if reml else self.n)
        S = F[:p, :p]
        Sinv = np.linalg.inv(S) if p else np.zeros((0, 0))
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
        cov = [sigma2 * lm @ lm.T for lm in lam]
        diag_theta = theta[np.isfinite(self.lower)]
        singular = bool((diag_theta < 1e-4).any())
        return CoreResult(
            theta=theta, reml=reml, deviance=dev, loglik=-dev / 2, beta=beta, vcov_beta=sigma2 * Sinv,
            sigma=float(np.sqrt(sigma2)), cov=cov, blups=blups, blup_cov=blup_cov, converged=converged,
            singular=singular, message=message, n_evals=n_evals, optimizer=list(optimizer or []),
        )


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
