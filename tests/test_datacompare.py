"""hiercompare compare / hc.compare_data on real data: outputs, resume, refusals, bad input, the browser."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.cli import main
from hiercompare.datacompare import clean_rows, compare_data, describe_tree
from hiercompare.design import prepare
from hiercompare.spec import ModelSpec

FORMULAS = list(hc.datasets.info("pastes").formulas)
BACKENDS = ["native", "ols", "mixedlm"]


@pytest.fixture(scope="module")
def pastes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "pastes"
    said = []
    comp = compare_data(hc.datasets.path("pastes"), FORMULAS, backends=BACKENDS, out=out, cv="top", cv_folds=3,
                        seed=1, progress=said.append)
    return comp, out, said


def test_outputs_are_written_and_agree_with_the_fits(pastes_run):
    comp, out, _ = pastes_run
    assert (out / "report.html").stat().st_size > 10_000
    res = json.loads((out / "results.json").read_text())
    assert res["formulas"] == FORMULAS and res["nobs"] == 60
    for name, df in comp.tables.items():  # every table is a CSV, and in results.json but the long agreement rows
        assert (out / "tables" / f"{name}.csv").exists(), name
        if name == "agreement":
            assert name not in res["tables"] and res["tables_only_as_csv"] == ["agreement"]
            continue
        assert len(res["tables"][name]) == len(df), name
    # the fits table: 2 formulas x 3 backends, all ok
    fits = comp.table("fits")
    assert len(fits) == 6 and (fits["status"] == "ok").all()
    # estimates are the fits' own tidy rows
    f = hc.fit(hc.datasets.load("pastes"), FORMULAS[0], backend="native")
    est = comp.table("estimates")
    mine = est[(est.formula == FORMULAS[0]) & (est.backend == "native")]
    np.testing.assert_allclose(mine["estimate"].to_numpy(), f.tidy()["estimate"].to_numpy(), rtol=1e-10)
    # the tree: 10 batches of 6 rows, 30 casks of 2, three casks per batch
    tree = comp.table("data_tree")
    t0 = tree[tree.formula == FORMULAS[0]].set_index("level")
    assert t0.loc["batch", "groups"] == 10 and t0.loc["batch", "rows_min"] == 6
    assert t0.loc["batch:cask", "groups"] == 30 and t0.loc["batch:cask", "children_max"] == 3
    # the model comparison: one LRT between the nested formulas, on the boundary
    lrt = comp.table("lrt")
    assert len(lrt) == 1 and "chi-bar" in lrt["note"].iloc[0]
    ic = comp.table("information_criteria")
    assert set(ic["formula"]) == set(FORMULAS)
    # predictive checks of the top level: 10 batches (formula 1), 30 casks (formula 2), 3 backends, mean and SD
    ppc = comp.table("ppc_groups")
    assert len(ppc) == 3 * (10 + 30) * 2 and ppc["p_value"].between(0, 1).all()
    summ = comp.table("ppc_summary")
    assert sorted(set(summ["n_groups"])) == [10, 30] and len(summ) == 2 * 3 * 2


def test_a_rerun_resumes_every_step_and_gives_the_same_tables(pastes_run):
    comp, out, _ = pastes_run
    said = []
    again = compare_data(hc.datasets.path("pastes"), FORMULAS, backends=BACKENDS, out=out, cv="top", cv_folds=3,
                         seed=1, progress=said.append)
    assert any("6 step(s) found done" in s for s in said), said
    assert not any("fitting in a second process" in s or s.strip().startswith("[1/") for s in said)
    for name in ("estimates", "cv_summary", "lrt", "likelihood_check"):
        pd.testing.assert_frame_equal(again.table(name), comp.table(name), check_exact=False, rtol=1e-14)


def test_a_folder_holding_another_comparison_is_refused(pastes_run):
    _, out, _ = pastes_run
    with pytest.raises(hc.HierCompareError, match="different comparison.*formulas"):
        compare_data(hc.datasets.path("pastes"), FORMULAS[:1], backends=BACKENDS, out=out, cv="top", cv_folds=3,
                     seed=1, progress=lambda m: None)


def test_missing_values_are_an_error_or_dropped_and_listed():
    data = hc.datasets.load("dietox")  # 72 rows miss Feed
    specs = [ModelSpec.from_formula("Weight ~ Feed + (1 | Litter)")]
    with pytest.raises(hc.DataError, match="72 of 861 rows.*Feed.*na_action='drop'"):
        clean_rows(data, specs)
    rows, dropped = clean_rows(data, specs, na_action="drop")
    assert len(rows) == 861 - 72
    assert dropped.set_index("column").loc["Feed", "rows_missing"] == 72
    # an unused column's missing values drop nothing
    rows, dropped = clean_rows(data, [ModelSpec.from_formula("Weight ~ Time + (1 | Litter)")])
    assert len(rows) == 861 and dropped.empty


def test_bad_input_names_the_problem(tmp_path):
    data = hc.datasets.load("pastes")
    with pytest.raises(hc.DataError, match="column.*'nope'"):
        compare_data(data, "strength ~ nope + (1 | batch)", backends=["native"], cv=None, progress=lambda m: None)
    with pytest.raises(hc.SpecError, match="unknown backend"):
        compare_data(data, FORMULAS, backends=["native", "stan"], cv=None, progress=lambda m: None)
    with pytest.raises(hc.SpecError, match="more than once"):
        compare_data(data, [FORMULAS[0], FORMULAS[0]], backends=["native"], cv=None, progress=lambda m: None)
    with pytest.raises(hc.SpecError, match="cv level 'county'"):
        compare_data(data, FORMULAS, backends=["native"], cv="county", progress=lambda m: None)
    bad = data.assign(batch=data["batch"].where(data.index != 0, "B"))  # sample A:a now also under batch B
    with pytest.raises(hc.NestingError, match="sample"):
        compare_data(bad, "strength ~ 1 + (1 | batch) + (1 | sample)", backends=["native"], cv=None,
                     progress=lambda m: None)


def test_an_unavailable_or_inapplicable_backend_is_a_row_with_its_reason():
    data = hc.datasets.load("pastes")
    comp = compare_data(data, FORMULAS[0], backends=["native", "torch-embed"], cv=None, progress=lambda m: None,
                        family="gaussian")
    fits = comp.table("fits").set_index("backend")
    assert fits.loc["native", "status"] == "ok"
    assert fits.loc["torch-embed", "status"] in ("ok", "unavailable", "not applicable", "failed")
    if fits.loc["torch-embed", "status"] != "ok":
        assert len(fits.loc["torch-embed", "reason"]) > 10


def test_describe_tree_counts_singletons():
    data = pd.DataFrame({"y": np.arange(7.0), "g": list("aabbbcd")})
    md = prepare(ModelSpec.from_formula("y ~ 1 + (1 | g)"), data)
    t = describe_tree(md, "f").iloc[0]
    assert (t["groups"], t["rows_min"], t["rows_max"], t["singletons"]) == (4, 1, 3, 2)


def test_cli_compare_on_a_shipped_data_set(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["compare", "pastes", "--backends", "native,ols", "--cv", "none", "--out", str(out)])
    assert code == 0
    fits = pd.read_csv(out / "tables" / "fits.csv")
    assert sorted(fits["formula"].unique()) == sorted(FORMULAS)  # the data set's two formulas by default
    assert "unexplained disagreement" in capsys.readouterr().err


@pytest.mark.slow
def test_report_in_headless_chromium(pastes_run, tmp_path):
    from test_study_report import _PROBE, _browse, _chromium, _console_errors, _probe

    chromium = _chromium()
    if chromium is None:
        pytest.skip("headless Chromium is not installed (Debian package `chromium`; scripts/install.sh installs it)")
    _, out, _ = pastes_run
    html = (out / "report.html").read_text()
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom, err = _browse(chromium, page, tmp_path / "profile")
    n, ok = _probe(dom)
    assert ok == n
    assert not _console_errors(err), _console_errors(err)
    for section in ("1. Look here first", "2. The data", "3. Fits", "4. Agreement", "5. Model comparison",
                    "6. Cross-validation", "7. Predictive checks", "8. Pictures"):
        assert section in dom, section


def test_labels_are_escaped_in_the_report(tmp_path):
    data = hc.datasets.load("pastes")
    data["batch"] = data["batch"].map(lambda b: f"<script>alert('{b}')</script>")
    comp = compare_data(data, FORMULAS[0], backends=["native", "ols"], cv=None, out=tmp_path / "x",
                        progress=lambda m: None)
    html = (tmp_path / "x" / "report.html").read_text()
    assert "<script>alert" not in html and "&lt;script&gt;alert" in html
    assert len(comp.table("fits")) == 2


# ---------------------------------------------------------------------------------------------- streamed sources
SEED_F = ["y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
          "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"]


@pytest.fixture(scope="module")
def parquet(tmp_path_factory):
    from hiercompare.simulate import simulate_to_parquet

    path = tmp_path_factory.mktemp("pq") / "seed.parquet"
    simulate_to_parquet(hc.Scenario(), path, seed=4, chunk_rows=700)
    return path


def test_a_streamed_source_gets_native_on_all_rows_and_reasons_for_the_rest(parquet, tmp_path):
    comp = compare_data(parquet, SEED_F, backends=["native", "ols"], stream=True, batch_rows=900,
                        out=tmp_path / "s", progress=lambda m: None)
    fits = comp.table("fits")
    allrows = fits[fits.backend == "native (all rows)"]
    assert len(allrows) == 2 and (allrows.status == "ok").all()
    ols = fits[fits.backend == "ols"]
    assert (ols.status == "not applicable").all() and ols.reason.str.contains("--subsample").all()
    # the streamed fits are the in-memory fits, and so are the LRT and the information criteria
    data = pd.read_parquet(parquet)
    mem = [hc.fit(data, f, backend="native", method="ML") for f in SEED_F]
    from hiercompare.comparison import information_criteria, lrt_table

    ic, lrt = information_criteria(mem), lrt_table(mem)
    np.testing.assert_allclose(comp.table("information_criteria")["AIC"], ic["AIC"], rtol=1e-10)
    np.testing.assert_allclose(comp.table("lrt")["statistic"], lrt["statistic"], rtol=1e-7)
    est = comp.table("estimates")
    reml = hc.fit(data, SEED_F[0], backend="native")
    mine = est[(est.formula == reml.spec.formula) & (est.backend == "native (all rows)")]
    np.testing.assert_allclose(mine["estimate"].to_numpy(), reml.tidy()["estimate"].to_numpy(), rtol=1e-7, atol=1e-9)
    tree = comp.table("data_tree").set_index(["formula", "level"])
    assert tree.loc[(reml.spec.formula, "market:submarket"), "rows_max"] == 100
    assert "Read in batches" in (tmp_path / "s" / "report.html").read_text()


def test_a_streamed_source_with_a_subsample_fits_every_backend_on_it(parquet, tmp_path):
    comp = compare_data(parquet, SEED_F[:1], backends=["native", "mixedlm"], stream=True, subsample=800, seed=3,
                        cv=None, progress=lambda m: None)
    fits = comp.table("fits").set_index("backend")
    assert fits.loc["native (all rows)", "status"] == "ok" and fits.loc["mixedlm", "status"] == "ok"
    sample_fit = comp.fits[comp.results["formulas"][0]]["native"]
    assert sample_fit.nobs == 800
    from hiercompare.sources import subsample

    rows = subsample(parquet, 800, seed=3, columns=["y", "x1", "x2", "market", "submarket"],
                     labels=("market", "submarket"))
    again = hc.fit(rows, SEED_F[0], backend="native")
    assert again.loglik == pytest.approx(sample_fit.loglik, rel=1e-12)
    assert not comp.table("agreement").empty  # agreement among the sample's fits


def test_streaming_refusals(parquet):
    data = pd.read_parquet(parquet)
    with pytest.raises(hc.SpecError, match="already in memory"):
        compare_data(data, SEED_F, backends=["native"], stream=True, progress=lambda m: None)
    with pytest.raises(hc.SpecError, match="subsample= is for a source read in batches"):
        compare_data(parquet, SEED_F, backends=["native"], subsample=10, progress=lambda m: None)
    with pytest.raises(hc.SpecError, match="bootstrap.*subsample"):
        compare_data(parquet, SEED_F, backends=["native"], stream=True, bootstrap=5, progress=lambda m: None)


def test_cli_compare_streams(parquet, tmp_path):
    out = tmp_path / "cli"
    code = main(["compare", str(parquet), "--formula", SEED_F[1], "--backends", "native,ols", "--stream",
                 "--subsample", "600", "--cv", "none", "--out", str(out)])
    assert code == 0
    fits = pd.read_csv(out / "tables" / "fits.csv").set_index("backend")
    assert fits.loc["ols", "status"] == "ok" and fits.loc["native (all rows)", "status"] == "ok"


def test_the_bootstrap_on_the_users_design(tmp_path):
    """--bootstrap N: N data sets from native's REML fit on the user's design, every backend that fit refitted;
    the summary's truth is the reference fit's value and the bootstrap's study resumes from its folder."""
    data = hc.datasets.load("pastes")
    comp = compare_data(data, FORMULAS[0], backends=["native", "ols"], cv=None, bootstrap=5, seed=2,
                        out=tmp_path / "b", progress=lambda m: None)
    s = comp.table("bootstrap_summary")
    ref = comp.table("bootstrap_reference")
    assert set(s["backend"]) == {"native", "ols"} and (s["n_rep"] == 5).all()
    native = hc.fit(data, FORMULAS[0], backend="native")
    row = s[(s.backend == "native") & (s.term == "(Intercept)")].iloc[0]
    assert row["truth"] == pytest.approx(native.fixef["(Intercept)"], rel=1e-12)
    assert ref["reference"].iloc[0] == "native REML"
    assert (tmp_path / "b" / "bootstrap" / "manifest.json").exists()
    assert "9. Parametric bootstrap" in (tmp_path / "b" / "report.html").read_text()


