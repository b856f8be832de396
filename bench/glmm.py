"""`make bench`: the native GLMM (hiercompare.glmmcore) against glmer side by side (issue 12), written to
bench_out/glmm.json.

A binary outcome on 100 markets x 20 submarkets with a correlated market intercept and slope,
``y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)`` (simulated by :func:`hiercompare.simulate`,
family binomial, seed 2024), at 100,000 and 1,000,000 rows. In one process, after a warm-up fit of each engine
(numba's compiled passes loaded, R and lme4 started), the two engines are timed alternately, ``--repeats`` times
each: native (``backend="native"``) and glmer with its defaults (``backend="lme4"``: the data go to R through
rpy2, glmer runs there, its ranef and VarCorr come back). Each fit is timed from the DataFrame to the Fit (wall
clock, ``total_seconds``), and its backend call alone (``fit_seconds``); the process's CPU time is measured around
each fit too (glmer runs in this process through rpy2, so it is counted the same way), since these machines are
shared and a wall-clock second there may hold a fraction of a CPU second. Figures are medians; the ratio is of the
medians measured in the same run. The goal (issue 12): native >= 20 times faster at 1,000,000 rows with the same
estimates: fixed effects within 1% of their SE, SDs and the correlation within 1e-3 relative, and native's
log-likelihood >= glmer's - 1e-6. Native's own deviance at glmer's estimates is recorded too (glmer's Laplace
deviance is inexact by up to ~1e-3 at its default tolPwrss: see tests/test_glmmcore.py).
The machine (hiercompare.provenance.machine()) is recorded at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import hiercompare as hc
from hiercompare import glmmcore
from hiercompare.provenance import machine

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
LEAVES = 100 * 20


def scenario(rows: int) -> hc.Scenario:
    return hc.Scenario(levels=(
        hc.LevelScenario("market", 100, {"(Intercept)": 0.5, "x1": 0.3}, ((1, 0.3), (0.3, 1)), label="Market_{i}"),
        hc.LevelScenario("submarket", 20, {"(Intercept)": 0.3}, label="Sub{i}")),
        n_obs=rows // LEAVES, family="binomial", fixed={"(Intercept)": -0.5, "x1": 0.8, "x2": 0.4})


def timed_fit(data, backend: str) -> tuple:
    c0, t0 = time.process_time(), time.perf_counter()
    f = hc.fit(data, FORMULA, backend=backend, family="binomial")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return f, {"total_seconds": wall, "fit_seconds": f.timing["fit_seconds"], "cpu_seconds": cpu,
               "loglik": f.loglik, "converged": f.converged}


def estimates(f) -> dict:
    fe = f.tidy("fixed").set_index("term")
    rp = f.tidy("ran_pars")
    return {"fixef": fe["estimate"].to_dict(), "fixef_se": fe["std_error"].to_dict(),
            "ran_pars": {f"{g}|{t}": float(v) for g, t, v in zip(rp["group"], rp["term"], rp["estimate"])},
            "loglik": f.loglik}


def agreement(native, glmer) -> dict:
    a, b = estimates(native), estimates(glmer)
    fe = {k: abs(a["fixef"][k] - b["fixef"][k]) / b["fixef_se"][k] for k in b["fixef"]}
    rp = {k: abs(a["ran_pars"][k] - v) / abs(v) for k, v in b["ran_pars"].items()}
    # native's deviance at glmer's estimates: the same likelihood, evaluated exactly, at the other optimum
    md = native.model
    core = glmmcore.from_model_data(md)
    beta = np.array([b["fixef"][n] for n in md.fixed_names])
    theta = []
    for li, i, j in core.theta_index:
        lv = md.hierarchy.levels[li]
        terms = lv.spec.terms
        sd = np.array([b["ran_pars"][f"{lv.group}|sd__{t}"] for t in terms])
        R = np.eye(len(terms))
        for x in range(len(terms)):
            for y in range(x):
                R[x, y] = R[y, x] = b["ran_pars"][f"{lv.group}|cor__{terms[y]}.{terms[x]}"]
        theta.append(np.linalg.cholesky(R * np.outer(sd, sd))[i, j])
    at_glmer = -core.laplace(np.array(theta), beta) / 2
    return {"fixef_abs_diff_over_se": fe, "max_fixef_abs_diff_over_se": max(fe.values()),
            "ran_pars_rel_diff": rp, "max_ran_pars_rel_diff": max(rp.values()),
            "loglik_native_minus_glmer": a["loglik"] - b["loglik"],
            "native_loglik_at_glmers_estimates": at_glmer,
            "native_optimum_minus_native_at_glmers_estimates": a["loglik"] - at_glmer,
            "within_tolerances": bool(max(fe.values()) <= 0.01 and max(rp.values()) <= 1e-3
                                      and a["loglik"] >= b["loglik"] - 1e-6)}


def run_size(rows: int, repeats: int) -> dict:
    data, _ = hc.simulate(scenario(rows), seed=2024)
    out = {"rows": len(data), "formula": FORMULA, "family": "binomial", "repeats": repeats}
    runs = {"native": [], "lme4": []}
    fits = {}
    for r in range(repeats):
        for name in ("native", "lme4"):  # alternately, so that both meet the same load
            f, t = timed_fit(data, name)
            runs[name].append(t)
            fits[name] = f
            print(f"{rows:>9} rows, {name:6s} run {r + 1}: {t['total_seconds']:.2f} s wall, {t['cpu_seconds']:.2f} s "
                  f"CPU", file=sys.stderr)
    for name, ts in runs.items():
        out[name] = {"runs": ts, **{f"median_{k}": statistics.median(t[k] for t in ts)
                                    for k in ("total_seconds", "fit_seconds", "cpu_seconds")},
                     "estimates": estimates(fits[name]), "optimizer": fits[name].diagnostics.get("optimizer")}
    out["speedup_total_seconds"] = out["lme4"]["median_total_seconds"] / out["native"]["median_total_seconds"]
    out["speedup_fit_seconds"] = out["lme4"]["median_fit_seconds"] / out["native"]["median_fit_seconds"]
    out["speedup_cpu_seconds"] = out["lme4"]["median_cpu_seconds"] / out["native"]["median_cpu_seconds"]
    out["agreement"] = agreement(fits["native"], fits["lme4"])
    out["native_diagnostics"] = {k: fits["native"].diagnostics.get(k) for k in
                                 ("deviance_evaluations", "passes_over_rows", "vcov", "converged")}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="bench_out/glmm.json")
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    at_start = machine()
    if "lme4" not in hc.available_backends():
        print("lme4 is not available here: native alone is not a comparison; nothing written", file=sys.stderr)
        return 1
    warm, _ = hc.simulate(scenario(20_000), seed=1)
    for name in ("native", "lme4"):  # imports, numba's compiled passes, R and lme4 start-up
        hc.fit(warm, FORMULA, backend=name, family="binomial")
    results = {"benchmark": "native GLMM (glmmcore, Laplace) vs glmer (lme4 defaults), binary outcome, 100 markets "
                            "x 20 submarkets, correlated market intercept and slope",
               "goal": "native >= 20x faster at 1,000,000 rows; fixed effects within 1% of their SE, SDs within "
                       "1e-3 relative, native logLik >= glmer's - 1e-6",
               "sizes": [run_size(rows, args.repeats) for rows in args.rows],
               "machine": at_start, "load_average_at_end": machine()["load_average_1_5_15"]}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    for s in results["sizes"]:
        print(f"{s['rows']:>9} rows: native {s['native']['median_total_seconds']:.2f} s, glmer "
              f"{s['lme4']['median_total_seconds']:.2f} s (x{s['speedup_total_seconds']:.1f} wall, "
              f"x{s['speedup_cpu_seconds']:.1f} CPU); within tolerances: {s['agreement']['within_tolerances']}",
              file=sys.stderr)
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
