"""`make bench`: the exact engine (``native``, :mod:`hiercompare.mixedcore`) against lme4, side by side in one run.

Two data sets (issue 13, "A faster exact core"):

* ``education``: a simulated tree of the shape of the public education data set the issue quotes (about 30,000
  rows, 2,400 schools in 130 authorities, a correlated slope at the top):
  ``y ~ x + (1 + x | authority) + (1 | authority:school)``. Goal: native >= 10x faster than lme4 at a
  log-likelihood >= lme4's - 1e-6.
* ``million``: bench/run.py's 1,000,000-row tree (100 markets x 20 submarkets x 500 rows, the seed's formula).
  Goal: >= 100x.

Timings (wall clock, medians of ``--reps`` repetitions, native and lme4 interleaved so that both see the same
load on this shared machine):

* ``fit``: ``hiercompare.fit(data, formula, backend=...)`` from the DataFrame to the Fit, REML, lme4's default
  optimizer, as bench/run.py times it, with the extras that both backends compute on mixedcore afterwards
  switched off (``df="z"``, ``ran_pars_ci="none"``): the estimates, BLUPs and their conditional SDs.
  ``speedup`` is lme4's median over native's; ``speedup_backend_only`` leaves out the design step both share
  (``Fit.timing["fit_seconds"]``: from the validated design to the Fit).
* ``lmer_alone``: only ``lme4::lmer()`` inside R (``system.time``), on a data.frame already in R: the strictest
  comparison, R's fit against everything native does from the DataFrame.
* ``defaults`` (education only, or with ``--defaults-million``): both backends with their default options
  (Satterthwaite df and profile intervals, both computed on mixedcore).

``engines`` (education) measures the choices inside the engine: one deviance, and one deviance with its gradient,
in the dense reference elimination, the vectorised numpy engine and the compiled (numba) one; and whole fits in
each engine with their evaluation counts, against an L-BFGS-B run on central-difference gradients (what the
engine did before the analytic gradient).
"""
from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.design import prepare
from hiercompare.provenance import machine


def education(seed: int = 7):
    sc = hc.Scenario(levels=(
        hc.LevelScenario("authority", 130, {"(Intercept)": 0.5, "x": 0.3}, ((1, 0.4), (0.4, 1)), label="A{i}"),
        hc.LevelScenario("school", (8, 29), {"(Intercept)": 0.6}, label="S{i}")),
        n_obs=(5, 20), fixed={"(Intercept)": 1.0, "x": 0.5}, predictors=("x",), name="education")
    return sc, hc.simulate(sc, seed=seed)[0]


def million(seed: int = 2024):
    sc = hc.Scenario(levels=(
        hc.LevelScenario("market", 100, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)), label="Market_{i}"),
        hc.LevelScenario("submarket", 20, {"(Intercept)": 0.4}, label="Sub{i}")), n_obs=500)
    return sc, hc.simulate(sc, seed=seed)[0]


def _options(backend: str, extras: bool) -> dict:
    """The options that switch the mixedcore-based extras off, where this checkout's backend has them."""
    if extras:
        return {}
    from hiercompare.backends import get_backend

    params = inspect.signature(get_backend(backend).fit).parameters
    out = {}
    if "df" in params:
        out["df"] = "z"
    if "ran_pars_ci" in params:
        out["ran_pars_ci"] = "none"
    return out


def _fit(data, formula, backend, extras):
    t0 = time.perf_counter()
    f = hc.fit(data, formula, backend=backend, method="REML", **_options(backend, extras))
    return time.perf_counter() - t0, f


def _lmer_alone(data, formula, reps):
    """lme4::lmer() alone, timed inside R on a data.frame already converted; (seconds list, loglik)."""
    import rpy2.robjects as ro

    from hiercompare import rbridge

    md = prepare(hc.ModelSpec.from_formula(formula), data)
    ro.globalenv["hc_bench_d"] = rbridge.model_frame(md)
    ro.r('suppressPackageStartupMessages(requireNamespace("lme4"))')
    f = rbridge.r_formula(md.spec)
    times = []
    for _ in range(reps):
        times.append(float(ro.r(f'system.time(hc_bench_m <- lme4::lmer({f}, data = hc_bench_d, REML = TRUE))'
                                '[["elapsed"]]')[0]))
    ll = float(ro.r("as.numeric(stats::logLik(hc_bench_m))")[0])
    ro.r("rm(hc_bench_d, hc_bench_m)")
    return times, ll


