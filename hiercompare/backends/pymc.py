"""``pymc``: the spec's model in PyMC, non-centred, sampled with nutpie when installed (PyMC's NUTS otherwise).

Model: fixed effects with :mod:`hiercompare.priors` defaults; at every level, each covariance block of varying
terms is non-centred, ``b = z @ (diag(sd) L)'`` with ``z ~ N(0, 1)``, an LKJ Cholesky prior for correlated
blocks (``pm.LKJCholeskyCov``) and half-Student-t SDs; ``||`` terms are independent blocks of one.

Gaussian likelihood on sufficient statistics: for leaf group s with effective coefficients
``g_s = [b_1[anc_1(s)], ..., b_L[s], beta, -1]`` and the per-leaf cross-product ``C_s`` of ``[z_1..z_L, X, y]``
(the same one pass over the rows that :mod:`hiercompare.mixedcore` makes), the residual sum of squares is
``g_s' C_s g_s`` exactly, so the log-likelihood is ``-n_s log(sigma) - n_s log(2 pi)/2 - g_s' C_s g_s /
(2 sigma^2)``: after that pass the cost of a gradient no longer grows with the number of rows (an ``offset()`` is
subtracted from y before the sums). Binomial (logit; Bernoulli for a 0/1 response, Binomial with the rows' trials
for ``cbind()``), Poisson (log) and negative binomial (NB2, log; ``pm.NegativeBinomial(mu, alpha=theta)`` with a
Gamma(0.01, 0.01) prior on theta, brms's default, reported as the ran_pars row ``Dispersion`` / ``theta``) use the
row-wise likelihood, with the offset added to the linear predictor.

Geometry (``collapse``). For gaussian models the group effects can be integrated out analytically, which
removes the funnel between group effects and their SDs that makes hierarchical posteriors hard for NUTS:

* ``"all"`` (the default for gaussian): the sampler sees beta, sigma and the covariance parameters only, and
  the likelihood is the exact marginal ``p(y | beta, sigma, Sigma)``, evaluated from the per-leaf sums by the
  same leaf-to-root elimination as :mod:`hiercompare.mixedcore` (small Cholesky factors unrolled into
  elementwise operations). The group effects are then drawn, posterior draw by posterior draw, from their
  exact conditional normal ``p(b | beta, sigma, Sigma, y)`` (top down), so the output holds exact joint
  posterior draws of every parameter (a collapsed sampler, not an approximation).
* ``"leaf"``: only the leaf level's single varying term is integrated out (closed form per leaf); the upper
  levels are sampled non-centred.
* ``"none"``: every level non-centred, ``b = z @ (diag(sd) L)'`` with ``z ~ N(0, 1)``.

Binomial and Poisson models always sample the group effects non-centred (no closed form).

Compiled models (nutpie). nutpie compiles a numba callback for every model, 20-100 s, which no cache keeps
between processes. Within a process the collapsed gaussian model (the default) is compiled once per structure
(tree, labels, terms, fixed effects, prior families): every number that depends on the data (the per-leaf
sums, the number of rows, the data-scaled prior parameters) is model data, and a later fit of the same
structure swaps its data in (``with_data``) in well under a second, with the same draws as a fresh compile
(``diagnostics["compiled_model"]``; :func:`clear_compiled_cache`). This is what makes pymc usable in studies.

Output: the InferenceData (coordinates named by group labels and terms; provenance attributes) as ``fit.raw``,
and the Fit schema (posterior mean as estimate, posterior SD as std_error, 2.5% and 97.5% quantiles as the
interval). Diagnostics: max R-hat, min bulk and tail ESS, divergences; a ConvergenceWarning and
``converged=False`` when R-hat > 1.01, ESS < 400 or any divergence. Posterior predictive draws and LOO are
available from the Fit (``fit.posterior_predictive()``, ``fit.loo()``); for the sufficient-statistics
likelihood the pointwise log-likelihood is computed from the draws afterwards, row by row.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import threading
import time
import warnings

import numpy as np
import pandas as pd

from .. import mixedcore
from .._version import __version__
from ..design import ModelData
from ..errors import SpecError
from ..priors import Priors, resolve_priors
from ..results import DISPERSION, RESIDUAL, THETA, Fit, cor_term, sd_term, tidy_frame
from . import sampling
from .base import Backend


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


class PyMCBackend(Backend):
    name = "pymc"
    families = ("gaussian", "binomial", "poisson", "negbinomial")
    features = frozenset({"offset", "trials"})
    description = "PyMC (non-centred, LKJ), gaussian likelihood on sufficient statistics, nutpie when installed"
    requires = ("pymc", "arviz")
    install_hint = "pip install 'hiercompare[bayes]' (or run `make install`)"
    takes_seed = True


    def fit(self, md: ModelData, draws: int = 1000, tune: int = 1000, chains: int = 2, cores: int | None = None,
            sampler: str = "auto", priors: Priors | dict | None = None, target_accept: float = 0.9,
            likelihood: str = "auto", collapse: str | bool = "auto", seed: int | None = None,
            progressbar: bool = False, **options) -> Fit:
        import pymc as pm

        if options:
            raise TypeError(f"unknown pymc options {sorted(options)}")
        pri = resolve_priors(md, priors)
        if likelihood == "auto":
            likelihood = "suffstats" if md.spec.family == "gaussian" else "rows"
        if likelihood not in ("suffstats", "rows"):
            raise SpecError("likelihood must be 'auto', 'suffstats' or 'rows'")
        if likelihood == "suffstats" and md.spec.family != "gaussian":
            raise SpecError("the sufficient-statistics likelihood exists for the gaussian family only")
        if sampler == "auto":
            sampler = "nutpie" if importlib.util.find_spec("nutpie") else "pymc"
        if sampler not in ("nutpie", "pymc"):
            raise SpecError("sampler must be 'auto', 'nutpie' or 'pymc'")
        collapse = _collapse_mode(md, likelihood, collapse)
        seed = 0 if seed is None else int(seed)
        cores = cores or min(chains, 2)
        reuse = sampler == "nutpie" and _swappable(md, pri, likelihood, collapse)
        key = _structure_key(md, pri) if reuse else None
        compiled_model = "compiled"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            t0 = time.perf_counter()
            # the lock: a reused PyMC model holds this fit's data until its sampling has drawn the initial points
            with _COMPILED_LOCK if reuse else contextlib.nullcontext():
                if reuse and key in _COMPILED:  # same structure fitted before in this process: swap the data in
                    cached, names, model = _COMPILED[key]
                    values = _model_data(md, pri)
                    for name, value in values.items():  # nutpie's initial points (PyMC's) read the priors here
                        model[name].set_value(value)
                    compiled = cached.with_data(**values)
                    compiled_model = "reused (this process)"
                else:
                    model, names = build_model(md, pri, likelihood, collapse=collapse)
                if sampler == "nutpie":
                    import nutpie

                    if compiled_model == "compiled":
                        compiled = nutpie.compile_pymc_model(model)
                        if reuse:
                            while len(_COMPILED) >= _COMPILED_MAX:
                                _COMPILED.pop(next(iter(_COMPILED)))
                            _COMPILED[key] = (compiled, names, model)
                    t1 = time.perf_counter()
                    idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=chains, cores=cores, seed=seed,
                                          progress_bar=progressbar, target_accept=target_accept, save_warmup=False)
                else:
                    t1 = time.perf_counter()
                    with model:
                        idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=cores, random_seed=seed,
                                          progressbar=progressbar, target_accept=target_accept)
            t2 = time.perf_counter()
        if collapse == "leaf":
            _draw_collapsed_leaf(md, idata, names, seed)
        elif collapse == "all":
            _draw_all_effects(md, idata, names, seed)
        timing = {"compile_seconds": t1 - t0, "sampling_seconds": t2 - t1, "posthoc_seconds": time.perf_counter() - t2}
        idata.attrs.update({"hiercompare_version": __version__, "backend": self.name, "formula": md.spec.formula,
                            "likelihood": likelihood, "sampler": sampler, "seed": seed,
                            "collapse": collapse})
        table = _tidy(md, idata, names)
        diag = _diagnostics(idata, names)
        diag["mcse"] = _mcse_rows(md, idata, names)
        diag.update({"sampler": sampler, "likelihood": likelihood, "draws": draws, "tune": tune, "chains": chains,
                     "collapse": collapse, "priors": pri.to_dict(), "compiled_model": compiled_model, **timing})
        sampling.warn_if_unconverged("pymc", diag, "run more draws (draws, tune) or raise target_accept")
        fit = Fit(backend=self.name, spec=md.spec, table=table, model=md, loglik=None, method=f"NUTS ({sampler})",
                  nobs=md.n, diagnostics=diag, raw=idata)
        # module functions bound to the fit (not lambdas), so the Fit pickles
        fit.extras = {"posterior_predictive": functools.partial(posterior_predictive, fit, names),
                      "loo": functools.partial(loo, fit, names)}
        return fit

    def versions(self):
        import arviz
        import pymc
        import pytensor

        out = {"pymc": pymc.__version__, "pytensor": pytensor.__version__, "arviz": arviz.__version__}
        if importlib.util.find_spec("nutpie"):
            import nutpie

            out["nutpie"] = nutpie.__version__
        return out


def _core(md: ModelData) -> "mixedcore.MixedCore":
    """The per-leaf sums of a gaussian model, of ``y - offset`` when the formula has an offset."""
    return mixedcore.from_model_data(md, offset=md.offset) if md.has_offset else mixedcore.from_model_data(md)


def _collapse_mode(md: ModelData, likelihood: str, collapse) -> str:
    if collapse in (False, None):
        collapse = "none"
    if collapse == "auto":
        return "all" if likelihood == "suffstats" else "none"
    if collapse not in ("all", "leaf", "none"):
        raise SpecError("collapse must be 'auto', 'all', 'leaf' or 'none'")
    if collapse != "none" and likelihood != "suffstats":
        raise SpecError(f"collapse={collapse!r} needs the gaussian sufficient-statistics likelihood")
    if collapse == "leaf" and len(md.hierarchy.levels[-1].spec.terms) != 1:
        raise SpecError("collapse='leaf' needs a single varying term at the leaf level; use 'all'")
    return collapse


def _prior_var(pm, name, dist, **kw):
    if dist[0] == "normal":
        return pm.Normal(name, mu=dist[1], sigma=dist[2], **kw)
    return pm.StudentT(name, nu=dist[1], mu=dist[2], sigma=dist[3], **kw)


def _half_t(pm, dist):
    return pm.HalfStudentT.dist(nu=dist[1], sigma=dist[3])


def build_model(md: ModelData, pri: Priors, likelihood: str, collapse: str = "none"):
    """The PyMC model and the names of its parameters, per class."""
    import pymc as pm
    import pytensor.tensor as pt

    levels = md.hierarchy.levels
    coords = {"fixed": md.fixed_names}
    for lv in levels:
        coords[f"{_safe(lv.group)}__labels"] = list(lv.labels)
        coords[f"{_safe(lv.group)}__terms"] = list(lv.spec.terms)
    names = {"fixed": [], "sd": [], "cor": [], "r": []}
    core = _core(md) if likelihood == "suffstats" else None  # the per-leaf sums, once
    swappable = _swappable(md, pri, likelihood, collapse)
    values = _model_data(md, pri, core) if swappable else None
    with pm.Model(coords=coords) as model:
        dists = [pri.intercept if col == "(Intercept)" else pri.b[col] for col in md.fixed_names]
        if swappable:  # every number that depends on the data is model data (see _model_data)
            shared = {k: pm.Data(k, v) for k, v in values.items()}
            beta = pm.Normal("beta", mu=shared["prior_beta_mu"], sigma=shared["prior_beta_sigma"], dims="fixed")
            pri = _SymbolicScales(pri, shared["prior_sd_scale"], shared["prior_sigma_scale"])
        elif all(d[0] == "normal" for d in dists):
            beta = pm.Normal("beta", mu=np.array([d[1] for d in dists]), sigma=np.array([d[2] for d in dists]),
                             dims="fixed")
        else:  # a Student-t prior on some coefficient: one variable per coefficient
            parts = [_prior_var(pm, f"beta_{j}", d) for j, d in enumerate(dists)]
            beta = pm.Deterministic("beta", pt.stack(parts), dims="fixed")
        names["fixed"] = "beta"
        effects = []
        for li, lv in enumerate(levels):
            g = _safe(lv.group)
            if collapse == "all":
                effects.append(_covariance_factor(pm, pt, lv, g, pri, names))
                names["r"].append((lv.group, f"r_{g}"))
                continue
            if collapse == "leaf" and li == len(levels) - 1:
                tau = pm.HalfStudentT(f"sd_{g}__0", nu=pri.sd[1], sigma=pri.sd[3], shape=(1,))
                names["sd"].append((lv.group, lv.spec.blocks[0], f"sd_{g}__0"))
                names["r"].append((lv.group, f"r_{g}"))
                names["collapsed"] = (lv.group, f"sd_{g}__0", f"r_{g}")
                effects.append(None)
                continue
            parts = []
            for bi, block in enumerate(lv.spec.blocks):
                tag = f"{g}__{bi}"
                z = pm.Normal(f"z_{tag}", 0.0, 1.0, shape=(lv.n_groups, len(block)))
                if len(block) > 1:
                    chol, corr, stds = pm.LKJCholeskyCov(f"chol_{tag}", n=len(block), eta=pri.cor[1],
                                                         sd_dist=_half_t(pm, pri.sd), compute_corr=True)
                    pm.Deterministic(f"sd_{tag}", stds)
                    pm.Deterministic(f"corr_{tag}", corr)
                    parts.append(pt.dot(z, chol.T))
                    names["cor"].append((lv.group, block, f"corr_{tag}"))
                else:
                    sd = pm.HalfStudentT(f"sd_{tag}", nu=pri.sd[1], sigma=pri.sd[3], shape=(1,))
                    parts.append(z * sd)
                names["sd"].append((lv.group, block, f"sd_{tag}"))
            b = pt.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
            effects.append(pm.Deterministic(f"r_{g}", b, dims=(f"{g}__labels", f"{g}__terms")))
            names["r"].append((lv.group, f"r_{g}"))
        if md.spec.family == "gaussian":
            sigma = pm.HalfStudentT("sigma", nu=pri.sigma[1], sigma=pri.sigma[3])
            names["sigma"] = "sigma"
        if md.spec.family == "negbinomial":
            theta = pm.Gamma("theta", alpha=pri.shape[1], beta=pri.shape[2])
            names["theta"] = "theta"
        if collapse == "all":
            if swappable:
                leaf_sums, n_obs = shared["leaf_sums"], shared["n_obs"]
            else:
                leaf_sums, n_obs = pm.Data("leaf_sums", core.C), core.n
            pm.Potential("loglik_marginal", _marginal_loglik(pt, core, effects, beta, sigma, leaf_sums, n_obs))
        elif likelihood == "suffstats":
            C = core.C  # (S, K + p + 1, K + p + 1), order [z_1..z_L, X, y]
            n_s = np.bincount(levels[-1].codes, minlength=levels[-1].n_groups).astype(float)
            anc = md.hierarchy.ancestors(len(levels) - 1) + [np.arange(levels[-1].n_groups)]
            S = levels[-1].n_groups
            collapse = collapse == "leaf"
            upto = len(levels) - 1 if collapse else len(levels)
            g_parts = [effects[li][anc[li]] for li in range(upto)]
            g_parts += [pt.broadcast_to(beta, (S, md.X.shape[1])), -pt.ones((S, 1))]
            gam = pt.concatenate(g_parts, axis=1)
            if collapse:  # drop the leaf term's row and column; keep them for a and q
                K_up = int(sum(len(lv.spec.terms) for lv in levels[:-1]))
                keep = np.r_[np.arange(K_up), np.arange(K_up + 1, C.shape[1])]
                a = C[:, K_up, K_up]
                cq = C[:, K_up, :][:, keep]
                C = C[:, keep][:, :, keep]
            Cg = (pt.as_tensor_variable(C) * gam[:, None, :]).sum(axis=2)
            rss = (Cg * gam).sum(axis=1)
            if collapse:
                q = (pt.as_tensor_variable(cq) * gam).sum(axis=1)
                s2, t2 = sigma ** 2, tau[0] ** 2
                denom = s2 + t2 * a
                ll = -0.5 * (n_s * np.log(2 * np.pi) + n_s * pt.log(s2) + pt.log(denom / s2)
                             + (rss - t2 * q ** 2 / denom) / s2)
                # kept for the post-hoc draws of the leaf effects
                names["collapse_data"] = {"a": a, "cq": cq, "C": C, "anc": anc[:-1], "K_up": K_up}
            else:
                ll = -n_s * pt.log(sigma) - 0.5 * n_s * np.log(2 * np.pi) - rss / (2 * sigma ** 2)
            pm.Potential("loglik_suffstats", ll.sum())
        else:
            eta = pt.dot(md.X, beta)
            if md.has_offset:
                eta = eta + md.offset
            for li, lv in enumerate(levels):
                eta = eta + (md.Z[lv.group] * effects[li][lv.codes]).sum(axis=1)
            if md.spec.family == "gaussian":
                pm.Normal("y", mu=eta, sigma=sigma, observed=md.y)
            elif md.spec.family == "binomial" and md.spec.has_trials:
                pm.Binomial("y", n=md.trials, logit_p=eta, observed=md.y)
            elif md.spec.family == "binomial":
                pm.Bernoulli("y", logit_p=eta, observed=md.y)
            elif md.spec.family == "negbinomial":
                pm.NegativeBinomial("y", mu=pt.exp(eta), alpha=theta, observed=md.y)
            else:
                pm.Poisson("y", mu=pt.exp(eta), observed=md.y)
    return model, names


def _swappable(md: ModelData, pri: Priors, likelihood: str, collapse: str) -> bool:
    """Whether the model's data-dependent numbers can all be model data (the collapsed gaussian model with normal
    priors on the fixed effects), so that one compiled model serves every data set of the same structure."""
    return (collapse == "all" and likelihood == "suffstats" and pri.intercept[0] == "normal"
            and all(pri.b[c][0] == "normal" for c in md.fixed_names if c != "(Intercept)"))


def _model_data(md: ModelData, pri: Priors, core=None) -> dict[str, np.ndarray]:
    """Every number of the swappable model that depends on the data: the per-leaf sums, the number of rows and
    the data-scaled prior parameters. Everything else in the model is its structure (see _structure_key)."""
    core = _core(md) if core is None else core
    dists = [pri.intercept if col == "(Intercept)" else pri.b[col] for col in md.fixed_names]
    return {"leaf_sums": core.C, "n_obs": np.asarray(float(core.n)),
            "prior_beta_mu": np.array([d[1] for d in dists], float),
            "prior_beta_sigma": np.array([d[2] for d in dists], float),
            "prior_sd_scale": np.asarray(float(pri.sd[3])), "prior_sigma_scale": np.asarray(float(pri.sigma[3]))}


def _structure_key(md: ModelData, pri: Priors) -> str:
    """What the swappable model is built from besides _model_data: the tree (groups, labels, parents), the terms
    and blocks at each level, the fixed effects, the family and the prior families and shapes."""
    import hashlib

    parts: list = [md.spec.family, tuple(md.fixed_names), pri.intercept[0],
                   tuple(pri.b[c][0] for c in md.fixed_names if c != "(Intercept)"),
                   tuple(pri.sd[:3]), tuple(pri.sigma[:3]), tuple(pri.cor)]
    for lv in md.hierarchy.levels:  # the fixed effects' names and each level's terms fix the sums' shapes
        parts += [lv.group, lv.n_groups, tuple(lv.labels), tuple(lv.spec.terms),
                  tuple(tuple(b) for b in lv.spec.blocks), np.asarray(lv.parent, np.int64).tobytes()]
    return hashlib.sha256(repr(parts).encode()).hexdigest()


class _SymbolicScales:
    """The priors with the SD and residual-SD scales replaced by model data (the rest as given)."""

    def __init__(self, pri: Priors, sd_scale, sigma_scale):
        self._pri = pri
        self.sd = pri.sd[:3] + (sd_scale,)
        self.sigma = pri.sigma[:3] + (sigma_scale,)

    def __getattr__(self, name):
        return getattr(self._pri, name)


# Compiled nutpie models of swappable structures in this process (a study fits one structure many times):
# structure key -> (compiled model, parameter names, PyMC model). A new data set is swapped in with with_data and
# set on the PyMC model's data too (nutpie draws its initial points from it): the draws are then the same as
# from a fresh compile on that data set.
_COMPILED: dict[str, tuple] = {}
_COMPILED_MAX = 4
_COMPILED_LOCK = threading.Lock()  # threads of one process (a Dask worker with several) take turns


def clear_compiled_cache() -> int:
    """Forget the compiled models kept in this process; returns how many there were."""
    n = len(_COMPILED)
    _COMPILED.clear()
    return n


def _covariance_factor(pm, pt, lv, g, pri, names):
    """The level's absolute covariance factor L (k x k, block lower triangular): Sigma = L L'."""
    k = len(lv.spec.terms)
    L = pt.zeros((k, k))
    pos = 0
    for bi, block in enumerate(lv.spec.blocks):
        tag = f"{g}__{bi}"
        m = len(block)
        if m > 1:
            chol, corr, stds = pm.LKJCholeskyCov(f"chol_{tag}", n=m, eta=pri.cor[1], sd_dist=_half_t(pm, pri.sd),
                                                 compute_corr=True)
            pm.Deterministic(f"sd_{tag}", stds)
            pm.Deterministic(f"corr_{tag}", corr)
            names["cor"].append((lv.group, block, f"corr_{tag}"))
            L = pt.set_subtensor(L[pos:pos + m, pos:pos + m], chol)
        else:
            sd = pm.HalfStudentT(f"sd_{tag}", nu=pri.sd[1], sigma=pri.sd[3], shape=(1,))
            L = pt.set_subtensor(L[pos, pos], sd[0])
        names["sd"].append((lv.group, block, f"sd_{tag}"))
        pos += m
    return pm.Deterministic(f"L_{g}", L)


def _chol_solve(pt, A, B, k):
    """Batched Cholesky of A (G, k, k) and W = L^-1 B for small k, unrolled into elementwise operations.

    Returns (sum of log diag L, W (G, k, R))."""
    L = [[None] * k for _ in range(k)]
    logdiag = 0.0
    for j in range(k):
        s = A[:, j, j]
        for m in range(j):
            s = s - L[j][m] ** 2
        L[j][j] = pt.sqrt(s)
        logdiag = logdiag + pt.log(L[j][j]).sum()
        for i in range(j + 1, k):
            t = A[:, i, j]
            for m in range(j):
                t = t - L[i][m] * L[j][m]
            L[i][j] = t / L[j][j]
    W = []
    for i in range(k):
        w = B[:, i, :]
        for m in range(i):
            w = w - L[i][m][:, None] * W[m]
        W.append(w / L[i][i][:, None])
    return logdiag, pt.stack(W, axis=1)


def _marginal_loglik(pt, core, Ls, beta, sigma, C=None, n=None):
    """log p(y | beta, sigma, Sigma) from the per-leaf sums: mixedcore's elimination written in pytensor."""
    p, D = core.p, core.K + core.p + 1
    T = pt.eye(D)
    off = 0
    for li, k in enumerate(core.k):
        T = pt.set_subtensor(T[off:off + k, off:off + k], Ls[li] / sigma)
        off += k
    C = pt.as_tensor_variable(core.C) if C is None else C
    M = pt.tensordot(pt.tensordot(C, T, axes=[[2], [0]]), T, axes=[[1], [0]]).dimshuffle(0, 2, 1)
    logdet = 0.0
    for li in range(core.L - 1, -1, -1):
        k = core.k[li]
        start = int(sum(core.k[:li]))
        r = np.r_[np.arange(start), np.arange(start + k, start + k + p + 1)]
        Mee = M[:, start:start + k, start:start + k] + pt.eye(k)[None]
        Mer = M[:, start:start + k][:, :, r]
        Mrr = M[:, r][:, :, r]
        half_logdet, W = _chol_solve(pt, Mee, Mer, k)
        logdet = logdet + 2.0 * half_logdet
        msg = Mrr - (W[:, :, :, None] * W[:, :, None, :]).sum(axis=1)
        n_up = core.levels[li - 1].n_groups if li else 1
        P = np.zeros((n_up, core.levels[li].n_groups))
        P[core.levels[li].parent if li else np.zeros(core.levels[li].n_groups, dtype=int),
          np.arange(core.levels[li].n_groups)] = 1.0
        M = pt.tensordot(pt.as_tensor_variable(P), msg, axes=[[1], [0]])
    F = M[0]
    g = pt.concatenate([beta, -pt.ones(1)])
    r2 = pt.dot(g, pt.dot(F, g))
    n = core.n if n is None else n
    return -0.5 * (n * np.log(2 * np.pi) + 2 * n * pt.log(sigma) + logdet + r2 / sigma ** 2)


