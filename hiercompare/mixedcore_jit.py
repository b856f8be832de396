"""Compiled (numba) kernels for :mod:`hiercompare.mixedcore`: the profiled deviance with its analytic gradient,
and the one pass over the rows that builds the per-leaf cross-products.

Imported lazily by mixedcore (numba is optional: the ``bayes`` extra brings it). Every kernel has a vectorised
numpy twin in mixedcore that gives the same numbers; ``tests/test_mixedcore_gradient.py`` checks both.
The compiled code is cached on disk (``cache=True``: ``__pycache__`` beside this file, or ``NUMBA_CACHE_DIR``),
so only the first process on a machine pays the compile (a few seconds).

Layout (docs/mixedcore.md, section 9.1): the kernels work in the *leaf-first* order
``[z_L, z_{L-1}, ..., z_1, X, y]``, so that the effects eliminated at each step are the first k columns of every
group's matrix and the rest is one contiguous block.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _chol_into(A, Lout, k):
    """Cholesky factor of the k x k matrix A into Lout (lower); returns log|A|, or nan if A is not positive
    definite."""
    logdet = 0.0
    for a in range(k):
        for b in range(a + 1):
            s_ = A[a, b]
            for m in range(b):
                s_ -= Lout[a, m] * Lout[b, m]
            if a == b:
                if not s_ > 0.0:
                    return np.nan
                Lout[a, a] = math.sqrt(s_)
                logdet += math.log(s_)
            else:
                Lout[a, b] = s_ / Lout[b, b]
    return logdet


@njit(cache=True, nogil=True)
def _leaves_forward(czz, czr, T, parents, has_parent, N, Lleaf, Wleaf):
    """The leaf level: N_m -= E_s' B_s^-1 E_s for every leaf s of parent m (N_m starts as Pm); returns the
    leaves' sum of log|B_s|, nan where a B_s is not positive definite."""
    G, k0, r0 = czr.shape
    B = np.empty((k0, k0))
    E = np.empty((k0, r0))
    logdet = 0.0
    lam = T[0, 0]
    for s in range(G):
        m = parents[s] if has_parent else 0
        if k0 == 1:  # a scalar leaf term (the usual (1 | leaf)): B = lam^2 czz + 1, N_m -= lam^2 / B v v'
            d = lam * lam * czz[s, 0, 0] + 1.0
            Lleaf[s, 0, 0] = math.sqrt(d)
            logdet += math.log(d)
            f = lam * lam / d
            for a in range(r0):
                va = f * czr[s, 0, a]
                for b in range(a + 1):
                    N[m, a, b] -= va * czr[s, 0, b]
            continue
        for a in range(k0):  # B = Lambda' czz Lambda + I (Lambda lower triangular)
            for b in range(a + 1):
                acc = 0.0
                for c in range(a, k0):
                    tca = T[c, a]
                    if tca != 0.0:
                        for d in range(b, k0):
                            acc += tca * czz[s, c, d] * T[d, b]
                B[a, b] = acc + (1.0 if a == b else 0.0)
        ld = _chol_into(B, Lleaf[s], k0)
        if not ld == ld:
            return np.nan
        logdet += ld
        for a in range(k0):  # E = Lambda' czr
            for c in range(r0):
                acc = 0.0
                for d in range(a, k0):
                    acc += T[d, a] * czr[s, d, c]
                E[a, c] = acc
        for c in range(r0):  # W = L^-1 E
            for a in range(k0):
                s_ = E[a, c]
                for q in range(a):
                    s_ -= Lleaf[s, a, q] * Wleaf[s, q, c]
                Wleaf[s, a, c] = s_ / Lleaf[s, a, a]
        for a in range(r0):
            for b in range(a + 1):
                s_ = 0.0
                for q in range(k0):
                    s_ += Wleaf[s, q, a] * Wleaf[s, q, b]
                N[m, a, b] -= s_
    for m in range(N.shape[0]):
        for a in range(r0):
            for b in range(a):
                N[m, b, a] = N[m, a, b]
    return logdet


