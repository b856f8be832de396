"""Issue 13 item 3: are the learners' intervals honest? lightgbm on the nonlinear scenario (validation/nonlinear.toml:
Scenario(nonlinear="sin_threshold"), max_rounds=300), one worker.

Per replication (seed 20240504 + r): simulate; fit lightgbm three ways on the same data and seed:
* ``unprojected``: orthogonalize=False, intervals="conditional" (what validation/nonlinear_out recorded: F only
  centred);
* ``conditional``: the default (F projected off X), intervals="conditional" (Wald / BLUP, F treated as known);
* ``bootstrap``: the default projection, intervals="bootstrap" (cluster bootstrap over the 10 markets, B draws);
  from the same draws also the normal (estimate -+ 1.96 SE_boot) and basic (2 est - quantiles) intervals.
and records the estimates, SEs and 95% intervals of the fixed effects and the variance parameters.

Targets. With F projected off X, beta is the best linear population term: the generating linear coefficient plus
the least-squares coefficient of the true f on X. For independent N(0, 1) predictors that is (1, 0, 0.6 + c2)
with c2 = 0.8 * 2 exp(-2) + 0.6 phi(0.5) - 0.3 = 0.127776 (Stein's lemma; checked by Monte Carlo below); the
``target_sample`` column is the in-sample version (the generating beta plus the LS coefficients of the true f
on this data set's X). SDs: the generating values.

    .venv/bin/python validation/learner_intervals.py REPS DRAWS OUT.csv   (appends; resumes where it stopped)
    .venv/bin/python validation/learner_intervals.py --summary OUT.csv     (every kind and parameter)
    .venv/bin/python validation/learner_intervals.py --markdown OUT.csv    (the table in docs/learners.md)

The ``bootstrap`` rows are the percentile intervals (what intervals="bootstrap" gave when the script first ran);
``bootstrap_basic`` is the interval that is now the default (bootstrap_ci="basic"), ``bootstrap_normal`` the
third choice: all three from the same draws.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

import hiercompare as hc
from hiercompare.simulate import nonlinear_part

SC = hc.Scenario(nonlinear="sin_threshold", name="sin_threshold")
MAX_ROUNDS = 300
SEED0 = 20240504
C2 = 0.8 * 2 * np.exp(-2.0) + 0.6 * np.exp(-0.125) / np.sqrt(2 * np.pi) - 0.3
POP_TARGET = {"(Intercept)": 1.0, "x1": 0.0, "x2": 0.6 + C2}


def one(r: int, draws: int) -> list[dict]:
    seed = SEED0 + r
    data, truth = hc.simulate(SC, seed=seed)
    tt = truth.tidy()
    sds = {(g, t): v for g, t, v in tt.loc[tt["effect"] == "ran_pars", ["group", "term", "estimate"]].itertuples(index=False)}
    F = SC.formula()
    fits = {}
    t0 = time.perf_counter()
    fits["unprojected"] = hc.fit(data, F, backend="lightgbm", seed=seed, max_rounds=MAX_ROUNDS, orthogonalize=False)
    fits["conditional"] = hc.fit(data, F, backend="lightgbm", seed=seed, max_rounds=MAX_ROUNDS)
    t1 = time.perf_counter()
    fb = hc.fit(data, F, backend="lightgbm", seed=seed, max_rounds=MAX_ROUNDS, intervals="bootstrap",
                bootstrap_draws=draws)
    boot_secs = time.perf_counter() - t1
    fits["bootstrap"] = fb
    md = fb.model
    coef = np.linalg.lstsq(md.X, nonlinear_part(SC, md.data), rcond=None)[0]
    gen = dict(zip(md.fixed_names, [tt.loc[(tt["effect"] == "fixed") & (tt["term"] == n), "estimate"].iloc[0]
                                     for n in md.fixed_names]))
    sample_target = {n: gen[n] + c for n, c in zip(md.fixed_names, coef)}
    draws_df = fb.extras["bootstrap_draws"]
    rows = []
    for kind, f in fits.items():
        for x in f.tidy(["fixed", "ran_pars"]).itertuples(index=False):
            if x.effect == "fixed":
                target, target_sample = POP_TARGET[x.term], sample_target[x.term]
                if kind == "unprojected":  # its estimand is not defined (F keeps part of the linear trend)
                    target = target_sample = np.nan
            else:
                target = target_sample = sds.get((x.group, x.term), np.nan)
            row = dict(replication=r, seed=seed, kind=kind, effect=x.effect, group=x.group, term=x.term,
                       estimate=x.estimate, std_error=x.std_error, conf_low=x.conf_low, conf_high=x.conf_high,
                       interval=x.interval, target=target, target_sample=target_sample,
                       rounds=f.diagnostics["rounds"], seconds=boot_secs if kind == "bootstrap" else np.nan)
            rows.append(row)
            if kind == "bootstrap":
                d = draws_df.loc[(draws_df["effect"] == x.effect) & (draws_df["group"] == x.group)
                                 & (draws_df["term"] == x.term), "estimate"].to_numpy(dtype=float)
                se = float(np.std(d, ddof=1))
                q_lo, q_hi = np.quantile(d, [0.025, 0.975])
                rows.append({**row, "kind": "bootstrap_normal", "std_error": se, "conf_low": x.estimate - 1.959964 * se,
                             "conf_high": x.estimate + 1.959964 * se, "interval": "cluster_bootstrap (normal)"})
                rows.append({**row, "kind": "bootstrap_basic", "std_error": se, "conf_low": 2 * x.estimate - q_hi,
                             "conf_high": 2 * x.estimate - q_lo, "interval": "cluster_bootstrap (basic)",
                             "draws_mean": float(d.mean())})
    print(f"replication {r}: {time.perf_counter() - t0:.1f} s (bootstrap {boot_secs:.1f} s)", flush=True)
    return rows


def summary(path: str) -> pd.DataFrame:
    d = pd.read_csv(path, keep_default_na=True)
    d["group"] = d["group"].fillna("")
    out = []
    for (kind, effect, group, term), s in d.groupby(["kind", "effect", "group", "term"], sort=False):
        n = len(s)
        empse = float(s["estimate"].std(ddof=1))
        modse = float(np.sqrt(np.mean(s["std_error"] ** 2))) if s["std_error"].notna().any() else np.nan
        ok = s["conf_low"].notna() & s["target"].notna()
        cov = float(((s["conf_low"] <= s["target"]) & (s["target"] <= s["conf_high"]))[ok].mean()) if ok.any() else np.nan
        covs = float(((s["conf_low"] <= s["target_sample"]) & (s["target_sample"] <= s["conf_high"]))[ok].mean()) if ok.any() else np.nan
        out.append(dict(kind=kind, effect=effect, group=group, term=term, n=n, mean_estimate=s["estimate"].mean(),
                        target=s["target"].mean(), empse=empse, empse_mcse=empse / np.sqrt(2 * (n - 1)),
                        modse=modse, modse_over_empse=modse / empse, coverage=cov,
                        coverage_mcse=np.sqrt(cov * (1 - cov) / ok.sum()) if ok.any() else np.nan,
                        coverage_sample_target=covs))
    return pd.DataFrame(out)


def markdown(path: str) -> str:
    """The docs' table: per parameter, empirical SE, each kind's model SE / empirical SE and coverage (MCSE)."""
    sm = summary(path)
    kinds = {"conditional": "conditional", "bootstrap": "bootstrap percentile", "bootstrap_basic": "bootstrap basic",
             "bootstrap_normal": "bootstrap normal"}
    ref = sm[sm["kind"] == "conditional"].set_index(["effect", "group", "term"])
    unp = sm[sm["kind"] == "unprojected"].set_index(["effect", "group", "term"])
    lines = ["| parameter | target | mean estimate | empirical SE (MCSE) | unprojected: empirical SE, conditional SE | "
             + " | ".join(f"{v}: SE (ratio), coverage (MCSE)" for v in kinds.values()) + " |",
             "|---" * (5 + len(kinds)) + "|"]
    for key, r in ref.iterrows():
        eff, grp, term = key
        cells = [f"{(grp + ' ') if grp else ''}{term}", f"{r['target']:.4f}", f"{r['mean_estimate']:.4f}",
                 f"{r['empse']:.4f} ({r['empse_mcse']:.4f})"]
        u = unp.loc[key]
        cells.append(f"{u['empse']:.4f}, {u['modse']:.4f}" if np.isfinite(u["modse"]) else f"{u['empse']:.4f}, -")
        for k in kinds:
            x = sm[(sm["kind"] == k) & (sm["effect"] == eff) & (sm["group"] == grp) & (sm["term"] == term)].iloc[0]
            if not np.isfinite(x["modse"]):
                cells.append("-")
                continue
            cov = "-" if not np.isfinite(x["coverage"]) else f"{x['coverage']:.2f} ({x['coverage_mcse']:.2f})"
            cells.append(f"{x['modse']:.4f} ({x['modse_over_empse']:.2f}), {cov}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "--markdown":
        print(markdown(sys.argv[2]))
        sys.exit(0)
    if sys.argv[1] == "--summary":
        pd.set_option("display.width", 250)
        pd.set_option("display.max_rows", 200)
        print(summary(sys.argv[2]).round(4).to_string(index=False))
        sys.exit(0)
    reps, draws, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    done = set(pd.read_csv(out)["replication"]) if out.exists() else set()
    rng = np.random.default_rng(1)
    z = rng.standard_normal((2, 4_000_000))
    fx = nonlinear_part(SC, pd.DataFrame({"x1": z[0], "x2": z[1]}))
    mc = np.linalg.lstsq(np.c_[np.ones(z.shape[1]), z.T], fx, rcond=None)[0]
    print(f"c2 by Stein's lemma {C2:.6f}; Monte Carlo LS coefficients of f on (1, x1, x2): {np.round(mc, 4)}", flush=True)
    for r in range(reps):
        if r in done:
            continue
        rows = pd.DataFrame(one(r, draws))
        rows.to_csv(out, mode="a", header=not out.exists(), index=False)