def _draw_all_effects(md: ModelData, idata, names, seed: int) -> None:
    """Exact draws of every group effect from p(b | beta, sigma, Sigma, y), one per posterior draw."""
    import xarray as xr

    post = idata.posterior
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    levels = md.hierarchy.levels
    core = _core(md)
    beta = post["beta"].values.reshape(nc * nd, -1)
    sigma = post["sigma"].values.reshape(-1)
    Ls = [post[f"L_{_safe(lv.group)}"].values.reshape(nc * nd, len(lv.spec.terms), -1) for lv in levels]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    draws = [np.empty((nc * nd, lv.n_groups, len(lv.spec.terms))) for lv in levels]
    for i in range(nc * nd):
        lam = [L[i] / sigma[i] for L in Ls]
        for li, b in enumerate(core.sample_effects(lam, beta[i], sigma[i], rng)):
            draws[li][i] = b
    for li, lv in enumerate(levels):
        g = _safe(lv.group)
        post[f"r_{g}"] = xr.DataArray(
            draws[li].reshape(nc, nd, lv.n_groups, -1), dims=("chain", "draw", f"{g}__labels", f"{g}__terms"),
            coords={"chain": post["chain"], "draw": post["draw"], f"{g}__labels": list(lv.labels),
                    f"{g}__terms": list(lv.spec.terms)})


