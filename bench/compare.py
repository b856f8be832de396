"""`hiercompare compare` wall time on a 5,000-row data set, two formulas, every backend, 5-fold grouped CV (issue 11).

The data: the default scenario (5,000 rows, 10 markets x 5 submarkets, seed 1) written to a CSV, as a user's file
would arrive. The command, as a user runs it (a new process each time)::

    hiercompare compare data.csv --formula F1 --formula F2 --backends all --cv top --cv-folds 5 --out DIR

with F1 the seed's formula (a correlated market slope) and F2 the intercepts-only model. The CV covers the
default CV backends (native, lme4, mixedlm, ols, lightgbm). Runs into fresh folders (nothing resumed), sharing
one compile cache, by default these three (``--runs``; ``cold_without_brms`` fills the cache without brms):

1. cold: empty compile caches (brms's Stan models, PyTensor, numba) in fresh folders;
2. warm: the same command with those caches filled by run 1;
3. warm without brms: ``--backends`` every backend but brms (its Stan NUTS alone, two chains on this
   machine's two cores for each formula, is more than the goal: see ``brms_seconds``).

Stages come from the run's ``results.json`` (fits, agreement and diagnosis, model comparison, cross-validation,
report) plus process start and imports (wall time minus the run's own total). Goal (issue 11): under 2 minutes
warm on this 2-core machine.

Each run records the machine and its load average at its start and end (the machine is shared).

Usage::

    python bench/compare.py bench_out/compare.json
    python bench/compare.py bench_out/compare.json --runs cold_without_brms,warm_without_brms --update
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

GOAL_WARM = 120.0
FORMULAS = ("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
            "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)")


def _run(data: Path, out_dir: Path, cache: Path, backends: str = "all") -> dict:
    env = dict(os.environ)
    env.update({"HIERCOMPARE_CACHE": str(cache / "hiercompare"), "NUMBA_CACHE_DIR": str(cache / "numba"),
                "PYTENSOR_FLAGS": f"base_compiledir={cache / 'pytensor'}"})
    exe = Path(sys.executable).with_name("hiercompare")
    cmd = [str(exe), "compare", str(data), "--backends", backends, "--cv", "top", "--cv-folds", "5", "--out",
           str(out_dir), "--seed", "1"]
    for f in FORMULAS:
        cmd += ["--formula", f]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"hiercompare compare failed:\n{proc.stderr[-3000:]}")
    res = json.loads((out_dir / "results.json").read_text())
    st = res["timing_stages"]
    stages = {"process start and imports": wall - st["total"] - st.get("report", 0.0)}
    stages.update({k: v for k, v in st.items() if k != "total"})
    fits = [{"formula": r["formula"], "backend": r["backend"], "status": r["status"],
             "fit_seconds": r.get("fit_seconds"), "converged": r.get("converged")} for r in res["tables"]["fits"]]
    cv = [{k: r.get(k) for k in ("formula", "backend", "level", "rmse", "rmse_se", "lpd", "fit_seconds", "status")}
          for r in res["tables"].get("cv_summary", [])]
    brms = [r["fit_seconds"] for r in fits if r["backend"] == "brms" and r["fit_seconds"] is not None]
    return {"wall_seconds": round(wall, 3), "stages": {k: round(v, 3) for k, v in stages.items()},
            "brms_seconds": [round(x, 1) for x in brms], "fits": fits, "cv_summary": cv, "command": " ".join(cmd[1:])}


RUNS = ("cold", "warm", "cold_without_brms", "warm_without_brms")
DEFAULT_RUNS = "cold,warm,warm_without_brms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file for the figures")
    ap.add_argument("--runs", default=DEFAULT_RUNS,
                    help=f"comma-separated runs, in order, sharing one compile cache; of {', '.join(RUNS)} "
                         f"(default {DEFAULT_RUNS})")
    ap.add_argument("--update", action="store_true",
                    help="keep the other runs already in OUT (each run records its own machine and load)")
    args = ap.parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    if not runs or any(r not in RUNS for r in runs):
        ap.error(f"--runs takes {', '.join(RUNS)}")
    import hiercompare as hc
    from hiercompare.backends import REGISTRY
    from hiercompare.provenance import machine

    others = ",".join(b for b in REGISTRY if b != "brms")  # what "all" means, less brms
    path = Path(args.out)
    out = json.loads(path.read_text()) if args.update and path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="hc-bench-compare-") as tmp:
        tmp = Path(tmp)
        data, _ = hc.simulate(hc.Scenario(), seed=1)
        data.to_csv(tmp / "data.csv", index=False)
        for name in runs:
            at_start = machine()
            res = _run(tmp / "data.csv", tmp / name, tmp / "cache", others if "without" in name else "all")
            res.update(machine=at_start, load_average_at_end=machine()["load_average_1_5_15"])
            out[name] = res
            print(f"compare {name}: {res['wall_seconds']:.1f} s {json.dumps(res['stages'])}", file=sys.stderr)
    out.update({"rows": len(data), "formulas": FORMULAS, "goal_warm_seconds": GOAL_WARM})
    for name in ("warm", "warm_without_brms"):
        if name in out:
            out[f"{name}_goal_met"] = out[name]["wall_seconds"] < GOAL_WARM
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
