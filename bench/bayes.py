"""Bayesian benchmarks (issue 3), written into the `make bench` results file.

1. ESS per second: the pymc backend vs the plain PyMC model as the seed conversation writes it (PyMC's default
   NUTS sampler, non-centred LKJ market intercept/slope, non-centred submarket intercepts, row-wise likelihood),
   same data (default scenario, 5,000 rows), same draws and chains, side by side in one process. Reported:
   bulk ESS of the slowest parameter (fixed effects, SDs, correlation, residual SD), sampling seconds, and the
   ratio of ESS/s; also with compile time included.
2. Scaling: the pymc backend's sampling time on 1,000,000 rows (100 markets x 20 submarkets x 500 rows) vs a
   tree of the same shape with 5,000 rows.
"""
from __future__ import annotations

import time

import numpy as np

import hiercompare as hc


def seed_model_ess(data, draws=1000, tune=1000, chains=2, seed=1) -> dict:
    import arviz as az
    import pymc as pm

    markets = np.unique(data["market"])
    m = np.searchsorted(markets, data["market"])
    subs = np.unique(data["market"] + ":" + data["submarket"])
    s = np.searchsorted(subs, data["market"] + ":" + data["submarket"])
    with pm.Model() as model:
        alpha = pm.Normal("alpha_US", 0, 5)
        beta_x2 = pm.Normal("beta_x2", 0, 2)
        beta_x1 = pm.Normal("beta_x1", 0, 2)
        chol, corr, stds = pm.LKJCholeskyCov("chol_M", n=2, eta=2, sd_dist=pm.HalfNormal.dist(2.0), compute_corr=True)
        z_m = pm.Normal("z_m", 0, 1, shape=(len(markets), 2))
        mk = pm.Deterministic("market_b", pm.math.dot(z_m, chol.T))
        sigma_s = pm.HalfNormal("sigma_S", 1.0)
        z_s = pm.Normal("z_s", 0, 1, shape=len(subs))
        sigma_y = pm.HalfNormal("sigma_y", 2.0)
        mu = (alpha + mk[m, 0] + z_s[s] * sigma_s + (beta_x1 + mk[m, 1]) * data["x1"].to_numpy()
              + beta_x2 * data["x2"].to_numpy())
        pm.Normal("y", mu=mu, sigma=sigma_y, observed=data["y"].to_numpy())
        t0 = time.perf_counter()
        idata = pm.sample(draws=draws, tune=tune, chains=chains, cores=chains, random_seed=seed, progressbar=False)
        wall = time.perf_counter() - t0
    names = ["alpha_US", "beta_x1", "beta_x2", "sigma_S", "sigma_y", "chol_M_stds", "chol_M_corr"]
    ess = az.ess(idata, var_names=names, method="bulk")
    vals = np.concatenate([np.ravel(ess[v].values) for v in ess.data_vars])
    vals = vals[np.isfinite(vals)]
    min_ess = float(vals.min())
    return {"sampling_seconds_incl_compile": wall, "ess_bulk_min": min_ess, "ess_per_second": min_ess / wall}


def ours_ess(data, formula, draws=1000, tune=1000, chains=2, seed=1) -> dict:
    f = hc.fit(data, formula, backend="pymc", draws=draws, tune=tune, chains=chains, seed=seed)
    d = f.diagnostics
    import arviz as az

    names = ["beta", "sigma"] + [v for v in f.raw.posterior.data_vars if v.startswith(("sd_", "corr_"))]
    ess = az.ess(f.raw, var_names=names, method="bulk")
    vals = np.concatenate([np.ravel(ess[v].values) for v in ess.data_vars])
    vals = vals[np.isfinite(vals)]
    min_ess = float(vals.min())
    return {"compile_seconds": d["compile_seconds"], "sampling_seconds": d["sampling_seconds"],
            "posthoc_seconds": d["posthoc_seconds"], "ess_bulk_min": min_ess,
            "ess_per_second_sampling": min_ess / d["sampling_seconds"],
            "ess_per_second_incl_compile": min_ess / (d["compile_seconds"] + d["sampling_seconds"]
                                                       + d["posthoc_seconds"]),
            "converged": d["converged"], "divergences": d["divergences"]}


def scaling(draws=1000, tune=1000) -> dict:
    out = {}
    for label, n_obs in (("rows_5000", (2, 3)), ("rows_1000000", 500)):
        sc = hc.Scenario(levels=(
            hc.LevelScenario("market", 100, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)), label="Market_{i}"),
            hc.LevelScenario("submarket", 20, {"(Intercept)": 0.4}, label="Sub{i}")), n_obs=n_obs)
        data, _ = hc.simulate(sc, seed=7)
        f = hc.fit(data, sc.formula(), backend="pymc", draws=draws, tune=tune, seed=1)
        out[label] = {"rows": len(data), "sampling_seconds": f.diagnostics["sampling_seconds"],
                      "compile_seconds": f.diagnostics["compile_seconds"], "converged": f.diagnostics["converged"]}
    out["sampling_time_ratio_1M_vs_5k"] = out["rows_1000000"]["sampling_seconds"] / out["rows_5000"]["sampling_seconds"]
    return out


def brms_cache(n_obs: int = 20, iters: int = 500) -> dict:
    """brms: first fit of a structure (compile + sample) vs a second fit of the same structure on NEW data of
    the same size with the same iterations (compiled model reused), both in this process, fresh cache."""
    import tempfile

    if "brms" not in hc.available_backends():
        return {"brms": "unavailable"}
    from hiercompare.backends.brms import clear_memory_cache

    clear_memory_cache()
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for label, seed in (("first_fit", 1), ("second_fit_new_data", 2)):
            data, _ = hc.simulate(hc.Scenario(n_obs=n_obs), seed=seed)
            t0 = time.perf_counter()
            f = hc.fit(data, hc.Scenario().formula(), backend="brms", seed=seed, iter=iters, warmup=iters,
                       cache_dir=cache)
            out[label] = {"rows": len(data), "seconds": time.perf_counter() - t0,
                          "compiled": f.diagnostics["compiled"], "compile_seconds": f.diagnostics.get("compile_seconds")}
    out["ratio_second_to_first"] = out["second_fit_new_data"]["seconds"] / out["first_fit"]["seconds"]
    return out


def run() -> dict:
    from hiercompare.provenance import machine

    at_start = machine()
    data, _ = hc.simulate(hc.Scenario(), seed=123)
    ours = ours_ess(data, hc.Scenario().formula())
    seed = seed_model_ess(data)
    return {
        "ess_per_second": {"pymc_backend": ours, "seed_plain_pymc": seed,
                           "ratio_sampling_only": ours["ess_per_second_sampling"] / seed["ess_per_second"],
                           "ratio_including_compile": ours["ess_per_second_incl_compile"] / seed["ess_per_second"]},
        "scaling": scaling(),
        "brms_cache": brms_cache(),
        "machine": at_start, "load_average_at_end": machine()["load_average_1_5_15"],
    }


if __name__ == "__main__":
    import json
    import sys

    res = run()
    print(json.dumps(res, indent=2))
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(res, fh, indent=2)
