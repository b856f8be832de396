"""Issue 13 item 3: the learners' (lightgbm, torch) intervals are labelled, bootstrapped or dropped, and both learners
project f(x) off the fixed design (the same estimand for beta).

Tolerances: orthogonality of f to X's columns 1e-10 relative (a least-squares projection in float64; torch's f is
float32 before the projection, which is done in float64); lightgbm's projected beta on a linear truth within 0.25
native SEs of native's beta (measured: 0.03 SE); bootstrap SEs and percentile ends equal to the SD / quantiles of
the stored draws to 1e-12; the performance table's numbers worked by hand in test_performance.py's case A.
"""
import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.backends import learners
from hiercompare.design import prepare
from hiercompare.performance import interval_kind, performance
from hiercompare.report.study import recovery_table

HAS_LGB = "lightgbm" in hc.available_backends()
HAS_TORCH = "torch" in hc.available_backends()
NONLIN = hc.Scenario(nonlinear="sin_threshold", n_obs=40, name="nonlinear")
F = NONLIN.formula()


@pytest.fixture(scope="module")
def nonlinear_data():
    return hc.simulate(NONLIN, seed=7)[0]


def _relative_xtf(fit):
    md = fit.model
    f = fit.nonlinear(md.data)
    return np.abs(md.X.T @ f) / (np.linalg.norm(md.X, axis=0) * np.linalg.norm(f))


# ---------------------------------------------------------------------------------------------- projection
@pytest.mark.skipif(not HAS_LGB, reason="lightgbm not installed")
def test_lightgbm_f_is_projected_off_the_fixed_design(nonlinear_data):
    g = hc.fit(nonlinear_data, F, backend="lightgbm", seed=1, max_rounds=150)
    assert np.std(g.nonlinear(g.model.data)) > 0.1  # f learned something (else orthogonality is trivial)
    assert _relative_xtf(g).max() < 1e-10
    assert any("projected off the fixed design" in n for n in g.diagnostics["notes"])
    parts = g.decompose()  # the parts still add up to the prediction
    np.testing.assert_allclose(parts.drop(columns="prediction").sum(axis=1), g.predict(), rtol=0, atol=1e-10)
    # only centred (the former behaviour): mean 0 but not orthogonal to x2, so the check above can fail
    u = hc.fit(nonlinear_data, F, backend="lightgbm", seed=1, max_rounds=150, orthogonalize=False)
    fu = u.nonlinear(u.model.data)
    assert abs(fu.mean()) < 1e-10
    assert _relative_xtf(u)[u.model.fixed_names.index("x2")] > 1e-3
    # the projection moves beta by F's LS coefficients and leaves the variance parameters and logLik unchanged
    np.testing.assert_allclose(g.varcorr["estimate"], u.varcorr["estimate"], rtol=1e-5)
    assert g.loglik == pytest.approx(u.loglik, abs=1e-6)


@pytest.mark.skipif(not HAS_LGB, reason="lightgbm not installed")
def test_lightgbm_projected_beta_recovers_a_linear_truth():
    sc = hc.Scenario(fixed={"(Intercept)": 1.0, "x1": 0.0, "x2": 1.5}, n_obs=40)
    data, _ = hc.simulate(sc, seed=3)
    # boosting forced to run 150 rounds (no early stopping): the trees see the x2 trend every round
    g = hc.fit(data, sc.formula(), backend="lightgbm", seed=1, validation_fraction=0, max_rounds=150)
    n = hc.fit(data, sc.formula(), backend="native")
    se = n.tidy("fixed").set_index("term")["std_error"]
    diff = (g.fixef - n.fixef).abs() / se
    assert diff.max() < 0.25, diff
    assert abs(g.fixef["x2"] - 1.5) < 3 * se["x2"]
    assert _relative_xtf(g).max() < 1e-10


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_f_is_projected_off_the_fixed_design(nonlinear_data):
    t = hc.fit(nonlinear_data, F, backend="torch", seed=1, epochs=40, hidden=(16,), validation_fraction=0)
    assert np.std(t.nonlinear(t.model.data)) > 1e-3
    assert _relative_xtf(t).max() < 1e-10


