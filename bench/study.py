"""Study throughput (issue 5), written by `make bench` to bench_out/study.json.

A study of the seed scenario (10 markets x 5 submarkets x 100 rows) with the fast backends (ols, r_lm, mixedlm,
lme4, native; the R ones only where R is available) is run three times into fresh folders:

1. in this process (``workers=1``),
2. on 2 local worker processes (``workers=2``, spawn),
3. on a Dask ``LocalCluster`` with 2 worker processes of 1 thread each.

Reported: wall seconds and replications per minute of each run (worker start-up included: that is what a user
waits for), the speed-up of 2 local workers over 1 (goal: at least 1.8x), Dask's throughput relative to local
processes (goal: within 15%), and whether the three result tables agree (they must: seeds are keyed by unit).
Failed fits are listed per run; where Dask fails fits that local processes do not, ``dask_comparable`` is false
and the Dask figure is not a like-for-like comparison.

Usage::

    python bench/study.py bench_out/study.json [--replications 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FAST = ["ols", "r_lm", "mixedlm", "lme4", "native"]
GOAL_SPEEDUP = 1.8
GOAL_DASK = 0.15


def _study(replications: int):
    import hiercompare as hc
    from hiercompare.study import Study

    avail = set(hc.available_backends())
    backends = [b for b in FAST if b in avail]
    skipped = [b for b in FAST if b not in avail]
    st = Study([hc.Scenario()], replications=replications, backends=backends, seed=20240601, name="bench_study")
    return st, skipped


def _timed(st, folder: Path, **kw) -> tuple[float, "object"]:
    t0 = time.perf_counter()
    table = st.run(folder, progress=False, **kw)
    return time.perf_counter() - t0, table


def _same(a, b) -> bool:
    cols = ["scenario", "replication", "backend", "effect", "group", "level", "term", "estimate", "std_error"]
    x, y = a[cols].reset_index(drop=True), b[cols].reset_index(drop=True)
    if len(x) != len(y) or not x.drop(columns=["estimate", "std_error"]).equals(y.drop(columns=["estimate",
                                                                                                "std_error"])):
        return False
    return bool(np.allclose(x["estimate"], y["estimate"], rtol=1e-9, atol=1e-12, equal_nan=True)
                and np.allclose(x["std_error"], y["std_error"], rtol=1e-9, atol=1e-12, equal_nan=True))


def _failures(table) -> dict[str, str]:
    """Failed fits per backend: count and the first error text."""
    bad = table[table["error"] != ""]
    return {b: f"{len(g)} failed, e.g. {g['error'].iloc[0].strip()[:200]}" for b, g in bad.groupby("backend")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file for the figures")
    ap.add_argument("--replications", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from distributed import LocalCluster

    from hiercompare.study import clean_child_environment, package_versions

    st, skipped = _study(args.replications)
    n = args.replications
    runs = {}
    tables = {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-study-") as tmp:
        tmp = Path(tmp)
        print(f"bench study: {n} replications, backends {list(st.backends)}", file=sys.stderr)
        secs, tables["serial"] = _timed(st, tmp / "serial", workers=1)
        runs["serial"] = {"workers": 1, "executor": "in-process", "seconds": secs}
        print(f"  1 worker: {secs:.1f} s", file=sys.stderr)
        secs, tables["local"] = _timed(st, tmp / "local", workers=args.workers)
        runs["local"] = {"workers": args.workers, "executor": "local processes (spawn)", "seconds": secs}
        print(f"  {args.workers} local workers: {secs:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        with clean_child_environment():
            cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
        try:
            start = time.perf_counter() - t0
            secs, tables["dask"] = _timed(st, tmp / "dask", scheduler=cluster)
        finally:
            cluster.close()
        runs["dask"] = {"workers": args.workers, "executor": "dask LocalCluster (1 thread per worker)",
                        "seconds": secs, "cluster_start_seconds": start}
        print(f"  dask {args.workers} workers: {secs:.1f} s (+{start:.1f} s cluster start)", file=sys.stderr)
    for name, r in runs.items():
        r["replications_per_minute"] = n / r["seconds"] * 60
        r["failed_fits"] = _failures(tables[name])
    speedup = runs["serial"]["seconds"] / runs["local"]["seconds"]
    dask_rel = runs["local"]["seconds"] / runs["dask"]["seconds"]  # >1: dask faster
    out = {
        "replications": n,
        "scenario": "seed (10 markets x 5 submarkets x 100 rows)",
        "backends": list(st.backends),
        "backends_unavailable": skipped,
        "runs": runs,
        "speedup_local_vs_1_worker": speedup,
        "goal_speedup": GOAL_SPEEDUP,
        "speedup_goal_met": bool(speedup >= GOAL_SPEEDUP),
        "dask_throughput_relative_to_local": dask_rel,
        "goal_dask_within": GOAL_DASK,
        "dask_goal_met": bool(abs(dask_rel - 1) <= GOAL_DASK),
        "dask_comparable": not runs["dask"]["failed_fits"] or runs["dask"]["failed_fits"] == runs["local"]["failed_fits"],
        "identical_results": {"local_vs_serial": _same(tables["serial"], tables["local"]),
                              "dask_vs_serial": _same(tables["serial"], tables["dask"])},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": package_versions(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("speedup_local_vs_1_worker", "dask_throughput_relative_to_local",
                                          "identical_results")}, indent=1), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