@njit(cache=True, nogil=True)
def _transform(N, T, k0, tptr, tidx, NT, M):
    """M_m = T_r' N_m T_r, keeping NT_m = N_m T_r (T_r = T[k0:, k0:], its structure by column in tptr/tidx)."""
    G1, r0, _ = N.shape
    for m in range(G1):
        for c in range(r0):
            for b in range(r0):
                acc = 0.0
                for q in range(tptr[b], tptr[b + 1]):
                    acc += N[m, c, tidx[q]] * T[k0 + tidx[q], k0 + b]
                NT[m, c, b] = acc
        for a in range(r0):
            for b in range(a + 1):
                acc = 0.0
                for q in range(tptr[a], tptr[a + 1]):
                    acc += T[k0 + tidx[q], k0 + a] * NT[m, tidx[q], b]
                M[m, a, b] = acc
                M[m, b, a] = acc


@njit(cache=True, nogil=True)
def _level_forward(cur, k, parents, off, has_parent, up, Lst, Wst):
    """Eliminate the first k columns of every group's matrix (after adding the penalty I), summing the Schur
    complements into the parents' matrices ``up``; returns the sum of log|Mee|, nan where one is not positive
    definite."""
    Gj, Dj, _ = cur.shape
    r = Dj - k
    Mee = np.empty((k, k))
    logdet = 0.0
    for g in range(Gj):
        pa = parents[off + g] if has_parent else 0
        for a in range(k):
            for b in range(a + 1):
                Mee[a, b] = cur[g, a, b] + (1.0 if a == b else 0.0)
        ld = _chol_into(Mee, Lst[g], k)
        if not ld == ld:
            return np.nan
        logdet += ld
        for c in range(r):
            for a in range(k):
                s_ = cur[g, a, k + c]
                for q in range(a):
                    s_ -= Lst[g, a, q] * Wst[g, q, c]
                Wst[g, a, c] = s_ / Lst[g, a, a]
        for a in range(r):
            for b in range(a + 1):
                s_ = cur[g, k + a, k + b]
                for q in range(k):
                    s_ -= Wst[g, q, a] * Wst[g, q, b]
                up[pa, a, b] += s_
    for g in range(up.shape[0]):
        for a in range(r):
            for b in range(a):
                up[g, b, a] = up[g, a, b]
    return logdet


@njit(cache=True, nogil=True)
def _root(F, p, Ls):
    """S = F[:p, :p] = Ls Ls' (into Ls), beta = S^-1 r, r2 = q - r' beta; returns (log|S|, beta, r2) with
    log|S| nan where S is not positive definite."""
    beta = np.zeros(p)
    logdet_S = 0.0
    if p > 0:
        logdet_S = _chol_into(F, Ls, p)
        if not logdet_S == logdet_S:
            return np.nan, beta, np.nan
    z = np.empty(p)
    for a in range(p):
        s_ = F[a, p]
        for q in range(a):
            s_ -= Ls[a, q] * z[q]
        z[a] = s_ / Ls[a, a]
    for a in range(p - 1, -1, -1):
        s_ = z[a]
        for q in range(a + 1, p):
            s_ -= Ls[q, a] * beta[q]
        beta[a] = s_ / Ls[a, a]
    r2 = F[p, p]
    for a in range(p):
        r2 -= F[a, p] * beta[a]
    return logdet_S, beta, r2


@njit(cache=True, nogil=True)
def _root_adjoint(beta, r2, dof, reml, Ls, p, H):
    """d deviance / d F into H[0]: (dof / r2) g g' with g = [-beta, 1], plus S^-1 for REML."""
    w = dof / r2
    for a in range(p + 1):
        ga = 1.0 if a == p else -beta[a]
        for b in range(p + 1):
            gb = 1.0 if b == p else -beta[b]
            H[0, a, b] = w * ga * gb
    if reml and p > 0:
        Linv = np.zeros((p, p))  # Ls^-1, then S^-1 = Linv' Linv
        for c in range(p):
            for a in range(c, p):
                s_ = 1.0 if a == c else 0.0
                for q in range(c, a):
                    s_ -= Ls[a, q] * Linv[q, c]
                Linv[a, c] = s_ / Ls[a, a]
        for a in range(p):
            for b in range(p):
                s_ = 0.0
                for q in range(max(a, b), p):
                    s_ += Linv[q, a] * Linv[q, b]
                H[0, a, b] += s_


