"""Command line: ``hiercompare demo | simulate | fit | compare | study | report | backends``."""
from __future__ import annotations

import argparse
import atexit
import json
import os
import sys

from .errors import HierCompareError
from .spec import FAMILIES


def _cmd_demo(args) -> int:
    from .demo import run_demo

    backends = args.backends.split(",") if args.backends else None
    run_demo(args.out, seed=args.seed, backends=backends)
    return 0


def _cmd_simulate(args) -> int:
    from .simulate import Scenario, simulate

    sc = Scenario()
    if args.scenario:
        with open(args.scenario) as fh:
            sc = Scenario.from_dict(json.load(fh))
    if args.out.lower().endswith(".parquet"):  # large scenarios: written chunk by chunk, never all in memory
        import pyarrow.parquet as pq

        from .simulate import simulate_to_parquet

        truth = simulate_to_parquet(sc, args.out, seed=args.seed, chunk_rows=args.chunk_rows)
        n = pq.ParquetFile(args.out).metadata.num_rows
    else:
        data, truth = simulate(sc, seed=args.seed)
        data.to_csv(args.out, index=False)
        n = len(data)
    if args.truth:
        truth.to_json(args.truth)
    print(f"wrote {n} rows to {args.out}" + (f" and the truth to {args.truth}" if args.truth else ""),
          file=sys.stderr)
    print(f"formula: {sc.formula()}", file=sys.stderr)
    return 0


def _streamable(args) -> bool:
    """Whether native can fit the file in batches: a Gaussian model without offset(), cbind() or weights (the
    per-leaf sums carry none of them); otherwise the rows are read into memory."""
    from .spec import ModelSpec

    spec = ModelSpec.from_formula(args.formula, family=args.family or "gaussian")
    return spec.family == "gaussian" and not spec.offsets and not spec.has_trials and args.weights is None


def _cmd_fit(args) -> int:
    import pandas as pd

    from .fitting import fit
    from .results import convergence_text
    from .sources import write_predictions

    options = {}
    if args.method:
        options["method"] = args.method.upper()
    if args.df:
        options["df"] = args.df
    csv = args.data.lower().endswith((".csv", ".csv.gz", ".tsv"))
    if args.scheduler:  # a Dask cluster reads the files and sums its partitions
        import dask.dataframe as dd

        data = dd.read_csv(args.data) if csv else dd.read_parquet(args.data, split_row_groups=True)
        options["scheduler"] = args.scheduler
    elif args.backend == "native" and _streamable(args):  # read in batches: memory bounded by groups, not rows
        data = args.data
        options["batch_rows"] = args.batch_rows
    else:
        data = pd.read_csv(args.data) if csv else pd.read_parquet(args.data)
    if args.weights is not None:
        options["weights"] = args.weights
    f = fit(data, args.formula, backend=args.backend, family=args.family, na_action=args.na_action,
            seed=args.seed, **options)
    text = f.to_json(args.out) if args.out else f.to_json()
    if not args.out:
        print(text)
    else:
        print(f"{args.backend}: fitted in {f.timing['fit_seconds']:.2f} s (converged: "
              f"{convergence_text(f.converged)}); wrote {args.out}", file=sys.stderr)
    if args.predictions:
        res = write_predictions(f, data if args.scheduler else args.data, args.predictions, what="decompose",
                                keep=f.spec.grouping_variables, batch_rows=args.batch_rows,
                                scheduler=args.scheduler)
        print(f"wrote the decomposition of {res['rows']} rows to {res['path']} (labels unseen in fitting, per "
              f"level: {res['unseen']})", file=sys.stderr)
    return 0


