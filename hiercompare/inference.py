"""Small-sample inference for the fixed effects of a Gaussian mixed model: Satterthwaite and Kenward-Roger.

One implementation for every Gaussian mixed engine (``native``, ``lme4``, ``mixedlm``): the engine's estimates
of the variance parameters are put into :mod:`hiercompare.mixedcore`'s likelihood and everything below is
computed there, so the three engines' degrees of freedom differ only as far as their estimates do.

Satterthwaite (lmerTest 3.1's ``contest1D``, ``as_lmerModLT``)
    The variance parameters are ``varpar = (theta, sigma)``, lme4's relative Cholesky factors and the residual
    SD. For a contrast ``L`` (one coefficient: ``L = e_j``), with ``C(varpar) = sigma^2 S(theta)^-1`` the
    covariance of the fixed effects,

        df = 2 (L' C L)^2 / (g' A g),    g_i = L' (dC / dvarpar_i) L,    A = 2 H^-1,

    where ``H`` is the Hessian of the deviance ``D(theta, sigma)`` (REML or ML, as fitted) at the estimates:

        D(theta, sigma) = log|A_theta| [+ log|S_theta|] + r2(theta) / sigma^2 + dof log(2 pi sigma^2),

    ``dof = n - p`` (REML) or ``n`` (ML), ``r2`` the penalised residual sum of squares at the GLS estimate of
    beta (lmerTest's ``devfun_vp``). As lmerTest does, ``H`` is inverted on its eigenvalues above 1e-8 (a
    pseudo-inverse; negative or near-zero eigenvalues are reported in the notes) and the derivatives in theta
    are numerical, by numDeriv's Richardson extrapolation (``numDeriv::genD`` with the settings of
    ``numDeriv::hessian``: d = 0.1, eps = 1e-4, r = 4, v = 2), on the three functions of theta that
    :meth:`MixedCore.solve` returns (``log|A| [+ log|S|]``, ``r2`` and ``S^-1``). The derivatives in sigma are
    exact (``D`` and ``C`` are explicit in sigma). lmerTest differentiates ``C`` by ``numDeriv::jacobian``
    (d = 1e-4); here the first derivatives come from the same Richardson table as the Hessian. Both are
    accurate to about 1e-8 (relative), far inside the 1e-4 that ``tests/test_inference.py`` asks of the df
    against lmerTest.

Kenward-Roger (pbkrtest 0.5's ``vcovAdj`` and ``Lb_ddf``; REML fits only, as in lmerTest)
    The covariance of y is ``Sigma = sum_r gamma_r G_r``, one ``gamma`` per variance and covariance of every
    covariance block (``G_r = Z_l (I (x) E_r) Z_l'``) and the residual variance (``G = I``). With
    ``Phi = sigma^2 S^-1``, ``P_r = -X' Sigma^-1 G_r Sigma^-1 X``, ``Q_rs = X' Sigma^-1 G_r Sigma^-1 G_s
    Sigma^-1 X``, the expected information ``I_rs = tr(Sigma^-1 G_r Sigma^-1 G_s) - 2 tr(Phi Q_rs) +
    tr(Phi P_r Phi P_s)`` and ``W = 2 I^-1``, the adjusted covariance is

        Phi_A = Phi + 2 Phi [ sum_rs W_rs (Q_rs - P_r Phi P_s) ] Phi

    and the denominator df of a contrast follow Kenward & Roger (1997) as ``pbkrtest::Lb_ddf`` writes them.
    pbkrtest forms the n x n matrices; here every trace and product is written with q x q matrices (q: the
    number of group effects) through ``Sigma^-1 = sigma^-2 (I - Z Lambda A^-1 Lambda' Z')``, so the rows are
    only needed for ``Z'Z``, ``Z'X`` and ``X'X`` (a streamed fit's per-leaf sums give them too). ``A`` is
    sparse (nested groups), so its sparse LU gives ``Lambda A^-1 Lambda'`` in about q^2 operations, and nothing
    else costs more than q^2 p, but a few dense q x q matrices are held: above :data:`KR_MAX_EFFECTS` group
    effects Kenward-Roger is refused with a message. The adjusted standard errors replace the engine's in the
    tidy frame.

z
    Wald intervals ``estimate -+ 1.96 std_error``, p-values from the normal distribution; ``df`` is ``inf``
    (the normal is the t distribution with infinite df).

In the tidy frame (:data:`hiercompare.results.TIDY_COLUMNS`) the fixed rows of a Gaussian mixed fit carry
``df``, t-based ``conf_low``/``conf_high`` (``estimate -+ qt(0.975, df) std_error``) and ``p_value``
(``2 P(T_df > |estimate / std_error|)``, lmerTest's ``Pr(>|t|)``). ``std_error`` stays the engine's own for
Satterthwaite and z (lme4's ``vcov``; mixedlm's, which follows statsmodels' convention; native's
``sigma^2 S^-1``), and is the Kenward-Roger adjusted one for Kenward-Roger.

Examples
--------
>>> import hiercompare as hc
>>> from hiercompare import datasets
>>> f = hc.fit(datasets.load("pastes"), "strength ~ 1 + (1 | batch) + (1 | batch:cask)", backend="native")
>>> round(float(f.tidy("fixed")["df"].iloc[0]), 2)  # lmerTest: 9.00
9.0
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import SpecError

DF_METHODS = ("satterthwaite", "kenward-roger", "z")
ALIASES = {"satterthwaite": "satterthwaite", "kenward-roger": "kenward-roger", "kenward_roger": "kenward-roger",
           "kr": "kenward-roger", "z": "z"}
ZERO_TOL = float(np.sqrt(np.finfo(float).eps / 7e-7))  # numDeriv's zero.tol
EIGEN_TOL = 1e-8  # lmerTest's tol: eigenvalues of the Hessian at or below it are left out of its inverse
KR_MAX_EFFECTS = 6000  # Kenward-Roger forms a few dense q x q matrices (6000: 290 MB each); above, refused


def df_method(df, family: str = "gaussian") -> str:
    """The df method asked for: ``"satterthwaite"`` (the default, ``None``, for a Gaussian family),
    ``"kenward-roger"`` (also ``"kr"``) or ``"z"`` (the only one, and the default, for other families).

    >>> df_method(None), df_method("KR"), df_method(None, "binomial")
    ('satterthwaite', 'kenward-roger', 'z')
    """
    if df is None:
        return "satterthwaite" if family == "gaussian" else "z"
    key = str(df).strip().lower()
    if key not in ALIASES:
        raise SpecError(f"df must be one of {list(DF_METHODS)} (or None for the default), got {df!r}")
    method = ALIASES[key]
    if family != "gaussian" and method != "z":
        raise SpecError(f"df={method!r} is for Gaussian mixed models; a {family} model's fixed effects are "
                        "Wald z tests (df='z')")
    return method


# ---------------------------------------------------------------------------------------------------- numDeriv
def richardson(f, x, d: float = 0.1, eps: float = 1e-4, zero_tol: float = ZERO_TOL, r: int = 4, v: int = 2,
               hessian: bool = True):
    """numDeriv's ``genD`` for a vector function: Richardson-extrapolated gradient and Hessian.

    Returns ``(f0, grad, hess)``: ``grad`` of shape (len(f0), n), ``hess`` (len(f0), n, n) (None when
    ``hessian=False``). ``d``, ``eps``, ``zero_tol``, ``r``, ``v`` are genD's (``numDeriv::hessian`` passes
    d = 0.1); the steps are ``h = |d x| + eps * (|x| < zero_tol)``, halved r - 1 times.
    """
    x = np.asarray(x, dtype=float)
    n = x.size
    f0 = np.asarray(f(x), dtype=float)
    h0 = np.abs(d * x) + eps * (np.abs(x) < zero_tol)

    def extrapolate(a):
        a = list(a)
        for m in range(1, r):
            for k in range(r - m):
                a[k] = (a[k + 1] * 4.0 ** m - a[k]) / (4.0 ** m - 1)
        return a[0]

    grad = np.empty((f0.size, n))
    hdiag = np.empty((f0.size, n))
    for i in range(n):
        h = h0.copy()
        da, ha = [], []
        for _ in range(r):
            e = np.zeros(n)
            e[i] = h[i]
            f1, f2 = np.asarray(f(x + e), dtype=float), np.asarray(f(x - e), dtype=float)
            da.append((f1 - f2) / (2 * h[i]))
            ha.append((f1 - 2 * f0 + f2) / h[i] ** 2)
            h = h / v
        grad[:, i] = extrapolate(da)
        hdiag[:, i] = extrapolate(ha)
    if not hessian:
        return f0, grad, None
    hess = np.empty((f0.size, n, n))
    for i in range(n):
        hess[:, i, i] = hdiag[:, i]
        for j in range(i):
            h = h0.copy()
            da = []
            for _ in range(r):
                e = np.zeros(n)
                e[i], e[j] = h[i], h[j]
                f1, f2 = np.asarray(f(x + e), dtype=float), np.asarray(f(x - e), dtype=float)
                da.append((f1 - 2 * f0 + f2 - hdiag[:, i] * h[i] ** 2 - hdiag[:, j] * h[j] ** 2)
                          / (2 * h[i] * h[j]))
                h = h / v
            hess[:, i, j] = hess[:, j, i] = extrapolate(da)
    return f0, grad, hess


# ---------------------------------------------------------------------------------------------------- Satterthwaite
@dataclass
class Satterthwaite:
    """The pieces of lmerTest's Satterthwaite approximation at one point ``varpar = (theta, sigma)``."""

    varpar: np.ndarray
    vcov_beta: np.ndarray  # C = sigma^2 S^-1
    jacobian: np.ndarray  # (m, p, p): dC / dvarpar_i
    hessian: np.ndarray  # (m, m): Hessian of D(theta, sigma)
    vcov_varpar: np.ndarray  # (m, m): 2 H^+ (eigenvalues above EIGEN_TOL)
    notes: list[str] = field(default_factory=list)

    def df(self, L) -> float:
        """Satterthwaite's df of the contrast ``L' beta`` (lmerTest's ``contest1D``)."""
        L = np.asarray(L, dtype=float)
        var = L @ self.vcov_beta @ L
        g = np.einsum("i,mij,j->m", L, self.jacobian, L)
        denom = g @ self.vcov_varpar @ g
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(2 * var ** 2 / denom)

    def dfs(self) -> np.ndarray:
        """df of every coefficient."""
        p = self.vcov_beta.shape[0]
        return np.array([self.df(np.eye(p)[j]) for j in range(p)])