@njit(cache=True, nogil=True)
def _level_backward(Hup, Lst, Wst, k, r, parents, off, has_parent, Mbar):
    """The adjoint of every group's matrix from its parent's (Hup): with X = Mee^-1 Mer,
    [[Mee^-1 + X H X', -X H], [-H X', H]]."""
    Gj = Mbar.shape[0]
    X = np.empty((k, r))
    XH = np.empty((k, r))
    Li = np.zeros((k, k))
    for g in range(Gj):
        pa = parents[off + g] if has_parent else 0
        for c in range(r):  # X = L^-T W
            for a in range(k - 1, -1, -1):
                s_ = Wst[g, a, c]
                for q in range(a + 1, k):
                    s_ -= Lst[g, q, a] * X[q, c]
                X[a, c] = s_ / Lst[g, a, a]
        for c in range(k):  # L^-1; Mee^-1 = L^-T L^-1
            for a in range(c, k):
                s_ = 1.0 if a == c else 0.0
                for q in range(c, a):
                    s_ -= Lst[g, a, q] * Li[q, c]
                Li[a, c] = s_ / Lst[g, a, a]
        for a in range(k):
            for c in range(r):
                s_ = 0.0
                for q in range(r):
                    s_ += X[a, q] * Hup[pa, q, c]
                XH[a, c] = s_
        for a in range(k):
            for b in range(k):
                s_ = 0.0
                for q in range(max(a, b), k):
                    s_ += Li[q, a] * Li[q, b]
                for q in range(r):
                    s_ += XH[a, q] * X[b, q]
                Mbar[g, a, b] = s_
            for c in range(r):
                Mbar[g, a, k + c] = -XH[a, c]
                Mbar[g, k + c, a] = -XH[a, c]
        for a in range(r):
            for b in range(r):
                Mbar[g, k + a, k + b] = Hup[pa, a, b]


@njit(cache=True, nogil=True)
def _parents_backward(NT, H, T, k0, grow, gcol, Tbar, Nbar):
    """From the adjoint H of M_m = T_r' N_m T_r: d / d T_r = 2 sum_m N_m T_r H_m (at theta's entries, into
    Tbar) and Nbar_m = T_r H_m T_r'."""
    G1, r0, _ = NT.shape
    for t in range(grow.shape[0]):
        if grow[t] >= k0:
            c = grow[t] - k0
            b = gcol[t] - k0
            acc = 0.0
            for m in range(G1):
                for q in range(r0):
                    acc += NT[m, c, q] * H[m, q, b]
            Tbar[grow[t], gcol[t]] = 2.0 * acc
    TH = np.empty((r0, r0))
    for m in range(G1):
        for a in range(r0):  # TH = T_r H_m (T_r lower triangular)
            for b in range(r0):
                acc = 0.0
                for q in range(a + 1):
                    acc += T[k0 + a, k0 + q] * H[m, q, b]
                TH[a, b] = acc
        for a in range(r0):
            for b in range(a + 1):
                acc = 0.0
                for q in range(b + 1):
                    acc += TH[a, q] * T[k0 + b, k0 + q]
                Nbar[m, a, b] = acc
                Nbar[m, b, a] = acc


