"""`make bench`: timings on the default scenario, written to a results file.

Measured side by side in one process: each available backend's fit time (median of repeats, after one warm-up
fit), and the wall time of the whole demo. Not a test: these machines are shared and noisy, so compare
ratios from one run, not absolute seconds across runs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hiercompare as hc
from hiercompare.demo import run_demo
from hiercompare.provenance import machine


def native_vs_lme4(n_markets: int = 100, n_sub: int = 20, n_obs: int = 500) -> dict:
    """1,000,000 rows (100 markets x 20 submarkets x 500), correlated market intercept and slope, submarket
    intercepts: native and lme4 side by side in one run, each timed from the DataFrame to the Fit."""
    sc = hc.Scenario(levels=(
        hc.LevelScenario("market", n_markets, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)),
                         label="Market_{i}"),
        hc.LevelScenario("submarket", n_sub, {"(Intercept)": 0.4}, label="Sub{i}")), n_obs=n_obs)
    data, _ = hc.simulate(sc, seed=2024)
    out = {"rows": len(data), "formula": sc.formula()}
    fits = {}
    for name in ("native", "lme4"):
        if name not in hc.available_backends():
            out[name] = "unavailable"
            continue
        t0 = time.perf_counter()
        f = hc.fit(data, sc.formula(), backend=name, method="REML")
        wall = time.perf_counter() - t0
        fits[name] = f
        out[name] = {"total_seconds": wall, "fit_seconds": f.timing["fit_seconds"], "loglik": f.loglik}
        print(f"{name:8s} {len(data)} rows: {wall:.2f} s", file=sys.stderr)
    if len(fits) == 2:
        out["speedup_native_vs_lme4"] = out["lme4"]["total_seconds"] / out["native"]["total_seconds"]
        out["loglik_difference"] = fits["native"].loglik - fits["lme4"].loglik
        a, b = fits["native"].varcorr.set_index(["group", "term"]), fits["lme4"].varcorr.set_index(["group", "term"])
        out["max_rel_diff_sd"] = float(((a["estimate"] - b.loc[a.index, "estimate"]).abs()
                                        / b.loc[a.index, "estimate"].abs()).max())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out/results.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--skip-large", action="store_true", help="skip the 1,000,000-row native vs lme4 run")
    args = ap.parse_args(argv)
    at_start = machine()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sc = hc.Scenario()
    data, _ = hc.simulate(sc, seed=123)
    formula = sc.formula()
    fits = {}
    fast = {"ols", "r_lm", "mixedlm", "lme4", "native", "lightgbm", "lightgbm-cat"}
    for name in hc.available_backends():
        hc.fit(data, formula, backend=name)  # warm-up: imports, R start-up, sourcing scripts, compiled models
        times = []
        for _ in range(args.repeats if name in fast else 1):  # samplers and networks: one timed fit
            f = hc.fit(data, formula, backend=name)
            times.append(f.timing["fit_seconds"])
        fits[name] = {"median_fit_seconds": statistics.median(times), "all": times}
        print(f"{name:8s} median fit {fits[name]['median_fit_seconds']:.3f} s over {len(times)}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_demo(tmp, progress=lambda m: None)
        demo_in_process = time.perf_counter() - t0
    large = None if args.skip_large else native_vs_lme4()
    fastest = min(v["median_fit_seconds"] for v in fits.values())
    results = {
        "benchmark": "default scenario (5,000 rows, 10 markets x 5 submarkets)",
        "formula": formula,
        "fits": fits,
        "ratio_to_fastest": {k: v["median_fit_seconds"] / fastest for k, v in fits.items()},
        "demo_seconds_in_process_warm": demo_in_process,
        "demo_backend_timings": res["timings"],
        "native_vs_lme4_1M_rows": large,
        "machine": at_start,  # CPU model, cores, load average, date and git commit when the run started
        "load_average_at_end": machine()["load_average_1_5_15"],
    }
    out.write_text(json.dumps(results, indent=2))
    print(f"demo (warm, in process): {demo_in_process:.2f} s; wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
