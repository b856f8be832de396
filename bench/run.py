"""`make bench`: timings on the default scenario, written to a results file.

Measured side by side in one process: each available backend's fit time (median of repeats, after one warm-up
fit), and the wall time of the whole demo. Not a test: these machines are shared and noisy, so compare
ratios from one run, not absolute seconds across runs.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import hiercompare as hc
from hiercompare.demo import git_commit, run_demo


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="bench_out/results.json")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sc = hc.Scenario()
    data, _ = hc.simulate(sc, seed=123)
    formula = sc.formula()
    fits = {}
    for name in hc.available_backends():
        hc.fit(data, formula, backend=name)  # warm-up: imports, R start-up, sourcing scripts
        times = []
        for _ in range(args.repeats):
            f = hc.fit(data, formula, backend=name)
            times.append(f.timing["fit_seconds"])
        fits[name] = {"median_fit_seconds": statistics.median(times), "all": times}
        print(f"{name:8s} median fit {fits[name]['median_fit_seconds']:.3f} s over {args.repeats}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = run_demo(tmp, progress=lambda m: None)
        demo_in_process = time.perf_counter() - t0
    fastest = min(v["median_fit_seconds"] for v in fits.values())
    results = {
        "benchmark": "default scenario (5,000 rows, 10 markets x 5 submarkets)",
        "formula": formula,
        "fits": fits,
        "ratio_to_fastest": {k: v["median_fit_seconds"] / fastest for k, v in fits.items()},
        "demo_seconds_in_process_warm": demo_in_process,
        "demo_backend_timings": res["timings"],
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor()},
        "git_commit": git_commit(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    out.write_text(json.dumps(results, indent=2))
    print(f"demo (warm, in process): {demo_in_process:.2f} s; wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
