"""Simulation-based calibration (Talts et al. 2018) for the pymc backend.

For each simulation: draw the parameters from the prior, draw a data set from the model given them (same
design: predictors and tree of a template data set), sample the posterior with the backend's model, and record
the rank of the true value among ``L`` thinned posterior draws. If the sampler and the model's likelihood are
right, every parameter's ranks are uniform on 0..L. The model is compiled once; each simulation swaps in its
data (the per-leaf sums) with nutpie's ``with_data``.

The priors must be fixed (not scaled to each simulated data set), so :func:`sbc` takes explicit
:class:`~hiercompare.priors.Priors`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from . import mixedcore
from .design import ModelData
from .priors import Priors


@dataclass
class SBCResult:
    ranks: pd.DataFrame  # one row per simulation, one column per parameter
    n_draws: int  # L: ranks run 0..L
    diagnostics: pd.DataFrame  # per simulation: divergences, min ESS, seconds

    def uniformity(self, bins: int = 10) -> pd.DataFrame:
        """Chi-square test of uniform ranks per parameter (bins of equal width over 0..L)."""
        rows = []
        edges = np.linspace(0, self.n_draws + 1, bins + 1)
        for c in self.ranks.columns:
            counts, _ = np.histogram(self.ranks[c], bins=edges)
            chi2, p = stats.chisquare(counts)
            rows.append({"parameter": c, "chi2": chi2, "p_value": p, "n": int(counts.sum())})
        return pd.DataFrame(rows)

    def ecdf_difference_plot(self, path=None, alpha: float = 0.99):
        """ECDF of the scaled ranks minus the uniform CDF, with pointwise binomial bands (base64 PNG)."""
        from .report.plots import _png, _pyplot

        plt = _pyplot()
        n = len(self.ranks)
        z = np.linspace(0, 1, 101)
        lo = stats.binom.ppf((1 - alpha) / 2, n, z) / n - z
        hi = stats.binom.ppf(1 - (1 - alpha) / 2, n, z) / n - z
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.fill_between(z, lo, hi, color="grey", alpha=0.3, label=f"{alpha:.0%} pointwise band")
        for c in self.ranks.columns:
            u = (self.ranks[c].to_numpy() + 0.5) / (self.n_draws + 1)
            ax.plot(z, [(u <= t).mean() - t for t in z], lw=1, label=c)
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xlabel("fractional rank")
        ax.set_ylabel("ECDF - uniform")
        ax.set_title(f"SBC: {n} simulations, {self.n_draws} posterior draws each")
        ax.legend(fontsize=7, ncol=2)
        png = _png(fig)
        if path is not None:
            import base64

            with open(path, "wb") as fh:
                fh.write(base64.b64decode(png))
        return png


def sbc(md: ModelData, priors: Priors, n_sims: int = 100, draws: int = 500, tune: int = 500, thin: int = 5,
        chains: int = 2, seed: int = 0, progress=None) -> SBCResult:
    """Run SBC for the pymc backend's gaussian model (collapsed sampler) on the design of ``md``."""
    import nutpie
    import pymc as pm

    from .backends.pymc import _safe, build_model

    priors.validate()
    model, names = build_model(md, priors, "suffstats", collapse="all")
    compiled = nutpie.compile_pymc_model(model)
    levels = md.hierarchy.levels
    watched = {"beta": model["beta"], "sigma": model["sigma"]}
    for lv in levels:
        watched[f"L_{_safe(lv.group)}"] = model[f"L_{_safe(lv.group)}"]
    for _, _, var in names["sd"] + names["cor"]:
        watched[var] = model[var]
    keys = list(watched)
    prior = pm.draw([watched[k] for k in keys], draws=n_sims, random_seed=seed)
    prior = dict(zip(keys, prior))
    core = mixedcore.from_model_data(md)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 101]))
    L = draws * chains // thin
    rank_rows, diag_rows = [], []
    for i in range(n_sims):
        beta, sigma = prior["beta"][i], float(prior["sigma"][i])
        y = md.X @ beta + sigma * rng.standard_normal(md.n)
        for lv in levels:
            Lm = prior[f"L_{_safe(lv.group)}"][i]
            b = rng.standard_normal((lv.n_groups, Lm.shape[0])) @ Lm.T
            y = y + np.einsum("nk,nk->n", md.Z[lv.group], b[lv.codes])
        core.set_response(y)
        import time

        t0 = time.perf_counter()
        idata = nutpie.sample(compiled.with_data(leaf_sums=core.C), draws=draws, tune=tune, chains=chains,
                              cores=chains, seed=int(rng.integers(2**31)), progress_bar=False, save_warmup=False)
        post = idata.posterior
        row = {}
        for j, name in enumerate(md.fixed_names):
            row[f"beta[{name}]"] = _rank(post["beta"].values[..., j], beta[j], thin)
        row["sigma"] = _rank(post["sigma"].values, sigma, thin)
        for group, block, var in names["sd"]:
            for t, term in enumerate(block):
                row[f"sd[{group}:{term}]"] = _rank(post[var].values[..., t], prior[var][i][t], thin)
        for group, block, var in names["cor"]:
            row[f"cor[{group}]"] = _rank(post[var].values[..., 0, 1], prior[var][i][0, 1], thin)
        rank_rows.append(row)
        diag_rows.append({"sim": i, "seconds": time.perf_counter() - t0,
                          "divergences": int(idata.sample_stats["diverging"].values.sum())})
        if progress:
            progress(f"SBC {i + 1}/{n_sims}")
    return SBCResult(ranks=pd.DataFrame(rank_rows), n_draws=L, diagnostics=pd.DataFrame(diag_rows))


def small_design() -> tuple[ModelData, Priors]:
    """The design and fixed priors of the recorded SBC runs: 6 markets x 3 submarkets x 8 rows, correlated
    market intercept and x1 slope, submarket intercepts; N(0, 1) fixed effects, half-t(3, 0, 0.5) SDs, LKJ(2)."""
    import hiercompare as hc
    from .design import prepare

    sc = hc.Scenario(levels=(hc.LevelScenario("market", 6, {"(Intercept)": 0.5, "x1": 0.3}, ((1, 0.3), (0.3, 1)),
                                              label="M{i}"),
                             hc.LevelScenario("submarket", 3, {"(Intercept)": 0.3}, label="S{i}")), n_obs=8)
    data, _ = hc.simulate(sc, seed=1)
    md = prepare(hc.ModelSpec.from_formula(sc.formula()), data)
    pri = Priors(intercept=("normal", 0.0, 1.0), b={"x1": ("normal", 0.0, 1.0), "x2": ("normal", 0.0, 1.0)},
                 sd=("student_t", 3.0, 0.0, 0.5), sigma=("student_t", 3.0, 0.0, 0.5), cor=("lkj", 2.0))
    return md, pri


def _rank(draws: np.ndarray, truth: float, thin: int) -> int:
    flat = np.asarray(draws).reshape(draws.shape[0], -1)[:, ::thin].ravel()
    return int((flat < truth).sum())