@pytest.mark.slow
def test_fits_on_local_processes_and_on_dask_give_the_same_tables(tmp_path, pastes_run):
    """--workers 2 (local processes) and --scheduler (a Dask LocalCluster) run the same fit units: the same
    estimates as the in-process run."""
    from distributed import LocalCluster

    comp, _, _ = pastes_run
    kw = dict(backends=BACKENDS, cv="top", cv_folds=3, seed=1, progress=lambda m: None)
    local = compare_data(hc.datasets.path("pastes"), FORMULAS, workers=2, out=tmp_path / "local", **kw)
    cols = ["formula", "backend", "effect", "group", "level", "term", "estimate"]
    pd.testing.assert_frame_equal(local.table("estimates")[cols], comp.table("estimates")[cols], rtol=1e-8)
    from hiercompare.runenv import clean_child_environment

    with clean_child_environment():  # R started in this process (conftest) must not leak into the workers
        cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster:
        dask = compare_data(hc.datasets.path("pastes"), FORMULAS, scheduler=cluster.scheduler_address,
                            out=tmp_path / "dask", **kw)
    pd.testing.assert_frame_equal(dask.table("estimates")[cols], comp.table("estimates")[cols], rtol=1e-8)


def test_glmm_formulas_are_compared_on_their_laplace_fits(tmp_path):
    """Binomial with trials (lme4's cbpp): the model comparison uses the native GLMM fits themselves (ML,
    Laplace): period's 3 dummies give an LRT with 3 df, and AIC counts 4 fixed effects + 1 SD."""
    d = pd.read_csv(Path(__file__).parent / "data" / "glmm_cbpp.csv", dtype={"period": str, "herd": str})
    fs = ["cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbind(incidence, size - incidence) ~ 1 + (1 | herd)"]
    comp = compare_data(d, fs, family="binomial", backends=["native", "glm"], cv=None, progress=lambda m: None)
    ic = comp.table("information_criteria").set_index("n_params")
    assert sorted(ic.index) == [2, 5]
    native = {s: comp.fits[s]["native"] for s in comp.results["formulas"]}
    big, small = (native[s] for s in comp.results["formulas"])
    assert ic.loc[5, "AIC"] == pytest.approx(2 * 5 - 2 * big.loglik, rel=1e-12)
    lrt = comp.table("lrt").iloc[0]
    assert lrt["df"] == 3 and lrt["statistic"] == pytest.approx(2 * (big.loglik - small.loglik), rel=1e-10)
    assert lrt["reference_distribution"] == "chi2(3)"


