"""The main job: simulate the default scenario, fit every available backend, compare, write the report."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from ._version import __version__
from .agreement import compare, summary
from .backends import REGISTRY, backends as backend_info
from .errors import HierCompareError
from .fitting import fit
from .recovery import recovery
from .results import _json_default
from .simulate import Scenario, simulate


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


# Per-backend options of the demo (in each fit's provenance; the report's provenance table lists every
# backend's method and options under "backend_options"). brms samples
# row by row: the demo takes 500 + 500 iterations per chain so that `make demo` stays within minutes; its
# diagnostics still say whether that was enough (R-hat, ESS, divergences). pymc samples with PyMC's own NUTS
# (PyTensor's C backend): for one fit its compile is cached across processes, where nutpie's numba callback is
# compiled again in every process (measured here: 15 s vs 26 s warm, 86 s vs 108 s on empty caches); nutpie
# stays the backend's default, faster for long runs and for many fits of one model (SBC).
DEMO_OPTIONS: dict[str, dict] = {"brms": {"iter": 500, "warmup": 500}, "pymc": {"sampler": "pymc"}}


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
    info = backend_info()
    fits, skipped, timings = [], [], []
    ahead, ahead_note = None, None
    if "brms" in names and info.get("brms", {}).get("available") and sc.family in info["brms"]["families"]:
        ahead = _BrmsAhead(data, formula, sc.family, out)  # compiles (or finds) the Stan model meanwhile
    for i, name in enumerate(names, 1):
        if name not in info:
            raise HierCompareError(f"unknown backend {name!r}; registered: {sorted(info)}")
        if not info[name]["available"]:
            say(f"[{i}/{len(names)}] {name}: skipped ({info[name]['reason']})")
            skipped.append({"backend": name, "reason": info[name]["reason"]})
            timings.append({"backend": name, "status": "unavailable"})
            continue
        if sc.family not in info[name]["families"]:
            reason = f"fits families {info[name]['families']}, not {sc.family}"
            say(f"[{i}/{len(names)}] {name}: not applicable ({reason})")
            skipped.append({"backend": name, "reason": reason})
            timings.append({"backend": name, "status": "not applicable"})
            continue
        if name == "brms" and ahead is not None:
            ahead_note = ahead.wait()
            stages["brms_precompile_wait"] = ahead.waited
            say(f"    brms model ahead of time: {ahead_note}")
        say(f"[{i}/{len(names)}] fitting {name} ...")
        try:
            f = fit(data, formula, backend=name, family=sc.family, seed=seed, **DEMO_OPTIONS.get(name, {}))
        except HierCompareError as exc:
            skipped.append({"backend": name, "reason": f"failed: {exc}"})
            timings.append({"backend": name, "status": "failed"})
            say(f"    FAILED: {exc}")
            continue
        fits.append(f)
        timings.append({"backend": name, "status": "ok", **f.timing})
        say(f"    done in {f.timing['fit_seconds']:.2f} s (converged={f.converged}, singular={f.diagnostics['singular']})")
    t_compare = time.perf_counter()
    say("comparing backends ...")
    agreement = compare(fits) if len(fits) >= 2 else pd.DataFrame()
    agree_summary = summary(agreement) if not agreement.empty else pd.DataFrame()
    rec = pd.concat([recovery(f, truth) for f in fits], ignore_index=True) if fits else pd.DataFrame()
    from .design import prepare
    from .spec import ModelSpec

    # the tree as the fits saw it; built again only when no backend could run
    md = fits[0].model if fits and fits[0].model is not None else prepare(ModelSpec.from_formula(formula, family=sc.family), data)
    hierarchy = md.hierarchy.describe()
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
        "brms_compiled_ahead": ahead_note,
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
    # fits: each backend's wall time from the data frame to the Fit (results["timings"]); the rest is checks
    stages["fits"] = sum(t.get("total_seconds", 0.0) for t in timings)
    results["timing_total_seconds"] = time.perf_counter() - t_start
    stages["other"] = results["timing_total_seconds"] - sum(stages.values())
    results["timing_stages"] = stages
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out / "report.html").write_text(html)
    data.to_csv(out / "data.csv", index=False)
    say(f"wrote {out / 'report.html'} and {out / 'results.json'} in {results['timing_total_seconds']:.1f} s")
    return results


class _BrmsAhead:
    """Compile brms's Stan model in a second process while the other backends fit.

    On a cold cache brms's C++ compile (~40 s, one core) then overlaps the other backends' fits (pymc's
    PyTensor compile above all) instead of following them. On a warm cache the process only finds the model (a few seconds). If it fails,
    the brms fit compiles as usual; what happened is said in the progress output and the stage timings.
    """

    def __init__(self, data: pd.DataFrame, formula: str, family: str, out: Path):
        import subprocess

        from .study import child_environment

        self.path = out / ".brms_ahead_data.pkl"
        data.to_pickle(self.path)
        self.waited = 0.0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hiercompare.backends.brms", str(self.path), formula, family],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_environment())

    def wait(self, timeout: float = 1800.0) -> str:
        t = time.perf_counter()
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        except Exception as exc:  # timeout: the fit compiles by itself
            self.proc.kill()
            self.proc.communicate()
            return f"gave up ({type(exc).__name__}); the fit compiles itself"
        finally:
            self.waited = time.perf_counter() - t
            self.path.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            return f"failed (exit {self.proc.returncode}: {(stderr or stdout).strip()[-300:]}); the fit compiles itself"
        try:
            res = json.loads(stdout.strip().splitlines()[-1])
        except Exception:
            return f"unreadable answer {stdout[-200:]!r}; the fit compiles itself"
        return f"{res.get('source')} in {float(res.get('seconds', 0.0)):.1f} s (waited {self.waited:.1f} s for it)"


def _records(df: pd.DataFrame) -> list[dict]:
    if df is None or df.empty:
        return []
    return json.loads(df.to_json(orient="records", double_precision=15))
