"""Performance measures (Morris, White & Crowther 2019, Table 6) against small cases worked by hand.

Every expected number below is typed in and derived in the comments, not computed by the code under test.
"""
import numpy as np
import pandas as pd
import pytest

from hiercompare.errors import DataError
from hiercompare.performance import (COLUMNS, cluster_mean, fit_summary, group_effect_measures, performance,
                                     performance_long, replication_measures)

# Case A: true value theta = 1, four replications.
EST = [1.2, 0.8, 1.3, 0.9]
SE = [0.2, 0.2, 0.3, 0.1]
LOW = [0.9, 0.5, 1.06, 0.6]
HIGH = [1.5, 1.02, 1.6, 1.2]


def test_morris_measures_by_hand():
    m = replication_measures(EST, 1.0, SE, LOW, HIGH)
    # mean estimate 4.2 / 4 = 1.05 -> bias 0.05; relative bias 0.05 / |1| = 0.05
    assert m["mean_estimate"] == pytest.approx(1.05, abs=1e-12)
    assert m["bias"] == pytest.approx(0.05, abs=1e-12)
    assert m["rel_bias"] == pytest.approx(0.05, abs=1e-12)
    # deviations from 1.05: .15, -.25, .25, -.15; squares .0225 .0625 .0625 .0225, sum .17
    # MCSE(bias) = sqrt(.17 / (4 * 3)) = sqrt(.01416667) = .1190238; MCSE(rel bias) the same / |1|
    assert m["bias_mcse"] == pytest.approx(0.1190238, abs=1e-7)
    assert m["rel_bias_mcse"] == pytest.approx(0.1190238, abs=1e-7)
    # EmpSE = sqrt(.17 / 3) = sqrt(.05666667) = .2380476; MCSE = .2380476 / sqrt(2 * 3) = .0971825
    assert m["empse"] == pytest.approx(0.2380476, abs=1e-7)
    assert m["empse_mcse"] == pytest.approx(0.0971825, abs=1e-7)
    # errors .2 -.2 .3 -.1; squared .04 .04 .09 .01 -> MSE = .18 / 4 = .045
    # (check: bias^2 + (n-1)/n EmpSE^2 = .0025 + .75 * .0566667 = .045)
    # squared error - MSE: -.005 -.005 .045 -.035; their squares sum to .0033
    # MCSE(MSE) = sqrt(.0033 / 12) = sqrt(.000275) = .0165831
    assert m["mse"] == pytest.approx(0.045, abs=1e-12)
    assert m["mse_mcse"] == pytest.approx(0.0165831, abs=1e-7)
    # RMSE = sqrt(.045) = .2121320; delta method: .0165831 / (2 * .2121320) = .0390868
    assert m["rmse"] == pytest.approx(0.2121320, abs=1e-7)
    assert m["rmse_mcse"] == pytest.approx(0.0390868, abs=1e-7)
    # model SEs squared .04 .04 .09 .01: mean .045 -> ModSE = .2121320
    # Var(SE^2) = .0033 / 3 = .0011; MCSE(ModSE) = sqrt(.0011 / (4 * 4 * .045)) = sqrt(.00152778) = .0390868
    assert m["modse"] == pytest.approx(0.2121320, abs=1e-7)
    assert m["modse_mcse"] == pytest.approx(0.0390868, abs=1e-7)
    # relative error in ModSE: .2121320 / .2380476 - 1 = .8911328 - 1 = -.1088672
    # MCSE = .8911328 * sqrt(.0011 / (4 * 4 * .045^2) + 1 / (2 * 3))
    #      = .8911328 * sqrt(.0339506 + .1666667) = .8911328 * .4479032 = .3991412
    assert m["rel_error_modse"] == pytest.approx(-0.1088672, abs=1e-7)
    assert m["rel_error_modse_mcse"] == pytest.approx(0.3991412, abs=1e-6)
    # theta = 1 lies in [.9,1.5] [.5,1.02] [.6,1.2] but not [1.06,1.6]: 3/4; MCSE sqrt(.75*.25/4) = .2165064
    assert m["coverage"] == pytest.approx(0.75, abs=1e-12)
    assert m["coverage_mcse"] == pytest.approx(0.2165064, abs=1e-7)
    # mean estimate 1.05 lies in [.9,1.5] and [.6,1.2] only (1.05 > 1.02, 1.05 < 1.06): 2/4; MCSE sqrt(.25/4) = .25
    assert m["be_coverage"] == pytest.approx(0.5, abs=1e-12)
    assert m["be_coverage_mcse"] == pytest.approx(0.25, abs=1e-12)
    assert (m["n_used"], m["n_se"], m["n_ci"]) == (4, 4, 4)


