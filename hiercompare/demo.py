"""The main job: simulate the default scenario, fit every available backend, compare, write the report."""
from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ._version import __version__
from .agreement import compare, summary
from .aside import AsideFit
from .backends import REGISTRY, backends as backend_info
from .errors import HierCompareError
from .fitting import fit
from .provenance import git_commit
from .recovery import recovery
from .results import _json_default, convergence_text
from .simulate import Scenario, simulate


# Per-backend options of the demo (in each fit's provenance; the report's provenance table lists every
# backend's method and options under "backend_options"); every fit's diagnostics still say whether its run was
# enough (R-hat <= 1.01, ESS >= 400, no divergences). Measured on the default scenario (seed 123):
# * brms samples row by row (~0.4 ms per gradient, ~140 leapfrog steps per draw: the non-centred group
#   effects of this tree are well identified). 300 warmup + 800 kept iterations per chain at adapt_delta 0.8
#   (brms's and Stan's own default): bulk ESS 572, R-hat 1.007, no divergences; warmup iterations cost ~40%
#   more steps than kept ones, and 300 warmup adapted as well as 500 (500 + 500: ESS 385; 300 + 700: ESS 520
#   but R-hat 1.0105 for sigma).
# * pymc samples with PyMC's own NUTS (PyTensor's C backend): for one fit its compile is cached across
#   processes, where nutpie's numba callback is compiled again in every process (15 s vs 26 s warm, 86 s vs
#   108 s on empty caches); nutpie stays the backend's default, faster for long runs and for many fits of one
#   model (SBC). The collapsed model mixes fast: 500 + 500 per chain gives bulk ESS 752, tail ESS 427.
DEMO_OPTIONS: dict[str, dict] = {"brms": {"iter": 800, "warmup": 300, "adapt_delta": 0.8},
                                 "pymc": {"sampler": "pymc", "tune": 500, "draws": 500}}

# Backends the demo fits in a second process (hiercompare.aside) while the others fit in its own, which then
# keeps to one thread: brms's two chains take both cores for a minute, and on a cold cache its C++ compile
# overlaps pymc's. Only when the demo fits more than one backend.
ASIDE: tuple[str, ...] = ("brms",)


