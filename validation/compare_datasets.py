"""`hiercompare compare` with every backend on three shipped public data sets (issue 11's evidence).

Runs ``hiercompare compare NAME --backends all --cv top --allfit --seed 1`` on exam, dietox and oats (each with
its two formulas from ``hiercompare.datasets``) into ``OUT/NAME`` and writes ``validation/compare.md``: per data
set, every fit's status and time, the diagnosis of every disagreement between engines that estimate the same
thing, the likelihood-ratio test, the cross-validation and PSIS-LOO; plus ``validation/compare/NAME/*.csv`` (the
small tables; the reports themselves are 3-4 MB each and not committed).

Usage::

    python validation/compare_datasets.py [--out /tmp/valcompare] [--summarize-only]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

DATASETS = ("exam", "dietox", "oats")
KEEP = ("fits", "diagnosis", "likelihood_check", "lrt", "information_criteria", "cv_summary", "loo", "ppc_summary",
        "data_tree", "agreement_summary")
HERE = Path(__file__).resolve().parent


def run(name: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "hiercompare.cli", "compare", name, "--backends", "all", "--cv", "top",
           "--allfit", "--out", str(out / name), "--seed", "1"]
    print(" ".join(cmd[2:]), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def _md(df: pd.DataFrame, cols) -> str:
    df = df[[c for c in cols if c in df.columns]].copy()
    for c in df.columns:
        if df[c].dtype.kind == "f":
            df[c] = df[c].map(lambda v: "" if pd.isna(v) else f"{v:.6g}")
    df = df.fillna("")
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def summarize(out: Path) -> str:
    parts = ["# `hiercompare compare` on three public data sets, every backend",
             "",
             "Written by `validation/compare_datasets.py` (the command per data set: `hiercompare compare NAME "
             "--backends all --cv top --allfit --seed 1`, each with the two formulas of `hiercompare.datasets`). "
             "The small tables of each run are in `validation/compare/NAME/`."]
    for name in DATASETS:
        t = out / name / "tables"
        res = json.loads((out / name / "results.json").read_text())
        prov = res["provenance"]
        fits = pd.read_csv(t / "fits.csv")
        parts += ["", f"## {name} ({res['nobs']} rows; hiercompare {prov['hiercompare']}, commit "
                      f"{str(prov.get('git_commit'))[:7]}; total {res['timing_stages']['total']:.0f} s)", "",
                  "Formulas: " + "; ".join(f"`{f}`" for f in res["formulas"]), "", "### Fits", "",
                  _md(fits, ["formula", "backend", "status", "converged", "loglik", "fit_seconds", "reason"])]
        diag = pd.read_csv(t / "diagnosis.csv") if (t / "diagnosis.csv").stat().st_size > 1 else pd.DataFrame()
        if not diag.empty:
            own = diag[~diag["info"].astype(bool)]
            parts += ["", "### Disagreements between engines that estimate the same thing, and their causes", "",
                      _md(own, ["formula", "pair", "cause", "explained", "explanation"]) if not own.empty
                      else "None.", "",
                      f"({int(diag['info'].astype(bool).sum())} pairs that estimate different things are explained "
                      "as info: no pooling vs partial pooling, priors, learners.)"]
        for name_, title, cols in (
                ("lrt", "Likelihood-ratio test (native ML refits)",
                 ["model_small", "model_big", "df", "statistic", "p_value", "reference_distribution"]),
                ("cv_summary", "5-fold CV, whole top-level groups held out",
                 ["formula", "backend", "rmse", "rmse_se", "lpd", "lpd_se", "status"]),
                ("loo", "PSIS-LOO", ["formula", "backend", "elpd_loo", "se", "p_loo", "pareto_k_max", "note"])):
            p = t / f"{name_}.csv"
            if p.exists() and p.stat().st_size > 1:
                parts += ["", f"### {title}", "", _md(pd.read_csv(p), cols)]
    return "\n".join(parts) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/valcompare")
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if not args.summarize_only:
        for name in DATASETS:
            run(name, out)
    for name in DATASETS:
        dest = HERE / "compare" / name
        dest.mkdir(parents=True, exist_ok=True)
        for table in KEEP:
            src = out / name / "tables" / f"{table}.csv"
            if src.exists():
                shutil.copy(src, dest / src.name)
    (HERE / "compare.md").write_text(summarize(out))
    print(f"wrote {HERE / 'compare.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