@njit(cache=True, nogil=True)
def _leaves_backward(czz, czr, T, Lleaf, Wleaf, Nbar, parents, has_parent, Lbar):
    """d deviance / d Lambda_leaf into Lbar: per leaf Bbar = B^-1 + X Nbar X', Ebar = -2 X Nbar with
    X = B^-1 E, and Lambda's adjoint 2 czz Lambda Bbar + czr Ebar'."""
    G, k0, r0 = czr.shape
    lam = T[0, 0]
    X = np.empty((k0, r0))
    XN = np.empty((k0, r0))
    Li = np.zeros((k0, k0))
    Bbar = np.empty((k0, k0))
    CL = np.empty((k0, k0))
    for s in range(G):
        m = parents[s] if has_parent else 0
        if k0 == 1:  # X = lam v / B: Bbar = 1/B + lam^2 q / B^2, Ebar' czr = -2 lam q / B, q = v' Nbar v
            d = Lleaf[s, 0, 0] * Lleaf[s, 0, 0]
            q2 = 0.0
            for a in range(r0):
                va = czr[s, 0, a]
                acc = 0.5 * Nbar[m, a, a] * va
                for b in range(a):
                    acc += Nbar[m, a, b] * czr[s, 0, b]
                q2 += va * acc
            q2 *= 2.0
            Lbar[0, 0] += 2.0 * czz[s, 0, 0] * lam * (1.0 / d + lam * lam * q2 / (d * d)) - 2.0 * lam * q2 / d
            continue
        for c in range(r0):
            for a in range(k0 - 1, -1, -1):
                s_ = Wleaf[s, a, c]
                for q in range(a + 1, k0):
                    s_ -= Lleaf[s, q, a] * X[q, c]
                X[a, c] = s_ / Lleaf[s, a, a]
        for c in range(k0):
            for a in range(c, k0):
                s_ = 1.0 if a == c else 0.0
                for q in range(c, a):
                    s_ -= Lleaf[s, a, q] * Li[q, c]
                Li[a, c] = s_ / Lleaf[s, a, a]
        for a in range(k0):
            for c in range(r0):
                s_ = 0.0
                for q in range(r0):
                    s_ += X[a, q] * Nbar[m, q, c]
                XN[a, c] = s_
        for a in range(k0):
            for b in range(k0):
                s_ = 0.0
                for q in range(max(a, b), k0):
                    s_ += Li[q, a] * Li[q, b]
                for q in range(r0):
                    s_ += XN[a, q] * X[b, q]
                Bbar[a, b] = s_
        for c in range(k0):  # CL = czz Lambda
            for b in range(k0):
                acc = 0.0
                for d in range(b, k0):
                    acc += czz[s, c, d] * T[d, b]
                CL[c, b] = acc
        for c in range(k0):
            for a in range(c + 1):
                acc = 0.0
                for b in range(k0):
                    acc += 2.0 * CL[c, b] * Bbar[b, a]
                for e in range(r0):
                    acc -= 2.0 * czr[s, c, e] * XN[a, e]
                Lbar[c, a] += acc