def _draw_collapsed_leaf(md: ModelData, idata, names, seed: int) -> None:
    """Exact conditional draws of the integrated-out leaf effects, one per posterior draw."""
    import xarray as xr

    group, sd_var, r_var = names["collapsed"]
    cd = names["collapse_data"]
    post = idata.posterior
    nc, nd = post.sizes["chain"], post.sizes["draw"]
    levels = md.hierarchy.levels
    S = levels[-1].n_groups
    parts = []
    for li, lv in enumerate(levels[:-1]):
        r = post[f"r_{_safe(lv.group)}"].values.reshape(nc * nd, lv.n_groups, -1)
        parts.append(r[:, cd["anc"][li], :])
    beta = post["beta"].values.reshape(nc * nd, 1, -1)
    parts += [np.broadcast_to(beta, (nc * nd, S, beta.shape[2])), -np.ones((nc * nd, S, 1))]
    gam = np.concatenate(parts, axis=2)  # (draws, S, D)
    q = np.einsum("sd,nsd->ns", cd["cq"], gam)
    s2 = post["sigma"].values.reshape(-1)[:, None] ** 2
    t2 = post[sd_var].values.reshape(-1, 1) ** 2
    denom = s2 + t2 * cd["a"][None, :]
    mean = -t2 * q / denom  # C g = z'(W gamma - y) = -z'r
    sd = np.sqrt(s2 * t2 / denom)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7]))
    draws = mean + sd * rng.standard_normal(mean.shape)
    g = _safe(group)
    post[r_var] = xr.DataArray(draws.reshape(nc, nd, S, 1), dims=("chain", "draw", f"{g}__labels", f"{g}__terms"),
                               coords={"chain": post["chain"], "draw": post["draw"],
                                       f"{g}__labels": list(levels[-1].labels),
                                       f"{g}__terms": list(levels[-1].spec.terms)})


