"""`hiercompare demo` wall time, cold and warm, with each stage's share (issue 5), written by `make bench`.

Two runs of the command itself (a new process each, as a user runs it), every backend, the default scenario:

1. cold: empty caches, in fresh folders: brms's compiled Stan models (``HIERCOMPARE_CACHE``), PyTensor's
   compiled C modules and numba cache (``PYTENSOR_FLAGS=base_compiledir=...``), numba's own cache
   (``NUMBA_CACHE_DIR``);
2. warm: the same command again with those caches filled by run 1;
3. warm again (a third run), as a check that the second run was already warm.

The operating system's file cache is not dropped (this needs no root and other sessions share the machine),
so "cold" means cold compilers and caches, with the libraries' files possibly in memory.

The demo fits brms in a second process (``hiercompare.aside``) while the other backends fit in its own (there
limited to one thread, since brms's two chains take both cores): on a cold cache brms's C++ compile overlaps
pymc's PyTensor compile, on a warm one its sampling overlaps every other fit. Stages, from the demo's
``results.json``: process start and imports (wall time minus the demo's own total), simulating, each backend's
fit in the demo's process (data frame to Fit), the time then still waited for the second process, agreement
and recovery tables, the HTML report, the rest. These add up to the wall time; brms's own fit time in its
process is reported beside them ("overlapped"), since it runs at the same time as the others. Goal (issue 5):
under 90 s warm and 4 minutes cold on this 2-core machine.

Usage::

    python bench/demo.py bench_out/demo.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_WARM, GOAL_COLD = 90.0, 240.0


def _run(out_dir: Path, cache: Path) -> dict:
    env = dict(os.environ)
    env.update({"HIERCOMPARE_CACHE": str(cache / "hiercompare"), "NUMBA_CACHE_DIR": str(cache / "numba"),
                "PYTENSOR_FLAGS": f"base_compiledir={cache / 'pytensor'}"})
    exe = Path(sys.executable).with_name("hiercompare")
    t0 = time.perf_counter()
    proc = subprocess.run([str(exe), "demo", "--out", str(out_dir)], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"hiercompare demo failed:\n{proc.stderr[-3000:]}")
    res = json.loads((out_dir / "results.json").read_text())
    stages = {"process start and imports": wall - res["timing_total_seconds"], "simulate": res["timing_stages"]["simulate"]}
    overlapped = {}
    for t in res["timings"]:
        if "process" in t:  # fitted in a second process, meanwhile
            overlapped[f"fit {t['backend']} (second process)"] = round(t.get("total_seconds", t["process_seconds"]), 3)
            stages[f"waiting for {t['backend']} (second process)"] = t["waited_seconds"]
        elif t.get("status") == "ok":
            stages[f"fit {t['backend']}"] = t["total_seconds"]
    stages["agreement and recovery"] = res["timing_stages"]["compare_and_recovery"]
    stages["report"] = res["timing_stages"]["report"]
    stages["other"] = res["timing_stages"]["other"]
    extra = {}
    for f in res["fits"]:
        d = f["diagnostics"]
        if f["backend"] in ("pymc", "brms"):
            extra[f["backend"]] = {k: d.get(k) for k in ("compile_seconds", "model_load_seconds", "sampling_seconds",
                                                         "cache", "ess_bulk_min", "ess_tail_min", "rhat_max",
                                                         "rhat_max_variable", "divergences", "converged",
                                                         "chain_seconds", "parallel_chains")}
    return {"wall_seconds": wall, "stages": {k: round(v, 3) for k, v in stages.items()},
            "shares": {k: round(v / wall, 4) for k, v in stages.items()},
            "overlapped": overlapped, "skipped": res["skipped"], "samplers": extra,
            "options": {f["backend"]: f["provenance"].get("options", {}) for f in res["fits"]
                        if f["backend"] in ("pymc", "brms")}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file for the figures")
    args = ap.parse_args(argv)
    from hiercompare.provenance import machine

    at_start = machine()
    with tempfile.TemporaryDirectory(prefix="hc-bench-demo-") as tmp:
        tmp = Path(tmp)
        cold = _run(tmp / "cold", tmp / "cache")
        print(f"demo cold: {cold['wall_seconds']:.1f} s", file=sys.stderr)
        warm = _run(tmp / "warm", tmp / "cache")
        print(f"demo warm: {warm['wall_seconds']:.1f} s", file=sys.stderr)
        warm3 = _run(tmp / "warm3", tmp / "cache")
        print(f"demo warm (third run): {warm3['wall_seconds']:.1f} s", file=sys.stderr)
    out = {"cold": cold, "warm": warm, "warm_third_run": warm3, "goal_warm_seconds": GOAL_WARM, "goal_cold_seconds": GOAL_COLD,
           "warm_goal_met": warm["wall_seconds"] < GOAL_WARM, "cold_goal_met": cold["wall_seconds"] < GOAL_COLD,
           "machine": at_start, "load_average_at_end": machine()["load_average_1_5_15"]}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    for name in ("cold", "warm", "warm_third_run"):
        print(name, json.dumps(out[name]["stages"]), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