def side_by_side(name, sc, data, reps, lmer_reps, defaults: bool, have_lme4: bool) -> dict:
    formula = sc.formula()
    leaf = ":".join(lv.name for lv in sc.levels)
    out = {"rows": len(data), "formula": formula, "top_groups": int(data[sc.levels[0].name].nunique()),
           "leaf_groups": int(data.groupby([lv.name for lv in sc.levels]).ngroups), "leaf": leaf}
    backends = ["native"] + (["lme4"] if have_lme4 else [])
    modes = [("fit", False)] + ([("defaults", True)] if defaults else [])
    for mode, extras in modes:
        for be in backends:  # warm-up: imports, compiled kernels, R start-up and sourcing
            _fit(data if len(data) <= 50_000 else data.iloc[::100], formula, be, extras)
        runs = {be: [] for be in backends}
        inner = {be: [] for be in backends}
        fits = {}
        for _ in range(reps):
            for be in backends:
                sec, f = _fit(data, formula, be, extras)
                runs[be].append(sec)
                inner[be].append(f.timing["fit_seconds"])
                fits[be] = f
                print(f"{name} {mode:8s} {be:6s} {sec:8.3f} s (backend {f.timing['fit_seconds']:.3f} s)",
                      file=sys.stderr)
        res = {be: {"median_seconds": statistics.median(v), "seconds": v, "loglik": fits[be].loglik,
                    "median_backend_seconds": statistics.median(inner[be]), "backend_seconds": inner[be]}
               for be, v in runs.items()}
        res["native"]["deviance_evaluations"] = fits["native"].diagnostics.get("deviance_evaluations")
        res["native"]["converged"] = fits["native"].diagnostics.get("converged")
        res["native"]["options"] = _options("native", extras)
        if have_lme4:
            res["lme4"]["options"] = _options("lme4", extras)
            res["speedup"] = res["lme4"]["median_seconds"] / res["native"]["median_seconds"]
            # without hiercompare.fit's design step (formula, tree, X, Z), which both backends share
            res["speedup_backend_only"] = (res["lme4"]["median_backend_seconds"]
                                           / res["native"]["median_backend_seconds"])
            res["loglik_native_minus_lme4"] = fits["native"].loglik - fits["lme4"].loglik
            a = fits["native"].varcorr.set_index(["group", "term"])["estimate"]
            b = fits["lme4"].varcorr.set_index(["group", "term"])["estimate"]
            res["max_rel_diff_sd_cor"] = float(((a - b.loc[a.index]).abs() / b.loc[a.index].abs()).max())
        out[mode] = res
    if have_lme4 and lmer_reps:
        times, ll = _lmer_alone(data, formula, lmer_reps)
        nat = out["fit"]["native"]["median_seconds"]
        out["lmer_alone"] = {"median_seconds": statistics.median(times), "seconds": times, "loglik": ll,
                             "speedup_native_fit_vs_lmer_alone": statistics.median(times) / nat,
                             "loglik_native_minus_lmer": out["fit"]["native"]["loglik"] - ll}
        print(f"{name} lmer() alone {statistics.median(times):.3f} s", file=sys.stderr)
    return out


def _per_call(fn, reps: int = 7, inner: int = 20) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - t0) / inner)
    return statistics.median(ts)