def _summ(x: np.ndarray) -> dict:
    """Posterior summaries over (chain, draw) of an array (chain, draw, ...)."""
    flat = x.reshape(-1, *x.shape[2:])
    return {"estimate": flat.mean(0), "std_error": flat.std(0, ddof=1),
            "conf_low": np.quantile(flat, 0.025, axis=0), "conf_high": np.quantile(flat, 0.975, axis=0)}


def _tidy(md: ModelData, idata, names) -> pd.DataFrame:
    post = idata.posterior
    rows = []
    s = _summ(post["beta"].values)
    for j, n in enumerate(md.fixed_names):
        rows.append(dict(effect="fixed", term=n, **{k: v[j] for k, v in s.items()}))
    for group, block, var in names["sd"]:
        s = _summ(post[var].values)
        for i, t in enumerate(block):
            rows.append(dict(effect="ran_pars", group=group, term=sd_term(t), **{k: v[i] for k, v in s.items()}))
    for group, block, var in names["cor"]:
        s = _summ(post[var].values)
        for i in range(len(block)):
            for j in range(i + 1, len(block)):
                rows.append(dict(effect="ran_pars", group=group, term=cor_term(block[i], block[j]),
                                 **{k: v[i, j] for k, v in s.items()}))
    if "sigma" in names:
        s = _summ(post["sigma"].values)
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), **s))
    if "theta" in names:
        rows.append(dict(effect="ran_pars", group=DISPERSION, term=THETA, **_summ(post["theta"].values)))
    for group, var in names["r"]:
        lv = md.hierarchy.level(group)
        s = _summ(post[var].values)
        for g, lab in enumerate(lv.labels):
            for i, t in enumerate(lv.spec.terms):
                rows.append(dict(effect="ran_vals", group=group, level=lab, term=t, **{k: v[g, i] for k, v in s.items()}))
    return tidy_frame(rows)


