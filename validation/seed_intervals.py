"""Issue 13's coverage evidence, summarised from the recorded studies into validation/seed_intervals.md.

Reads the study folders written by

    hiercompare study validation/seed_intervals.toml --out validation/seed_intervals_out --workers 1
    hiercompare study validation/seed_bootstrap.toml --out validation/seed_bootstrap_out --workers 2
    hiercompare study validation/unbalanced_intervals.toml --out validation/unbalanced_intervals_out --workers 1

(the last one is optional) and prints the tables of validation/seed_intervals.md: coverage of the fixed effects' intervals under z, Satterthwaite
and Kenward-Roger; coverage of the profile and bootstrap intervals of the variance parameters; what each cost.
One side check is computed here, not by a study: the profile of the REML criterion (``profile.profile(core,
reml=True)``; the fits' default, as lme4's, profiles the ML deviance) on the same 500 data sets, regenerated from
their unit seeds; its intervals are kept in seed_intervals_reml_profile.csv and recomputed only when that file is
missing. Run: .venv/bin/python validation/seed_intervals.py
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

import hiercompare as hc
from hiercompare.performance import performance
from hiercompare.report import markdown_table
from hiercompare.study import read_results, unit_seed

HERE = Path(__file__).resolve().parent
PARAMS = [("market", "sd__(Intercept)", "market intercept SD"), ("market", "sd__x1", "market x1-slope SD"),
          ("market", "cor__(Intercept).x1", "their correlation"),
          ("market:submarket", "sd__(Intercept)", "submarket SD"), ("Residual", "sd__Observation", "residual SD")]
TERMS = [("(Intercept)", "national intercept"), ("x1", "x1 (fixed part of the market slope)"),
         ("x2", "x2 (row-level)")]
DF_ENTRIES = [("native:z", "z"), ("native:satterthwaite", "Satterthwaite"), ("native:kr", "Kenward-Roger")]


def pm(p: float, se: float, digits: int = 3) -> str:
    return f"{p:.{digits}f} ({se:.{digits}f})"


def misses(sub: pd.DataFrame) -> tuple[float, float]:
    """Shares of intervals wholly below and wholly above the truth."""
    return float((sub["conf_high"] < sub["truth"]).mean()), float((sub["conf_low"] > sub["truth"]).mean())


def fixed_table(res: pd.DataFrame) -> pd.DataFrame:
    perf = performance(res).set_index(["backend", "effect", "term"])
    rows = []
    for term, label in TERMS:
        for be, name in DF_ENTRIES:
            p = perf.loc[(be, "fixed", term)]
            sub = res[(res["backend"] == be) & (res["effect"] == "fixed") & (res["term"] == term)]
            lo, hi = misses(sub)
            rows.append({"parameter": f"{label}, truth {p['truth']:g}", "df": name,
                         "median df": "inf" if np.isinf(p["median_df"]) else f"{p['median_df']:.2f}",
                         "coverage (MCSE)": pm(p["coverage"], p["coverage_mcse"]),
                         "misses low / high": f"{lo:.3f} / {hi:.3f}",
                         "median width": f"{(sub['conf_high'] - sub['conf_low']).median():.4f}",
                         "rejects H0: b = 0 (MCSE)": pm(p["power"], p["power_mcse"]), "n": int(p["n_ci"])})
    return pd.DataFrame(rows)


def sd_rows(res: pd.DataFrame, be: str) -> dict:
    sub = res[(res["backend"] == be) & (res["effect"] == "ran_pars")]
    perf = performance(sub).set_index(["group", "term"])
    out = {}
    for g, t, _ in PARAMS:
        s = sub[(sub["group"] == g) & (sub["term"] == t) & sub["conf_low"].notna() & sub["conf_high"].notna()]
        lo, hi = misses(s)
        p = perf.loc[(g, t)]
        out[(g, t)] = dict(cov=pm(p["coverage"], p["coverage_mcse"]), miss=f"{lo:.3f} / {hi:.3f}",
                           width=f"{(s['conf_high'] - s['conf_low']).median():.3f}", n=int(p["n_ci"]),
                           at0=int((s["conf_low"] == 0).sum()))
    return out


def reverse_percentile(boot: pd.DataFrame) -> pd.DataFrame:
    """The bootstrap's ran_pars rows with the basic (reverse percentile) interval from the same two quantiles, on
    the log scale for SDs (``est^2 / q97.5, est^2 / q2.5``) and the atanh scale for correlations: derived here,
    not an option of the package (lme4's ``confint(boot.type = "basic")`` is the same on the raw scale)."""
    out = boot[boot["effect"] == "ran_pars"].copy()
    sd = out["term"].str.startswith("sd__").to_numpy()
    e, lo, hi = (out[c].to_numpy(dtype=float) for c in ("estimate", "conf_low", "conf_high"))
    with np.errstate(divide="ignore", invalid="ignore"):
        new_lo = np.where(sd, e ** 2 / hi, np.tanh(2 * np.arctanh(e) - np.arctanh(hi)))
        new_hi = np.where(sd, e ** 2 / lo, np.tanh(2 * np.arctanh(e) - np.arctanh(lo)))
    out["conf_low"], out["conf_high"] = new_lo, new_hi
    return out.assign(backend="native:bootstrap-basic")


def reml_profile(replications: int = 500, seed: int = 20240513) -> pd.DataFrame:
    """Profile intervals of the REML criterion on the studies' data sets (unit seeds of seed_intervals.toml)."""
    from hiercompare import mixedcore, profile
    from hiercompare.design import prepare
    from hiercompare.runenv import one_thread

    path = HERE / "seed_intervals_reml_profile.csv"
    if path.exists():
        return pd.read_csv(path)
    sc = hc.Scenario()
    spec = hc.ModelSpec.from_formula(sc.formula())
    rows = []
    with one_thread(["native"]):
        for r in range(replications):
            data, truth = hc.simulate(sc, seed=unit_seed(seed, 0, r))
            t0 = time.perf_counter()
            iv = profile.profile(mixedcore.from_model_data(prepare(spec, data)), reml=True).intervals
            secs = time.perf_counter() - t0
            tru = truth.tidy()
            tru = tru[tru["effect"] == "ran_pars"][["group", "term", "estimate"]].rename(columns={"estimate": "truth"})
            rows.append(iv[["group", "term", "estimate", "conf_low", "conf_high"]].merge(tru, on=["group", "term"])
                        .assign(replication=r, seconds=secs))
    out = pd.concat(rows, ignore_index=True)
    out.to_csv(path, index=False)
    return out


def sd_table(intervals: pd.DataFrame, boot: pd.DataFrame | None = None,
             reml: pd.DataFrame | None = None) -> pd.DataFrame:
    prof = sd_rows(intervals, "native:satterthwaite")
    bs = sd_rows(boot, "native:bootstrap") if boot is not None else {}
    basic = sd_rows(reverse_percentile(boot), "native:bootstrap-basic") if boot is not None else {}
    rm = sd_rows(reml.assign(backend="reml", effect="ran_pars", scenario="seed", level="", std_error=np.nan,
                             realized=np.nan, converged=True, error=""), "reml") if reml is not None else {}
    rows = []
    for g, t, label in PARAMS:
        truth = float(intervals.loc[(intervals["group"] == g) & (intervals["term"] == t), "truth"].iloc[0])
        for name, tab in (("profile, ML deviance (the default, as lme4)", prof), ("bootstrap, percentile", bs),
                          ("bootstrap, reverse percentile (derived)", basic), ("profile, REML criterion", rm)):
            if (g, t) in tab:
                c = tab[(g, t)]
                rows.append({"parameter": f"{label}, truth {truth:g}", "interval": name,
                             "coverage (MCSE)": c["cov"], "misses low / high": c["miss"],
                             "median width": c["width"], "n": c["n"]})
    return pd.DataFrame(rows)


def cost_table(frames: dict[str, pd.DataFrame], reml: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for study, res in frames.items():
        per_fit = res.drop_duplicates(["replication", "backend"])
        for be, sub in per_fit.groupby("backend", sort=False):
            rows.append({"study": study, "entry": be, "fits": len(sub),
                         "median s per fit": f"{sub['seconds'].median():.3f}",
                         "total s": f"{sub['seconds'].sum():.0f}"})
    per = reml.drop_duplicates("replication")
    rows.append({"study": "(this script)", "entry": "REML profile only", "fits": len(per),
                 "median s per fit": f"{per['seconds'].median():.3f}", "total s": f"{per['seconds'].sum():.0f}"})
    return pd.DataFrame(rows)


def main() -> None:
    intervals = read_results(HERE / "seed_intervals_out")
    boot_dir = HERE / "seed_bootstrap_out"
    boot = read_results(boot_dir) if (boot_dir / "results.parquet").exists() else None
    unb_dir = HERE / "unbalanced_intervals_out"
    unb = read_results(unb_dir) if (unb_dir / "results.parquet").exists() else None
    reml = reml_profile()
    frames = {"seed_intervals": intervals}
    if boot is not None:
        frames["seed_bootstrap"] = boot
    if unb is not None:
        frames["unbalanced_intervals"] = unb
    parts = {"fixed": markdown_table(fixed_table(intervals)), "sd": markdown_table(sd_table(intervals, boot, reml)),
             "cost": markdown_table(cost_table(frames, reml)),
             "unbalanced": markdown_table(fixed_table(unb)) if unb is not None else "(not run)",
             "unbalanced_sd": markdown_table(sd_table(unb)) if unb is not None else "(not run)"}
    for k, v in parts.items():  # the tables of validation/seed_intervals.md
        print(f"== {k}\n{v}\n")


if __name__ == "__main__":
    main()
