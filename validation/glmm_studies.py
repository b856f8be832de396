"""Tables for validation/glmm_studies.md from the recorded binary / count studies (issue 12 item 8).

    .venv/bin/python validation/glmm_studies.py   # prints the tables of glmm_studies.md (its "Tables" section)

Reads validation/<study>_out/performance.csv (bias, RMSE, coverage with their Monte Carlo SEs) and
results.parquet (seconds per fit, failed fits, convergence; the Bayesian backends against native on the same data
sets). Nothing is refitted.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
STUDIES = ["binary", "count", "count_nb", "binary_bayes", "count_bayes"]
ORDER = ["native", "lme4", "glm", "r_glm", "lightgbm", "torch", "pymc", "brms"]
PARAMS = [("fixed", "", "(Intercept)"), ("fixed", "", "x1"), ("fixed", "", "x2"),
          ("ran_pars", "market", "sd__(Intercept)"), ("ran_pars", "market", "sd__x1"),
          ("ran_pars", "market", "cor__(Intercept).x1"), ("ran_pars", "market:submarket", "sd__(Intercept)"),
          ("ran_pars", "Dispersion", "theta")]


def _label(effect, group, term):
    if effect == "fixed":
        return f"`{term}`"
    if group == "Dispersion":
        return "NB `theta`"
    return f"`{group}` `{term}`"


def _pm(x, se, digits=3):
    if not np.isfinite(x):
        return ""
    if not np.isfinite(se):
        return f"{x:.{digits}f}"
    return f"{x:.{digits}f} ± {se:.{digits}f}"


def load(study: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    out = HERE / f"{study}_out"
    if not (out / "performance.csv").exists():
        return None
    perf = pd.read_csv(out / "performance.csv", keep_default_na=True)
    perf["group"] = perf["group"].fillna("")
    res = pd.read_parquet(out / "results.parquet")
    return perf, res


def coverage_cell(row) -> str:
    cov, mc = row.get("coverage", np.nan), row.get("coverage_mcse", np.nan)
    if np.isfinite(cov):
        return _pm(cov, mc, 2)
    cc, cm = row.get("conditional_coverage", np.nan), row.get("conditional_coverage_mcse", np.nan)
    if np.isfinite(cc):
        return _pm(cc, cm, 2) + " (cond. on f)"
    return "–"


def scenario_table(perf: pd.DataFrame, scenario: str) -> str:
    p = perf[perf["scenario"] == scenario]
    lines = ["| parameter | truth | backend | n | bias ± MCSE | RMSE ± MCSE | coverage ± MCSE |",
             "|---|---|---|---|---|---|---|"]
    for eff, grp, term in PARAMS:
        q = p[(p["effect"] == eff) & (p["group"] == grp) & (p["term"] == term)]
        if q.empty:
            continue
        q = q.assign(_o=q["backend"].map({b: i for i, b in enumerate(ORDER)}).fillna(99)).sort_values("_o")
        for _, r in q.iterrows():
            lines.append(f"| {_label(eff, grp, term)} | {r['truth']:g} | {r['backend']} | {int(r['n_used'])} | "
                         f"{_pm(r['bias'], r['bias_mcse'])} | {_pm(r['rmse'], r['rmse_mcse'])} | "
                         f"{coverage_cell(r)} |")
    return "\n".join(lines)


def cost_table(res: pd.DataFrame) -> str:
    unit = res.drop_duplicates(["scenario", "replication", "backend"])
    g = unit.groupby(["scenario", "backend"])
    t = pd.DataFrame({"fits": g.size(), "failed": g["error"].apply(lambda e: int(e.fillna("").ne("").sum())),
                      "converged": g["converged"].apply(lambda c: f"{int(c.fillna(False).astype(bool).sum())}"),
                      "median s": g["seconds"].median(), "max s": g["seconds"].max()}).reset_index()
    t["_o"] = t["backend"].map({b: i for i, b in enumerate(ORDER)}).fillna(99)
    t = t.sort_values(["scenario", "_o"])
    lines = ["| scenario | backend | fits | failed | converged | median s | max s |", "|---|---|---|---|---|---|---|"]
    for _, r in t.iterrows():
        lines.append(f"| {r['scenario']} | {r['backend']} | {r['fits']} | {r['failed']} | {r['converged']} | "
                     f"{r['median s']:.2f} | {r['max s']:.1f} |")
    return "\n".join(lines)


def bayes_vs_native(res: pd.DataFrame) -> str:
    """Per replication: each Bayesian backend's posterior mean minus native's estimate (same data set)."""
    keep = res[res["effect"].isin(["fixed", "ran_pars"])].copy()
    keep["group"] = keep["group"].fillna("")
    nat = keep[keep["backend"] == "native"].set_index(["scenario", "replication", "effect", "group", "term"])
    lines = ["| backend | parameter | truth | mean (posterior mean − native) | max abs | 95% interval covers truth |",
             "|---|---|---|---|---|---|"]
    for b in ("pymc", "brms"):
        q = keep[keep["backend"] == b].set_index(["scenario", "replication", "effect", "group", "term"])
        if q.empty:
            continue
        d = (q["estimate"] - nat["estimate"].reindex(q.index)).dropna()
        for eff, grp, term in PARAMS:
            sel = [i for i in d.index if i[2:] == (eff, grp, term)]
            if not sel:
                continue
            dd = d.loc[sel]
            qq = q.loc[sel]
            cov = ((qq["conf_low"] <= qq["truth"]) & (qq["truth"] <= qq["conf_high"]))
            ok = qq["conf_low"].notna()
            lines.append(f"| {b} | {_label(eff, grp, term)} | {qq['truth'].iloc[0]:g} | {dd.mean():+.3f} | "
                         f"{dd.abs().max():.3f} | {int(cov[ok].sum())} of {int(ok.sum())} |")
    return "\n".join(lines)


def agreement_table(res: pd.DataFrame) -> str:
    """Per backend: the largest |estimate - native's estimate| over the data sets, fixed effects and SDs apart."""
    keep = res[res["effect"].isin(["fixed", "ran_pars"])].copy()
    keep["group"] = keep["group"].fillna("")
    keep["kind"] = np.where(keep["effect"] == "fixed", "fixed",
                            np.where(keep["term"].str.startswith("sd__"), "SDs",
                                     np.where(keep["term"].str.startswith("cor__"), "cor", "NB theta")))
    key = ["scenario", "replication", "effect", "group", "term"]
    nat = keep[keep["backend"] == "native"].set_index(key)["estimate"]
    lines = ["| scenario | backend | max abs diff: fixed | SDs | cor | NB theta |", "|---|---|---|---|---|---|"]
    for (sc, b), q in keep[keep["backend"] != "native"].groupby(["scenario", "backend"]):
        d = (q.set_index(key)["estimate"] - nat.reindex(q.set_index(key).index)).abs()
        kinds = q.set_index(key)["kind"]
        cells = []
        for k in ("fixed", "SDs", "cor", "NB theta"):
            v = d[kinds == k].dropna()
            cells.append(f"{v.max():.2g}" if len(v) else "–")
        lines.append(f"| {sc} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def pooled_coverage() -> str:
    """Fixed-effect coverage pooled over the scenarios of binary, count and count_nb (each data set counts once)."""
    frames = []
    for study in ("binary", "count", "count_nb"):
        got = load(study)
        if got is not None:
            r = got[1]
            frames.append(r[(r["effect"] == "fixed") & r["conf_low"].notna()])
    if not frames:
        return ""
    r = pd.concat(frames)
    r = r.assign(covers=(r["conf_low"] <= r["truth"]) & (r["truth"] <= r["conf_high"]))
    lines = ["| backend | `(Intercept)` | `x1` | `x2` |", "|---|---|---|---|"]
    for b in [b for b in ORDER if b in set(r["backend"])]:
        cells = []
        for term in ("(Intercept)", "x1", "x2"):
            c = r[(r["backend"] == b) & (r["term"] == term)]["covers"]
            p_, n = c.mean(), len(c)
            cells.append(f"{p_:.3f} ± {np.sqrt(p_ * (1 - p_) / n):.3f} ({n})")
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    print("### Fixed-effect coverage pooled over binary, count and count_nb (MCSE, data sets)\n")
    print(pooled_coverage() + "\n")
    for study in STUDIES:
        got = load(study)
        if got is None:
            print(f"#### {study}: no results\n")
            continue
        perf, res = got
        print(f"### {study}\n")
        for sc in perf["scenario"].unique():
            print(f"#### {study} / {sc}\n")
            print(scenario_table(perf, sc) + "\n")
        if "native" in set(res["backend"]):
            print(f"#### {study}: each backend against native on the same data sets\n")
            print(agreement_table(res) + "\n")
        print(f"#### {study}: cost and convergence\n")
        print(cost_table(res) + "\n")
        if study.endswith("_bayes"):
            print(f"#### {study}: the Bayesian backends against native, data set by data set\n")
            print(bayes_vs_native(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