def _mcse_rows(md: ModelData, idata, names) -> list[dict]:
    """Monte Carlo SE of each posterior mean (arviz, method 'mean'), keyed like the tidy rows."""
    import arviz as az

    rows = []

    def add(effect, group, level, term, value):
        rows.append({"effect": effect, "group": group, "level": level, "term": term, "mcse": float(value)})

    m = az.mcse(idata, var_names=["beta"], method="mean")["beta"].values
    for j, n in enumerate(md.fixed_names):
        add("fixed", "", "", n, m[j])
    for group, block, var in names["sd"]:
        m = np.atleast_1d(az.mcse(idata, var_names=[var], method="mean")[var].values)
        for i, t in enumerate(block):
            add("ran_pars", group, "", sd_term(t), m[i])
    for group, block, var in names["cor"]:
        m = az.mcse(idata, var_names=[var], method="mean")[var].values
        for i in range(len(block)):
            for j in range(i + 1, len(block)):
                add("ran_pars", group, "", cor_term(block[i], block[j]), m[i, j])
    if "sigma" in names:
        add("ran_pars", RESIDUAL, "", sd_term("Observation"), az.mcse(idata, var_names=["sigma"], method="mean")["sigma"].values)
    if "theta" in names:
        add("ran_pars", DISPERSION, "", THETA, az.mcse(idata, var_names=["theta"], method="mean")["theta"].values)
    for group, var in names["r"]:
        lv = md.hierarchy.level(group)
        m = az.mcse(idata, var_names=[var], method="mean")[var].values
        for g, lab in enumerate(lv.labels):
            for i, t in enumerate(lv.spec.terms):
                add("ran_vals", group, lab, t, m[g, i])
    return rows