def _profiled_pieces(core, reml: bool):
    """theta -> [log|A| (+ log|S|), r2, S^-1 (flattened)] through :meth:`MixedCore.solve` (cached)."""
    n, p = core.n, core.p
    dof = n - p if reml else n
    cache: dict[bytes, np.ndarray] = {}

    def fn(theta):
        theta = np.asarray(theta, dtype=float)
        key = theta.tobytes()
        if key not in cache:
            try:
                res = core.solve(theta, reml, condvar="beta_fixed")
                r2 = res.sigma ** 2 * dof
                logdet = res.deviance - dof * (1.0 + np.log(2 * np.pi * r2 / dof))
                sinv = res.vcov_beta / res.sigma ** 2
                out = np.concatenate([[logdet, r2], sinv.ravel()])
            except (np.linalg.LinAlgError, FloatingPointError, ZeroDivisionError):
                out = np.full(2 + p * p, np.nan)
            if not np.isfinite(out).all():
                out = np.full(2 + p * p, np.nan)
            cache[key] = out
        return cache[key]

    return fn, dof


def satterthwaite(core, theta, sigma: float, reml: bool = True) -> Satterthwaite:
    """lmerTest's Satterthwaite pieces at ``(theta, sigma)`` on a :class:`~hiercompare.mixedcore.MixedCore`.

    ``theta`` in mixedcore's order (``core.theta_index``); ``sigma`` the residual SD. The df are invariant to
    the order of theta (lme4's differs), so lmerTest's numbers are reproduced at the same estimates.
    """
    theta = np.asarray(theta, dtype=float)
    sigma = float(sigma)
    p = core.p
    fn, dof = _profiled_pieces(core, reml)
    f0, grad, hess = richardson(fn, theta, d=0.1)
    if not np.isfinite(f0).all():
        raise FloatingPointError("the likelihood is not finite at these estimates")
    m = theta.size
    s2 = sigma ** 2
    r2 = f0[1]
    sinv = f0[2:].reshape(p, p)
    # D(theta, sigma) = logdet(theta) + r2(theta) / sigma^2 + dof log(2 pi sigma^2)
    H = np.empty((m + 1, m + 1))
    H[:m, :m] = hess[0] + hess[1] / s2
    H[:m, m] = H[m, :m] = -2.0 * grad[1] / sigma ** 3
    H[m, m] = 6.0 * r2 / sigma ** 4 - 2.0 * dof / s2
    H = (H + H.T) / 2
    jac = np.empty((m + 1, p, p))
    jac[:m] = s2 * np.moveaxis(grad[2:].reshape(p, p, m), 2, 0)
    jac[m] = 2.0 * sigma * sinv
    notes = []
    if not np.isfinite(H).all() or not np.isfinite(jac).all():
        raise FloatingPointError("the likelihood is not finite near these estimates")
    evals, evecs = np.linalg.eigh(H)
    neg = evals < -EIGEN_TOL
    zero = np.abs(evals) <= EIGEN_TOL
    if neg.any():
        notes.append(f"Satterthwaite: the deviance's Hessian has {int(neg.sum())} negative eigenvalue(s) "
                     f"({', '.join(f'{e:.1e}' for e in evals[neg])}): the fit may not have converged (lmerTest's "
                     "warning); those directions are left out of its inverse")
    if zero.any():
        notes.append(f"Satterthwaite: the deviance's Hessian has {int(zero.sum())} eigenvalue(s) close to zero "
                     f"({', '.join(f'{e:.1e}' for e in evals[zero])}); those directions are left out of its inverse")
    pos = evals > EIGEN_TOL
    h_inv = (evecs[:, pos] / evals[pos]) @ evecs[:, pos].T
    return Satterthwaite(varpar=np.r_[theta, sigma], vcov_beta=s2 * sinv, jacobian=jac, hessian=H,
                         vcov_varpar=2.0 * h_inv, notes=notes)