def _cmd_compare(args) -> int:
    from .datacompare import compare_data
    from .datasets import DATASETS, path as dataset_path

    data = args.data
    if not os.path.exists(data) and data in DATASETS:  # a shipped public data set by name
        data = str(dataset_path(data))
    formulas = args.formula or (list(DATASETS[args.data].formulas) if args.data in DATASETS else None)
    if not formulas:
        raise SystemExit("hiercompare compare: give at least one --formula")
    cv = None if args.cv in ("none", "") else args.cv.split(",")
    comp = compare_data(data, formulas, backends=args.backends.split(",") if args.backends else None,
                        family=args.family, method=args.method.upper(), out=args.out, cv=cv, cv_folds=args.cv_folds,
                        cv_backends=args.cv_backends.split(",") if args.cv_backends else None,
                        bootstrap=args.bootstrap, workers=args.workers, scheduler=args.scheduler, seed=args.seed,
                        na_action=args.na_action, allfit=args.allfit, stream=args.stream,
                        subsample=args.subsample, batch_rows=args.batch_rows)
    diag = comp.tables.get("diagnosis")
    n_unexplained = int((~diag["explained"].astype(bool)).sum()) if diag is not None and not diag.empty else 0
    print(f"{len(comp.results['formulas'])} formula(s) x {len(comp.results['backends'])} backend(s); "
          f"{n_unexplained} unexplained disagreement(s); report: {os.path.join(args.out, 'report.html')}",
          file=sys.stderr)
    return 0


def _cmd_study(args) -> int:
    from pathlib import Path

    from .performance import performance
    from .study import Study

    st = Study.from_toml(args.config)
    out = Path(args.out or f"study_{st.name}")
    table = st.run(out, workers=args.workers, scheduler=args.scheduler)
    performance(table).to_csv(out / "performance.csv", index=False)
    failed = int((table["error"] != "").sum())
    print(f"study {st.name}: {len(st.units())} units, {len(table)} rows, {failed} failed fits; wrote "
          f"{out / 'results.parquet'}, {out / 'manifest.json'} and {out / 'performance.csv'}", file=sys.stderr)
    return 0


def _cmd_report(args) -> int:
    from .report.study import TABLES_DIR, render_study

    path = render_study(args.folder, out=args.out, lightgbm_trees=not args.no_lightgbm_tree)
    print(f"wrote {path} and {path.parent / TABLES_DIR}/*.csv", file=sys.stderr)
    return 0


