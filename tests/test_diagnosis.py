"""hiercompare.diagnosis: one exact likelihood at every engine's estimates, flags, and the known conventions.

Tolerances: the exact log-likelihood at native's own estimates equals native's to 1e-8 (absolute), at lme4's
to 1e-6 (both REML and ML); a convention recomputed from the other side's numbers reproduces the disagreeing
value within diagnosis.REPRODUCE_REL (1e-3, relative); an engine below the best by more than
diagnosis.DELTA_LOGLIK (1e-4) is named as the one that stopped early.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import diagnosis, mixedcore
from hiercompare.diagnosis import diagnose, joint_hessian_se, theta_from_fit

SLEEP_F = "Reaction ~ Days + (1 + Days | Subject)"
PASTES_F = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"
EXAM_F = "normexam ~ standLRT + schavg + (1 + standLRT | school)"


def _fit(data, formula, backend, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the early-stopping fits warn by design
        return hc.fit(data, formula, backend=backend, **kw)


@pytest.fixture(scope="module")
def exam():
    return hc.datasets.load("exam")


@pytest.fixture(scope="module")
def exam_fits(exam):
    return {b: _fit(exam, EXAM_F, b) for b in ("native", "mixedlm")}


# ------------------------------------------------------------------------------------ the exact likelihood
@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("case", ["sleepstudy", "pastes"])
def test_exact_loglik_at_native_estimates(case, method, sleepstudy, pastes):
    data, formula = (sleepstudy, SLEEP_F) if case == "sleepstudy" else (pastes, PASTES_F)
    fit = _fit(data, formula, "native", method=method)
    core = mixedcore.from_model_data(fit.model)
    # the tidy SDs and correlations give back native's own theta
    np.testing.assert_allclose(theta_from_fit(fit, core), fit.diagnostics["theta"], rtol=1e-9, atol=1e-12)
    lik = diagnose([fit, _fit(data, formula, "native", method="ML" if method == "REML" else "REML")]).likelihood
    row = lik.iloc[0]
    assert row["method"] == method
    assert abs(row["loglik_exact"] - fit.loglik) <= 1e-8
    assert row["verdict"] == "best" and row["delta_to_best"] == 0.0


@pytest.mark.r
@pytest.mark.parametrize("method", ["REML", "ML"])
@pytest.mark.parametrize("case", ["sleepstudy", "pastes"])
def test_exact_loglik_at_lme4_estimates(case, method, sleepstudy, pastes):
    data, formula = (sleepstudy, SLEEP_F) if case == "sleepstudy" else (pastes, PASTES_F)
    fits = [_fit(data, formula, "lme4", method=method), _fit(data, formula, "native", method=method)]
    lik = diagnose(fits).likelihood.set_index("backend")
    assert abs(lik.loc["lme4", "loglik_exact"] - fits[0].loglik) <= 1e-6
    assert abs(lik.loc["lme4", "reported_minus_exact"]) <= 1e-6
    # both at the same optimum
    assert set(lik["verdict"]) == {"best"}
    assert abs(lik.loc["lme4", "loglik_exact"] - lik.loc["native", "loglik_exact"]) <= 1e-6


# ------------------------------------------------------------------------------------ an engine that stops early
def test_names_the_engine_that_stops_early(sleepstudy):
    """mixedlm limited to one iteration per optimiser stops about 0.1 log-likelihood units short."""
    native = _fit(sleepstudy, SLEEP_F, "native")
    early = _fit(sleepstudy, SLEEP_F, "mixedlm", maxiter=1)
    assert early.diagnostics["converged"] is False
    d = diagnose([native, early])
    lik = d.likelihood.set_index("backend")
    assert lik.loc["native", "verdict"] == "best"
    assert lik.loc["mixedlm", "verdict"] == "worse_optimum"
    delta = lik.loc["mixedlm", "delta_to_best"]
    assert delta < -1e-2  # far beyond the 1e-4 threshold
    # the exact value at mixedlm's estimates is what mixedlm itself reported (statsmodels' llf is exact)
    assert abs(lik.loc["mixedlm", "loglik_exact"] - early.loglik) <= 1e-6
    causes = d.causes.set_index("cause")
    assert "unexplained" not in causes.index
    row = causes.loc["worse_optimum"]
    assert row["evidence"]["lower"] == "mixedlm" and row["evidence"]["higher"] == "native"
    assert row["evidence"]["delta_loglik"] == pytest.approx(delta, abs=1e-12)
    assert "mixedlm stopped early or at a worse local optimum" in row["explanation"]
    assert f"{abs(delta):.3g}" in row["explanation"]
    assert causes.loc["convergence_flag", "evidence"]["backend"] == "mixedlm"


@pytest.mark.r
def test_lme4_in_the_set_names_the_lower_engine_and_allfit(sleepstudy):
    fits = [_fit(sleepstudy, SLEEP_F, "lme4"), _fit(sleepstudy, SLEEP_F, "native"),
            _fit(sleepstudy, SLEEP_F, "mixedlm", maxiter=1)]
    d = diagnose(fits, allfit=True)
    lik = d.likelihood.set_index("backend")
    assert lik.loc["mixedlm", "verdict"] == "worse_optimum"
    assert lik.loc["lme4", "verdict"] == "best" and lik.loc["native", "verdict"] == "best"
    worse = d.causes[d.causes["cause"] == "worse_optimum"]
    assert set(worse["pair"]) == {"lme4 vs mixedlm", "native vs mixedlm"}
    assert {e["lower"] for e in worse["evidence"]} == {"mixedlm"}
    # lme4 is in a disagreeing pair: refitted under every optimizer, all at the best likelihood
    from hiercompare.backends.lme4 import OPTIMIZERS

    assert list(d.allfit["optimizer"]) == list(OPTIMIZERS)
    assert (d.allfit["delta_to_best"].abs() <= diagnosis.DELTA_LOGLIK).all()
    assert (d.allfit["max_rel_diff"] < 1e-3).all()


# ------------------------------------------------------------------------------------ conventions
def test_mixedlm_se_convention_is_reproduced_on_exam(exam_fits):
    """mixedlm's SE of the school-level covariate schavg is about 7% larger than native's (and lme4's): the
    inverse of statsmodels' joint observed Hessian, recomputed at native's estimates, reproduces it."""
    native, mixed = exam_fits["native"], exam_fits["mixedlm"]
    d = diagnose([native, mixed])
    assert set(d.likelihood["verdict"]) == {"best"}
    row = d.causes.set_index("cause").loc["se_convention"]
    assert row["explained"] and not row["info"] and row["param_classes"] == "fixed_se"
    ev = row["evidence"]["terms"]["schavg"]
    assert 1.05 < ev["ratio"] < 1.09
    assert ev["rel_diff_joint"] <= 1e-3 and ev["rel_diff_conditional"] <= 1e-3
    assert "schavg: mixedlm 0.114" in row["explanation"]
    # the same computation at mixedlm's own estimates gives statsmodels' bse_fe (much tighter)
    core = mixedcore.from_model_data(mixed.model)
    se = joint_hessian_se(core, theta_from_fit(mixed, core), reml=True)
    np.testing.assert_allclose(se, np.asarray(mixed.raw.bse_fe), rtol=1e-5)
    # and native's SEs are the conditional sigma^2 (X'V^-1X)^-1 at its own estimates
    assert ev["se_other"] == pytest.approx(native.tidy("fixed").set_index("term").loc["schavg", "std_error"])


@pytest.mark.r
def test_exam_with_lme4(exam, exam_fits):
    fits = [exam_fits["native"], _fit(exam, EXAM_F, "lme4"), exam_fits["mixedlm"]]
    d = diagnose(fits)
    assert set(d.likelihood["verdict"]) == {"best"}
    assert not len(d.unexplained), d.unexplained[["pair", "explanation"]].to_string()
    se = d.causes[d.causes["cause"] == "se_convention"]
    assert set(se["pair"]) == {"native vs mixedlm", "lme4 vs mixedlm"}
    assert all(r["reproduced"] for r in se["evidence"])


def test_condvar_convention(sleepstudy):
    """native's BLUP SDs (condvar='full') against mixedlm's beta-conditional ones. agreement.py has no
    ran_vals_se tolerance yet, so the test marks differences above 1% as disagreements, as such a tolerance
    would."""
    native, mixed = _fit(sleepstudy, SLEEP_F, "native"), _fit(sleepstudy, SLEEP_F, "mixedlm")
    table = hc.compare([native, mixed])
    flag = (table["param_class"] == "ran_vals_se") & (table["rel_diff"] > 1e-2)
    assert flag.any()
    table.loc[flag, "verdict"] = "disagree"
    d = diagnose([native, mixed], agreement_table=table)
    row = d.causes.set_index("cause").loc["condvar_convention"]
    assert row["explained"] and row["n_disagree"] == int(flag.sum())
    assert row["evidence"]["max_rel_diff_beta_fixed"] <= 1e-3
    assert row["evidence"]["ratio_min"] >= 1.0 - 1e-9
    assert "unexplained" not in set(d.causes["cause"])


# ------------------------------------------------------------------------------------ information, not disagreement
def test_reml_vs_ml_is_method_info(sleepstudy):
    fits = [_fit(sleepstudy, SLEEP_F, "native"), _fit(sleepstudy, SLEEP_F, "mixedlm", method="ML")]
    d = diagnose(fits)
    assert list(d.causes["cause"]) == ["method"]
    row = d.causes.iloc[0]
    assert row["info"] and row["explained"] and row["n_disagree"] > 0
    assert "native fitted REML, mixedlm ML" in row["explanation"]
    # each is best under its own criterion
    assert list(d.likelihood["verdict"]) == ["best", "best"]


def test_same_backend_twice_and_pooling(sleepstudy):
    fits = [_fit(sleepstudy, SLEEP_F, "native"), _fit(sleepstudy, SLEEP_F, "native", method="ML"),
            _fit(sleepstudy, SLEEP_F, "ols")]
    d = diagnose(fits)
    assert list(d.likelihood["backend"]) == ["native (REML)", "native (ML)", "ols"]
    assert d.likelihood.loc[2, "verdict"] == "not_applicable"
    causes = d.causes.set_index("pair")
    assert causes.loc["native (REML) vs native (ML)", "cause"] == "method"
    pooling = causes.loc["native (REML) vs ols"]
    assert pooling["cause"] == "pooling" and pooling["info"]
    spread = {s["term"]: s for s in pooling["evidence"]["spread"]}
    assert spread["(Intercept)"]["n"] == 18 and spread["(Intercept)"]["ratio"] < 1  # partial pooling shrinks
    assert f"ratio {spread['(Intercept)']['ratio']:.3g}" in pooling["explanation"]
    with pytest.raises(ValueError, match="ambiguous"):
        diagnose(fits, agreement_table=hc.compare(fits))


def test_unexplained_first_and_json(sleepstudy):
    """A disagreement nothing explains (here: an SD marked as disagreeing at the same optimum) comes first."""
    fits = [_fit(sleepstudy, SLEEP_F, "native", method="ML"), _fit(sleepstudy, SLEEP_F, "mixedlm", method="ML"),
            _fit(sleepstudy, SLEEP_F, "ols")]
    table = hc.compare(fits)
    sd = (table["pair"] == "native vs mixedlm") & (table["param_class"] == "sd")
    table.loc[sd.idxmax(), "verdict"] = "disagree"
    d = diagnose(fits, agreement_table=table)
    first = d.causes.iloc[0]
    assert first["cause"] == "unexplained" and not first["explained"] and first["pair"] == "native vs mixedlm"
    assert "exact log-likelihoods" in first["explanation"]
    assert list(d.causes["info"]) == sorted(d.causes["info"])  # information rows last
    out = json.loads(d.to_json())
    assert out["causes"][0]["cause"] == "unexplained"
    assert out["threshold_loglik"] == diagnosis.DELTA_LOGLIK
    assert {r["backend"] for r in out["likelihood"]} == {"native", "mixedlm", "ols"}


def test_refuses_mixed_models(sleepstudy):
    with pytest.raises(ValueError, match="one model"):
        diagnose([_fit(sleepstudy, SLEEP_F, "native"), _fit(sleepstudy, "Reaction ~ Days + (1 | Subject)", "native")])
    with pytest.raises(ValueError, match="at least two"):
        diagnose([_fit(sleepstudy, SLEEP_F, "native")])


def test_singular_fit_same_likelihood():
    """A submarket SD at the boundary: native snaps it to 0, mixedlm stops at a tiny value. With the boundary
    verdict turned into a disagreement (as agreement.py may do for a fit's own boundary terms), the diagnosis
    finds both at the same exact likelihood and names the boundary."""
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 10, {"(Intercept)": 0.8}, label="Market_{i}"),
                             hc.LevelScenario("submarket", 5, {"(Intercept)": 0.0}, label="Sub{i}")), n_obs=20)
    data, _ = hc.simulate(sc, seed=3)
    f = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    fits = [_fit(data, f, "native"), _fit(data, f, "mixedlm")]
    table = hc.compare(fits)
    table.loc[table["verdict"] == "boundary", "verdict"] = "disagree"
    d = diagnose(fits, agreement_table=table)
    assert set(d.likelihood["verdict"]) == {"best"}
    row = d.causes.set_index("cause").loc["singular"]
    assert row["explained"] and abs(row["evidence"]["delta_loglik_exact"]) <= diagnosis.DELTA_LOGLIK
    assert any("market:submarket sd__(Intercept)" in t for t in row["evidence"]["boundary_terms"])
    assert "unexplained" not in set(d.causes["cause"])


@pytest.mark.r
def test_glmm_engines_are_compared_on_their_reported_laplace_likelihoods():
    """cbpp with trials: native's and lme4's GLMMs both maximise the Laplace likelihood (native says "ML (Laplace)",
    lme4 "ML"): the likelihood table ranks them on the reported values; glm and r_glm are no pooling, never a
    'different model'."""
    from hiercompare.agreement import compare

    d = pd.read_csv(Path(__file__).parent / "data" / "glmm_cbpp.csv")
    f = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    fits = [hc.fit(d, f, family="binomial", backend=b) for b in ("native", "lme4", "glm", "r_glm")]
    dg = diagnose(fits, compare(fits))
    lik = dg.likelihood.set_index("backend")
    assert lik.loc["native", "loglik_exact"] == fits[0].loglik and lik.loc["lme4", "loglik_exact"] == fits[1].loglik
    best = max(fits[0].loglik, fits[1].loglik)
    assert lik.loc[["native", "lme4"], "delta_to_best"].tolist() == [fits[0].loglik - best, fits[1].loglik - best]
    assert lik.loc["glm", "verdict"] == "not_applicable"
    causes = dg.causes
    assert "different_model" not in set(causes["cause"])
    assert set(causes[causes.pair.str.contains("glm")]["cause"]) <= {"pooling"}
