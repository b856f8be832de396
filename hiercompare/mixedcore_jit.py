"""Compiled (numba) kernels for :mod:`hiercompare.mixedcore`: the profiled deviance with its analytic gradient,
and the one pass over the rows that builds the per-leaf cross-products.

Imported lazily by mixedcore (numba is optional: the ``bayes`` extra brings it). Every kernel has a vectorised
numpy twin in mixedcore that gives the same numbers; ``tests/test_mixedcore_gradient.py`` checks both.
The compiled code is cached on disk (``cache=True``: ``__pycache__`` beside this file, or ``NUMBA_CACHE_DIR``),
so only the first process on a machine pays the compile (a few seconds).

Layout (docs/mixedcore.md, section 4.3): the kernels work in the *leaf-first* order
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
def devgrad(czz, czr, Pm, T, tptr, tidx, ks, parents, goff, ngroups, p, n, reml, want_grad, grow, gcol):
    """Profiled deviance and its gradient w.r.t. the entries ``T[grow[t], gcol[t]]`` (theta).

    Everything is in leaf-first order. The leaf level (k = ks[0] terms, r = D - k other columns) enters through
    sums that do not depend on theta: per leaf ``czz`` (G, k, k) and ``czr`` (G, k, r), the leaf's cross-products
    of its own terms with themselves and with the rest, and per parent ``Pm`` (G_1, r, r), the sum over its
    leaves of the rest-by-rest block. With Lambda = T[:k, :k] and T_r = T[k:, k:], a leaf's Schur complement
    in the raw coordinates of the rest is ``-E' B^-1 E`` with ``B = Lambda' czz Lambda + I``,
    ``E = Lambda' czr``, and a parent's matrix is ``T_r' (Pm - sum_s E_s' B_s^-1 E_s) T_r``: one pass of
    O(k^2 r + k r^2) per leaf. The levels above are eliminated as dense blocks (docs/mixedcore.md, section 4).

    T : (D, D) block-diagonal relative factor (identity for X, y); ``tptr`` / ``tidx``: the structural
        non-zeros of T_r by column (CSC, indices relative to k)
    ks : (L,) terms per level, leaf first; ``parents[goff[j]:goff[j] + ngroups[j]]`` the parent (in level
         j + 1, leaf first) of every group of level j; the top level's parent is the root, 0
    Returns (deviance, gradient, ok, log|A|, F): ok is False (and the deviance +inf) where a pivot is not
    positive or the penalised residual sum of squares is not; F = [[S, r], [r', q]] is what remains at the root.
    """
    G = czz.shape[0]
    k0 = czz.shape[1]
    r0 = czr.shape[2]
    D = k0 + r0
    L = ks.shape[0]
    G1 = Pm.shape[0]
    nth = grow.shape[0]
    grad = np.zeros(nth)
    fail = (np.inf, grad, False, 0.0, np.zeros((p + 1, p + 1)))
    # ---- leaves
    N = Pm.copy()
    Lleaf = np.zeros((G, k0, k0))
    Wleaf = np.empty((G, k0, r0))
    B = np.empty((k0, k0))
    E = np.empty((k0, r0))
    logdet = 0.0
    lam = T[0, 0]
    for s in range(G):
        m = parents[s] if L > 1 else 0
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
        for a in range(k0):
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
            return fail
        logdet += ld
        for a in range(k0):
            for c in range(r0):
                acc = 0.0
                for d in range(a, k0):
                    acc += T[d, a] * czr[s, d, c]
                E[a, c] = acc
        for c in range(r0):
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
    for m in range(G1):
        for a in range(r0):
            for b in range(a):
                N[m, b, a] = N[m, a, b]
    # ---- the parents' matrices in the transformed coordinates: M_m = T_r' N_m T_r (NT_m = N_m T_r kept)
    NT = np.empty((G1, r0, r0))
    cur = np.empty((G1, r0, r0))
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
                cur[m, a, b] = acc
                cur[m, b, a] = acc
    # ---- the levels above, leaf side first; keep each group's Cholesky factor and L^-1 M_er
    chols = []
    Ws = []
    Dj = r0
    for j in range(1, L):
        k = ks[j]
        r = Dj - k
        Gj = cur.shape[0]
        Gup = ngroups[j + 1] if j + 1 < L else 1
        up = np.zeros((Gup, r, r))
        Lst = np.zeros((Gj, k, k))
        Wst = np.empty((Gj, k, r))
        Mee = np.empty((k, k))
        for g in range(Gj):
            pa = parents[goff[j] + g] if j + 1 < L else 0
            for a in range(k):
                for b in range(a + 1):
                    Mee[a, b] = cur[g, a, b] + (1.0 if a == b else 0.0)
            ld = _chol_into(Mee, Lst[g], k)
            if not ld == ld:
                return fail
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
        for g in range(Gup):
            for a in range(r):
                for b in range(a):
                    up[g, b, a] = up[g, a, b]
        chols.append(Lst)
        Ws.append(Wst)
        cur = up
        Dj = r
    # ---- the root: F = [[S, r], [r', q]]
    F = cur[0]
    Ls = np.zeros((p, p))
    logdet_S = 0.0
    if p > 0:
        logdet_S = _chol_into(F, Ls, p)
        if not logdet_S == logdet_S:
            return fail
    z = np.empty(p)
    for a in range(p):
        s_ = F[a, p]
        for q in range(a):
            s_ -= Ls[a, q] * z[q]
        z[a] = s_ / Ls[a, a]
    beta = np.empty(p)
    for a in range(p - 1, -1, -1):
        s_ = z[a]
        for q in range(a + 1, p):
            s_ -= Ls[q, a] * beta[q]
        beta[a] = s_ / Ls[a, a]
    r2 = F[p, p]
    for a in range(p):
        r2 -= F[a, p] * beta[a]
    if not r2 > 0.0:
        return fail
    if reml:
        dof = n - p
        dev = logdet + logdet_S + dof * (1.0 + math.log(2.0 * math.pi * r2 / dof))
    else:
        dof = n
        dev = logdet + dof * (1.0 + math.log(2.0 * math.pi * r2 / dof))
    if not want_grad:
        return dev, grad, True, logdet, F
    # ---- adjoint of F: (dof / r2) g g' with g = [-beta, 1], plus S^-1 for REML
    Hup = np.empty((1, p + 1, p + 1))
    w = dof / r2
    for a in range(p + 1):
        ga = 1.0 if a == p else -beta[a]
        for b in range(p + 1):
            gb = 1.0 if b == p else -beta[b]
            Hup[0, a, b] = w * ga * gb
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
                Hup[0, a, b] += s_
    # ---- back down the levels above the leaves, top first: the adjoint of every group's matrix
    for j in range(L - 1, 0, -1):
        k = ks[j]
        Lst = chols[j - 1]
        Wst = Ws[j - 1]
        Gj = Lst.shape[0]
        r = Wst.shape[2]
        Dj = r + k
        Mbar = np.empty((Gj, Dj, Dj))
        X = np.empty((k, r))
        XH = np.empty((k, r))
        Li = np.zeros((k, k))
        for g in range(Gj):
            pa = parents[goff[j] + g] if j + 1 < L else 0
            for c in range(r):  # X = Mee^-1 Mer = L^-T W
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
        Hup = Mbar
    # ---- the parents of the leaves: d / d T_r = 2 sum_m N_m T_r Hbar_m, and Nbar_m = T_r Hbar_m T_r'
    Tbar = np.zeros((D, D))
    for t in range(nth):
        if grow[t] >= k0:
            c = grow[t] - k0
            b = gcol[t] - k0
            acc = 0.0
            for m in range(G1):
                for q in range(r0):
                    acc += NT[m, c, q] * Hup[m, q, b]
            Tbar[grow[t], gcol[t]] = 2.0 * acc
    Nbar = np.empty((G1, r0, r0))
    TH = np.empty((r0, r0))
    for m in range(G1):
        for a in range(r0):  # TH = T_r Hbar_m
            for b in range(r0):
                acc = 0.0
                for q in range(a + 1):  # T_r is lower triangular
                    acc += T[k0 + a, k0 + q] * Hup[m, q, b]
                TH[a, b] = acc
        for a in range(r0):
            for b in range(a + 1):
                acc = 0.0
                for q in range(b + 1):
                    acc += TH[a, q] * T[k0 + b, k0 + q]
                Nbar[m, a, b] = acc
                Nbar[m, b, a] = acc
    # ---- the leaves: Bbar = B^-1 + X Nbar X', Ebar = -2 X Nbar with X = B^-1 E; then Lambda's adjoint
    #      2 czz Lambda Bbar + czr Ebar'
    X = np.empty((k0, r0))
    XN = np.empty((k0, r0))
    Li = np.zeros((k0, k0))
    Bbar = np.empty((k0, k0))
    CL = np.empty((k0, k0))
    Lbar = np.zeros((k0, k0))
    for s in range(G):
        m = parents[s] if L > 1 else 0
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
    for t in range(nth):
        if grow[t] < k0:
            grad[t] = Lbar[grow[t], gcol[t]]
        else:
            grad[t] = Tbar[grow[t], gcol[t]]
    return dev, grad, True, logdet, F


@njit(cache=True, nogil=True)
def leaf_cross(W, codes, G):
    """Per-leaf sums of w_i w_i' (one pass over the rows): (G, D, D)."""
    n, D = W.shape
    out = np.zeros((G, D, D))
    for i in range(n):
        s = codes[i]
        for a in range(D):
            wa = W[i, a]
            for b in range(a + 1):
                out[s, a, b] += wa * W[i, b]
    for s in range(G):
        for a in range(D):
            for b in range(a):
                out[s, b, a] = out[s, a, b]
    return out


@njit(cache=True, nogil=True)
def leaf_cross_y(W, y, codes, G):
    """Per-leaf sums of w_i y_i and y_i^2: (G, D) and (G,)."""
    n, D = W.shape
    wy = np.zeros((G, D))
    yy = np.zeros(G)
    for i in range(n):
        s = codes[i]
        yi = y[i]
        for a in range(D):
            wy[s, a] += W[i, a] * yi
        yy[s] += yi * yi
    return wy, yy