def test_samplers_run_short_first_and_longer_only_when_the_rule_fails(monkeypatch):
    """fit_unit: pymc/brms without user options run SAMPLER_STAGES[0]; only a fit that misses the sampling rule
    is refitted with the longer stage, and its notes say so; user options replace the stages."""
    import types

    import hiercompare.fitting as fitting
    from hiercompare.datacompare import SAMPLER_STAGES, fit_unit

    calls = []

    def fake_fit(data, spec, backend, seed=None, **opts):
        calls.append(opts)
        ok = opts.get("tune") == 1000  # the short stage "misses the rule"
        return types.SimpleNamespace(diagnostics={"converged": ok, "warnings": ["rule missed"] if not ok else [],
                                                  "notes": []})

    monkeypatch.setattr(fitting, "fit", fake_fit)
    spec = hc.ModelSpec.from_formula(FORMULAS[0])
    task = {"backend": "pymc", "spec": spec, "data": hc.datasets.load("pastes"), "method": "REML", "seed": 1,
            "options": {}}
    res = fit_unit(task)
    assert calls == list(SAMPLER_STAGES["pymc"]) and res["status"] == "ok"
    assert "missed the sampling rule" in res["fit"].diagnostics["notes"][0]
    calls.clear()
    fit_unit({**task, "options": {"tune": 1000, "draws": 200}})
    assert calls == [{"tune": 1000, "draws": 200}]


def test_the_comparison_runs_on_one_blas_thread_and_restores_the_count():
    """Every step of an in-memory comparison sees one BLAS thread (datacompare's Notes); the libraries loaded
    before get their thread counts back (one loaded inside, e.g. R's, read OPENBLAS_NUM_THREADS=1 and keeps it)."""
    from threadpoolctl import threadpool_info

    def blas_threads():
        return {m["filepath"]: m["num_threads"] for m in threadpool_info() if m["user_api"] == "blas"}

    before = blas_threads()
    seen = []
    d = hc.datasets.load("pastes")
    compare_data(d, "strength ~ 1 + (1 | batch) + (1 | batch:cask)", backends=["native"], cv=None,
                 progress=lambda msg: seen.append(set(blas_threads().values())))
    assert seen and all(s == {1} for s in seen)
    after = blas_threads()
    assert {k: after[k] for k in before} == before
