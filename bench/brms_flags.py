"""brms's Stan models compiled with R's own flags vs hiercompare's (r_scripts/stan_makevars.mk), side by side.

Both builds of the default scenario's model (5,000 rows, ``y ~ x1 + x2 + (1 + x1 | market) + (1 |
market:submarket)``) are compiled into a fresh cache folder, then sampled in alternation (R's, ours, R's,
ours: this shared machine drifts within minutes) with the same data, seed and settings. Reported per build:
compile seconds, chain seconds (warmup and sampling, summed over chains), milliseconds per gradient in the
sampling phase (chain seconds / leapfrog steps), and the largest difference of any posterior summary between
the builds (the same seed should give the same draws).

Usage: python bench/brms_flags.py OUT.json
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

import hiercompare as hc
from hiercompare.backends import brms as brms_backend
from hiercompare.provenance import machine


def run(out_path: str, rounds: int = 2, iter: int = 300, warmup: int = 300) -> dict:
    at_start = machine()
    data, _ = hc.simulate(hc.Scenario(), seed=123)
    formula = hc.Scenario().formula()
    cache = Path(tempfile.mkdtemp(prefix="hc_brms_flags_"))
    ours = brms_backend.STAN_MAKEVARS
    builds = {"R default flags": cache / "no_such_makevars.mk", "hiercompare flags": ours}
    res: dict = {name: {"fits": []} for name in builds}
    tables = {}
    try:
        for r in range(rounds):
            for name, mk in builds.items():
                brms_backend.STAN_MAKEVARS = mk
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    t0 = time.perf_counter()
                    f = hc.fit(data, formula, backend="brms", seed=7, chains=2, iter=iter, warmup=warmup, cores=2,
                               cache_dir=str(cache))
                    wall = time.perf_counter() - t0
                d = f.diagnostics
                cs = d["chain_seconds"]
                steps = d["mean_leapfrog_steps"] * iter * 2
                row = {"round": r, "wall_seconds": wall, "compile_seconds": d["compile_seconds"],
                       "warmup_chain_seconds": sum(cs["warmup"]), "sampling_chain_seconds": sum(cs["sample"]),
                       "ms_per_gradient": 1000 * sum(cs["sample"]) / steps, "mean_leapfrog_steps": d["mean_leapfrog_steps"],
                       "flags": d["compiler_flags"]}
                res[name]["fits"].append(row)
                tables[name] = f.table[["estimate", "std_error"]].to_numpy(float)
                print(f"{name} round {r}: wall {wall:.1f} s, compile {d['compile_seconds']:.1f} s, "
                      f"chains warmup {row['warmup_chain_seconds']:.1f} s + sampling {row['sampling_chain_seconds']:.1f} s, "
                      f"{row['ms_per_gradient']:.3f} ms/gradient", flush=True)
    finally:
        brms_backend.STAN_MAKEVARS = ours
    a, b = (res[n]["fits"] for n in builds)
    sec = lambda rows, k: float(np.sum([x[k] for x in rows]))  # noqa: E731
    out = {
        "machine": at_start, "load_average_at_end": machine()["load_average_1_5_15"], "rows": len(data), "chains": 2, "iter": iter, "warmup": warmup,
        "rounds": rounds, "builds": res,
        "compile_seconds": {n: res[n]["fits"][0]["compile_seconds"] for n in builds},
        "chain_seconds_ratio_default_over_ours": (sec(a, "warmup_chain_seconds") + sec(a, "sampling_chain_seconds"))
        / (sec(b, "warmup_chain_seconds") + sec(b, "sampling_chain_seconds")),
        "ms_per_gradient": {n: float(np.mean([x["ms_per_gradient"] for x in res[n]["fits"]])) for n in builds},
        "max_abs_difference_of_summaries": float(np.max(np.abs(tables["R default flags"] - tables["hiercompare flags"]))),
    }
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    Path(out_path).write_text(json.dumps(out, indent=1))
    print(json.dumps({k: v for k, v in out.items() if k != "builds"}, indent=1))
    return out


if __name__ == "__main__":
    run(sys.argv[1] if len(sys.argv) > 1 else "bench_out/brms_flags.json")