def _cmd_backends(args) -> int:
    from .backends import backends

    for name, info in backends().items():
        state = "available" if info["available"] else f"unavailable: {info['reason']}"
        print(f"{name:10s} {info['description']}  [{state}]")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hiercompare", description="Fit one hierarchical model on many backends.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="simulate the default scenario, fit every available backend, write a report")
    d.add_argument("--out", default="demo_out", help="output folder (report.html, results.json, data.csv)")
    d.add_argument("--seed", type=int, default=123)
    d.add_argument("--backends", default=None, help="comma-separated subset of backends")
    d.set_defaults(func=_cmd_demo)

    s = sub.add_parser("simulate", help="draw a data set with known truth")
    s.add_argument("--out", required=True, help="CSV file for the data, or a .parquet file (written in chunks)")
    s.add_argument("--chunk-rows", type=int, default=1 << 20, help="rows per Parquet row group (default 1048576)")
    s.add_argument("--truth", default=None, help="JSON file for the truth (Fit schema)")
    s.add_argument("--seed", type=int, default=123)
    s.add_argument("--scenario", default=None, help="JSON file with a Scenario (default: the seed's tree)")
    s.set_defaults(func=_cmd_simulate)

    f = sub.add_parser("fit", help="fit one backend and write the tidy rows, diagnostics, timing and provenance")
    f.add_argument("--data", required=True, help="CSV or Parquet file (or a folder of Parquet files)")
    f.add_argument("--formula", required=True)
    f.add_argument("--backend", required=True)
    f.add_argument("--method", choices=["reml", "ml", "REML", "ML"], default=None)
    f.add_argument("--family", choices=list(FAMILIES), default=None)
    f.add_argument("--weights", default=None,
                   help="a column of --data with Gaussian prior weights (lme4/lm semantics; lme4, native, ols, r_lm)")
    f.add_argument("--df", choices=["satterthwaite", "kenward-roger", "z"], default=None,
                   help="native, lme4, mixedlm: the fixed effects' t tests (default satterthwaite) or z")
    f.add_argument("--na-action", choices=["error", "drop"], default="error")
    f.add_argument("--seed", type=int, default=None)
    f.add_argument("--out", default=None, help="JSON file (default: stdout)")
    f.add_argument("--batch-rows", type=int, default=None,
                   help="native: rows per batch read from the file (default 1048576)")
    f.add_argument("--scheduler", default=None,
                   help="native: a Dask scheduler address (tcp://host:8786); the cluster reads --data and sums it")
    f.add_argument("--predictions", default=None,
                   help="Parquet file (a folder with --scheduler) for the decomposition of every row of --data, "
                        "written batch by batch in the data's row order")
    f.set_defaults(func=_cmd_fit)

    c = sub.add_parser("compare", help="fit every backend on your data, explain each disagreement, compare "
                                        "formulas (LRT, AIC/BIC, LOO, grouped CV), write a report")
    c.add_argument("data", help="CSV or Parquet file (or the name of a shipped data set: exam, egsingle, dietox, "
                                "oats, pastes)")
    c.add_argument("--formula", action="append", default=None,
                   help="an lme4-style formula; repeat for more (default for a shipped data set: its two)")
    c.add_argument("--backends", default=None, help="comma-separated backends, or 'all' (default: all)")
    c.add_argument("--family", choices=list(FAMILIES), default=None)
    c.add_argument("--method", choices=["reml", "ml", "REML", "ML"], default="REML")
    c.add_argument("--out", default="compare_out", help="output folder; rerun into it to resume (default: compare_out)")
    c.add_argument("--cv", default="top",
                   help="grouped CV fold kinds, comma-separated: top (leave top-level groups out), leaf, rows, a "
                        "grouping factor, or none (default: top)")
    c.add_argument("--cv-folds", type=int, default=5)
    c.add_argument("--cv-backends", default=None,
                   help="backends in the CV (default: native, lme4, mixedlm, ols, lightgbm among --backends)")
    c.add_argument("--bootstrap", type=int, default=0, help="parametric bootstrap replications on this design")
    c.add_argument("--workers", type=int, default=1, help="local worker processes for the fits (default 1)")
    c.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--na-action", choices=["error", "drop"], default="error",
                   help="rows missing a used value: an error, or dropped (and listed in the report)")
    c.add_argument("--allfit", action="store_true", help="refit lme4 under every optimizer where it disagrees")
    c.add_argument("--stream", action="store_true",
                   help="read DATA in batches: native fits every formula on all rows (memory bounded by groups, "
                        "not rows); the other backends need --subsample")
    c.add_argument("--subsample", type=int, default=None,
                   help="with --stream: also fit every backend on a uniform random sample of N rows (by --seed)")
    c.add_argument("--batch-rows", type=int, default=None, help="with --stream: rows per batch (default 1048576)")
    c.set_defaults(func=_cmd_compare)

    st = sub.add_parser("study", help="run (or resume) a simulation study from a TOML config")
    st.add_argument("config", help="TOML file: [study], [[scenario]], [options.<backend>] (see validation/)")
    st.add_argument("--out", default=None, help="output folder (default: study_<name>); rerun to resume")
    st.add_argument("--workers", type=int, default=None, help="local worker processes (default: all CPUs)")
    st.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    st.set_defaults(func=_cmd_study)

    r = sub.add_parser("report", help="render report.html (and report_tables/*.csv) from a finished study folder")
    r.add_argument("folder", help="study folder with results.parquet and manifest.json (hiercompare study --out)")
    r.add_argument("--out", default=None, help="HTML file (default: FOLDER/report.html)")
    r.add_argument("--no-lightgbm-tree", action="store_true",
                   help="do not refit a LightGBM backend to draw its first tree")
    r.set_defaults(func=_cmd_report)

    b = sub.add_parser("backends", help="list backends and whether they can run here")
    b.set_defaults(func=_cmd_backends)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except HierCompareError as exc:
        print(f"hiercompare: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


def run() -> None:
    """The console script ``hiercompare``: :func:`main`, then a quick exit.

    After a demo (torch, PyTensor and R loaded) the interpreter's own finalisation, tearing down every module
    and extension, takes ~1.6 s here and does nothing a user needs. The exit handlers still run (rpy2's ends R,
    which removes R's temporary folder; logging flushes), then the process ends with main's exit code.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