@njit(cache=True, nogil=True)
def devgrad(czz, czr, Pm, T, tptr, tidx, ks, parents, goff, ngroups, p, n, reml, want_grad, grow, gcol):
    """Profiled deviance and its gradient w.r.t. the entries ``T[grow[t], gcol[t]]`` (theta).

    Everything is in leaf-first order. The leaf level (k = ks[0] terms, r = D - k other columns) enters through
    sums that do not depend on theta: per leaf ``czz`` (G, k, k) and ``czr`` (G, k, r), the leaf's cross-products
    of its own terms with themselves and with the rest, and per parent ``Pm`` (G_1, r, r), the sum over its
    leaves of the rest-by-rest block. With Lambda = T[:k, :k] and T_r = T[k:, k:], a leaf's Schur complement
    in the raw coordinates of the rest is ``-E' B^-1 E`` with ``B = Lambda' czz Lambda + I``,
    ``E = Lambda' czr``, and a parent's matrix is ``T_r' (Pm - sum_s E_s' B_s^-1 E_s) T_r``: one pass of
    O(k^2 r + k r^2) per leaf. The levels above are eliminated as dense blocks (docs/mixedcore.md, sections 8-9).

    T : (D, D) block-diagonal relative factor (identity for X, y); ``tptr`` / ``tidx``: the structural
        non-zeros of T_r by column (CSC, indices relative to k)
    ks : (L,) terms per level, leaf first; ``parents[goff[j]:goff[j] + ngroups[j]]`` the parent (in level
         j + 1, leaf first) of every group of level j; the top level's parent is the root, 0
    Returns (deviance, gradient, ok, log|A|, F): ok is False (and the deviance +inf) where a pivot is not
    positive or the penalised residual sum of squares is not; F = [[S, r], [r', q]] is what remains at the root.
    """
    G, k0, r0 = czr.shape
    D = k0 + r0
    L = ks.shape[0]
    G1 = Pm.shape[0]
    grad = np.zeros(grow.shape[0])
    # ---- forward: the leaves, the transform to the parents' coordinates, the levels above, the root
    N = Pm.copy()
    Lleaf = np.zeros((G, k0, k0))
    Wleaf = np.empty((G, k0, r0))
    logdet = _leaves_forward(czz, czr, T, parents, L > 1, N, Lleaf, Wleaf)
    if not logdet == logdet:
        return np.inf, grad, False, 0.0, np.zeros((p + 1, p + 1))
    NT = np.empty((G1, r0, r0))
    cur = np.empty((G1, r0, r0))
    _transform(N, T, k0, tptr, tidx, NT, cur)
    Gmax = 1
    kmax = 1
    for j in range(1, L):
        Gmax = max(Gmax, ngroups[j])
        kmax = max(kmax, ks[j])
    chols = np.zeros((L, Gmax, kmax, kmax))  # level j's factors in chols[j], its L^-1 M_er in Ws[j]
    Ws = np.empty((L, Gmax, kmax, r0))
    Dj = r0
    for j in range(1, L):
        up = np.zeros((ngroups[j + 1] if j + 1 < L else 1, Dj - ks[j], Dj - ks[j]))
        ld = _level_forward(cur, ks[j], parents, goff[j], j + 1 < L, up, chols[j], Ws[j])
        if not ld == ld:
            return np.inf, grad, False, 0.0, np.zeros((p + 1, p + 1))
        logdet += ld
        cur = up
        Dj -= ks[j]
    F = cur[0]
    Ls = np.zeros((p, p))
    logdet_S, beta, r2 = _root(F, p, Ls)
    if not (logdet_S == logdet_S and r2 > 0.0):
        return np.inf, grad, False, logdet, F
    dof = n - p if reml else n
    dev = logdet + dof * (1.0 + math.log(2.0 * math.pi * r2 / dof))
    if reml:
        dev += logdet_S
    if not want_grad:
        return dev, grad, True, logdet, F
    # ---- backward: the root, the levels above (top first), the parents of the leaves, the leaves
    H = np.empty((1, p + 1, p + 1))
    _root_adjoint(beta, r2, dof, reml, Ls, p, H)
    for j in range(L - 1, 0, -1):
        Dj = r0
        for i in range(1, j):
            Dj -= ks[i]
        Mbar = np.empty((ngroups[j], Dj, Dj))
        _level_backward(H, chols[j], Ws[j], ks[j], Dj - ks[j], parents, goff[j], j + 1 < L, Mbar)
        H = Mbar
    Tbar = np.zeros((D, D))
    Nbar = np.empty((G1, r0, r0))
    _parents_backward(NT, H, T, k0, grow, gcol, Tbar, Nbar)
    Lbar = np.zeros((k0, k0))
    _leaves_backward(czz, czr, T, Lleaf, Wleaf, Nbar, parents, L > 1, Lbar)
    for t in range(grow.shape[0]):
        grad[t] = Lbar[grow[t], gcol[t]] if grow[t] < k0 else Tbar[grow[t], gcol[t]]
    return dev, grad, True, logdet, F


@njit(cache=True, nogil=True)
def leaf_cross(blocks, codes, G):
    """Per-leaf sums of w_i w_i' (one pass over the rows): (G, D, D), with w_i row i of the column blocks
    (a tuple of C-contiguous (n, d_b) arrays, read in place: ``[Z_1 .. Z_L, X, y]``)."""
    D = 0
    for blk in blocks:
        D += blk.shape[1]
    n = codes.shape[0]
    out = np.zeros((G, D, D))
    w = np.empty(D)
    for i in range(n):
        off = 0
        for blk in blocks:
            for a in range(blk.shape[1]):
                w[off + a] = blk[i, a]
            off += blk.shape[1]
        s = codes[i]
        for a in range(D):
            wa = w[a]
            for b in range(a + 1):
                out[s, a, b] += wa * w[b]
    for s in range(G):
        for a in range(D):
            for b in range(a):
                out[s, b, a] = out[s, a, b]
    return out


@njit(cache=True, nogil=True)
def leaf_cross_y(blocks, y, codes, G):
    """Per-leaf sums of w_i y_i and y_i^2, (G, D) and (G,), w_i as in :func:`leaf_cross`."""
    D = 0
    for blk in blocks:
        D += blk.shape[1]
    n = codes.shape[0]
    wy = np.zeros((G, D))
    yy = np.zeros(G)
    for i in range(n):
        s = codes[i]
        yi = y[i]
        off = 0
        for blk in blocks:
            for a in range(blk.shape[1]):
                wy[s, off + a] += blk[i, a] * yi
            off += blk.shape[1]
        yy[s] += yi * yi
    return wy, yy
