import json

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.cli import main
from hiercompare.report import render_demo


def test_simulate_and_fit_cli(tmp_path, capsys):
    data, truth = tmp_path / "d.csv", tmp_path / "t.json"
    assert main(["simulate", "--out", str(data), "--truth", str(truth), "--seed", "5"]) == 0
    df = pd.read_csv(data)
    ref, ref_truth = hc.simulate(seed=5)
    np.testing.assert_allclose(df["y"], ref["y"], rtol=1e-14)
    t = hc.Truth.from_json(truth)
    pd.testing.assert_frame_equal(t.table, ref_truth.table, check_dtype=False)
    out = tmp_path / "fit.json"
    code = main(["fit", "--data", str(data), "--formula", "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
                 "--backend", "mixedlm", "--method", "ml", "--out", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["backend"] == "mixedlm" and res["method"] == "ML"
    assert res["provenance"]["seed"] is None and res["provenance"]["statsmodels"]
    assert {r["effect"] for r in res["tidy"]} == {"fixed", "ran_pars", "ran_vals"}
    assert res["timing"]["fit_seconds"] > 0 and res["diagnostics"]["converged"] is True
    direct = hc.fit(ref, "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)", backend="mixedlm", method="ML")
    assert res["loglik"] == pytest.approx(direct.loglik, abs=1e-6)


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    data = tmp_path / "d.csv"
    main(["simulate", "--out", str(data)])
    code = main(["fit", "--data", str(data), "--formula", "y ~ x1 + (1 | nowhere)", "--backend", "ols"])
    assert code == 2
    err = capsys.readouterr().err
    assert "DataError" in err and "['nowhere'] are missing" in err


def test_demo_subset_writes_report(tmp_path, monkeypatch):
    # the demo's per-backend options reach the fits and the report says how each backend fitted
    monkeypatch.setitem(hc.demo.DEMO_OPTIONS, "mixedlm", {"method": "ML"})
    res = hc.demo.run_demo(tmp_path, backends=["ols", "mixedlm"], progress=lambda m: None)
    html = (tmp_path / "report.html").read_text()
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["formula"] == "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
    assert [f["backend"] for f in saved["fits"]] == ["ols", "mixedlm"]
    assert saved["provenance"]["seed"] == 123 and "git_commit" in saved["provenance"]
    opts = saved["provenance"]["backend_options"]
    assert opts["mixedlm"] == {"fit_method": "ML", "options": {"method": "ML"}}
    assert opts["ols"]["options"] == {} and opts["ols"]["fit_method"] == res["fits"][0]["method"]
    assert "backend_options" in html and "fit_method" in html
    # variance components, market intercepts and the hierarchy diagram (no LightGBM backend: no tree)
    assert html.count("data:image/png;base64,") == 3 and 'id="lightgbm"' not in html
    for section in ("Scenario and truth", "Fixed effects per backend", "Variance components", "Market intercepts",
                    "The hierarchy with estimated offsets", "Agreement between backends", "Timings", "Provenance"):
        assert section in html
    assert len(res["recovery"]) > 0
    # stage timings (bench/demo.py reports each stage's share): parts of the total, the fits as timed per backend
    st = saved["timing_stages"]
    assert set(st) == {"simulate", "fits", "compare_and_recovery", "report", "other"}
    assert all(v >= 0 for v in st.values())
    assert sum(st.values()) == pytest.approx(saved["timing_total_seconds"], rel=1e-9)
    assert st["fits"] == pytest.approx(sum(t["total_seconds"] for t in saved["timings"]), rel=1e-12)


def test_demo_report_names_come_from_the_scenario(tmp_path):
    # a tree of schools and classes under Scotland: the report names it so, and never the seed's domain
    sc = hc.Scenario(levels=(hc.LevelScenario("school", 5, {"(Intercept)": 0.8}, label="School{i}"),
                             hc.LevelScenario("class", 3, {"(Intercept)": 0.4}, label="C{i}")),
                     n_obs=20, root="Scotland", name="schools")
    res = hc.demo.run_demo(tmp_path, scenario=sc, backends=["ols", "mixedlm"], progress=lambda m: None)
    html = (tmp_path / "report.html").read_text()
    assert res["hierarchy"]["root"] == "Scotland"
    assert "Tree: Scotland \u2192 school (5 groups) \u2192 school:class (15 groups)" in html
    assert "School intercepts per backend" in html and '<img alt="school intercepts"' in html
    assert "over the school groups drawn" in html
    assert "market" not in html.lower() and "united_state" not in html.lower()


def test_report_escapes_every_label(tmp_path):
    res = hc.demo.run_demo(tmp_path, backends=["ols"], progress=lambda m: None)
    evil = '<script>alert("x")</script>'
    res["title"] = evil
    res["fits"][0]["diagnostics"]["warnings"].append(evil)
    res["skipped"] = [{"backend": "lme4", "reason": evil}]
    res["provenance"]["note"] = evil
    html = render_demo(res)
    assert "<script>" not in html
    assert html.count("&lt;script&gt;") >= 4


@pytest.mark.r
@pytest.mark.slow
def test_full_demo_with_r(tmp_path):
    res = hc.demo.run_demo(tmp_path, backends=["ols", "r_lm", "mixedlm", "lme4", "native"], progress=lambda m: None)
    assert [t["backend"] for t in res["timings"]] == ["ols", "r_lm", "mixedlm", "lme4", "native"]
    assert {t["status"] for t in res["timings"]} == {"ok"}
    s = pd.DataFrame(res["agreement_summary"])
    assert set(s.loc[s["pair"] == "ols vs r_lm", "verdict"]) == {"agree"}
    mixed = s[s["pair"] == "mixedlm vs lme4"].set_index("param_class")["verdict"]
    assert mixed.drop("ran_vals_se").eq("agree").all() and mixed["ran_vals_se"] == "info"


@pytest.mark.r
def test_console_script_exits_quickly_with_main_code_and_r_cleaned_up(tmp_path):
    # the console script skips the interpreter's finalisation but runs the exit handlers: rpy2's ends R, which
    # removes R's temporary folder (under TMPDIR here); the exit code is main's
    import os
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).with_name("hiercompare")
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = tmp_path / "demo"
    proc = subprocess.run([str(exe), "demo", "--backends", "ols,r_lm", "--out", str(out)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "results.json").read_text())
    assert [f["backend"] for f in saved["fits"]] == ["ols", "r_lm"]
    assert "wrote" in proc.stderr  # progress reached stderr before the quick exit
    assert not list(tmp_path.glob("Rtmp*"))
    # the control: R does put its folder there, and leaves it behind when the exit handlers are skipped
    ctl = tmp_path / "ctl"
    ctl.mkdir()
    subprocess.run([sys.executable, "-c", "import os, rpy2.robjects as ro; ro.r('tempdir()'); os._exit(0)"],
                   env={**env, "TMPDIR": str(ctl)}, timeout=120, check=True)
    assert len(list(ctl.glob("Rtmp*"))) == 1
    bad = subprocess.run([str(exe), "fit", "--data", str(out / "data.csv"), "--formula", "y ~ x1 + (1 | nowhere)",
                          "--backend", "ols"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "['nowhere'] are missing" in bad.stderr