# ---------------------------------------------------------------------------------------------------- Kenward-Roger
@dataclass
class KenwardRoger:
    """pbkrtest's adjusted covariance and what its df need (``P``, ``W``), at one REML estimate."""

    vcov_beta: np.ndarray  # Phi = sigma^2 S^-1
    vcov_adj: np.ndarray  # Phi_A
    P: list[np.ndarray]
    W: np.ndarray
    notes: list[str] = field(default_factory=list)

    def df(self, L) -> float:
        """Kenward-Roger's denominator df of the contrast ``L' beta`` (pbkrtest's ``Lb_ddf``)."""
        return lb_ddf(np.atleast_2d(np.asarray(L, dtype=float)), self.vcov_beta, self.P, self.W)

    def dfs(self) -> np.ndarray:
        p = self.vcov_beta.shape[0]
        return np.array([self.df(np.eye(p)[j]) for j in range(p)])


def lb_ddf(L: np.ndarray, V0: np.ndarray, P: list[np.ndarray], W: np.ndarray) -> float:
    """``pbkrtest::Lb_ddf``: the Kenward-Roger denominator df of the rows of ``L`` (q x p)."""
    Theta = L.T @ np.linalg.solve(L @ V0 @ L.T, L)
    TV = Theta @ V0
    A1 = A2 = 0.0
    ng = len(P)
    for i in range(ng):
        ui = TV @ P[i] @ V0
        for j in range(i, ng):
            e = 1.0 if i == j else 2.0
            uj = TV @ P[j] @ V0
            A1 += e * W[i, j] * np.trace(ui) * np.trace(uj)
            A2 += e * W[i, j] * np.sum(ui * uj.T)
    q = L.shape[0]
    B = (A1 + 6 * A2) / (2 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    c1 = g / (3 * q + 2 * (1 - g))
    c2 = (q - g) / (3 * q + 2 * (1 - g))
    c3 = (q + 2 - g) / (3 * q + 2 * (1 - g))
    v0 = 1 + c1 * B
    v1 = 1 - c2 * B
    v2 = 1 - c3 * B
    v0 = 0.0 if abs(v0) < 1e-10 else v0
    num = 1 - A2 / q
    ratio = 1.0 if (abs(num) < 1e-14 and abs(v1) < 1e-14) else num / v1
    rho = ratio ** 2 * v0 / v2 / q
    return float(4 + (q + 2) / (q * rho - 1))


def _offsets(levels) -> list[int]:
    off, out = 0, []
    for lv in levels:
        out.append(off)
        off += lv.n_groups * len(lv.spec.terms)
    return out + [off]


def cross_products(md):
    """``Z'Z`` (sparse, q x q), ``Z'X`` (q x p), ``X'X`` and n for a ModelData, with every level's group effects
    stacked level by level from the top, group by group, term by term. A streamed fit's per-leaf sums
    (``md.sums``) give the same matrices as its rows would."""
    from scipy import sparse

    levels = md.hierarchy.levels
    off = _offsets(levels)
    q = off[-1]
    sums = getattr(md, "sums", None)
    if sums is None:
        cols = []
        for li, lv in enumerate(levels):
            z = md.Z[lv.group]
            k = z.shape[1]
            rows = np.repeat(np.arange(md.n), k)
            idx = off[li] + (lv.codes[:, None] * k + np.arange(k)[None, :]).ravel()
            cols.append(sparse.csr_matrix((z.ravel(), (rows, idx)), shape=(md.n, q)))
        Z = sum(cols[1:], cols[0]).tocsr()
        X = np.asarray(md.X, dtype=float)
        return (Z.T @ Z).tocsr(), np.asarray(Z.T @ X), X.T @ X, md.n
    # per-leaf sums of [z_1 .. z_L, X, y]: place each leaf's blocks at its ancestors' positions
    ks = [len(lv.spec.terms) for lv in levels]
    K = sum(ks)
    C = np.asarray(sums, dtype=float)
    G = C.shape[0]
    anc = [None] * len(levels)
    anc[-1] = np.arange(G)
    for li in range(len(levels) - 1, 0, -1):
        anc[li - 1] = levels[li].parent[anc[li]]
    zpos = np.concatenate([off[li] + anc[li][:, None] * ks[li] + np.arange(ks[li])[None, :]
                           for li in range(len(levels))], axis=1)  # (G, K): each leaf's effect indices
    rr = np.repeat(zpos, K, axis=1).ravel()
    cc = np.tile(zpos, (1, K)).ravel()
    ZtZ = sparse.csr_matrix((C[:, :K, :K].ravel(), (rr, cc)), shape=(q, q))
    p = C.shape[1] - K - 1
    ZtX = np.zeros((q, p))
    np.add.at(ZtX, zpos.ravel(), C[:, :K, K:K + p].reshape(-1, p))
    XtX = C[:, K:K + p, K:K + p].sum(axis=0)
    return ZtZ, ZtX, XtX, md.n


def _covariance_blocks(md):
    """Per level: the (a, b) entries (a >= b, lower triangle) of every covariance block, as pbkrtest lists its
    variance and covariance parameters."""
    out = []
    for lv in md.hierarchy.levels:
        terms = list(lv.spec.terms)
        pairs = []
        for block in lv.spec.blocks:
            ix = [terms.index(t) for t in block]
            for a in range(len(ix)):
                for b in range(a + 1):
                    pairs.append((ix[a], ix[b]))
        out.append(pairs)
    return out


def kenward_roger(md, lambdas, sigma: float) -> KenwardRoger:
    """pbkrtest's ``vcovAdj`` at a REML estimate given by the relative factors ``lambdas`` (one k_l x k_l per
    level, Sigma_l = sigma^2 Lambda_l Lambda_l') and the residual SD, written with q x q matrices."""
    from scipy import sparse
    from scipy.sparse import linalg as splinalg

    levels = md.hierarchy.levels
    off = _offsets(levels)
    q = off[-1]
    if q > KR_MAX_EFFECTS:
        raise SpecError(f"Kenward-Roger forms dense q x q matrices over all {q} group effects (more than "
                        f"{KR_MAX_EFFECTS}); use df='satterthwaite'")
    ZtZ, ZtX, XtX, n = cross_products(md)
    p = XtX.shape[0]
    s2 = float(sigma) ** 2
    Lam = sparse.block_diag([sparse.kron(sparse.identity(lv.n_groups), sparse.csr_matrix(lam))
                             for lv, lam in zip(levels, lambdas)], format="csr")
    # A is sparse (a group's effects couple only to its ancestors'): a sparse LU in the natural order (top level
    # first: the fill stays within each top group, and SuperLU's supernodes make the q solves fastest), then q solves
    A = (Lam.T @ ZtZ @ Lam + sparse.identity(q)).tocsc()
    lu = splinalg.splu(A, permc_spec="NATURAL")
    H = np.asarray(Lam @ lu.solve(Lam.T.toarray()))  # Lambda A^-1 Lambda'  (q x q)
    del lu
    H = (H + H.T) / 2
    K = ZtZ
    KH = np.asarray(K @ H)
    trM2 = (n - 2 * np.trace(KH) + np.sum(KH * KH.T)) / s2 ** 2
    R = KH  # R = I - K H: Z'(I - Z H Z') = R Z'
    del KH
    R *= -1.0
    R[np.diag_indices(q)] += 1.0
    # sigma^2 Sigma^-1 = I - Z H Z'; every quantity below in sigma units, scaled at the end
    ZMZ = np.asarray((K @ R.T).T) / s2  # Z' Sigma^-1 Z = R K / s2
    RZX = R @ ZtX
    ZMX = RZX / s2
    HZX = H @ ZtX
    XMX = (XtX - ZtX.T @ HZX) / s2
    ZM2X = R @ RZX / s2 ** 2
    YY = XtX - 2 * ZtX.T @ HZX + HZX.T @ (K @ HZX)
    XM2X = YY / s2 ** 2
    XM3X = (YY - RZX.T @ H @ RZX) / s2 ** 3

    def zm2z_diag(li):
        """The group-diagonal blocks (G_l, k_l, k_l) of Z' Sigma^-2 Z = R K R' / s2^2 at level li."""
        Gl, k = levels[li].n_groups, len(levels[li].spec.terms)
        rk = ZMZ[off[li]:off[li + 1]].reshape(Gl, k, q)
        rr = R[off[li]:off[li + 1]].reshape(Gl, k, q)
        return np.einsum("gaj,gbj->gab", rk, rr) / s2

    Phi = np.linalg.inv(XMX)
    Phi = (Phi + Phi.T) / 2
    # the parameters: every covariance entry of every block (level l), then the residual variance
    params = []
    for li, pairs in enumerate(_covariance_blocks(md)):
        k = len(levels[li].spec.terms)
        for a, b in pairs:
            E = np.zeros((k, k))
            E[a, b] = E[b, a] = 1.0
            params.append((li, E))

    def apply_e(li, E, M):
        """(I_G (x) E) applied to the rows of level li of M: a (G_l k_l, ...) block."""
        k = E.shape[0]
        Gl = levels[li].n_groups
        block = M[off[li]:off[li + 1]].reshape(Gl, k, -1)
        return np.matmul(E, block).reshape((Gl * k,) + M.shape[1:])

    ng = len(params) + 1
    V = []  # Etilde_r Z' Sigma^-1 X, full q x p (zero outside level l)
    for li, E in params:
        v = np.zeros((q, p))
        v[off[li]:off[li + 1]] = apply_e(li, E, ZMX)
        V.append(v)
    P = [-(ZMX.T @ v) for v in V] + [-XM2X]
    P = [(x + x.T) / 2 for x in P]

    def pair_moments(lr, ls):
        """M[a', b, a, b'] = sum over groups g (level lr), h (level ls) of B[g,a',h,b] B[g,a,h,b'], B the block
        of Z' Sigma^-1 Z between the two levels: tr(Et_r ZMZ Et_s ZMZ) = sum E_r[a,a'] E_s[b',b] M[a',b,a,b']."""
        kl, km = len(levels[lr].spec.terms), len(levels[ls].spec.terms)
        B = ZMZ[off[lr]:off[lr + 1], off[ls]:off[ls + 1]].reshape(levels[lr].n_groups, kl, levels[ls].n_groups, km)
        B2 = B.transpose(1, 3, 0, 2).reshape(kl * km, -1)
        return (B2 @ B2.T).reshape(kl, km, kl, km)

    Q = {}
    diag, moments = {}, {}
    Kt = np.empty((ng, ng))
    for r, (lr, Er) in enumerate(params):
        for s in range(r, len(params)):
            ls, Es = params[s]
            Q[r, s] = V[r].T @ ZMZ @ V[s]
            if (lr, ls) not in moments:
                moments[lr, ls] = pair_moments(lr, ls)
            Kt[r, s] = Kt[s, r] = np.einsum("ij,kl,jlik->", Er, Es, moments[lr, ls])
        Q[r, ng - 1] = V[r].T @ ZM2X
        if lr not in diag:
            diag[lr] = zm2z_diag(lr)
        Kt[r, ng - 1] = Kt[ng - 1, r] = np.einsum("ab,gba->", Er, diag[lr])
    Q[ng - 1, ng - 1] = XM3X
    Kt[ng - 1, ng - 1] = trM2
    IE2 = np.empty((ng, ng))
    for i in range(ng):
        PhiPi = Phi @ P[i]
        for j in range(i, ng):
            IE2[i, j] = IE2[j, i] = Kt[i, j] - 2 * np.sum(Phi * Q[i, j]) + np.sum(PhiPi * (P[j] @ Phi))
    notes = []
    condi = np.min(np.abs(np.linalg.eigvalsh(IE2)))
    if condi > 1e-10:
        W = 2 * np.linalg.inv(IE2)
    else:
        W = 2 * np.linalg.pinv(IE2)
        notes.append(f"Kenward-Roger: the expected information is singular (smallest |eigenvalue| {condi:.1e}); "
                     "its generalised inverse is used, as pbkrtest does")
    W = (W + W.T) / 2
    U = np.zeros((p, p))
    for i in range(ng - 1):
        for j in range(i + 1, ng):
            U += W[i, j] * (Q[i, j] - P[i] @ Phi @ P[j])
    U = U + U.T
    for i in range(ng):
        U += W[i, i] * (Q[i, i] - P[i] @ Phi @ P[i])
    adj = Phi + 2 * Phi @ U @ Phi
    return KenwardRoger(vcov_beta=Phi, vcov_adj=(adj + adj.T) / 2, P=P, W=W, notes=notes)


# ---------------------------------------------------------------------------------------------------- from a fit
def _psd_cholesky(S: np.ndarray) -> np.ndarray:
    """Lower-triangular L with L L' = S for a positive semi-definite S (zero columns where S is singular), as
    lme4's theta for a fit on the boundary."""
    k = S.shape[0]
    L = np.zeros_like(S, dtype=float)
    for j in range(k):
        d = S[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-14 * max(S[j, j], 1e-300):
            continue
        L[j, j] = np.sqrt(d)
        for i in range(j + 1, k):
            L[i, j] = (S[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L


def varpar_from_table(md, table) -> tuple[list[np.ndarray], float]:
    """The relative factors (one Lambda_l per level, mixedcore's layout) and the residual SD of a fit's tidy
    ran_pars rows: SDs ``sd__<term>``, correlations ``cor__<a>.<b>`` (missing or NaN: 0), residual
    ``sd__Observation``. Each covariance block's factor is the Cholesky factor of its covariance over sigma^2,
    with lme4's non-negative diagonal, so for an lme4 fit these are lme4's theta (in mixedcore's order)."""
    from .results import RESIDUAL, cor_term, sd_term

    rp = table[table["effect"] == "ran_pars"]
    val = {(g, t): float(e) for g, t, e in zip(rp["group"], rp["term"], rp["estimate"])}
    sigma = val.get((RESIDUAL, sd_term("Observation")), np.nan)
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError("the fit has no positive residual SD")
    lams = []
    for lv in md.hierarchy.levels:
        terms = list(lv.spec.terms)
        k = len(terms)
        sds = np.array([val.get((lv.group, sd_term(t)), np.nan) for t in terms])
        if not np.isfinite(sds).all():
            raise ValueError(f"the fit has no SD of every term of {lv.group} ({terms})")
        lam = np.zeros((k, k))
        for block in lv.spec.blocks:
            ix = [terms.index(t) for t in block]
            S = np.diag(sds[ix] ** 2)
            for a in range(len(ix)):
                for b in range(a + 1, len(ix)):
                    ta, tb = terms[ix[a]], terms[ix[b]]
                    c = val.get((lv.group, cor_term(ta, tb)), val.get((lv.group, cor_term(tb, ta)), np.nan))
                    S[a, b] = S[b, a] = (c if np.isfinite(c) else 0.0) * sds[ix[a]] * sds[ix[b]]
            lam[np.ix_(ix, ix)] = _psd_cholesky(S / sigma ** 2)
        lams.append(lam)
    return lams, float(sigma)


def theta_of(core, lambdas) -> np.ndarray:
    """mixedcore's theta vector (``core.theta_index`` order) of relative factors."""
    return np.array([lambdas[li][i, j] for li, i, j in core.theta_index])


def t_columns(estimate, std_error, df, level: float = 0.95) -> dict:
    """``conf_low``, ``conf_high`` (``estimate -+ qt((1 + level) / 2, df) std_error``), ``df`` and ``p_value``
    (two-sided, ``2 P(T_df > |estimate / std_error|)``). ``df = inf`` gives the z interval and p-value.

    >>> round(t_columns(1.0, 0.5, 10.0)["conf_high"], 6)
    2.114069
    """
    from scipy import stats

    est, se, df = (np.asarray(a, dtype=float) for a in (estimate, std_error, df))
    with np.errstate(divide="ignore", invalid="ignore"):
        tq = np.where(np.isinf(df), stats.norm.ppf((1 + level) / 2), stats.t.ppf((1 + level) / 2, df))
        tstat = est / se
        pv = np.where(np.isinf(df), 2 * stats.norm.sf(np.abs(tstat)), 2 * stats.t.sf(np.abs(tstat), df))
    return {"conf_low": est - tq * se, "conf_high": est + tq * se, "df": df * 1.0, "p_value": pv}


def fixed_effects(md, table, method: str = "satterthwaite", *, reml: bool = True, core=None, theta=None,
                  sigma: float | None = None) -> tuple:
    """The tidy frame with its fixed rows' ``df``, ``conf_low``, ``conf_high`` and ``p_value`` by ``method``
    (``std_error`` too for Kenward-Roger), and a dict for the Fit's diagnostics: ``{"df_method": ..., "notes":
    [...]}``.

    The variance parameters are ``theta`` and ``sigma`` when given (the native engine's own), otherwise read from
    the table's ran_pars rows (:func:`varpar_from_table`: lme4's and mixedlm's estimates). Where Satterthwaite or
    Kenward-Roger cannot be computed (a likelihood that is not finite there, a singular matrix), the rows get
    z intervals (df inf) and the note says why.
    """
    from . import mixedcore

    method = df_method(method, md.spec.family)
    out = table.copy()
    fixed = (out["effect"] == "fixed").to_numpy()
    info = {"df_method": method, "notes": []}
    if not fixed.any():
        return out, info
    est = out.loc[fixed, "estimate"].to_numpy(dtype=float)
    se = out.loc[fixed, "std_error"].to_numpy(dtype=float)
    df = np.full(est.size, np.inf)
    if method != "z":
        try:
            if core is None:
                core = mixedcore.from_model_data(md)
            if theta is None or sigma is None:
                lams, sigma = varpar_from_table(md, out)
                theta = theta_of(core, lams)
            order = [md.fixed_names.index(t) for t in out.loc[fixed, "term"]]
            if method == "satterthwaite":
                st = satterthwaite(core, theta, sigma, reml=reml)
                df = st.dfs()[order]
                info["notes"] += st.notes
            else:
                if not reml:
                    raise SpecError("Kenward-Roger is for REML fits (as in lmerTest and pbkrtest); refit with "
                                    "method='REML' or use df='satterthwaite'")
                kr = kenward_roger(md, core.lambdas(theta), sigma)
                df = kr.dfs()[order]
                se = np.sqrt(np.diag(kr.vcov_adj))[order]
                info["notes"] += kr.notes
            bad = ~np.isfinite(df) | (df <= 0)
            if bad.any():
                info["notes"].append(f"{method}: no finite positive df for {list(out.loc[fixed, 'term'][bad])}; "
                                     "z intervals there")
                df = np.where(bad, np.inf, df)
        except SpecError:
            raise
        except Exception as exc:  # numerical trouble: said, and z intervals instead
            info["notes"].append(f"{method} df could not be computed ({type(exc).__name__}: {exc}); the fixed "
                                 "effects have z intervals (df inf)")
            df = np.full(est.size, np.inf)
            se = out.loc[fixed, "std_error"].to_numpy(dtype=float)
    cols = t_columns(est, se, df)
    out.loc[fixed, "std_error"] = se
    for c, v in cols.items():
        out.loc[fixed, c] = v
    return out, info


__all__ = ["DF_METHODS", "df_method", "richardson", "Satterthwaite", "satterthwaite", "KenwardRoger",
           "kenward_roger", "lb_ddf", "cross_products", "varpar_from_table", "theta_of", "t_columns",
           "fixed_effects"]
