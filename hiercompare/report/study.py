"""The study report: one self-contained HTML page from a finished study folder, plus its tables as CSV.

``render_study(DIR)`` reads ``DIR/results.parquet`` and ``DIR/manifest.json`` (written by
:meth:`hiercompare.study.Study.run`) and writes ``DIR/report.html`` and ``DIR/report_tables/*.csv``: the
scenarios and their truth, estimates against the truth, the recovery table with Monte Carlo SEs
(:func:`hiercompare.performance.performance`), zip plots of coverage, caterpillar plots of the group effects of
one replication, cross-language agreement (Python vs R pairs, with Bland-Altman plots), a hierarchy diagram
with estimated offsets, a LightGBM tree when a LightGBM backend ran, timings and provenance.

The template is rendered by Jinja2 with autoescaping on; no value is ever marked safe, so every label
(scenario names, group labels, error texts) is HTML-escaped. Images are embedded as base64 PNG.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import HierCompareError
from ..results import NOT_ASSESSED
from ..schema import INTERVAL_TEXT  # how the recovery table names an interval kind
from ..spec import INTERCEPT
from . import _fmt, plots

#: (Python backend, R backend) pairs compared in the agreement section, when both ran.
PAIRS = [("ols", "r_lm"), ("mixedlm", "lme4"), ("native", "lme4")]
#: Backends preferred for the hierarchy diagram, in order (else the first backend with group effects).
LIGHTGBM_BACKENDS = ("lightgbm", "lightgbm-cat")
TABLES_DIR = "report_tables"
#: Prefix of a conditional cell's modse and coverage in the recovery table.
CONDITIONAL_PREFIX = "conditional on f(x): "


class ReportError(HierCompareError):
    """A study folder cannot be reported on (missing or unreadable files)."""


# ---------------------------------------------------------------------------------------------- loading
def load_study(folder: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read a finished study folder.

    Parameters
    ----------
    folder : path
        A folder written by ``hiercompare study`` (``results.parquet`` and ``manifest.json``).

    Returns
    -------
    (DataFrame, dict)
        The long results table and the manifest.

    Raises
    ------
    ReportError
        If a file is missing or the study has not finished.
    """
    from ..study import read_results

    d = Path(folder)
    man = d / "manifest.json"
    if not (d / "results.parquet").exists() or not man.exists():
        raise ReportError(f"{d} is not a finished study folder: it needs results.parquet and manifest.json; run "
                          f"`hiercompare study CONFIG.toml --out {d}` first")
    try:
        manifest = json.loads(man.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{man} is not valid JSON ({exc}); rerun the study to rewrite it") from exc
    if "study" not in manifest:
        raise ReportError(f"{man} has no 'study' entry; it was not written by hiercompare study")
    if manifest.get("status") != "complete":
        raise ReportError(f"the study in {d} has status {manifest.get('status')!r}, not 'complete'; run the same "
                          "study command again to finish it")
    return read_results(d), manifest


# ---------------------------------------------------------------------------------------------- tables
def _fx(x: Any, digits: int = 4) -> str:
    return _fmt(x, digits)


def _pm(est: Any, mcse: Any) -> str:
    """``estimate (MCSE)`` as text; empty when the estimate is missing."""
    e = _fx(est)
    if not e:
        return ""
    s = _fx(mcse)
    return f"{e} ({s})" if s else e


def _convergence(rate: Any, mcse: Any) -> str:
    """A convergence rate as text: ``estimate (MCSE)``, or "not assessed" where the backend does not assess it."""
    return NOT_ASSESSED if pd.isna(rate) else _pm(rate, mcse)


def _timing_display(timing: pd.DataFrame) -> pd.DataFrame:
    """fit_summary's table with a missing convergence rate shown as "not assessed" (not as 0, not blank)."""
    out = timing.copy()
    if "convergence" in out:
        out["convergence"] = [NOT_ASSESSED if pd.isna(v) else v for v in out["convergence"]]
    return out


def scenario_table(manifest: dict) -> pd.DataFrame:
    """One row per scenario: name, formula, family, tree, rows per leaf, nonlinear part, residual SD."""
    st = manifest["study"]
    rows = []
    for sc, formula in zip(st["scenarios"], st["formulas"]):
        tree = " -> ".join([str(sc.get("root", "root"))] + [f"{lv['name']} (size {lv['size']})" for lv in sc["levels"]])
        rows.append(dict(scenario=sc["name"], formula=formula, family=sc.get("family", "gaussian"), tree=tree,
                         n_obs=str(sc.get("n_obs")), nonlinear=sc.get("nonlinear") or "",
                         residual_sd=sc.get("residual_sd")))
    return pd.DataFrame(rows)


def truth_table(results: pd.DataFrame) -> pd.DataFrame:
    """Generating value and mean realised value of each fixed effect and variance parameter, per scenario."""
    t = results[results["effect"].isin(["fixed", "ran_pars"]) & results["truth"].notna()]
    per_rep = t.drop_duplicates(["scenario", "replication", "effect", "group", "term"])
    out = per_rep.groupby(["scenario", "effect", "group", "term"], sort=False).agg(
        truth=("truth", "mean"), realized_mean=("realized", "mean"), realized_sd=("realized", "std")).reset_index()
    return out


def estimates_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per scenario, backend and parameter (fixed, ran_pars): truth, mean, SD, min and max of the estimates."""
    t = results[results["effect"].isin(["fixed", "ran_pars"]) & results["estimate"].notna()]
    return t.groupby(["scenario", "backend", "effect", "group", "term"], sort=True).agg(
        truth=("truth", "mean"), n=("estimate", "size"), mean=("estimate", "mean"), sd=("estimate", "std"),
        min=("estimate", "min"), max=("estimate", "max")).reset_index()


def agreement_pairs(results: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    """Paired estimates of every Python-vs-R pair in :data:`PAIRS` whose both backends ran.

    Returns
    -------
    dict
        ``(a, b) -> DataFrame`` with the keys, ``est_a``, ``est_b``, ``diff = est_a - est_b`` and ``mean``,
        one row per parameter both backends estimated in the same replication.
    """
    ok = results[(results["error"] == "") & results["estimate"].notna()]
    present = set(ok["backend"])
    keys = ["scenario", "replication", "effect", "group", "level", "term"]
    out = {}
    for a, b in PAIRS:
        if a in present and b in present:
            A = ok[ok["backend"] == a][keys + ["estimate"]].rename(columns={"estimate": "est_a"})
            B = ok[ok["backend"] == b][keys + ["estimate"]].rename(columns={"estimate": "est_b"})
            m = A.merge(B, on=keys, how="inner")
            m["diff"] = m["est_a"] - m["est_b"]
            m["mean"] = (m["est_a"] + m["est_b"]) / 2
            out[(a, b)] = m
    return out


def agreement_table(pairs: dict[tuple[str, str], pd.DataFrame]) -> pd.DataFrame:
    """Bland-Altman summaries per pair and effect: n, mean difference, SD, limits of agreement, max |diff|."""
    rows = []
    for (a, b), m in pairs.items():
        for eff, sub in [("all", m)] + list(m.groupby("effect", sort=True)):
            d = sub["diff"].to_numpy(dtype=float)
            sd = float(np.std(d, ddof=1)) if len(d) > 1 else np.nan
            md = float(np.mean(d)) if len(d) else np.nan
            denom = np.maximum(np.abs(sub["est_a"].to_numpy(dtype=float)), np.abs(sub["est_b"].to_numpy(dtype=float)))
            with np.errstate(divide="ignore", invalid="ignore"):
                rel = np.where(denom > 0, np.abs(d) / denom, 0.0)
            rows.append(dict(pair=f"{a} vs {b}", effect=eff, n=len(d), mean_diff=md, sd_diff=sd,
                             loa_low=md - 1.96 * sd, loa_high=md + 1.96 * sd,
                             max_abs_diff=float(np.max(np.abs(d))) if len(d) else np.nan,
                             max_rel_diff=float(np.max(rel)) if len(d) else np.nan))
    return pd.DataFrame(rows, columns=["pair", "effect", "n", "mean_diff", "sd_diff", "loa_low", "loa_high",
                                       "max_abs_diff", "max_rel_diff"])


def _df_text(x: Any) -> str:
    """A median df as text: ``inf`` (z intervals) shown as such, missing as empty."""
    if x is None or pd.isna(x):
        return ""
    return "inf" if np.isinf(x) else _fx(float(x), 2)


def recovery_table(perf: pd.DataFrame) -> pd.DataFrame:
    """The performance table as display text: each measure as ``estimate (MCSE)``; ``df`` is the fixed effects'
    median df (``inf``: z intervals), ``power`` the share of p-values at or below 0.05 (the type I error rate where
    the truth is 0). Coverage is shown wherever the rows had intervals, the variance parameters' included. A cell
    whose intervals are conditional on a learned f(x) (``interval`` ``conditional_on_f``: lightgbm's and torch's
    default) shows its modse and coverage prefixed ``conditional on f(x):``, never as plain numbers; the
    ``interval`` column names the kind (``conditional on f(x)``, ``cluster bootstrap``; empty: the backend's own)."""
    rows = []
    for _, r in perf.iterrows():
        kind = str(r.get("interval", "") or "")
        cond = "conditional_on_f" in kind
        modse = (_pm(r.get("conditional_modse"), r.get("conditional_modse_mcse")) if cond
                 else _pm(r["modse"], r["modse_mcse"]))
        cover = (_pm(r.get("conditional_coverage"), r.get("conditional_coverage_mcse")) if cond
                 else _pm(r["coverage"], r["coverage_mcse"]))
        if cond:
            modse, cover = (f"{CONDITIONAL_PREFIX}{x}" if x else "" for x in (modse, cover))
        rows.append(dict(scenario=r["scenario"], backend=r["backend"], effect=r["effect"], group=r["group"],
                         term=r["term"], truth=_fx(r["truth"]), n_used=_fx(r["n_used"]),
                         bias=_pm(r["bias"], r["bias_mcse"]), empse=_pm(r["empse"], r["empse_mcse"]),
                         rmse=_pm(r["rmse"], r["rmse_mcse"]), modse=modse,
                         interval=INTERVAL_TEXT.get(kind, kind.replace("_", " ")),
                         coverage=cover, df=_df_text(r.get("median_df")),
                         power=_pm(r.get("power"), r.get("power_mcse")),
                         convergence=_convergence(r["convergence"], r["convergence_mcse"])))
    return pd.DataFrame(rows)


def _records(df: pd.DataFrame, cols: list[str] | None = None) -> tuple[list[dict], list[str]]:
    cols = list(df.columns) if cols is None else cols
    return [{c: _fx(r[c]) for c in cols} for _, r in df.iterrows()], cols


# ---------------------------------------------------------------------------------------------- figures
def _first_rep(results: pd.DataFrame, scenario: str) -> int:
    return int(results.loc[results["scenario"] == scenario, "replication"].min())


def _tree_backend(results: pd.DataFrame, scenario: str) -> str | None:
    rv = results[(results["scenario"] == scenario) & (results["effect"] == "ran_vals") & results["estimate"].notna()]
    present = list(dict.fromkeys(rv["backend"]))
    for b in plots.TREE_BACKENDS:
        if b in present:
            return b
    return present[0] if present else None


def caterpillar_figures(results: pd.DataFrame, scenario: str) -> list[dict]:
    """Caterpillar plots (one per grouping factor and varying term) of the scenario's first replication."""
    rep = _first_rep(results, scenario)
    sub = results[(results["scenario"] == scenario) & (results["replication"] == rep)
                  & (results["effect"] == "ran_vals")]
    figs = []
    for (grp, term), cell in sub.groupby(["group", "term"], sort=False):
        truth = cell.drop_duplicates("level").set_index("level")["truth"].dropna()
        est = cell[cell["estimate"].notna()]
        if truth.empty or est.empty:
            continue
        title = f"{grp}: {term} deviations, replication {rep}"
        figs.append(dict(group=grp, term=term, replication=rep, png=plots.caterpillar_plot(est, truth, title)))
    return figs


def hierarchy_figure(results: pd.DataFrame, manifest: dict, scenario: str) -> dict | None:
    """The layered tree of the scenario's first replication, annotated with one backend's intercept offsets."""
    backend = _tree_backend(results, scenario)
    if backend is None:
        return None
    rep = _first_rep(results, scenario)
    sub = results[(results["scenario"] == scenario) & (results["replication"] == rep)
                  & (results["backend"] == backend)]
    sc = next((s for s in manifest["study"]["scenarios"] if s["name"] == scenario), {})
    root = str(sc.get("root", "root"))
    groups = [":".join(lv["name"] for lv in sc.get("levels", [])[: d + 1]) for d in range(len(sc.get("levels", [])))]
    levels = []
    for g in groups:
        rv = sub[(sub["effect"] == "ran_vals") & (sub["group"] == g) & (sub["term"] == INTERCEPT)]
        if rv.empty:  # no intercept at this level: show the labels with the truth's list and no offsets
            rv = results[(results["scenario"] == scenario) & (results["replication"] == rep)
                         & (results["effect"] == "ran_vals") & (results["group"] == g)].drop_duplicates("level")
            rv = rv.assign(estimate=np.nan)
        levels.append(rv[["level", "estimate"]].assign(group=g))
    fixed = sub[(sub["effect"] == "fixed") & (sub["term"] == INTERCEPT)]["estimate"]
    root_value = float(fixed.iloc[0]) if len(fixed) else None
    shown = plots.hierarchy_note(plots.hierarchy_table(root, root_value, levels))
    note = (f"backend {backend}, replication {rep}; numbers are intercept offsets (the root: the national "
            f"intercept); {shown}; groups ordered by |offset|, largest first")
    png = plots.hierarchy_plot(root, root_value, levels, title=f"{scenario}: backend {backend}, replication {rep}")
    return dict(backend=backend, replication=rep, note=note, png=png)


def lightgbm_tree_figures(results: pd.DataFrame, manifest: dict) -> list[dict]:
    """Refit each LightGBM backend of the study once (first scenario it ran in, first replication) and draw tree 0.

    The data set is regenerated with :func:`hiercompare.simulate` from the manifest's scenario and the unit
    seed recorded in the results (checked against :func:`hiercompare.study.unit_seed`). Split features are
    coloured by kind, and the legend names the grouping factors as the fitted model's hierarchy does. Where
    Graphviz is missing (:func:`hiercompare.report.plots.graphviz_missing`) nothing is refitted and the note says
    so in place of the figure.
    """
    from ..fitting import fit
    from ..simulate import Scenario, simulate
    from ..study import unit_seed

    st = manifest["study"]
    out = []
    missing = plots.graphviz_missing()
    for be in LIGHTGBM_BACKENDS:
        if be not in st["backends"]:
            continue
        ran = results[(results["backend"] == be) & (results["error"] == "")]
        if ran.empty:
            out.append(dict(backend=be, png="", note=f"{be} failed in every replication; no tree to draw"))
            continue
        if missing:
            out.append(dict(backend=be, png="", note=f"{be}: the tree is not drawn here: LightGBM draws it with "
                            f"Graphviz (lightgbm.create_tree_digraph), and {missing}"))
            continue
        names = [s["name"] for s in st["scenarios"]]
        scen = ran["scenario"].iloc[0]
        i = names.index(scen)
        rep = int(ran.loc[ran["scenario"] == scen, "replication"].min())
        seed = unit_seed(int(st["seed"]), i, rep)
        recorded = ran.loc[(ran["scenario"] == scen) & (ran["replication"] == rep), "seed"]
        if len(recorded) and int(recorded.iloc[0]) != seed:
            raise ReportError(f"scenario {scen!r} replication {rep}: the results record seed {int(recorded.iloc[0])} "
                              f"but unit_seed gives {seed}; the folder does not match this hiercompare version")
        sc = Scenario.from_dict(st["scenarios"][i])
        data, _ = simulate(sc, seed=seed)
        formula = st["formulas"][i]
        try:
            f = fit(data, formula, backend=be, family=sc.family, seed=seed, **dict(st["options"].get(be, {})))
        except HierCompareError as exc:
            out.append(dict(backend=be, png="", note=f"{be} could not be refitted here: {exc}"))
            continue
        # the grouping factors as the fit's tree has them, top first (lightgbm-cat's group_level_<depth>)
        levels = f.model.hierarchy.levels
        kinds: dict[str, str] = {}
        for lv in levels:
            for term in lv.spec.slopes:
                kinds[term] = "slope"
        codes = {f"group_level_{lv.depth}": lv.group for lv in levels}
        for feat in codes:
            kinds[feat] = "top group" if feat == "group_level_1" else "nested group"
        slopes = sorted(k for k, v in kinds.items() if v == "slope")
        kind_labels = {"top group": f"split on group_level_1 = {levels[0].group} codes",
                       "nested group": "split on " + ", ".join(f"{c} = {g}" for c, g in codes.items()
                                                               if c != "group_level_1") + " codes",
                       "slope": "split on a varying-slope covariate (" + ", ".join(slopes) + ")"}
        feats = list(f.diagnostics.get("features", [])) if be == "lightgbm" else None
        what = ("GPBoost-style model: LightGBM f(x) on the marginal-likelihood gradient, random effects by "
                "mixedcore" if be == "lightgbm" else "BASELINE: LightGBM with the grouping factors as categorical "
                "features (" + ", ".join(f"{c} = {g}" for c, g in codes.items()) + ")")
        title = f"{be}, tree 0 of {f.raw.num_trees()}: scenario {scen}, replication {rep}"
        png = plots.lightgbm_tree_plot(f.raw, 0, feature_names=feats, feature_kinds=kinds, title=title,
                                       kind_labels=kind_labels)
        out.append(dict(backend=be, png=png, note=f"{what}; refitted on scenario {scen}, replication {rep} "
                        f"(seed {seed}), tree 0 of {f.raw.num_trees()}"))
    return out


# ---------------------------------------------------------------------------------------------- rendering
def study_report(folder: str | Path, lightgbm_trees: bool = True) -> tuple[str, dict[str, pd.DataFrame]]:
    """Build the study report's HTML and its tables (nothing written).

    Parameters
    ----------
    folder : path
        A finished study folder.
    lightgbm_trees : bool
        Refit LightGBM backends once to draw a tree (needs lightgbm installed).

    Returns
    -------
    (str, dict)
        The HTML page and the tables by name (what :func:`render_study` writes as CSV).
    """
    from jinja2 import Environment, PackageLoader, select_autoescape

    from ..performance import fit_summary, interval_kind, performance

    results, manifest = load_study(folder)
    st = manifest["study"]
    perf = performance(results)
    pairs = agreement_pairs(results)
    tables = {
        "scenarios": scenario_table(manifest),
        "truth": truth_table(results),
        "estimates": estimates_table(results),
        "performance": perf,
        "agreement": agreement_table(pairs),
        "timings": fit_summary(results),
    }
    scen_ctx = []
    for name in [s["name"] for s in st["scenarios"]]:
        r = results[results["scenario"] == name]
        est = r[r["effect"].isin(["fixed", "ran_pars"])]
        est = est.assign(interval=interval_kind(est))  # zip panels of conditional intervals say so
        scen_ctx.append(dict(
            name=name,
            truth=_records(tables["truth"][tables["truth"]["scenario"] == name],
                           ["effect", "group", "term", "truth", "realized_mean", "realized_sd"]),
            estimates=_records(tables["estimates"][tables["estimates"]["scenario"] == name],
                               ["backend", "effect", "group", "term", "truth", "n", "mean", "sd", "min", "max"]),
            estimates_png=plots.estimates_vs_truth_plot(est, f"{name}: estimates of every replication vs truth")
            if not est.empty else "",
            recovery=_records(recovery_table(perf[perf["scenario"] == name])),
            zip_png=plots.zip_plot(est, f"{name}: zip plots of the 95% intervals"),
            caterpillars=caterpillar_figures(results, name),
            hierarchy=hierarchy_figure(results, manifest, name),
        ))
    ba = [dict(pair=f"{a} vs {b}", png=plots.bland_altman_plot(m, a, b, f"{a} vs {b}: all replications and "
                                                                         "parameters"))
          for (a, b), m in pairs.items() if len(m)]
    trees = lightgbm_tree_figures(results, manifest) if lightgbm_trees else []
    timing = tables["timings"]
    prov_rows = [("study", st.get("name")), ("seed", st.get("seed")), ("replications", st.get("replications")),
                 ("backends", ", ".join(st.get("backends", []))), ("git commit", manifest.get("git_commit")),
                 ("created", manifest.get("created"))]
    prov_rows += [(f"version: {k}", v) for k, v in manifest.get("versions", {}).items()]
    for be, rep in manifest.get("backend_report", {}).items():
        for k, v in rep.get("versions", {}).items():
            prov_rows.append((f"{be}: {k}", v))
    for i, run in enumerate(manifest.get("runs", [])):
        prov_rows.append((f"run {i + 1}", json.dumps(run)))
    provenance = pd.DataFrame(prov_rows, columns=["key", "value"]).astype(str)
    tables["provenance"] = provenance
    ctx = dict(
        title=f"hiercompare study report: {st.get('name', '')}",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=manifest.get("versions", {}).get("hiercompare", ""),
        study=st, n_rows=len(results), n_failed=int((results["error"] != "").sum()),
        scenarios_table=_records(tables["scenarios"]),
        scenarios=scen_ctx,
        agreement=_records(tables["agreement"]), bland_altman=ba,
        pairs_missing=[f"{a} vs {b}" for a, b in PAIRS if (a, b) not in pairs],
        trees=trees,
        timings=_records(_timing_display(timing), ["scenario", "backend", "n_rep", "n_failed", "n_not_converged",
                                                   "n_not_assessed", "convergence", "convergence_mcse",
                                                   "seconds_mean", "seconds_median", "first_error"]),
        provenance=_records(provenance),
        spec_json=json.dumps({k: st.get(k) for k in ("scenarios", "formulas", "options")}, indent=2, default=str),
        tables_dir=TABLES_DIR,
    )
    env = Environment(loader=PackageLoader("hiercompare", "report/templates"),
                      autoescape=select_autoescape(["html", "j2"]))
    return env.get_template("study.html.j2").render(**ctx), tables


def render_study(folder: str | Path, out: str | Path | None = None, lightgbm_trees: bool = True) -> Path:
    """Write ``report.html`` and ``report_tables/*.csv`` for a finished study folder.

    Parameters
    ----------
    folder : path
        A folder written by ``hiercompare study`` (``results.parquet``, ``manifest.json``).
    out : path, optional
        The HTML file (default ``folder/report.html``); the tables go to ``report_tables/`` beside it.
    lightgbm_trees : bool
        Refit each LightGBM backend once to draw its first tree.

    Returns
    -------
    Path
        The HTML file.

    Examples
    --------
    >>> render_study("validation/seed_small_out")  # doctest: +SKIP
    PosixPath('validation/seed_small_out/report.html')
    """
    html, tables = study_report(folder, lightgbm_trees=lightgbm_trees)
    path = Path(out) if out is not None else Path(folder) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tdir = path.parent / TABLES_DIR
    tdir.mkdir(exist_ok=True)
    for name, df in tables.items():
        df.to_csv(tdir / f"{name}.csv", index=False)
    path.write_text(html, encoding="utf-8")
    return path


__all__ = ["render_study", "study_report", "load_study", "agreement_pairs", "agreement_table", "recovery_table",
           "truth_table", "estimates_table", "scenario_table", "ReportError", "PAIRS"]