def _diagnostics(idata, names) -> dict:
    import arviz as az

    var_names = ["beta"] + [v for _, _, v in names["sd"]] + [v for _, v in names["r"]]
    for extra in ("sigma", "theta"):
        if extra in names:
            var_names.append(extra)
    rhat = az.rhat(idata, var_names=var_names)
    ess_b = az.ess(idata, var_names=var_names, method="bulk")
    ess_t = az.ess(idata, var_names=var_names, method="tail")

    def flat(ds):
        return np.concatenate([np.ravel(ds[v].values) for v in var_names])

    labels = [f"{v}[{','.join(map(str, i))}]" if i else v for v in var_names for i in np.ndindex(rhat[v].shape)]
    div = int(idata.sample_stats["diverging"].values.sum()) if "diverging" in idata.sample_stats else 0
    out = sampling.convergence(labels, flat(rhat), flat(ess_b), flat(ess_t), div)
    out["singular"] = False
    return out


def _linear_draws(fit: Fit, names, thin: int):
    md = fit.model
    post = fit.raw.posterior
    beta = post["beta"].values.reshape(-1, md.X.shape[1])[::thin]
    eta = beta @ md.X.T + md.offset
    for group, var in names["r"]:
        lv = md.hierarchy.level(group)
        r = post[var].values.reshape(-1, lv.n_groups, len(lv.spec.terms))[::thin]
        eta = eta + np.einsum("nk,snk->sn", md.Z[group], r[:, lv.codes, :])
    return eta


