"""`hiercompare compare` wall time on a 5,000-row data set, two formulas, every backend, 5-fold grouped CV (issue 11).

The data: the default scenario (5,000 rows, 10 markets x 5 submarkets, seed 1) written to a CSV, as a user's file
would arrive. The command, as a user runs it (a new process each time)::

    hiercompare compare data.csv --formula F1 --formula F2 --backends all --cv top --cv-folds 5 --out DIR

with F1 the seed's formula (a correlated market slope) and F2 the intercepts-only model. The CV covers the
default CV backends (native, lme4, mixedlm, ols, lightgbm). Three runs into fresh folders (nothing resumed):

1. cold: empty compile caches (brms's Stan models, PyTensor, numba) in fresh folders;
2. warm: the same command with those caches filled by run 1;
3. warm without brms: ``--backends`` every backend but brms (its Stan NUTS alone, two chains on this
   machine's two cores for each formula, is more than the goal: see ``brms_seconds``).

Stages come from the run's ``results.json`` (fits, agreement and diagnosis, model comparison, cross-validation,
report) plus process start and imports (wall time minus the run's own total). Goal (issue 11): under 2 minutes
warm on this 2-core machine.

Usage::

    python bench/compare.py bench_out/compare.json
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSON file for the figures")
    args = ap.parse_args(argv)
    import hiercompare as hc
    from hiercompare.provenance import machine

    at_start = machine()
    with tempfile.TemporaryDirectory(prefix="hc-bench-compare-") as tmp:
        tmp = Path(tmp)
        data, _ = hc.simulate(hc.Scenario(), seed=1)
        data.to_csv(tmp / "data.csv", index=False)
        cold = _run(tmp / "data.csv", tmp / "cold", tmp / "cache")
        print(f"compare cold: {cold['wall_seconds']:.1f} s {json.dumps(cold['stages'])}", file=sys.stderr)
        warm = _run(tmp / "data.csv", tmp / "warm", tmp / "cache")
        print(f"compare warm: {warm['wall_seconds']:.1f} s {json.dumps(warm['stages'])}", file=sys.stderr)
        from hiercompare.backends import REGISTRY

        others = ",".join(b for b in REGISTRY if b != "brms")  # what "all" means, less brms
        warm_nb = _run(tmp / "data.csv", tmp / "warm_no_brms", tmp / "cache", others)
        print(f"compare warm without brms: {warm_nb['wall_seconds']:.1f} s {json.dumps(warm_nb['stages'])}",
              file=sys.stderr)
    out = {"rows": len(data), "formulas": FORMULAS, "cold": cold, "warm": warm, "warm_without_brms": warm_nb,
           "goal_warm_seconds": GOAL_WARM, "warm_goal_met": warm["wall_seconds"] < GOAL_WARM,
           "warm_without_brms_goal_met": warm_nb["wall_seconds"] < GOAL_WARM, "machine": at_start,
           "load_average_at_end": machine()["load_average_1_5_15"]}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