# ---------------------------------------------------------------------------------------------- labels
@pytest.mark.skipif(not HAS_LGB, reason="lightgbm not installed")
def test_lightgbm_intervals_are_labelled_conditional_or_dropped(nonlinear_data):
    g = hc.fit(nonlinear_data, F, backend="lightgbm", seed=1, max_rounds=150)
    t = g.tidy()
    has = t["std_error"].notna()
    assert set(t.loc[t["effect"] == "fixed", "interval"]) == {"conditional_on_f"}
    assert set(t.loc[t["effect"] == "ran_vals", "interval"]) == {"conditional_on_f"}
    assert (t.loc[has, "interval"] == "conditional_on_f").all() and (t.loc[~has, "interval"] == "").all()
    assert g.diagnostics["intervals"] == "conditional"
    assert any("treat the learned f(x) as known" in n for n in g.diagnostics["notes"])
    none = hc.fit(nonlinear_data, F, backend="lightgbm", seed=1, max_rounds=150, intervals="none")
    tn = none.tidy()
    assert tn[["std_error", "conf_low", "conf_high", "p_value"]].isna().all().all()
    assert set(tn["interval"]) == {""}
    np.testing.assert_array_equal(tn["estimate"], t["estimate"])  # same fit, estimates only
    with pytest.raises(hc.SpecError, match="intervals must be one of"):
        hc.fit(nonlinear_data, F, backend="lightgbm", intervals="wald")
    with pytest.raises(hc.SpecError, match="bootstrap_draws"):
        hc.fit(nonlinear_data, F, backend="lightgbm", intervals="bootstrap", bootstrap_draws=5)
    with pytest.raises(hc.SpecError, match="bootstrap_ci"):
        hc.fit(nonlinear_data, F, backend="lightgbm", intervals="bootstrap", bootstrap_ci="bca")


