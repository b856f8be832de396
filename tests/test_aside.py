"""A fit in a second process (hiercompare.aside; the demo fits brms this way while the others fit)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.aside import AsideFit, SecondProcess
from hiercompare.simulate import LevelScenario, Scenario, simulate

FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def data():
    d, _ = simulate(Scenario(levels=(
        LevelScenario("market", 6, {"(Intercept)": 0.8, "x1": 0.4}, ((1.0, 0.3), (0.3, 1.0))),
        LevelScenario("submarket", 3, {"(Intercept)": 0.4})), n_obs=30), seed=5)
    return d


def test_aside_fit_equals_the_fit_in_this_process(data):
    job = AsideFit("native", data, FORMULA, "gaussian", 7, {"method": "ML"})
    got = job.result()
    assert got["status"] == "ok"
    here = hc.fit(data, FORMULA, backend="native", seed=7, method="ML")
    a, b = got["fit"].tidy(), here.tidy()
    pd.testing.assert_frame_equal(a, b, rtol=0, atol=0)  # same numbers to the last bit
    assert got["fit"].provenance["options"] == here.provenance["options"]
    assert job.seconds > 0 and job.waited >= 0


def test_aside_says_why_there_is_no_fit(data):
    # a fit that fails: the backend's own error comes back as the reason
    got = AsideFit("native", data, "y ~ x1 + (1 | nosuchcolumn)", "gaussian", 1, {}).result()
    assert got["status"] == "failed" and "nosuchcolumn" in got["reason"]
    # a family the backend does not fit (mixedlm is Gaussian only; native fits poisson since issue 12)
    counts = data.assign(y=np.random.default_rng(1).poisson(2.0, len(data)))
    got = AsideFit("mixedlm", counts, FORMULA, "poisson", 1, {}).result()
    assert got == {"status": "not applicable", "reason": got["reason"]} and "poisson" in got["reason"]
    # an unknown option is the backend's TypeError, not a HierCompareError: it comes back as what was raised
    got = AsideFit("native", data, FORMULA, "gaussian", 1, {"nosuchoption": 1}).result()
    assert got["status"] == "failed" and "raised TypeError" in got["reason"] and "nosuchoption" in got["reason"]


def test_aside_killed_process_is_a_failure_with_its_exit_code():
    # the worker is killed with SIGKILL (as the OOM killer would) by a shell it started: the answer says it died,
    # with the exit code
    aside = AsideFit.__new__(AsideFit)
    aside.waited, aside.seconds = 0.0, None
    aside._process = SecondProcess(subprocess.run, ["bash", "-c", "kill -9 $PPID; sleep 5"])
    got = aside.result(timeout=60)
    assert got["status"] == "failed" and "died without an answer" in got["reason"] and "-9" in got["reason"], got


def test_second_process_leads_its_own_session():
    # as the runner before it: with autogroup scheduling its chains share the cores with us as one group
    assert SecondProcess(os.getsid, 0).wait(60) != os.getsid(0)


def test_second_process_timeout_cancels_it():
    job = SecondProcess(time.sleep, 30)
    t = time.perf_counter()
    with pytest.raises(TimeoutError, match="within 1 s"):
        job.wait(timeout=1)
    assert time.perf_counter() - t < 15  # cancelled, not waited for


def test_demo_fits_aside_backends_in_a_second_process(tmp_path, monkeypatch):
    monkeypatch.setattr(hc.demo, "ASIDE", ("native",))
    monkeypatch.setitem(hc.demo.DEMO_OPTIONS, "native", {"method": "ML"})
    res = hc.demo.run_demo(tmp_path, backends=["native", "ols", "mixedlm"], progress=lambda m: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [f["backend"] for f in saved["fits"]] == ["native", "ols", "mixedlm"]  # the order asked for
    t = {x["backend"]: x for x in saved["timings"]}
    assert t["native"]["process"].startswith("second process") and t["native"]["process_seconds"] > 0
    assert "process" not in t["ols"] and "process" not in t["mixedlm"]
    # the stages still add up to the total: the fit in the second process overlaps, what is left is waited for
    st = saved["timing_stages"]
    assert set(st) == {"simulate", "fits", "waiting_for_second_process", "compare_and_recovery", "report", "other"}
    assert sum(st.values()) == pytest.approx(saved["timing_total_seconds"], rel=1e-9)
    assert st["fits"] == pytest.approx(t["ols"]["total_seconds"] + t["mixedlm"]["total_seconds"], rel=1e-12)
    assert st["waiting_for_second_process"] == pytest.approx(t["native"]["waited_seconds"], rel=1e-12)
    # the same numbers as fitting it in this process
    data = pd.read_csv(tmp_path / "data.csv")
    here = hc.fit(data, saved["formula"], backend="native", seed=123, method="ML")
    fe = {r["term"]: r["estimate"] for r in saved["fits"][0]["tidy"] if r["effect"] == "fixed"}
    assert fe == pytest.approx(here.fixef.to_dict(), rel=1e-9)
    assert saved["provenance"]["backend_options"]["native"]["options"] == {"method": "ML"}
    html = (tmp_path / "report.html").read_text()
    assert "second process, overlapping the other fits (waited" in html and html.count("this process") == 2


def test_demo_reports_an_aside_failure_and_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(hc.demo, "ASIDE", ("native",))
    monkeypatch.setitem(hc.demo.DEMO_OPTIONS, "native", {"nosuchoption": 1})
    res = hc.demo.run_demo(tmp_path, backends=["native", "ols"], progress=lambda m: None)
    assert [f["backend"] for f in res["fits"]] == ["ols"]
    (skip,) = res["skipped"]
    assert skip["backend"] == "native" and skip["reason"].startswith("failed: the second process raised TypeError")
    assert res["timings"][0]["status"] == "failed"


def test_cancel_stops_the_process_tree(tmp_path):
    # cancel() kills the second process and what it started (brms's forked chains): here the worker runs a
    # shell that starts a grandchild, as R forks its chains, and waits for it
    pidfile = tmp_path / "grandchild.pid"
    job = SecondProcess(subprocess.run, ["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"])
    for _ in range(300):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        time.sleep(0.1)
    grandchild = int(pidfile.read_text())
    assert _state(grandchild) not in ("gone", "Z")  # the control: it is running before cancel()
    job.cancel()
    for _ in range(50):
        if _state(grandchild) in ("gone", "Z"):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the forked grandchild {grandchild} is still running after cancel()")


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0]
    except OSError:
        return "gone"


def test_demo_rejects_unknown_or_repeated_backends(tmp_path):
    with pytest.raises(hc.HierCompareError, match=r"unknown backend\(s\) \['nosuch'\]"):
        hc.demo.run_demo(tmp_path, backends=["ols", "nosuch"], progress=lambda m: None)
    with pytest.raises(hc.HierCompareError, match=r"\['ols'\] listed more than once"):
        hc.demo.run_demo(tmp_path, backends=["ols", "native", "ols"], progress=lambda m: None)
