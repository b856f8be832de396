"""Study throughput (issue 5), written by `make bench` to bench_out/study.json.

A study of the seed scenario (10 markets x 5 submarkets x 100 rows) with the fast backends (ols, r_lm, mixedlm,
lme4, native; the R ones only where R is available) is run three times into fresh folders:

1. in this process (``workers=1``),
2. on 2 local worker processes (``workers=2``, spawn),
3. on a Dask ``LocalCluster`` with 2 worker processes of 1 thread each.

Local processes and Dask run in alternation, ``--rounds`` times each (default 2), and their mean times are
compared. Reported: wall seconds and replications per minute of each run (worker start-up included: that is what a user
waits for), the speed-up of 2 local workers over 1 (goal: at least 1.8x), Dask's throughput relative to local
processes (goal: within 15%), and whether the three result tables agree (they must, to 1e-6: seeds are keyed by unit).
Failed fits are listed per run. Where backends fail on Dask but not locally (the R backends once did: rpy2's
conversion rules live in a ``contextvars.ContextVar`` that Dask's worker threads do not inherit; rbridge now
enters them explicitly), local processes and Dask are timed again with the backends that run on both, and the
Dask figure comes from that pair (``dask_compared_runs``).

Per-fit seconds summed per backend are reported too (``fit_seconds``), so that executor overhead (start-up,
scheduling) and slower fits can be told apart.

Usage::

    python bench/study.py bench_out/study.json [--replications 200] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
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


def _dask_run(st, folder: Path, workers: int):
    from distributed import LocalCluster

    from hiercompare.study import clean_child_environment

    t0 = time.perf_counter()
    with clean_child_environment():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    start = time.perf_counter() - t0
    try:
        secs, table = _timed(st, folder, scheduler=cluster)
    finally:
        cluster.close()
    return secs, start, table


def _timed(st, folder: Path, **kw) -> tuple[float, "object"]:
    t0 = time.perf_counter()
    table = st.run(folder, progress=False, **kw)
    return time.perf_counter() - t0, table


def _same(a, b) -> dict:
    """Whether two runs' tables agree: the same rows, and per backend the largest difference of the estimates.

    Every backend must agree exactly (to 1e-12) except lme4: lme4 is not bit-reproducible between R processes
    (the same command run three times gave two different answers on one data set; its optimiser stops within
    its tolerance at a point that moves with the last bits of Eigen's sums), so for lme4 the largest
    difference is compared with the estimate's standard error: at most 1% of an SE.
    """
    keys = ["scenario", "replication", "backend", "effect", "group", "level", "term"]
    ok_a, ok_b = a[a["error"] == ""], b[b["error"] == ""]
    m = ok_a.merge(ok_b, on=keys, suffixes=("_a", "_b"))
    same_rows = bool(a[keys].reset_index(drop=True).equals(b[keys].reset_index(drop=True)))
    per = {}
    agree = same_rows
    for be, g in m.groupby("backend"):
        d = (g["estimate_a"] - g["estimate_b"]).abs()
        se = g["std_error_a"].where(g["std_error_a"] > 0)
        rel = float(np.nanmax(d / se)) if se.notna().any() else float("nan")
        per[be] = {"max_abs_diff_estimate": float(d.max()), "max_diff_in_SEs": rel}
        agree = agree and (bool(d.max() <= 1e-12) or (be == "lme4" and rel <= 0.01))
    return {"same_rows": same_rows, "per_backend": per, "agree": bool(agree),
            "rule": "exact (1e-12) for every backend; lme4 within 1% of its SE"}


def _failures(table) -> dict[str, str]:
    """Failed fits per backend: count and the first error text."""
    bad = table[table["error"] != ""]
    return {b: f"{len(g)} failed, e.g. {g['error'].iloc[0].strip()[:200]}" for b, g in bad.groupby("backend")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file for the figures")
    ap.add_argument("--replications", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="alternating local/Dask rounds (default 2)")
    args = ap.parse_args(argv)

    from hiercompare.provenance import machine
    from hiercompare.study import Study, package_versions

    at_start = machine()

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
        # local processes and Dask alternate (local, dask, local, dask, ...): this machine is shared and its
        # speed drifts by 10-20% over minutes, so each executor gets the same mix of quiet and busy periods
        for k in range(args.rounds):
            sfx = "" if k == 0 else f"_{k + 1}"
            secs, tables["local" + sfx] = _timed(st, tmp / f"local{sfx}", workers=args.workers)
            runs["local" + sfx] = {"workers": args.workers, "executor": "local processes (spawn)", "seconds": secs}
            print(f"  {args.workers} local workers: {secs:.1f} s", file=sys.stderr)
            secs, start, tables["dask" + sfx] = _dask_run(st, tmp / f"dask{sfx}", args.workers)
            runs["dask" + sfx] = {"workers": args.workers, "executor": "dask LocalCluster (1 thread per worker)",
                                  "seconds": secs, "cluster_start_seconds": start}
            print(f"  dask {args.workers} workers: {secs:.1f} s (+{start:.1f} s cluster start)", file=sys.stderr)
        failed_on_dask = sorted(set(tables["dask"].loc[tables["dask"]["error"] != "", "backend"])
                                - set(tables["local"].loc[tables["local"]["error"] != "", "backend"]))
        if failed_on_dask:  # compare like with like: the backends that run on Dask, local vs Dask
            keep = [b for b in st.backends if b not in failed_on_dask]
            st2 = Study(st.scenarios, replications=n, backends=keep, seed=st.seed, name="bench_study_dask_subset")
            print(f"  {failed_on_dask} failed on Dask; local vs Dask again with {keep}", file=sys.stderr)
            secs, tables["local_subset"] = _timed(st2, tmp / "local_subset", workers=args.workers)
            runs["local_subset"] = {"workers": args.workers, "executor": "local processes (spawn)",
                                    "backends": keep, "seconds": secs}
            secs, start, tables["dask_subset"] = _dask_run(st2, tmp / "dask_subset", args.workers)
            runs["dask_subset"] = {"workers": args.workers, "executor": "dask LocalCluster (1 thread per worker)",
                                   "backends": keep, "seconds": secs, "cluster_start_seconds": start}
    for name, r in runs.items():
        r["replications_per_minute"] = n / r["seconds"] * 60
        per_fit = tables[name].groupby(["backend", "replication"])["seconds"].first().groupby("backend").sum()
        r["fit_seconds"] = {k: round(float(v), 2) for k, v in per_fit.items()}
        r["fit_seconds_total"] = round(float(per_fit.sum()), 2)
        r["failed_fits"] = _failures(tables[name])
    local_runs = [k for k in runs if k.startswith("local") and "subset" not in k]
    dask_runs = [k for k in runs if k.startswith("dask") and "subset" not in k]
    local_mean = float(np.mean([runs[k]["seconds"] for k in local_runs]))
    speedup = runs["serial"]["seconds"] / local_mean
    if "dask_subset" in runs:
        a, b = ["local_subset"], ["dask_subset"]
    else:
        a, b = local_runs, dask_runs
    dask_rel = float(np.mean([runs[k]["seconds"] for k in a]) / np.mean([runs[k]["seconds"] for k in b]))  # >1: dask faster
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
        "dask_compared_runs": {"local": a, "dask": b},
        "local_seconds_mean": local_mean,
        "dask_full_set_failures": runs["dask"]["failed_fits"],
        "results_agree": {"local_vs_serial": _same(tables["serial"], tables["local"]),
                          "dask_vs_serial": _same(tables["serial"], tables["dask"])},
        "machine": at_start, "load_average_at_end": machine()["load_average_1_5_15"],
        "versions": package_versions(),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(json.dumps({k: out[k] for k in ("speedup_local_vs_1_worker", "dask_throughput_relative_to_local",
                                          "results_agree")}, indent=1), file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