def engines(sc, data) -> dict:
    """Per-evaluation cost of each implementation and whole fits in each engine (education data)."""
    from scipy import optimize

    md = prepare(hc.ModelSpec.from_formula(sc.formula()), data)
    core = mixedcore.from_model_data(md)
    theta = core.fit().theta
    out = {"leaf_groups": int(core.C.shape[0]), "theta_length": int(len(theta)), "per_evaluation_ms": {}}
    dense = lambda: core._deviance_from(*core._eliminate(theta)[:2], True)
    out["per_evaluation_ms"]["dense_reference_deviance"] = 1e3 * _per_call(dense)
    avail = ["numpy"] + (["numba"] if mixedcore._jit_module() is not None else [])
    for eng in avail:
        out["per_evaluation_ms"][f"{eng}_deviance"] = 1e3 * _per_call(lambda: core._devgrad(theta, True, False, eng))
        out["per_evaluation_ms"][f"{eng}_deviance_and_gradient"] = 1e3 * _per_call(
            lambda: core.deviance_and_gradient(theta, True, engine=eng))
    fits = {}
    for eng in avail:
        core.engine = eng
        ts, nev = [], None
        for _ in range(5):
            t0 = time.perf_counter()
            r = core.fit()
            ts.append(time.perf_counter() - t0)
            nev = r.n_evals
        fits[eng] = {"median_seconds": statistics.median(ts), "evaluations": nev, "deviance": r.deviance}
    core.engine = None
    # before the analytic gradient: L-BFGS-B on central differences (2 len(theta) evaluations per gradient)
    bounds = [(lo if np.isfinite(lo) else None, None) for lo in core.lower]
    t0 = time.perf_counter()
    nev = 0
    x = core.theta0
    for _ in range(2):
        r = optimize.minimize(lambda t: core._devgrad(t, True, False, "numpy")[0], x, method="L-BFGS-B",
                              jac="3-point", bounds=bounds, options=dict(ftol=1e-15, gtol=1e-10, maxiter=2000,
                                                                         maxls=50))
        nev += r.nfev
        x = r.x
    fits["numpy_central_differences"] = {"seconds": time.perf_counter() - t0, "evaluations": nev,
                                         "deviance": float(r.fun)}
    out["fits"] = fits
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", nargs="?", default="bench_out/native_speed.json")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each fit on the education data")
    ap.add_argument("--million-reps", type=int, default=3, help="repetitions on the 1,000,000-row data")
    ap.add_argument("--lmer-reps", type=int, default=3, help="repetitions of lmer() alone (0: skip)")
    ap.add_argument("--skip-million", action="store_true")
    ap.add_argument("--defaults-million", action="store_true",
                    help="also time both backends with their default extras on the 1,000,000 rows")
    args = ap.parse_args(argv)
    warnings.simplefilter("ignore")
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    at_start = machine()
    have_lme4 = "lme4" in hc.available_backends()
    jit = mixedcore._jit_module()
    results = {
        "benchmark": "native (mixedcore) vs lme4, side by side in one run; medians of repetitions, wall clock",
        "machine": at_start,
        "mixedcore_engine": mixedcore.ENGINE,
        "numba": getattr(sys.modules.get("numba"), "__version__", None) if jit else None,
        "goals": {"education_speedup": 10, "million_speedup": 100, "loglik_tolerance": 1e-6},
    }
    sc, data = education()
    results["education"] = side_by_side("education", sc, data, args.reps, args.lmer_reps, True, have_lme4)
    results["engines"] = engines(sc, data)
    if not args.skip_million:
        sc, data = million()
        results["million"] = side_by_side("million", sc, data, args.million_reps, args.lmer_reps,
                                          args.defaults_million, have_lme4)
    results["load_average_at_end"] = machine()["load_average_1_5_15"]
    out_path.write_text(json.dumps(results, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    for key in ("education", "million"):
        r = results.get(key, {})
        if "fit" in r and "speedup" in r["fit"]:
            print(f"{key}: native {r['fit']['native']['median_seconds']:.3f} s, lme4 "
                  f"{r['fit']['lme4']['median_seconds']:.3f} s: {r['fit']['speedup']:.1f}x; loglik difference "
                  f"{r['fit']['loglik_native_minus_lme4']:+.2e}", file=sys.stderr)
    print(f"wrote {out_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
