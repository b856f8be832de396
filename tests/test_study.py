"""Simulation studies: seeds keyed by unit, failures as rows, kill -9 and resume, Dask = local, TOML configs.

The study here is small on purpose (2 scenarios of 5 markets x 3 submarkets, 4 replications, ols and
mixedlm: about 0.3 s per unit). ``seconds`` is the only column allowed to differ between two runs.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.performance import fit_summary, performance
from hiercompare.results import KEY
from hiercompare.simulate import LevelScenario, Scenario
from hiercompare.study import (SINGLE_THREAD_ENV, SORT, Study, StudyError, child_environment, clean_child_environment,
                               one_thread, read_results, unit_seed)
from hiercompare.study.executors import pause_profiler as _pause_profiler, resume_profiler as _resume_profiler

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """
[study]
name = "small"
replications = 4
seed = 11
backends = ["ols", "mixedlm"]

[[scenario]]
name = "a"
n_obs = 20
[[scenario.levels]]
name = "market"
size = 5
sd = {"(Intercept)" = 0.8, x1 = 0.5}
corr = [[1.0, 0.3], [0.3, 1.0]]
label = "M{i}"
[[scenario.levels]]
name = "submarket"
size = 3
sd = {"(Intercept)" = 0.4}
label = "S{i}"

[[scenario]]
name = "b"
n_obs = 10
[[scenario.levels]]
name = "market"
size = 5
sd = {"(Intercept)" = 0.8, x1 = 0.5}
corr = [[1.0, 0.3], [0.3, 1.0]]
label = "M{i}"
[[scenario.levels]]
name = "submarket"
size = 3
sd = {"(Intercept)" = 0.2}
label = "S{i}"
"""


def small(name: str, n_obs: int = 20, sub_sd: float = 0.4) -> Scenario:
    return Scenario(levels=(
        LevelScenario("market", 5, {"(Intercept)": 0.8, "x1": 0.5}, ((1.0, 0.3), (0.3, 1.0)), label="M{i}"),
        LevelScenario("submarket", 3, {"(Intercept)": sub_sd}, label="S{i}")), n_obs=n_obs, name=name)


def same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("cfg") / "small.toml"
    p.write_text(CONFIG)
    return p


@pytest.fixture(scope="module")
def study(config) -> Study:
    return Study.from_toml(config)


@pytest.fixture(scope="module")
def reference(study, tmp_path_factory) -> pd.DataFrame:
    """The uninterrupted run, in this process."""
    return study.run(tmp_path_factory.mktemp("ref"), workers=1, progress=False)


def test_toml_maps_to_scenarios(study):
    by_hand = Study([small("a"), small("b", 10, 0.2)], replications=4, backends=["ols", "mixedlm"], seed=11,
                    name="small")
    assert study.definition() == by_hand.definition()
    seed_small = Study.from_toml(ROOT / "validation" / "seed_small.toml")
    assert seed_small.replications == 20 and seed_small.backends == ("ols", "mixedlm", "lme4")
    assert seed_small.scenarios[0].to_dict() == Scenario().to_dict()
    assert seed_small.formulas() == ["y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"]
    assert seed_small.options == {"mixedlm": {"method": "REML"}, "lme4": {"method": "REML"}}


@pytest.mark.parametrize("text, message", [
    ("[study]\nreplications = 2\nseed = 1\nbackends = ['ols']\nworkers = 3\n", r"unknown key\(s\) \['workers'\]"),
    ("[study]\nreplications = 2\nbackends = ['ols']\n", r"needs \['seed'\]"),
    ("[study]\nreplications = 2\nseed = 1\nbackends = ['olsx']\n", r"unknown backend\(s\) \['olsx'\]"),
    ("[study]\nreplications = 0\nseed = 1\nbackends = ['ols']\n", "replications must be a positive integer"),
    ("[study]\nreplications = 2\nseed = 1\nbackends = ['ols']\n[[scenario]]\nnobs = 3\n",
     r"scenario #1 \(unnamed\).*Scenario keys are"),
    ("[study]\nreplications = 2\nseed = 1\nbackends = ['ols']\n[[scenario]]\n[[scenario]]\n",
     r"scenario names must be unique.*\['seed'\]"),
    ("[study]\nreplications = 2\nseed = 1\nbackends = ['ols']\n[options.lme4]\nmethod = 'ML'\n",
     "options given for 'lme4', which is not among"),
    ("[study]\nreplications = 2\nseed = 1\nbackends = ['ols']\nformula = 'y ~ x1 +'\n", "formula"),
])
def test_bad_configs_are_named(tmp_path, text, message):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(hc.HierCompareError, match=message):
        Study.from_toml(p)


VARIANTS = """
[study]
replications = 2
seed = 3
backends = ["native:z", "native:kr", "native:boot"]