@pytest.mark.skipif(not HAS_LGB, reason="lightgbm not installed")
def test_lightgbm_cluster_bootstrap(nonlinear_data):
    kw = dict(backend="lightgbm", seed=1, max_rounds=100)
    c = hc.fit(nonlinear_data, F, **kw)
    b = hc.fit(nonlinear_data, F, intervals="bootstrap", bootstrap_draws=24, **kw)
    tb, tc = b.tidy(), c.tidy()
    np.testing.assert_array_equal(tb["estimate"], tc["estimate"])  # the bootstrap changes intervals only
    fp = tb["effect"].isin(["fixed", "ran_pars"])
    assert set(tb.loc[fp, "interval"]) == {"cluster_bootstrap"}
    assert set(tb.loc[~fp, "interval"]) == {"conditional_on_f"}  # group effects stay conditional, labelled
    assert tb.loc[fp, ["df", "p_value"]].isna().all().all()
    draws = b.extras["bootstrap_draws"]
    assert b.diagnostics["bootstrap"] == {"draws": 24, "failed": 0, "first_error": None, "ci": "basic"}
    assert draws["draw"].nunique() == 24
    assert b.diagnostics["bootstrap"]["ci"] == "basic"
    pc = hc.fit(nonlinear_data, F, intervals="bootstrap", bootstrap_draws=24, bootstrap_ci="percentile", **kw).tidy()
    for r, p in zip(tb[fp].itertuples(), pc[fp].itertuples()):
        d = draws.loc[(draws["effect"] == r.effect) & (draws["group"] == r.group) & (draws["term"] == r.term),
                      "estimate"].to_numpy()
        assert len(d) == 24
        assert r.std_error == pytest.approx(np.std(d, ddof=1), rel=1e-12)
        q_lo, q_hi = np.quantile(d, [0.025, 0.975])
        lo, hi = 2 * r.estimate - q_hi, 2 * r.estimate - q_lo  # the basic interval (the default)
        if r.term.startswith("cor__"):
            lo, hi = max(lo, -1), min(hi, 1)
        elif r.effect == "ran_pars":
            lo, hi = max(lo, 0), max(hi, 0)
        assert r.conf_low == pytest.approx(lo, rel=1e-12, abs=1e-14)
        assert r.conf_high == pytest.approx(hi, rel=1e-12, abs=1e-14)
        assert (p.conf_low, p.conf_high) == pytest.approx((q_lo, q_hi), rel=1e-12)  # bootstrap_ci="percentile"
    # f is re-learned in every draw: the draws of x2 vary, and its bootstrap SE is of the conditional SE's order
    se_b = tb.set_index(["effect", "term"]).loc[("fixed", "x2"), "std_error"]
    se_c = tc.set_index(["effect", "term"]).loc[("fixed", "x2"), "std_error"]
    assert 0.5 < se_b / se_c < 4, (se_b, se_c)
    again = hc.fit(nonlinear_data, F, intervals="bootstrap", bootstrap_draws=24, **kw)
    pd.testing.assert_frame_equal(again.tidy(), tb)  # seeded: the same draws


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_intervals_are_labelled_and_bootstrapped(nonlinear_data):
    kw = dict(backend="torch", seed=1, epochs=20, hidden=(8,), validation_fraction=0)
    t = hc.fit(nonlinear_data, F, **kw).tidy()
    assert set(t.loc[t["std_error"].notna(), "interval"]) == {"conditional_on_f"}
    assert set(t.loc[t["effect"] == "fixed", "interval"]) == {"conditional_on_f"}
    b = hc.fit(nonlinear_data, F, intervals="bootstrap", bootstrap_draws=20, **kw)
    tb = b.tidy()
    fp = tb["effect"].isin(["fixed", "ran_pars"])
    assert set(tb.loc[fp, "interval"]) == {"cluster_bootstrap"}
    assert (tb.loc[fp, "conf_low"] <= tb.loc[fp, "conf_high"]).all()
    assert b.diagnostics["bootstrap"]["failed"] == 0


def test_relabel_top_groups_keeps_repeats_distinct(seed_data):
    data, _ = seed_data
    md = prepare(hc.ModelSpec.from_formula(hc.Scenario().formula()), data)
    top = md.hierarchy.levels[0]
    picks = np.array([0, 0, 3])
    new = learners.relabel_top_groups(md, picks)
    assert len(new) == 2 * top.counts()[0] + top.counts()[3]
    md_b = prepare(md.spec, new)
    assert md_b.hierarchy.levels[0].n_groups == 3  # market 0 twice: two distinct markets
    assert md_b.hierarchy.levels[1].n_groups == 3 * 5  # their submarkets distinct too (nesting kept)
    np.testing.assert_array_equal(np.sort(md_b.hierarchy.levels[0].counts()),
                                  np.sort(top.counts()[[0, 0, 3]]))


# ---------------------------------------------------------------------------------------------- coverage tables
def _results(backend, interval):
    # test_performance.py's case A: truth 1, estimates .. intervals covering 3 of 4, SEs .2 .2 .3 .1
    rows = []
    for i, (e, s, lo, hi) in enumerate(zip([1.2, 0.8, 1.3, 0.9], [0.2, 0.2, 0.3, 0.1], [0.9, 0.5, 1.06, 0.6],
                                         [1.5, 1.02, 1.6, 1.2])):
        rows.append(dict(scenario="s", replication=i, backend=backend, effect="fixed", group="", level="",
                         term="x", estimate=e, std_error=s, conf_low=lo, conf_high=hi, truth=1.0, realized=np.nan,
                         converged=True, error="", interval=interval))
    return pd.DataFrame(rows)