def test_edge_cases_are_missing_not_zero():
    # one replication: bias 0.2 is defined, but no SD, no MCSE of bias or MSE
    m = replication_measures([1.2], 1.0, [0.1], [1.0], [1.4])
    assert m["bias"] == pytest.approx(0.2)
    assert np.isnan(m["empse"]) and np.isnan(m["bias_mcse"]) and np.isnan(m["mse_mcse"])
    assert np.isnan(m["rel_error_modse"])  # needs an EmpSE
    assert m["coverage"] == 1.0
    # truth 0: relative bias undefined
    m = replication_measures([0.1, -0.3], 0.0)
    assert m["bias"] == pytest.approx(-0.1) and np.isnan(m["rel_bias"]) and np.isnan(m["rel_bias_mcse"])
    # no model SE and no interval: modse and coverage missing, counts 0
    assert np.isnan(m["modse"]) and np.isnan(m["coverage"]) and m["n_se"] == 0 and m["n_ci"] == 0
    # a missing interval end leaves that replication out of both coverages: theta 1 in [.9,1.1] only -> 1/2
    m = replication_measures([1.0, 1.0, 1.0], 1.0, conf_low=[0.9, np.nan, 1.05], conf_high=[1.1, 1.2, 1.2])
    assert m["n_ci"] == 2 and m["coverage"] == pytest.approx(0.5)
    with pytest.raises(DataError, match="contain NaN"):
        replication_measures([1.0, np.nan], 1.0)