[[scenario]]
name = "a"
n_obs = 20
[[scenario.levels]]
name = "market"
size = 5
sd = {"(Intercept)" = 0.8}
[[scenario.levels]]
name = "submarket"
size = 3
sd = {"(Intercept)" = 0.4}

[options."native:z"]
df = "z"
ran_pars_ci = "none"
[options."native:kr"]
df = "kenward-roger"
ran_pars_ci = "none"
[options."native:boot"]
ran_pars_ci = "bootstrap"
ran_pars_nsim = 10
"""


def test_backend_variants_fit_one_backend_under_several_options(tmp_path):
    p = tmp_path / "variants.toml"
    p.write_text(VARIANTS)
    st = Study.from_toml(p)
    assert st.backends == ("native:z", "native:kr", "native:boot")
    res = st.run(tmp_path / "out", workers=1, progress=False)
    assert (res["error"] == "").all() and set(res["backend"]) == set(st.backends)
    # the three entries fitted the same data set with the native backend: the same estimates,
    # each with its own options (df inf for z, finite for Kenward-Roger; bootstrap intervals for the SDs)
    key = ["replication", "effect", "group", "level", "term"]
    by = {b: res[res["backend"] == b].set_index(key).sort_index() for b in st.backends}
    np.testing.assert_allclose(by["native:z"]["estimate"], by["native:kr"]["estimate"], rtol=1e-10)
    np.testing.assert_allclose(by["native:z"]["estimate"], by["native:boot"]["estimate"], rtol=1e-10)
    fz, fk = (by[b].xs("fixed", level="effect") for b in ("native:z", "native:kr"))
    assert np.isinf(fz["df"]).all() and np.isfinite(fk["df"]).all()
    rp = {b: by[b].xs("ran_pars", level="effect") for b in st.backends}
    assert rp["native:z"]["conf_low"].isna().all() and rp["native:boot"]["conf_low"].notna().all()
    # the bootstrap is seeded by the unit: the same unit run again gives the same intervals
    again = hc.study.run_unit(st.task(0, 1))
    again = again[again["backend"] == "native:boot"].set_index(key).sort_index()
    np.testing.assert_array_equal(again["conf_low"], by["native:boot"].xs(1, level="replication", drop_level=False)
                                  .reindex(again.index)["conf_low"])
    # the manifest keeps the entries and their options; performance() reports per entry
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["study"]["backends"] == list(st.backends)
    assert man["study"]["options"]["native:kr"] == {"df": "kenward-roger", "ran_pars_ci": "none"}
    assert set(man["backend_report"]) == set(st.backends) and man["backend_report"]["native:kr"]["available"]
    assert set(performance(res)["backend"]) == set(st.backends)
    # the recorded coverage studies are written this way
    rec = Study.from_toml(ROOT / "validation" / "seed_intervals.toml")
    assert rec.backends == ("native:z", "native:satterthwaite", "native:kr") and rec.replications == 500
    assert rec.options["native:kr"]["df"] == "kenward-roger"


@pytest.mark.parametrize("backends, message", [
    (["nosuch:x"], r"unknown backend\(s\) \['nosuch:x'\].*variant of one as '<backend>:<label>'"),
    (["native:"], r"unknown backend\(s\) \['native:'\]"),
    (["native:a", "native:a"], "listed twice"),
])
def test_bad_backend_variants_are_named(backends, message):
    with pytest.raises(StudyError, match=message):
        Study([small("a")], replications=1, backends=backends, seed=1)
    with pytest.raises(StudyError, match="options given for 'native:b'"):
        Study([small("a")], replications=1, backends=["native:a"], options={"native:b": {"df": "z"}}, seed=1)


def test_unit_seeds_are_keyed_by_scenario_and_replication(study):
    # the documented derivation: SeedSequence(seed).spawn(...)[scenario].spawn(...)[replication]
    ss = np.random.SeedSequence(11).spawn(2)[1].spawn(4)[3]
    assert study.seed_for(1, 3) == unit_seed(11, 1, 3) == int(ss.generate_state(1)[0])
    # a unit's seed does not depend on the number of replications (a study can be extended)
    longer = Study(study.scenarios, replications=50, backends=study.backends, seed=11)
    assert [longer.seed_for(i, r) for i, r in study.units()] == [study.seed_for(i, r) for i, r in study.units()]
    seeds = [study.seed_for(i, r) for i, r in study.units()]
    assert len(set(seeds)) == len(seeds) == 8


def test_rows_are_fits_of_the_unit_data_set(study, reference):
    assert reference.equals(reference.sort_values(SORT).reset_index(drop=True))
    assert not reference.duplicated(SORT).any() and (reference["error"] == "").all()
    for i, r in [(0, 0), (1, 3)]:
        sc, seed = study.scenarios[i], study.seed_for(i, r)
        data, truth = hc.simulate(sc, seed=seed)
        unit = reference[(reference["scenario"] == sc.name) & (reference["replication"] == r)]
        assert set(unit["seed"]) == {seed}  # every backend fitted the same data set
        tru = truth.tidy().set_index(KEY)
        for be in ("ols", "mixedlm"):
            direct = hc.fit(data, sc.formula(), backend=be).tidy()
            got = unit[unit["backend"] == be].merge(direct, on=KEY, suffixes=("", "_direct"))
            assert len(got) == len(direct) == (unit["backend"] == be).sum()
            np.testing.assert_allclose(got["estimate"], got["estimate_direct"], rtol=1e-12, atol=1e-14)
            np.testing.assert_allclose(got["std_error"], got["std_error_direct"], rtol=1e-12, atol=1e-14)
            joined = got.set_index(KEY)
            np.testing.assert_array_equal(joined["truth"], tru.loc[joined.index, "estimate"])
            np.testing.assert_array_equal(joined["realized"], tru.loc[joined.index, "realized"])


def test_one_and_two_workers_give_identical_tables(study, reference, tmp_path):
    two = study.run(tmp_path, workers=2, progress=False)
    same(two, reference)
    same(read_results(tmp_path), reference)
    assert json.loads((tmp_path / "manifest.json").read_text())["runs"][0]["workers"] == 2


def test_failed_fits_are_rows_and_the_study_goes_on(tmp_path):
    st = Study([small("a")], replications=2, backends=["ols", "mixedlm"], options={"ols": {"bogus": 1}}, seed=5)
    res = st.run(tmp_path / "one", workers=1, progress=False)
    ols = res[res["backend"] == "ols"]
    assert len(ols) == 2 and ols["replication"].tolist() == [0, 1]  # one row per failed fit, not redrawn
    assert (ols["error"] == "TypeError: ols takes no options, got ['bogus']").all()
    assert ols["estimate"].isna().all() and not ols["converged"].any() and (ols["seconds"] > 0).all()
    assert (ols[["effect", "group", "level", "term"]] == "").all().all()
    mix = res[res["backend"] == "mixedlm"]
    # per fit: 3 fixed + 5 ran_pars (2 market SDs, their correlation, submarket SD, residual SD)
    # + 25 ran_vals (5 markets x 2 terms + 15 submarkets) = 33 rows
    assert (mix["error"] == "").all() and mix["estimate"].notna().all() and len(mix) == 2 * 33
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["failed_fits"] == 2
    fs = fit_summary(res).set_index("backend")
    assert fs.loc["ols", ["n_rep", "n_failed", "convergence"]].tolist() == [2, 2, 0.0]
    assert fs.loc["mixedlm", "n_failed"] == 0
    # a HierCompareError from the backend is recorded the same way; the performance table keeps the backend
    st2 = Study([small("a")], replications=2, backends=["mixedlm"], options={"mixedlm": {"method": "bogus"}}, seed=5)
    res2 = st2.run(tmp_path / "two", workers=1, progress=False)
    assert res2["error"].tolist() == ["SpecError: method must be 'REML' or 'ML', got 'BOGUS'"] * 2
    perf = performance(res2)
    assert len(perf) == 1 and perf["convergence"].iloc[0] == 0.0 and perf["n_rep"].iloc[0] == 2


def test_kill9_mid_run_then_resume_equals_uninterrupted(config, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hiercompare.cli", "study", str(config), "--out", str(out), "--workers", "2"]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True, cwd=ROOT,
                                env=child_environment())
    parts = out / "parts"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, (tmp_path / "first.log").read_text()  # still running: not finished, not crashed
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI process and its worker processes, mid-run
    proc.wait(timeout=30)
    log = (tmp_path / "first.log").read_text()
    assert proc.returncode == -signal.SIGKILL, log
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in parts.glob("*.parquet")}
    assert 2 <= len(before) < 8, (sorted(before), log)
    assert not (out / "results.parquet").exists()
    (parts / "s00001-r0000003.parquet.4242.tmp").write_bytes(b"half a file")  # as a kill during a write leaves
    resume = cmd[:-1] + ["1"]  # resumed in-process (1 worker): scheduling must not matter either
    done = subprocess.run(resume, capture_output=True, text=True, cwd=ROOT, timeout=120, env=child_environment())
    assert done.returncode == 0, done.stderr
    assert f"({len(before)} from an earlier run)" in done.stderr
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in parts.glob("*.parquet")}
    assert len(after) == 8 and all(after[k] == v for k, v in before.items())  # finished units not redone
    assert not list(parts.glob("*.tmp"))
    res = read_results(out)
    assert not res.duplicated(SORT).any()
    same(res, reference)  # nothing lost, nothing duplicated, same numbers
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["runs"]) == 2
    assert "finished" not in manifest["runs"][0] and manifest["runs"][1]["units_run"] == 8 - len(before)
    assert manifest["study"]["seed"] == 11 and manifest["versions"]["pyarrow"]
    expected = performance(reference)
    got = pd.read_csv(out / "performance.csv", keep_default_na=False, na_values=[""])
    np.testing.assert_allclose(got["bias"], expected["bias"], rtol=1e-12)
    np.testing.assert_allclose(got["coverage_mcse"], expected["coverage_mcse"], rtol=1e-12)
    assert got["term"].tolist() == expected["term"].tolist()


def test_resume_checks_the_study_and_can_extend_it(study, reference, tmp_path):
    src = Path(tmp_path / "ext")
    study.run(src, workers=1, progress=False)
    other = Study(study.scenarios, replications=4, backends=["ols"], seed=11, name="small")
    with pytest.raises(StudyError, match=r"holds a different study \(differs in \['backends'\]\)"):
        other.run(src, workers=1, progress=False)
    longer = Study(study.scenarios, replications=5, backends=study.backends, seed=11, name="small")
    res = longer.run(src, workers=1, progress=False)
    assert json.loads((src / "manifest.json").read_text())["runs"][-1]["units_run"] == 2  # only replication 4
    same(res[res["replication"] < 4].reset_index(drop=True), reference)
    assert sorted(res["replication"].unique()) == [0, 1, 2, 3, 4]
    bare = tmp_path / "bare"
    shutil.copytree(src / "parts", bare / "parts")
    with pytest.raises(StudyError, match="manifest.json is missing"):
        study.run(bare, workers=1, progress=False)


def test_child_environment_drops_what_starting_r_added(monkeypatch):
    import types

    fake = types.SimpleNamespace(LD_LIBRARY_PATH="/usr/lib/R/lib:/usr/lib/x86_64-linux-gnu")
    monkeypatch.setitem(sys.modules, "rpy2.rinterface_lib.openrlib", fake)
    # rpy2 prepends "<R's path>:" to whatever was there
    env = child_environment({"LD_LIBRARY_PATH": "/usr/lib/R/lib:/usr/lib/x86_64-linux-gnu:/opt/mine", "A": "1"})
    assert env == {"LD_LIBRARY_PATH": "/opt/mine", "A": "1", **SINGLE_THREAD_ENV}
    assert child_environment({"LD_LIBRARY_PATH": "/usr/lib/R/lib:/usr/lib/x86_64-linux-gnu:"}) == SINGLE_THREAD_ENV
    assert child_environment({"LD_LIBRARY_PATH": "/opt/mine"}) == {"LD_LIBRARY_PATH": "/opt/mine", **SINGLE_THREAD_ENV}
    monkeypatch.setenv("LD_LIBRARY_PATH", "/usr/lib/R/lib:/usr/lib/x86_64-linux-gnu:/opt/mine")
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    with clean_child_environment():
        assert os.environ["LD_LIBRARY_PATH"] == "/opt/mine"
        assert os.environ["OMP_NUM_THREADS"] == os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert os.environ["LD_LIBRARY_PATH"] == "/usr/lib/R/lib:/usr/lib/x86_64-linux-gnu:/opt/mine"
    assert os.environ["OMP_NUM_THREADS"] == "8" and "OPENBLAS_NUM_THREADS" not in os.environ


def test_one_thread_caps_every_loaded_blas_and_restores_it(monkeypatch):
    """Fits of a unit run with one BLAS thread (no oversubscription with n workers; same sums everywhere)."""
    from threadpoolctl import threadpool_info

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    before = {i["filepath"]: i["num_threads"] for i in threadpool_info()}
    with one_thread(["ols", "mixedlm"]):
        inside = threadpool_info()
        assert inside and all(i["num_threads"] == 1 for i in inside)
        assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert {i["filepath"]: i["num_threads"] for i in threadpool_info()} == before
    assert "OPENBLAS_NUM_THREADS" not in os.environ


def test_one_thread_caps_torch_and_restores_it():
    # the demo also uses one_thread while brms's chains take the cores: torch's intra-op pool included
    torch = pytest.importorskip("torch")
    torch.set_num_threads(2)
    with one_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


@pytest.mark.slow
def test_dask_local_cluster_equals_local(study, reference, tmp_path):
    from distributed import LocalCluster

    with clean_child_environment():  # R started in this process (conftest) must not leak into the workers
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster:
        from distributed import Client

        with Client(cluster, set_as_default=False) as client:
            def sampler_running(dask_worker):
                return [dask_worker.periodic_callbacks[k].is_running() for k in ("profile", "profile-cycle")]

            assert all(all(v) for v in client.run(sampler_running).values())
            assert all(client.run(_pause_profiler).values())  # what study.run does first
            assert not any(any(v) for v in client.run(sampler_running).values())
            client.run(_resume_profiler)
            assert all(all(v) for v in client.run(sampler_running).values())
            res = study.run(tmp_path, scheduler=client, progress=False)
            # the workers' profiler is paused for the study (it cost the fits ~15%) and running again after it
            assert all(all(v) for v in client.run(sampler_running).values())
    same(res, reference)
    run = json.loads((tmp_path / "manifest.json").read_text())["runs"][0]
    assert run["executor"] == "dask" and run["scheduler"].startswith("tcp://")


@pytest.mark.r
def test_lme4_options_reach_worker_processes(tmp_path):
    sc = small("a")
    st = Study([sc], replications=2, backends=["lme4"], options={"lme4": {"method": "ML"}}, seed=3)
    res = st.run(tmp_path, workers=2, progress=False)
    for r in range(2):
        data, _ = hc.simulate(sc, seed=st.seed_for(0, r))
        ml = hc.fit(data, sc.formula(), backend="lme4", method="ML").tidy()
        reml = hc.fit(data, sc.formula(), backend="lme4", method="REML").tidy()
        got = res[res["replication"] == r].merge(ml, on=KEY, suffixes=("", "_ml")).merge(
            reml, on=KEY, suffixes=("", "_reml"))
        assert len(got) == len(ml)
        # lme4 is not bit-reproducible between R processes (its optimiser stops within tolerance at a point
        # that moves with the last bits of its sums: up to 7e-4 relative on SDs measured), so the
        # worker's fit is compared with this process's to 2e-3; ML and REML differ here by 13-15% on the SDs
        np.testing.assert_allclose(got["estimate"], got["estimate_ml"], rtol=2e-3, atol=1e-4)
        sds = got[got["effect"] == "ran_pars"]
        assert (abs(sds["estimate"] - sds["estimate_reml"]) > 10 * abs(sds["estimate"] - sds["estimate_ml"])).any()


def test_result_storage_keeps_the_interval_kind(tmp_path):
    # the interval column is text: a learner's cluster-bootstrap rows must not come back as NaN (performance would
    # then guess 'conditional_on_f' from the backend's name and drop their ordinary coverage)
    from hiercompare.study.storage import empty_rows, read_results, write_parquet_atomic

    rows = empty_rows(3).assign(scenario="s", replication=0, backend="lightgbm", effect="fixed", term="x1",
                                seed=1, interval=["cluster_bootstrap", "conditional_on_f", None])
    write_parquet_atomic(rows, tmp_path / "part.parquet")
    assert read_results(tmp_path / "part.parquet")["interval"].tolist() == ["cluster_bootstrap", "conditional_on_f", ""]