def run_demo(
    out_dir: str | Path = "demo_out",
    scenario: Scenario | None = None,
    seed: int = 123,
    backends: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Simulate, fit each backend, compare and report. Writes ``report.html`` and ``results.json``.

    Returns the results dictionary (also what ``results.json`` holds).
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    sc = scenario or Scenario()
    formula = sc.formula()
    say(f"simulating scenario {sc.name!r} (seed {seed}) ...")
    data, truth = simulate(sc, seed=seed)
    stages = {"simulate": time.perf_counter() - t_start}
    say(f"  {len(data)} rows; formula: {formula}")
    names = backends or list(REGISTRY)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise HierCompareError(f"unknown backend(s) {unknown}; registered: {sorted(REGISTRY)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise HierCompareError(f"backend(s) {twice} listed more than once; name each backend once")
    # brms (about a minute of sampling, both cores) fits in a second process while the others fit here
    aside = {}
    if len(names) > 1:
        for name in ASIDE:
            if name in names:
                say(f"[{names.index(name) + 1}/{len(names)}] {name}: fitting in a second process meanwhile ...")
                aside[name] = AsideFit(name, data, formula, sc.family, seed, DEMO_OPTIONS.get(name, {}))
    outcome: dict[str, dict] = {}
    limits = contextlib.ExitStack()
    try:
        info = backend_info([n for n in names if n not in aside])
        if aside:  # its chains take the cores: one thread here, so BLAS/OpenMP pools do not spin against them
            from .runenv import one_thread

            limits.enter_context(one_thread())
        for i, name in enumerate(names, 1):
            if name in aside:
                continue
            if not info[name]["available"]:
                say(f"[{i}/{len(names)}] {name}: skipped ({info[name]['reason']})")
                outcome[name] = {"status": "unavailable", "reason": info[name]["reason"]}
                continue
            if sc.family not in info[name]["families"]:
                reason = f"fits families {info[name]['families']}, not {sc.family}"
                say(f"[{i}/{len(names)}] {name}: not applicable ({reason})")
                outcome[name] = {"status": "not applicable", "reason": reason}
                continue
            say(f"[{i}/{len(names)}] fitting {name} ...")
            try:
                f = fit(data, formula, backend=name, family=sc.family, seed=seed, **DEMO_OPTIONS.get(name, {}))
            except HierCompareError as exc:
                outcome[name] = {"status": "failed", "reason": str(exc)}
                say(f"    FAILED: {exc}")
                continue
            outcome[name] = {"status": "ok", "fit": f}
            say(f"    done in {f.timing['fit_seconds']:.2f} s (converged={convergence_text(f.converged)}, "
                f"singular={f.diagnostics['singular']})")
        for name, job in aside.items():
            say(f"waiting for {name} (second process) ...")
            outcome[name] = {**job.result(), "process": "second process, overlapping the other fits",
                             "process_seconds": job.seconds, "waited_seconds": job.waited}
            got = outcome[name]
            if got["status"] == "ok":
                f = got["fit"]
                say(f"    {name} done in {f.timing['fit_seconds']:.2f} s in its process (waited {job.waited:.1f} s; "
                    f"converged={convergence_text(f.converged)}, singular={f.diagnostics['singular']})")
                for w in dict.fromkeys(f.diagnostics.get("warnings", []) + got.get("warnings", [])):
                    say(f"    {name}: {w}")
            else:
                say(f"    {name}: {got['status']} ({got['reason']})")
    finally:
        limits.close()
        for job in aside.values():
            job.cancel()
    fits, skipped, timings = [], [], []
    for name in names:
        got = outcome[name]
        where = {k: got[k] for k in ("process", "process_seconds", "waited_seconds") if k in got}
        if got["status"] == "ok":
            fits.append(got["fit"])
            timings.append({"backend": name, "status": "ok", **got["fit"].timing, **where})
        else:
            reason = got["reason"] if got["status"] != "failed" else f"failed: {got['reason']}"
            skipped.append({"backend": name, "reason": reason})
            timings.append({"backend": name, "status": got["status"], **where})
    if aside:
        stages["waiting_for_second_process"] = sum(job.waited for job in aside.values())
    t_compare = time.perf_counter()
    say("comparing backends ...")
    agreement = compare(fits) if len(fits) >= 2 else pd.DataFrame()
    agree_summary = summary(agreement) if not agreement.empty else pd.DataFrame()
    rec = pd.concat([recovery(f, truth) for f in fits], ignore_index=True) if fits else pd.DataFrame()
    from .design import prepare
    from .report.plots import lightgbm_tree_records
    from .spec import ModelSpec

    # the tree as the fits saw it; built again only when no backend could run
    md = fits[0].model if fits and fits[0].model is not None else prepare(ModelSpec.from_formula(formula, family=sc.family), data)
    hierarchy = {**md.hierarchy.describe(), "root": sc.root}  # the report names the root as the scenario does
    results = {
        "title": f"hiercompare demo: scenario {sc.name!r}",
        "formula": formula,
        "family": sc.family,
        "seed": seed,
        "nobs": len(data),
        "scenario": sc.to_dict(),
        "hierarchy": hierarchy,
        "truth": truth.to_dict(),
        "fits": [f.to_dict() for f in fits],
        "skipped": skipped,
        "timings": timings,
        # each LightGBM backend's first tree as model text, so the report draws it from results.json alone
        "lightgbm_trees": lightgbm_tree_records(fits),
        "agreement_summary": _records(agree_summary),
        "agreement": _records(agreement),
        "recovery": _records(rec),
        "provenance": {
            "hiercompare": __version__,
            "git_commit": git_commit(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "seed": seed,
            "formula": formula,
            # how each backend fitted: its method and the options it was given (the demo's own are DEMO_OPTIONS)
            "backend_options": {f.backend: {"fit_method": f.method,
                                            "options": {k: v for k, v in f.provenance.get("options", {}).items()
                                                        if k != "seed"}} for f in fits},
            "backend_versions": {f.backend: {k: v for k, v in f.provenance.items()
                                             if k not in ("formula", "formula_as_given", "seed", "options",
                                                          "backend", "nobs", "family")} for f in fits},
        },
    }
    stages["compare_and_recovery"] = time.perf_counter() - t_compare
    say("writing report ...")
    from .report import render_demo

    t_report = time.perf_counter()
    html = render_demo(results)
    stages["report"] = time.perf_counter() - t_report
    # fits: each backend's wall time from the data frame to the Fit (results["timings"]) in this process (a fit
    # in a second process overlaps them; what is left of it is "waiting_for_second_process"); the rest is checks
    stages["fits"] = sum(t.get("total_seconds", 0.0) for t in timings if "process" not in t)
    results["timing_total_seconds"] = time.perf_counter() - t_start
    stages["other"] = results["timing_total_seconds"] - sum(stages.values())
    results["timing_stages"] = stages
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "report.html").write_text(html)
    data.to_csv(out / "data.csv", index=False)
    say(f"wrote {out / 'report.html'} and {out / 'results.json'} in {results['timing_total_seconds']:.1f} s")
    return results


def _records(df: pd.DataFrame) -> list[dict]:
    if df is None or df.empty:
        return []
    return json.loads(df.to_json(orient="records", double_precision=15))