def test_varying_target():
    # estimates 1.0, 2.0 of realised targets .5, 2.5: errors .5, -.5 -> bias 0;
    # MCSE(bias) = sqrt((.25 + .25) / (2 * 1)) = .5; EmpSE is the SD of the estimates: sqrt(.5) = .7071068
    # MSE = .25 with every squared error equal -> MCSE(MSE) = 0
    # bias-eliminated coverage shifts each target by the bias (0): interval [.4,.6] holds .5, [2.6,3] misses 2.5
    m = replication_measures([1.0, 2.0], [0.5, 2.5], conf_low=[0.4, 2.6], conf_high=[0.6, 3.0])
    assert m["bias"] == pytest.approx(0.0, abs=1e-12)
    assert m["bias_mcse"] == pytest.approx(0.5)
    assert m["empse"] == pytest.approx(0.7071068, abs=1e-7)
    assert m["mse"] == pytest.approx(0.25) and m["mse_mcse"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(m["rel_bias"])  # no single target to divide by
    assert m["coverage"] == 0.5 and m["be_coverage"] == 0.5


# Case D: group effects, true values 0, replication 1 with two groups, replication 2 with three.
GE_EST = [0.1, -0.3, 0.2, 0.0, 0.4]
GE_REP = [1, 1, 2, 2, 2]
GE_SE = [0.1, 0.3, 0.2, 0.2, 0.2]
GE_LOW = [-0.1, -0.5, -0.2, -0.1, -0.1]
GE_HIGH = [0.3, -0.1, 0.6, 0.1, 0.9]


def test_cluster_mean_by_hand():
    # pooled mean = (.1 - .3 + .2 + 0 + .4) / 5 = .08; replication sums S = -.2 (k=2), .6 (k=3)
    # S - mean*k: -.2 - .16 = -.36, .6 - .24 = .36; R/(R-1) * sum of squares = 2 * .2592 = .5184
    # MCSE = sqrt(.5184) / 5 = .72 / 5 = .144
    m, se = cluster_mean(GE_EST, GE_REP)
    assert m == pytest.approx(0.08, abs=1e-12) and se == pytest.approx(0.144, abs=1e-12)
    # equal cluster sizes: reduces to sqrt(sum (mean_r - mean)^2 / (R )): means .5 and .1 -> .3,
    # sqrt((.04 + .04) / 2) = .2
    m, se = cluster_mean([0.4, 0.6, 0.0, 0.2], [0, 0, 1, 1])
    assert m == pytest.approx(0.3) and se == pytest.approx(0.2)
    assert np.isnan(cluster_mean([1.0, 2.0], [0, 0])[1])  # one replication: no MCSE


def test_group_effect_measures_by_hand():
    m = group_effect_measures(GE_EST, 0.0, GE_REP, GE_SE, GE_LOW, GE_HIGH)
    assert m["bias"] == pytest.approx(0.08) and m["bias_mcse"] == pytest.approx(0.144)
    # squared errors .01 .09 | .04 0 .16: MSE = .30 / 5 = .06; S = .10, .20; S - .06k = -.02, .02
    # MCSE = sqrt(2 * .0008) / 5 = .04 / 5 = .008; RMSE sqrt(.06) = .2449490, MCSE .008 / (2*.2449490) = .0163299
    assert m["mse"] == pytest.approx(0.06) and m["mse_mcse"] == pytest.approx(0.008)
    assert m["rmse"] == pytest.approx(0.2449490, abs=1e-7)
    assert m["rmse_mcse"] == pytest.approx(0.0163299, abs=1e-7)
    # SE^2 .01 .09 | .04 .04 .04: mean .22 / 5 = .044, ModSE sqrt(.044) = .2097618;
    # S = .10, .12; S - .044k = .012, -.012; MCSE(mean SE^2) = sqrt(2 * .000288) / 5 = .024 / 5 = .0048;
    # MCSE(ModSE) = .0048 / (2 * .2097618) = .0114416
    assert m["modse"] == pytest.approx(0.2097618, abs=1e-7)
    assert m["modse_mcse"] == pytest.approx(0.0114416, abs=1e-7)
    # 0 lies in [-.1,.3], not [-.5,-.1] | in all three: 4/5 = .8; S = 1, 3; S - .8k = -.6, .6;
    # MCSE = sqrt(2 * .72) / 5 = 1.2 / 5 = .24
    assert m["coverage"] == pytest.approx(0.8) and m["coverage_mcse"] == pytest.approx(0.24)
    for k in ("empse", "rel_bias", "rel_error_modse", "be_coverage"):
        assert np.isnan(m[k]), k


def _row(scenario, rep, backend, effect, term, est, truth, group="", level="", se=np.nan, low=np.nan,
         high=np.nan, converged=True, error=""):
    return dict(scenario=scenario, replication=rep, backend=backend, effect=effect, group=group, level=level,
                term=term, estimate=est, std_error=se, conf_low=low, conf_high=high, truth=truth,
                realized=truth, converged=converged, warnings="", seconds=0.5 + rep, seed=rep, error=error)


def _results():
    rows = []
    for r in range(4):  # backend a: Case A
        rows.append(_row("s", r, "a", "fixed", "x", EST[r], 1.0, se=SE[r], low=LOW[r], high=HIGH[r]))
    # backend b: rep 0 failed, rep 1 did not converge (estimate 1.4), reps 2 and 3 converged (.9, 1.1)
    rows.append(_row("s", 0, "b", "", "", np.nan, np.nan, converged=False, error="BackendError: boom"))
    rows.append(_row("s", 1, "b", "fixed", "x", 1.4, 1.0, converged=False))
    rows.append(_row("s", 2, "b", "fixed", "x", 0.9, 1.0))
    rows.append(_row("s", 3, "b", "fixed", "x", 1.1, 1.0))
    rows.append(_row("s", 3, "b", "fixed", "z", 5.0, np.nan))  # no truth: not scored
    # backend a: group effects (Case D) in replications 1 and 2
    for est, rep, se, lo, hi, lab in zip(GE_EST, GE_REP, GE_SE, GE_LOW, GE_HIGH, ["g1", "g2", "g1", "g2", "g3"]):
        rows.append(_row("s", rep, "a", "ran_vals", "(Intercept)", est, 0.0, group="g", level=lab, se=se,
                         low=lo, high=hi))
    # backend c: every fit failed
    for r in range(2):
        rows.append(_row("s", r, "c", "", "", np.nan, np.nan, converged=False, error="SpecError: no"))
    return pd.DataFrame(rows)


def test_performance_table():
    perf = performance(_results())
    assert list(perf.columns) == COLUMNS
    p = perf.set_index(["backend", "effect", "term"])
    a = p.loc[("a", "fixed", "x")]
    assert a["bias"] == pytest.approx(0.05) and a["coverage"] == pytest.approx(0.75)
    assert a["empse"] == pytest.approx(0.2380476, abs=1e-7) and a["n_rep"] == 4 and a["n_used"] == 4
    assert a["convergence"] == 1.0 and a["convergence_mcse"] == 0.0
    # b: 4 attempted fits, 2 converged -> .5, MCSE sqrt(.25/4) = .25;
    # by default the non-converged estimate counts: mean(1.4, .9, 1.1) = 1.1333333 -> bias .1333333
    b = p.loc[("b", "fixed", "x")]
    assert (b["n_rep"], b["n_used"]) == (4, 3)
    assert b["bias"] == pytest.approx(0.1333333, abs=1e-7)
    assert b["convergence"] == 0.5 and b["convergence_mcse"] == pytest.approx(0.25)
    assert ("b", "fixed", "z") not in p.index  # no truth
    g = p.loc[("a", "ran_vals", "(Intercept)")]
    assert g["group"] == "g" and g["n_used"] == 5
    assert g["rmse"] == pytest.approx(0.2449490, abs=1e-7) and g["coverage_mcse"] == pytest.approx(0.24)
    # c never produced an estimate: one row with its convergence rate 0 (MCSE 0)
    c = perf[perf["backend"] == "c"]
    assert len(c) == 1 and c["n_used"].iloc[0] == 0 and c["convergence"].iloc[0] == 0.0
    # converged only: mean(.9, 1.1) = 1 -> bias 0, n_used 2
    b2 = performance(_results(), converged_only=True).set_index(["backend", "effect", "term"]).loc[("b", "fixed", "x")]
    assert b2["n_used"] == 2 and b2["bias"] == pytest.approx(0.0, abs=1e-12)


def test_performance_long_and_fit_summary():
    long = performance_long(performance(_results()))
    cov = long[(long["backend"] == "a") & (long["term"] == "x") & (long["measure"] == "coverage")]
    assert cov["estimate"].tolist() == [0.75] and cov["mcse"].round(7).tolist() == [0.2165064]
    fs = fit_summary(_results()).set_index("backend")
    assert fs.loc["b", ["n_rep", "n_failed", "n_not_converged"]].tolist() == [4, 1, 1]
    assert fs.loc["b", "convergence"] == 0.5 and fs.loc["b", "first_error"] == "BackendError: boom"
    # seconds are .5 + replication: b's per-fit times .5 1.5 2.5 3.5 -> mean 2.0
    assert fs.loc["b", "seconds_mean"] == pytest.approx(2.0)
    assert fs.loc["c", "convergence"] == 0.0 and fs.loc["a", "n_failed"] == 0


def test_bad_input_is_named():
    with pytest.raises(DataError, match=r"\['truth', 'realized'\] are missing"):
        performance(_results().drop(columns=["truth", "realized"]))
    doubled = pd.concat([_results(), _results()])
    with pytest.raises(DataError, match="more than once"):
        performance(doubled)
    with pytest.raises(ValueError, match="target must be"):
        performance(_results(), target="estimate")


def test_ran_pars_coverage_power_and_df():
    rows = []
    # ran_pars: SD 0.5 in [.3,.7] yes, [.55,.9] no, [.2,.45] no, [.4,.6] yes; replication 4 has no interval
    # -> n_ci 4, coverage 2/4 = .5, MCSE sqrt(.25/4) = .25; the estimate of replication 4 still counts in the bias
    for r, (est, lo, hi) in enumerate([(0.5, 0.3, 0.7), (0.7, 0.55, 0.9), (0.3, 0.2, 0.45), (0.5, 0.4, 0.6),
                                       (0.5, np.nan, np.nan)]):
        rows.append(_row("s", r, "a", "ran_pars", "sd__(Intercept)", est, 0.5, group="g", low=lo, high=hi))
    # fixed: p-values .01 .2 .04 .05 and one missing -> n_p 4, 3 at or below .05: power .75,
    # MCSE sqrt(.75 * .25 / 4) = .2165064; df 9, 9.5, 12, inf and one missing -> median (9.5 + 12) / 2 = 10.75
    for r, (p, df) in enumerate([(0.01, 9.0), (0.2, 9.5), (0.04, 12.0), (0.05, np.inf), (np.nan, np.nan)]):
        rows.append({**_row("s", r, "a", "fixed", "x", 1.0, 1.0, low=0.5, high=1.5), "p_value": p, "df": df})
    # backend z: every df inf -> median inf; truth 0 and p-values .5 .01 -> power (type I error) .5
    for r, p in enumerate([0.5, 0.01]):
        rows.append({**_row("s", r, "z", "fixed", "x", 0.1, 0.0, low=-1.0, high=1.0), "p_value": p, "df": np.inf})
    perf = performance(pd.DataFrame(rows)).set_index(["backend", "effect", "term"])
    sd = perf.loc[("a", "ran_pars", "sd__(Intercept)")]
    assert (sd["n_used"], sd["n_ci"]) == (5, 4)
    assert sd["coverage"] == pytest.approx(0.5) and sd["coverage_mcse"] == pytest.approx(0.25)
    assert sd["bias"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(sd["power"]) and sd["n_p"] == 0 and np.isnan(sd["median_df"])  # no df, no p-values
    fx = perf.loc[("a", "fixed", "x")]
    assert fx["n_p"] == 4 and fx["power"] == pytest.approx(0.75)
    assert fx["power_mcse"] == pytest.approx(0.2165064, abs=1e-7)
    assert fx["median_df"] == pytest.approx(10.75)
    z = perf.loc[("z", "fixed", "x")]
    assert np.isinf(z["median_df"]) and z["power"] == pytest.approx(0.5)
    # a table without df / p_value columns (written before they existed): no power, no df, coverage as before
    old = performance(_results())
    assert old["power"].isna().all() and old["median_df"].isna().all() and (old["n_p"] == 0).all()
    # the report shows them: df "inf" for z, power with its MCSE, ran_pars coverage
    from hiercompare.report.study import recovery_table

    rec = recovery_table(perf.reset_index()).set_index(["backend", "effect"])
    assert rec.loc[("z", "fixed"), "df"] == "inf" and rec.loc[("a", "fixed"), "df"] == "10.75"
    assert rec.loc[("a", "fixed"), "power"] == "0.7500 (0.2165)"
    assert rec.loc[("a", "ran_pars"), "coverage"] == "0.5000 (0.2500)"
