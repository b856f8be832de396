"""Compiled (numba) kernels for :mod:`hiercompare.glmmcore`: the passes over the rows.

Imported lazily by glmmcore (numba is optional); every kernel has a numpy twin in glmmcore that gives the same
numbers to rounding (``tests/test_glmmcore.py`` checks both). The rows are sorted by leaf group, so each leaf's
rows are the contiguous range ``ptr[s]:ptr[s + 1]`` and its sums stay in cache.

Family codes: 0 binomial (``m`` trials, ``y`` successes), 1 poisson, 2 negative binomial (NB2, size ``knb``).
The links and their edge rules are R's: logit with ``mu`` held in [eps, 1 - eps] and ``dmu/deta = eps`` beyond
|eta| > 30 (``binomial()$linkinv``, ``$mu.eta``), log with ``mu, dmu/deta >= eps`` (``poisson()``, MASS's
``negative.binomial()``), eps = 2.220446e-16.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

EPS = 2.220446049250313e-16
# reassociation lets the per-leaf dot products vectorise; no "nnan"/"ninf": the edge rules compare and clip
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, nogil=True, inline="always")
def _row(fam, eta, y, m, knb):
    """mu, score s = d log p / d eta, Fisher weight w, observed information o = -d s / d eta, dw/deta,
    -2 log p (without the constants of y alone: lchoose / lgamma(y + 1)), for one row."""
    if fam == 0:
        if eta > 30.0:
            mu, mueta = 1.0 - EPS, EPS
        elif eta < -30.0:
            mu, mueta = EPS, EPS
        else:
            mu = 1.0 / (1.0 + math.exp(-eta))
            mueta = mu * (1.0 - mu)
        var = mu * (1.0 - mu)
        w = m * mueta * mueta / var
        s = (y - m * mu) * mueta / var
        o = w
        dw = m * mu * (1.0 - mu) * (1.0 - 2.0 * mu) if mueta > EPS else 0.0
        nll = 0.0
        if y > 0:
            nll -= 2.0 * y * math.log(mu)
        if m - y > 0:
            nll -= 2.0 * (m - y) * math.log(1.0 - mu)
        return mu, s, w, o, dw, nll
    mu = math.exp(eta)
    clipped = mu < EPS
    if clipped:
        mu = EPS
    mueta = mu
    if fam == 1:
        w = mueta * mueta / mu
        s = (y - mu) * mueta / mu
        o = w
        dw = 0.0 if clipped else mu
        nll = 2.0 * mu
        if y > 0:
            nll -= 2.0 * y * math.log(mu)
        return mu, s, w, o, dw, nll
    k = knb
    var = mu + mu * mu / k
    w = mueta * mueta / var
    s = (y - mu) * mueta / var
    o = k * (y + k) * mu / ((k + mu) * (k + mu))
    dw = 0.0 if clipped else k * k * mu / ((k + mu) * (k + mu))
    nll = -2.0 * (math.lgamma(y + k) - math.lgamma(k) + k * math.log(k / (k + mu)))
    if y > 0:
        nll -= 2.0 * y * math.log(mu / (k + mu))
    return mu, s, w, o, dw, nll


@njit(cache=True, nogil=True, inline="always")
def _devresid(fam, mu, y, m, knb):
    """The row's deviance residual (R's ``family()$dev.resids``; 0 log 0 = 0)."""
    if fam == 0:
        d = 0.0
        if y > 0:
            d += y * math.log(y / (m * mu))
        if m - y > 0:
            d += (m - y) * math.log((m - y) / (m * (1.0 - mu)))
        return 2.0 * d
    if fam == 1:
        d = -(y - mu)
        if y > 0:
            d += y * math.log(y / mu)
        return 2.0 * d
    d = -(y + knb) * math.log((y + knb) / (mu + knb))
    if y > 0:
        d += y * math.log(y / mu)
    return 2.0 * d


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)
def row_pass(ZX, ptr, y, m, off, beta, bpath, fam, knb, K, want_o, dw_out, mu_out, want_dw):
    """One pass over the rows at (beta, the per-leaf path effects ``bpath``).

    ZX (n, K + p): the varying-term columns of every level, then the fixed design; rows sorted by leaf.
    Returns (C, S, Co, nll): per leaf, C (G, D, D) = sum w v v' with v = [z, x, wr] and the working response
    wr = z . bpath + s / w; S (G, K + p) = sum s [z, x]; Co (G, K + p, K + p) = sum o [z, x][z, x]' (only with
    ``want_o``, else shape (0, 0, 0)); nll = sum of -2 log p over the rows (without the constants of y alone).
    With ``want_dw`` the rows' dw/deta go to ``dw_out`` and their means to ``mu_out``.

    Each leaf's rows are first written, scaled by sqrt(w), into a column block; its sums are then dot products
    of contiguous columns (vectorised), not a chain of updates to the same D x D cells row after row.
    """
    G = ptr.shape[0] - 1
    KP = ZX.shape[1]
    p = KP - K
    D = KP + 1
    C = np.zeros((G, D, D))
    S = np.zeros((G, KP))
    Co = np.zeros((G if want_o else 0, KP, KP))
    maxn = 0
    for s_ in range(G):
        maxn = max(maxn, ptr[s_ + 1] - ptr[s_])
    Vt = np.empty((D, maxn))
    Q = np.empty(maxn)
    Ut = np.empty((KP if want_o else 0, maxn))
    nll = 0.0
    for s_ in range(G):
        n0 = ptr[s_]
        ns = ptr[s_ + 1] - n0
        for r in range(ns):
            i = n0 + r
            zb = 0.0
            for j in range(K):
                zb += ZX[i, j] * bpath[s_, j]
            eta = off[i] + zb
            for j in range(p):
                eta += ZX[i, K + j] * beta[j]
            mu, sc, w, o, dw, nl = _row(fam, eta, y[i], m[i], knb)
            nll += nl
            if want_dw:
                dw_out[i] = dw
                mu_out[i] = mu
            sw = math.sqrt(w)
            for j in range(KP):
                Vt[j, r] = ZX[i, j] * sw
            Vt[KP, r] = (zb + sc / w) * sw
            Q[r] = sc / sw
            if want_o:
                so = math.sqrt(o)
                for j in range(KP):
                    Ut[j, r] = ZX[i, j] * so
        for a in range(D):
            for b in range(a + 1):
                t = 0.0
                for r in range(ns):
                    t += Vt[a, r] * Vt[b, r]
                C[s_, a, b] = t
                C[s_, b, a] = t
        for a in range(KP):
            t = 0.0
            for r in range(ns):
                t += Vt[a, r] * Q[r]
            S[s_, a] = t
        if want_o:
            for a in range(KP):
                for b in range(a + 1):
                    t = 0.0
                    for r in range(ns):
                        t += Ut[a, r] * Ut[b, r]
                    Co[s_, a, b] = t
                    Co[s_, b, a] = t
    return C, S, Co, nll


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FASTMATH)
def grad_pass(ZX, ptr, dw, Vz, K, h_out, want_h):
    """Per leaf, sum over its rows of h_i dw_i [z_i, x_i] with h_i = z_i' Vz_s z_i (the row's conditional
    variance of its linear predictor's random part, A^-1 mapped to the z scale by the leaf's path ``Vz``);
    with ``want_h`` the rows' h_i go to ``h_out``."""
    G = ptr.shape[0] - 1
    KP = ZX.shape[1]
    out = np.zeros((G, KP))
    for s_ in range(G):
        for i in range(ptr[s_], ptr[s_ + 1]):
            h = 0.0
            for a in range(K):
                t = 0.0
                for b in range(K):
                    t += Vz[s_, a, b] * ZX[i, b]
                h += ZX[i, a] * t
            if want_h:
                h_out[i] = h
            f = h * dw[i]
            for a in range(KP):
                out[s_, a] += f * ZX[i, a]
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def leaf_devresid(ZX, ptr, y, m, off, beta, bpath, fam, knb, K):
    """Per leaf, the sum of its rows' deviance residuals at (beta, bpath) (the adaptive quadrature's nodes)."""
    G = ptr.shape[0] - 1
    p = ZX.shape[1] - K
    out = np.zeros(G)
    for s_ in range(G):
        acc = 0.0
        for i in range(ptr[s_], ptr[s_ + 1]):
            eta = off[i]
            for j in range(K):
                eta += ZX[i, j] * bpath[s_, j]
            for j in range(p):
                eta += ZX[i, K + j] * beta[j]
            mu = _row(fam, eta, y[i], m[i], knb)[0]
            acc += _devresid(fam, mu, y[i], m[i], knb)
        out[s_] = acc
    return out
