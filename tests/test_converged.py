"""``converged`` is True/False only where a backend assesses convergence, and None ("not assessed") elsewhere:
never assumed True, and every table that counts it counts "not assessed" apart from "converged"."""
import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.performance import convergence_rate, fit_summary, performance
from hiercompare.results import NOT_ASSESSED, convergence_text

F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def test_closed_form_is_not_assessed_and_optimisers_are(seed_data, monkeypatch):
    data, _ = seed_data
    ols = hc.fit(data, F, backend="ols")
    assert ols.diagnostics["converged"] is None and ols.converged is None
    assert any("not assessed" in n and "closed-form" in n for n in ols.diagnostics["notes"])
    assert "converged=not assessed" in repr(ols)
    assert ols.to_dict()["diagnostics"]["converged"] is None
    native = hc.fit(data, F, backend="native")
    assert native.converged is True and "converged=yes" in repr(native)
    # a backend that says nothing about convergence is recorded as not assessed by fit(), never as True
    from hiercompare.backends import get_backend

    cls = type(get_backend("native"))
    original = cls.fit

    def silent(self, md, **kw):
        f = original(self, md, **kw)
        del f.diagnostics["converged"]
        return f

    monkeypatch.setattr(cls, "fit", silent)
    quiet = hc.fit(data, F, backend="native")
    assert "converged" in quiet.diagnostics and quiet.converged is None


def test_convergence_text():
    assert [convergence_text(v) for v in (True, False, None, np.nan, pd.NA)] == [
        "yes", "no", NOT_ASSESSED, NOT_ASSESSED, NOT_ASSESSED]


def _rows(backend, rep, converged, error="", est=1.0):
    return dict(scenario="s", replication=rep, backend=backend, effect="fixed" if not error else "", group="",
                level="", term="x" if not error else "", estimate=np.nan if error else est, std_error=np.nan,
                conf_low=np.nan, conf_high=np.nan, truth=np.nan if error else 1.0, realized=1.0,
                converged=converged, warnings="", seconds=1.0, seed=rep, error=error)


def _results():
    rows = [_rows("ols", r, None) for r in range(3)]
    rows.append(_rows("ols", 3, None, error="BackendError: boom"))
    # mixed: 2 converged, 1 not, 1 failed -> 2/4
    rows += [_rows("mixed", 0, True), _rows("mixed", 1, True), _rows("mixed", 2, False, est=3.0),
             _rows("mixed", 3, None, error="BackendError: boom")]
    return pd.DataFrame(rows)


def test_fit_summary_counts_not_assessed_apart():
    fs = fit_summary(_results()).set_index("backend")
    assert fs.loc["ols", ["n_rep", "n_failed", "n_not_converged", "n_not_assessed"]].tolist() == [4, 1, 0, 3]
    assert np.isnan(fs.loc["ols", "convergence"]) and np.isnan(fs.loc["ols", "convergence_mcse"])
    assert fs.loc["mixed", ["n_rep", "n_failed", "n_not_converged", "n_not_assessed"]].tolist() == [4, 1, 1, 0]
    # 2 of 4 attempted fits converged: .5, MCSE sqrt(.25 / 4) = .25
    assert fs.loc["mixed", "convergence"] == 0.5 and fs.loc["mixed", "convergence_mcse"] == pytest.approx(0.25)


def test_performance_convergence_and_converged_only():
    perf = performance(_results()).set_index("backend")
    assert np.isnan(perf.loc["ols", "convergence"]) and perf.loc["ols", "n_used"] == 3
    assert perf.loc["mixed", "convergence"] == 0.5
    # converged_only drops the fit that reported non-convergence (estimate 3), keeps the not-assessed ones
    only = performance(_results(), converged_only=True).set_index("backend")
    assert only.loc["ols", "n_used"] == 3
    assert only.loc["mixed", "n_used"] == 2 and only.loc["mixed", "bias"] == pytest.approx(0.0, abs=1e-12)
    # assessed: [True, False] -> .5, MCSE sqrt(.25 / 2)
    assert convergence_rate([True, False, False], [False, False, True]) == pytest.approx((0.5, np.sqrt(0.125)))


def test_storage_keeps_not_assessed(tmp_path):
    from hiercompare.study.storage import normalize, read_results, write_parquet_atomic

    df = normalize(_results())
    assert str(df["converged"].dtype) == "boolean"
    assert df["converged"].isna().sum() == 5 and int(df["converged"].sum()) == 2
    write_parquet_atomic(df, tmp_path / "r.parquet")
    back = read_results(tmp_path / "r.parquet")
    pd.testing.assert_series_equal(back["converged"], df["converged"])


def test_reports_show_not_assessed():
    from hiercompare.report.study import _timing_display, recovery_table

    shown = _timing_display(fit_summary(_results())).set_index("backend")
    assert shown.loc["ols", "convergence"] == NOT_ASSESSED and shown.loc["mixed", "convergence"] == 0.5
    rec = recovery_table(performance(_results())).set_index("backend")
    assert rec.loc["ols", "convergence"] == NOT_ASSESSED and rec.loc["mixed", "convergence"] == "0.5000 (0.2500)"