def posterior_predictive(fit: Fit, names, thin: int = 1, seed: int = 0) -> np.ndarray:
    """Draws of new responses for the fitted rows: array (draws, rows)."""
    rng = np.random.default_rng(seed)
    eta = _linear_draws(fit, names, thin)
    fam = fit.spec.family
    if fam == "gaussian":
        sigma = fit.raw.posterior["sigma"].values.reshape(-1)[::thin]
        return eta + rng.normal(size=eta.shape) * sigma[:, None]
    if fam == "binomial":
        return rng.binomial(md_trials(fit).astype(np.int64), 1 / (1 + np.exp(-eta))).astype(float)
    if fam == "negbinomial":  # NB2 as a gamma-Poisson mixture: theta / (theta + mu) is numpy's p
        theta = fit.raw.posterior["theta"].values.reshape(-1)[::thin][:, None]
        return rng.negative_binomial(theta, theta / (theta + np.exp(eta))).astype(float)
    return rng.poisson(np.exp(eta)).astype(float)


def md_trials(fit: Fit) -> np.ndarray:
    """The fitted rows' binomial trials (ones for a 0/1 response)."""
    md = fit.model
    return md.trials if md.trials is not None else np.ones(md.n)


def loo(fit: Fit, names, thin: int = 1):
    """PSIS-LOO (arviz) from the pointwise log-likelihood of every row, computed from the draws."""
    import arviz as az
    import xarray as xr
    from scipy import stats

    md = fit.model
    eta = _linear_draws(fit, names, thin)
    fam = fit.spec.family
    if fam == "gaussian":
        sigma = fit.raw.posterior["sigma"].values.reshape(-1)[::thin]
        ll = stats.norm.logpdf(md.y[None, :], loc=eta, scale=sigma[:, None])
    elif fam == "binomial":
        n = md_trials(fit)
        from scipy.special import gammaln

        choose = gammaln(n + 1) - gammaln(md.y + 1) - gammaln(n - md.y + 1)  # 0 for a 0/1 response
        ll = choose + md.y * -np.logaddexp(0, -eta) + (n - md.y) * -np.logaddexp(0, eta)
    elif fam == "negbinomial":
        theta = fit.raw.posterior["theta"].values.reshape(-1)[::thin][:, None]
        ll = stats.nbinom.logpmf(md.y[None, :], theta, theta / (theta + np.exp(eta)))
    else:
        ll = stats.poisson.logpmf(md.y[None, :], np.exp(eta))
    chains = fit.raw.posterior.sizes["chain"]
    ll = ll.reshape(chains, -1, md.n) if thin == 1 else ll[None]
    idata = az.InferenceData(posterior=fit.raw.posterior,
                             log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll)}))
    return az.loo(idata, pointwise=True)
