"""`make bench`: the ``torch`` backend's speed (issue 13, item 5), written to bench_out/torch_speed.json.

Data: the nonlinear scenario (validation/nonlinear.toml: ``Scenario(nonlinear="sin_threshold")``, the seed's
variance components and fixed effects) on a wider tree, 10 markets x 50 submarkets, ``rows / 500`` rows per
submarket, seed 1; formula ``y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)``.

* ``cpu``: ``hiercompare.fit(data, formula, backend="torch", seed=0)`` with its defaults on 500,000 rows, torch
  limited to 2 threads (``torch.set_num_threads(2)``, this machine's 2 cores; ``--threads`` adds other counts,
  e.g. 1: on a shared, loaded machine one intra-op thread can beat two). Goal: under 60 s.
* ``baseline``: side by side on 50,000 rows (``--baseline-threads``, default 1: the comparison least disturbed
  by the machine's load), the defaults against the full-batch training that was the default before
  (``batch_size=None, refit_every=10, patience=15``: one AdamW step on all rows per epoch, exactly the earlier
  loop).
* ``cuda``: only where ``torch.cuda.is_available()``: 1,000,000 rows on the GPU (``device="cuda"``) against the
  same machine's CPU (``device="cpu"``, ``threads=None``: torch's default, every core). Goal: >= 5x. Elsewhere the entry says that no
  GPU was there, and nothing is measured.

Every fit is timed from the DataFrame to the Fit (wall clock and this process's CPU time, the machine being
shared: a wall-clock second there may hold a fraction of a CPU second), after a warm-up fit that imports torch
(and torch._dynamo, which AdamW imports: several seconds once per process) and compiles mixedcore's passes.
Accuracy is recorded beside every timing: the fixed effects and SDs with their SEs, the learned f against the
true f (both projected off the fixed design: RMSE over the rows) and the SDs of an oracle (mixedcore with the
true f as the offset, same rows). The machine (hiercompare.provenance.machine()) is recorded at the start and at
the end.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.design import prepare
from hiercompare.fitting import as_spec
from hiercompare.provenance import machine
from hiercompare.simulate import nonlinear_part

MARKETS, SUBMARKETS = 10, 50
FULL_BATCH = {"batch_size": None, "refit_every": 10, "patience": 15}  # the training loop before 2026-11-26


def scenario(rows: int) -> hc.Scenario:
    return hc.Scenario(levels=(
        hc.LevelScenario("market", MARKETS, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)),
                         label="Market_{i}"),
        hc.LevelScenario("submarket", SUBMARKETS, {"(Intercept)": 0.4}, label="Sub{i}")),
        n_obs=rows // (MARKETS * SUBMARKETS), nonlinear="sin_threshold")


class Case:
    """One data set with what accuracy is judged against (computed once)."""

    def __init__(self, rows: int, seed: int = 1):
        self.sc = scenario(rows)
        self.formula = self.sc.formula()
        self.data, self.truth = hc.simulate(self.sc, seed=seed)
        md = prepare(as_spec(self.formula), self.data)
        X = md.X
        f = nonlinear_part(self.sc, self.data)
        self.f_true = f - X @ np.linalg.lstsq(X, f, rcond=None)[0]
        oracle = mixedcore.from_model_data(md, offset=f).fit()
        self.oracle_sds = {"market|sd__(Intercept)": float(np.sqrt(oracle.cov[0][0, 0])),
                           "market|sd__x1": float(np.sqrt(oracle.cov[0][1, 1])),
                           "market:submarket|sd__(Intercept)": float(np.sqrt(oracle.cov[1][0, 0])),
                           "Residual|sd__Observation": float(oracle.sigma)}


def timed_fit(case: Case, **opts) -> dict:
    c0, t0 = time.process_time(), time.perf_counter()
    f = hc.fit(case.data, case.formula, backend="torch", seed=0, **opts)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    d = f.diagnostics
    fe = f.tidy("fixed").set_index("term")
    rp = f.tidy("ran_pars")
    sds = {f"{g}|{t}": float(v) for g, t, v in zip(rp["group"], rp["term"], rp["estimate"])}
    out = {"options": {k: v for k, v in opts.items()}, "total_seconds": wall, "fit_seconds": f.timing["fit_seconds"],
           "cpu_seconds": cpu, "device": d["device"], "batch_size": d.get("batch_size"),
           "epochs_chosen": d["epochs_chosen"], "epochs_trained_in_validation": d["validation"].get("last_epoch"),
           "fixef": fe["estimate"].to_dict(), "fixef_se": fe["std_error"].to_dict(), "ran_pars": sds,
           "sd_ratio_to_oracle": {k: sds[k] / v for k, v in case.oracle_sds.items()},
           "f_rmse_vs_true_f": float(np.sqrt(np.mean((f.nonlinear(case.data) - case.f_true) ** 2))),
           "training_rmse": d.get("training_rmse"), "loglik": f.loglik}
    print(f"{len(case.data):>9} rows {json.dumps(opts, default=str):60s} {wall:7.1f} s wall, {cpu:7.1f} s CPU, "
          f"{out['epochs_chosen']} epochs (+{out['epochs_trained_in_validation']} in validation), "
          f"f RMSE {out['f_rmse_vs_true_f']:.4f}", file=sys.stderr, flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="bench_out/torch_speed.json")
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="torch CPU threads, one fit each")
    ap.add_argument("--baseline-rows", type=int, default=50_000, help="0: no side-by-side with full batch")
    ap.add_argument("--baseline-threads", type=int, default=1)
    ap.add_argument("--cuda-rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    import torch

    at_start = machine()
    torch.set_num_threads(2)
    warm = Case(25_000)  # imports (torch, torch._dynamo through AdamW), mixedcore's compiled passes
    hc.fit(warm.data, warm.formula, backend="torch", seed=0, epochs=3)
    results = {"benchmark": "torch backend (LMMNN-style MLP f(x) + mixedcore random effects), nonlinear scenario "
                            "(sin_threshold), 10 markets x 50 submarkets, defaults, seed 0",
               "goal": "under 60 s on 2 CPU cores at 500,000 rows; on CUDA at 1,000,000 rows >= 5x faster than "
                       "that machine's CPU (where a GPU is available)",
               "torch": torch.__version__, "torch_default_threads_here": torch.get_num_threads()}
    big = Case(args.rows)
    results["cpu"] = {"rows": len(big.data), "formula": big.formula, "oracle_sds": big.oracle_sds, "runs": [
        dict(threads=t, **timed_fit(big, threads=t)) for t in args.threads]}
    two = [r for r in results["cpu"]["runs"] if r["threads"] == 2]
    if two:
        results["cpu"]["goal_met_2_threads"] = bool(two[0]["total_seconds"] < 60)
    del big
    if args.baseline_rows:
        base = Case(args.baseline_rows)
        t = args.baseline_threads
        runs = {"defaults": timed_fit(base, threads=t), "full_batch_before": timed_fit(base, threads=t, **FULL_BATCH)}
        results["baseline"] = {"rows": len(base.data), "oracle_sds": base.oracle_sds, "threads": t, **runs,
                               "speedup_total_seconds": runs["full_batch_before"]["total_seconds"]
                               / runs["defaults"]["total_seconds"],
                               "speedup_cpu_seconds": runs["full_batch_before"]["cpu_seconds"]
                               / runs["defaults"]["cpu_seconds"]}
        del base
    if torch.cuda.is_available():
        torch.set_num_threads(os.cpu_count() or 1)
        big = Case(args.cuda_rows)
        hc.fit(warm.data, warm.formula, backend="torch", seed=0, epochs=3, device="cuda")  # CUDA context
        gpu = timed_fit(big, device="cuda")
        cpu = timed_fit(big, device="cpu", threads=None)  # torch's own thread count: every core of that machine
        results["cuda"] = {"available": True, "gpu": torch.cuda.get_device_name(0), "rows": len(big.data),
                           "cpu_threads": torch.get_num_threads(), "cuda": gpu, "cpu": cpu,
                           "speedup_total_seconds": cpu["total_seconds"] / gpu["total_seconds"],
                           "goal_met": bool(cpu["total_seconds"] / gpu["total_seconds"] >= 5)}
    else:
        results["cuda"] = {"available": False,
                           "note": "no GPU on this machine (torch.cuda.is_available() is False): not measured"}
    results["machine"] = at_start
    results["load_average_at_end"] = machine()["load_average_1_5_15"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=float))
    for r in results["cpu"]["runs"]:
        print(f"{results['cpu']['rows']:,} rows, {r['threads']} thread(s): {r['total_seconds']:.1f} s "
              f"({r['cpu_seconds']:.1f} s CPU)", file=sys.stderr)
    if "baseline" in results:
        b = results["baseline"]
        print(f"{b['rows']:,} rows: defaults {b['defaults']['total_seconds']:.1f} s, full batch (before) "
              f"{b['full_batch_before']['total_seconds']:.1f} s: x{b['speedup_total_seconds']:.1f}", file=sys.stderr)
    print(f"cuda: {results['cuda'].get('speedup_total_seconds', results['cuda'].get('note'))}", file=sys.stderr)
    print(f"load average {at_start['load_average_1_5_15']} -> {results['load_average_at_end']}; wrote {out}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