def test_performance_never_reports_conditional_coverage_as_ordinary():
    res = pd.concat([_results("native", ""), _results("lightgbm", "conditional_on_f"),
                     _results("torch", "cluster_bootstrap")], ignore_index=True)
    p = performance(res).set_index("backend")
    # native: ordinary coverage 3/4, modse sqrt((.04 + .04 + .09 + .01) / 4) = sqrt(.045) = .2121320
    assert p.loc["native", "coverage"] == pytest.approx(0.75, abs=1e-12)
    assert p.loc["native", "modse"] == pytest.approx(0.2121320, abs=1e-7)
    assert np.isnan(p.loc["native", "conditional_coverage"]) and p.loc["native", "interval"] == ""
    # lightgbm: the same numbers, only under the conditional names; the ordinary ones are missing
    lg = p.loc["lightgbm"]
    assert lg["interval"] == "conditional_on_f"
    assert lg["conditional_coverage"] == pytest.approx(0.75, abs=1e-12)
    assert lg["conditional_coverage_mcse"] == pytest.approx(np.sqrt(0.75 * 0.25 / 4), abs=1e-12)
    assert lg["conditional_modse"] == pytest.approx(0.2121320, abs=1e-7)
    assert lg[["coverage", "be_coverage", "modse", "rel_error_modse"]].isna().all()
    # a bootstrap cell is ordinary, labelled
    assert p.loc["torch", "interval"] == "cluster_bootstrap"
    assert p.loc["torch", "coverage"] == pytest.approx(0.75, abs=1e-12)
    # the report's table says so in words
    rt = recovery_table(performance(res)).set_index("backend")
    assert rt.loc["lightgbm", "coverage"].startswith("conditional on f(x): 0.7500")
    assert rt.loc["lightgbm", "interval"] == "conditional on f(x)"
    assert rt.loc["native", "coverage"] == "0.7500 (0.2165)"


def test_results_without_the_interval_column_read_learners_as_conditional():
    old = pd.concat([_results("lightgbm", ""), _results("native", ""), _results("torch:small", "")],
                    ignore_index=True).drop(columns="interval")
    kinds = interval_kind(old)
    assert set(kinds[old["backend"] == "native"]) == {""}
    assert set(kinds[old["backend"] != "native"]) == {"conditional_on_f"}
    p = performance(old).set_index("backend")
    assert np.isnan(p.loc["lightgbm", "coverage"]) and p.loc["lightgbm", "conditional_coverage"] == 0.75
    assert p.loc["native", "coverage"] == 0.75


@pytest.mark.skipif(not HAS_LGB, reason="lightgbm not installed")
def test_lightgbm_binomial_is_projected_and_labelled():
    sc = hc.Scenario(family="binomial", n_obs=30, nonlinear="sin_threshold")
    data, _ = hc.simulate(sc, seed=2)
    kw = dict(backend="lightgbm", family="binomial", seed=1, max_rounds=60)
    g = hc.fit(data, sc.formula(), **kw)
    assert _relative_xtf(g).max() < 1e-10
    t = g.tidy()
    assert set(t.loc[t["std_error"].notna(), "interval"]) == {"conditional_on_f"}
    u = hc.fit(data, sc.formula(), orthogonalize=False, **kw)
    # the projection only moves beta: the Laplace log-likelihood and the SDs stay (glmmcore's optimum, 1e-4)
    assert g.loglik == pytest.approx(u.loglik, abs=1e-4)
    np.testing.assert_allclose(g.varcorr["estimate"], u.varcorr["estimate"], rtol=1e-3, atol=1e-4)


def test_compare_report_marks_conditional_intervals():
    from hiercompare.report.compare import _estimate_cell

    row = dict(estimate=1.0, conf_low=0.5, conf_high=1.5)
    assert _estimate_cell(pd.DataFrame([{**row, "interval": "conditional_on_f"}])) == \
        "1.0000 [0.5000, 1.5000] conditional on f(x)"
    assert _estimate_cell(pd.DataFrame([{**row, "interval": ""}])) == "1.0000 [0.5000, 1.5000]"
    assert _estimate_cell(pd.DataFrame([row])) == "1.0000 [0.5000, 1.5000]"  # tables from before the column
