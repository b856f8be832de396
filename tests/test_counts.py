"""Counts and proportions (issue 12): offset(), cbind() trials, prior weights, the negative binomial, the glm / r_glm
backends, response-scale predictions; against R on public data.

The R numbers are in tests/data/glm_reference.csv, written by tests/data/glm_reference.R from R's own copies of
lme4's ``cbpp`` and mlmRev's ``Mmmec``; the Python side reads the CSV copies tests/data/glmm_cbpp.csv and
glmm_mmmec.csv, written from the same R objects by tests/data/glmm_reference.R (tests/test_glmmcore.py checks them
byte for byte; origin in hiercompare/data/SOURCES.md). Tolerances:

* glm / r_glm / ols / r_lm vs R's glm / lm on R's formula (contr.sum): estimates, SEs, every group's deviation and
  its SE to 1e-8 (relative, absolute below 1); glm vs r_glm on the nested design to 1e-8; the negative binomial
  against ``MASS::glm.nb`` at its own defaults to 1e-6 (glm.nb stops theta at steps of 1.2e-4 of theta.ml).
* lme4 (the backend) vs the best of lme4's optimizers: log-likelihood within 1e-6, fixed effects within 1e-3 of
  their SE, SDs and theta within 1e-3 relative; for lmer (weights, offset) also lmerTest's Satterthwaite df to 1e-5
  (native with weights: 1e-4).
"""
from __future__ import annotations

import subprocess
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import ModelSpec, SpecError
from hiercompare.backends import get_backend
from hiercompare.design import prepare
from hiercompare.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
REF = pd.read_csv(DATA / "glm_reference.csv", dtype={"value": float})

CBPP = "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)"
MMMEC = "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"


@pytest.fixture(scope="module")
def cbpp():
    return pd.read_csv(DATA / "glmm_cbpp.csv")


@pytest.fixture(scope="module")
def mmmec():
    mm = pd.read_csv(DATA / "glmm_mmmec.csv")
    mm["log_expected"] = np.log(mm["expected"])
    mm["lsmr"] = np.log((mm["deaths"] + 0.5) / mm["expected"])
    mm["ldeaths"] = np.log(mm["deaths"] + 0.5)
    return mm


def ref(case: str) -> pd.DataFrame:
    out = REF[REF.case == case]
    assert len(out), f"no reference rows for {case}: rerun tests/data/glm_reference.R"
    return out


def close(a, b, tol):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------- grammar
@pytest.mark.parametrize("formula, family, text, lme4_text, variables", [
    ("cbind(k, n - k) ~ x + (1 | g)", "binomial", "cbind(k, n - k) ~ 1 + x + (1 | g)",
     "cbind(k, n_minus_k) ~ 1 + x + (1 | g)", ("k", "n", "x", "g")),
    ("cbind(k, f) ~ x + (1 | g)", "binomial", "cbind(k, f) ~ 1 + x + (1 | g)", "cbind(k, f) ~ 1 + x + (1 | g)",
     ("k", "f", "x", "g")),
    ("y ~ x + offset(lo) + (1 | g)", "poisson", "y ~ 1 + x + offset(lo) + (1 | g)",
     "y ~ 1 + x + offset(lo) + (1 | g)", ("y", "x", "lo", "g")),
    ("y~offset(a)+offset(b)+(1|g)", "negbinomial", "y ~ 1 + offset(a) + offset(b) + (1 | g)",
     "y ~ 1 + offset(a) + offset(b) + (1 | g)", ("y", "a", "b", "g")),
    ("cbind(k,n-k)~0+offset(lo)+(1|g)", "binomial", "cbind(k, n - k) ~ 0 + offset(lo) + (1 | g)",
     "cbind(k, n_minus_k) ~ 0 + offset(lo) + (1 | g)", ("k", "n", "lo", "g")),
])
def test_offsets_and_trials_parse_render_and_reparse(formula, family, text, lme4_text, variables):
    from hiercompare import rbridge

    spec = ModelSpec.from_formula(formula, family=family)
    assert spec.formula == text and spec.variables == variables
    assert ModelSpec.from_formula(spec.formula, family=family) == spec
    assert rbridge.r_formula(spec) == lme4_text  # the failures of n - k reach R as a data column


def test_the_failures_column_never_clashes():
    spec = ModelSpec.from_formula("cbind(k, n - k) ~ n_minus_k + (1 | g)", family="binomial")
    assert spec.failures_column == "n_minus_k_"


@pytest.mark.parametrize("formula, family, message", [
    ("cbind(k, n - j) ~ 1 + (1 | g)", "binomial", r"subtracted column must be the successes 'k': write cbind\(k, n - k\)"),
    ("cbind(k) ~ 1 + (1 | g)", "binomial", r"cbind\(successes, failures\) or cbind\(successes, n - successes\)"),
    ("cbind(k, n - k, m) ~ 1 + (1 | g)", "binomial", r"cbind\(successes, failures\) or cbind\("),
    ("cbind(k, log(n)) ~ 1 + (1 | g)", "binomial", r"cbind\(successes, failures\) or cbind\("),
    ("cbind(k, k) ~ 1 + (1 | g)", "binomial", "names the same column twice"),
    ("cbind(k, n - k) ~ 1 + (1 | g)", "poisson", "pass family='binomial'"),
    ("y ~ x + cbind(a, b) + (1 | g)", "binomial", "cbind.. belongs on the left"),
    ("y ~ offset(log(e)) + (1 | g)", "poisson", r"offset\(\) takes exactly one column name .* offset\(column\)"),
    ("y ~ x:offset(e) + (1 | g)", "poisson", r"write offset\(column\), a term of its own"),
    ("y ~ x + (1 + offset(e) | g)", "poisson", "plain numeric columns"),
    ("y ~ offset(e) + offset(e) + (1 | g)", "poisson", "more than once"),
    ("y ~ offset(y) + (1 | g)", "poisson", "also appears as a predictor or offset"),
    ("y ~ x + (1 | e) + offset(e)", "poisson", "both as a grouping factor"),
    ("y ~ log(x) + (1 | g)", "poisson", r"only C\(column\) and offset\(column\) are"),
    ("y ~ x + (1 | g)", "gamma", "choose one of gaussian, binomial, poisson, negbinomial"),
])
def test_what_the_grammar_refuses_names_the_accepted_form(formula, family, message):
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_formula(formula, family=family)


def test_r_grammar_refuses_code_in_offset_or_cbind():
    from hiercompare import rbridge

    spec = ModelSpec.from_formula("y ~ x + (1 | g)", family="poisson")
    for bad in (["1", "offset(log(x))"], ["1", "offset(x); q()"], ["cbind(a, b)"]):
        with pytest.raises(SpecError, match="refusing to send"):
            rbridge.r_formula(spec, fixed=bad)


# ---------------------------------------------------------------------------------------------------- ModelData
def test_model_data_fields(cbpp, mmmec):
    md = prepare(ModelSpec.from_formula(CBPP, family="binomial"), cbpp)
    np.testing.assert_array_equal(md.y, cbpp["incidence"])
    np.testing.assert_array_equal(md.trials, cbpp["size"])
    np.testing.assert_array_equal(md.offset, 0.0)
    assert md.weights is None and not md.has_offset
    np.testing.assert_array_equal(md.data["size_minus_incidence"], cbpp["size"] - cbpp["incidence"])
    f = cbpp.assign(healthy=cbpp["size"] - cbpp["incidence"])
    md2 = prepare(ModelSpec.from_formula("cbind(incidence, healthy) ~ C(period) + (1 | herd)", family="binomial"), f)
    np.testing.assert_array_equal(md2.trials, md.trials)
    md = prepare(ModelSpec.from_formula(MMMEC, family="poisson"), mmmec)
    np.testing.assert_array_equal(md.offset, mmmec["log_expected"])
    assert md.trials is None and md.has_offset
    binary = cbpp.assign(any=(cbpp["incidence"] > 0).astype(int))
    md = prepare(ModelSpec.from_formula("any ~ C(period) + (1 | herd)", family="binomial"), binary)
    np.testing.assert_array_equal(md.trials, 1.0)
    md = prepare(ModelSpec.from_formula("lsmr ~ uvb + (1 | nation)"), mmmec, weights="expected")
    np.testing.assert_array_equal(md.weights, mmmec["expected"])
    md = prepare(ModelSpec.from_formula("lsmr ~ uvb + (1 | nation)"), mmmec, weights=np.ones(len(mmmec)))
    np.testing.assert_array_equal(md.weights, 1.0)


def test_model_data_refusals(cbpp, mmmec):
    spec = ModelSpec.from_formula(CBPP, family="binomial")
    with pytest.raises(DataError, match="more successes"):
        prepare(spec, cbpp.assign(size=np.maximum(cbpp["incidence"] - 1, 0)))
    with pytest.raises(DataError, match="non-negative integer successes"):
        prepare(spec, cbpp.assign(incidence=cbpp["incidence"] + 0.5))
    with pytest.raises(DataError, match="For successes out of n trials write cbind"):
        prepare(ModelSpec.from_formula("incidence ~ 1 + (1 | herd)", family="binomial"), cbpp)
    with pytest.raises(DataError, match="non-negative integer counts"):
        prepare(ModelSpec.from_formula("lsmr ~ 1 + (1 | nation)", family="negbinomial"), mmmec)
    with pytest.raises(DataError, match="missing or non-finite values in used columns: expected"):
        prepare(ModelSpec.from_formula("deaths ~ offset(expected) + (1 | nation)", family="poisson"),
                mmmec.assign(expected=np.where(mmmec.index == 0, -np.inf, mmmec["expected"])))
    with pytest.raises(DataError, match="offset column 'nation' must be numeric"):
        prepare(ModelSpec.from_formula("deaths ~ offset(nation) + (1 | region)", family="poisson"), mmmec)
    gauss = ModelSpec.from_formula("lsmr ~ uvb + (1 | nation)")
    with pytest.raises(DataError, match="positive"):
        prepare(gauss, mmmec, weights=np.zeros(len(mmmec)))
    with pytest.raises(DataError, match="one per row"):
        prepare(gauss, mmmec, weights=np.ones(3))
    with pytest.raises(SpecError, match="Gaussian prior weights"):
        prepare(ModelSpec.from_formula(MMMEC, family="poisson"), mmmec, weights="expected")


def test_backends_that_cannot_use_them_refuse(mmmec, cbpp):
    with pytest.raises(SpecError, match=r"'mixedlm' cannot use offset\(log_expected\); fit this formula with one of "
                                        r"\[.*'lme4'.*\]"):
        hc.fit(mmmec, "ldeaths ~ uvb + offset(log_expected) + (1 | nation)", backend="mixedlm")
    with pytest.raises(SpecError, match=r"'mixedlm' cannot use prior weights \(weights=\); fit with one of \[.*'ols'"):
        hc.fit(mmmec, "lsmr ~ uvb + (1 | nation)", backend="mixedlm", weights="expected")
    with pytest.raises(SpecError, match=r"'ols' fits families \['gaussian'\], not 'binomial'"):
        hc.fit(cbpp, CBPP, backend="ols", family="binomial")
    with pytest.raises(SpecError, match="'glm' cannot use prior weights"):  # as fit() checks every backend
        md = prepare(ModelSpec.from_formula("lsmr ~ uvb + (1 | nation)"), mmmec, weights="expected")
        get_backend("glm").check_data(replace(md, spec=ModelSpec.from_formula("deaths ~ uvb + (1 | nation)",
                                                                            family="poisson")))


# ---------------------------------------------------------------------------------------------------- glm vs R
def _check_fixed_effects(fit, r, tol):
    names = {c.r_name: c.name for c in fit.model.columns}
    t = fit.tidy()
    fx = t[t.effect == "fixed"].set_index("term")
    for kind, col in (("fixef", "estimate"), ("fixef_se", "std_error")):
        rows = r[r.kind == kind]
        assert len(rows)
        close([fx.loc[names[n], col] for n in rows["name"]], rows["value"], tol)
    rv = t[t.effect == "ran_vals"]
    mine = {f"{g}|{lev}": (e, s) for g, lev, e, s in zip(rv.group, rv.level, rv.estimate, rv.std_error)}
    for kind, i in (("ranef", 0), ("ranef_sd", 1)):
        rows = r[r.kind == kind]
        assert len(rows)
        close([mine[n][i] for n in rows["name"]], rows["value"], tol)
    close(fit.loglik, r[r.kind == "loglik"]["value"].iloc[0], tol)


def test_glm_binomial_trials_equals_r_glm_reference(cbpp):
    fit = hc.fit(cbpp, CBPP, backend="glm", family="binomial")
    _check_fixed_effects(fit, ref("cbpp_glm"), 1e-8)
    assert fit.converged and fit.tidy("fixed")["df"].eq(np.inf).all()


def test_glm_poisson_offset_equals_r_glm_reference(mmmec):
    fit = hc.fit(mmmec, "deaths ~ uvb + offset(log_expected) + (1 | nation)", backend="glm", family="poisson")
    _check_fixed_effects(fit, ref("mmmec_glm"), 1e-8)


def test_glm_negbinomial_equals_glm_nb_reference(mmmec):
    fit = hc.fit(mmmec, "deaths ~ uvb + offset(log_expected) + (1 | nation)", backend="glm", family="negbinomial")
    r = ref("mmmec_glm_nb")
    _check_fixed_effects(fit, r, 1e-6)
    theta = fit.tidy("ran_pars").set_index("term").loc["theta", "estimate"]
    close(theta, r[r.kind == "theta"]["value"].iloc[0], 1e-6)


def test_ols_weighted_equals_r_lm_reference(mmmec):
    fit = hc.fit(mmmec, "lsmr ~ uvb + (1 | nation)", backend="ols", weights="expected")
    r = ref("mmmec_weighted_lm")
    _check_fixed_effects(fit, r, 1e-10)
    sigma = fit.tidy("ran_pars").set_index("group").loc["Residual", "estimate"]
    close(sigma, r[r.kind == "sigma"]["value"].iloc[0], 1e-10)
    assert fit.method == "WLS"


def test_ols_offset_is_subtracted(mmmec):
    a = hc.fit(mmmec, "ldeaths ~ uvb + offset(log_expected) + (1 | nation)", backend="ols")
    b = hc.fit(mmmec.assign(z=mmmec["ldeaths"] - mmmec["log_expected"]), "z ~ uvb + (1 | nation)", backend="ols")
    close(a.tidy()["estimate"], b.tidy()["estimate"], 1e-12)
    close(a.predict() - mmmec["log_expected"], b.predict(), 1e-12)


def _same(a, b, tol):
    ta, tb = a.tidy(), b.tidy()
    pd.testing.assert_frame_equal(ta[["effect", "group", "level", "term"]], tb[["effect", "group", "level", "term"]])
    for col in ("estimate", "std_error", "conf_low", "conf_high"):
        close(ta[col].fillna(0), tb[col].fillna(0), tol)
    close(a.loglik, b.loglik, tol)


@pytest.fixture(scope="module")
def binary():
    sc = hc.Scenario(family="binomial", n_obs=40)
    data, _ = hc.simulate(sc, seed=11)
    return data, sc.formula()


@pytest.mark.r
@pytest.mark.parametrize("family, formula", [
    ("binomial", CBPP),
    ("binomial", "simulated"),
    ("poisson", MMMEC),
    ("negbinomial", "deaths ~ uvb + offset(log_expected) + (1 | nation)"),
])
def test_glm_equals_r_glm_to_1e8(family, formula, cbpp, mmmec, binary):
    data = mmmec if "deaths" in formula else cbpp
    if formula == "simulated":  # 0/1 outcomes on the seed's tree with a varying slope
        data, formula = binary
    a = hc.fit(data, formula, backend="glm", family=family)
    b = hc.fit(data, formula, backend="r_glm", family=family)
    _same(a, b, 1e-8)
    assert a.converged and b.converged
    assert set(hc.compare([a, b])["verdict"]) == {"agree"}  # compared as the least-squares pairs are, to 1e-8
    assert not any("numerically 0 or 1" in n for n in a.diagnostics["notes"])


def test_glm_says_when_outcomes_are_separated(cbpp):
    any_case = cbpp.assign(any=(cbpp["incidence"] > 0).astype(int))  # herds with no case in any period
    fit = hc.fit(any_case, "any ~ C(period) + (1 | herd)", backend="glm", family="binomial")
    assert any("numerically 0 or 1" in n for n in fit.diagnostics["notes"])


@pytest.mark.r
def test_r_glm_and_r_lm_equal_their_references(cbpp, mmmec):
    _check_fixed_effects(hc.fit(cbpp, CBPP, backend="r_glm", family="binomial"), ref("cbpp_glm"), 1e-8)
    _check_fixed_effects(hc.fit(mmmec, "deaths ~ uvb + offset(log_expected) + (1 | nation)", backend="r_glm",
                                family="poisson"), ref("mmmec_glm"), 1e-8)
    _check_fixed_effects(hc.fit(mmmec, "lsmr ~ uvb + (1 | nation)", backend="r_lm", weights="expected"),
                         ref("mmmec_weighted_lm"), 1e-10)
    a = hc.fit(mmmec, "ldeaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)", backend="ols",
               weights="expected")
    b = hc.fit(mmmec, "ldeaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)", backend="r_lm",
               weights="expected")
    _same(a, b, 1e-8)


def test_negbinomial_without_overdispersion_says_so(mmmec):
    """With every region's own dummy nothing is left for theta: it grows without bound, and glm says so."""
    fit = hc.fit(mmmec, MMMEC, backend="glm", family="negbinomial")
    assert fit.converged is False
    assert any("no overdispersion" in n for n in fit.diagnostics["notes"])


# ---------------------------------------------------------------------------------------------------- predictions
def test_response_scale_predictions_with_trials_and_offsets(cbpp, mmmec):
    fit = hc.fit(cbpp, CBPP, backend="glm", family="binomial")
    p = fit.predict(type="response")
    np.testing.assert_allclose(p, fit.raw.fittedvalues, rtol=1e-12)  # statsmodels' fitted proportions
    np.testing.assert_allclose(fit.predict(type="count"), cbpp["size"] * p, rtol=1e-12)
    new = cbpp.iloc[:5].assign(size=[1, 10, 100, 0, 3])
    np.testing.assert_allclose(fit.predict(new, type="count"), new["size"] * fit.predict(new, type="response"))
    fit = hc.fit(mmmec, "deaths ~ uvb + offset(log_expected) + (1 | nation)", backend="glm", family="poisson")
    parts = fit.decompose()
    np.testing.assert_array_equal(parts["offset"], mmmec["log_expected"])
    np.testing.assert_allclose(parts.drop(columns="prediction").sum(axis=1), parts["prediction"], rtol=1e-12)
    mu = fit.predict(type="response")
    np.testing.assert_allclose(mu, fit.raw.fittedvalues, rtol=1e-10)  # exposure included
    np.testing.assert_allclose(fit.predict(type="count"), mu)
    doubled = mmmec.assign(log_expected=mmmec["log_expected"] + np.log(2))
    np.testing.assert_allclose(fit.predict(doubled, type="response"), 2 * mu, rtol=1e-12)
    with pytest.raises(DataError, match="log_expected"):
        fit.predict(mmmec.drop(columns="log_expected"))
    with pytest.raises(ValueError, match="'link', 'response' or 'count'"):
        fit.predict(type="mean")


# ---------------------------------------------------------------------------------------------------- lme4 vs R
def _check_mixed(fit, r, *, se_frac=1e-3, sd_rel=1e-3, ll_abs=1e-6, df_tol=None):
    names = {c.r_name: c.name for c in fit.model.columns}
    t = fit.tidy()
    fx = t[t.effect == "fixed"].set_index("term")
    est = r[r.kind == "fixef"].set_index("name")["value"]
    se = r[r.kind == "fixef_se"].set_index("name")["value"]
    for n in est.index:
        assert abs(fx.loc[names[n], "estimate"] - est[n]) <= se_frac * se[n], n
        assert fx.loc[names[n], "std_error"] == pytest.approx(se[n], rel=10 * sd_rel)
    rp = t[t.effect == "ran_pars"]
    mine = {f"{g}|{term}": e for g, term, e in zip(rp.group, rp.term, rp.estimate)}
    for _, row in r[r.kind == "ran_pars"].iterrows():
        assert mine[row["name"]] == pytest.approx(row.value, rel=sd_rel), row["name"]
    if (r.kind == "theta").any():
        assert mine["Dispersion|theta"] == pytest.approx(r[r.kind == "theta"]["value"].iloc[0], rel=sd_rel)
    assert fit.loglik >= r[r.kind == "loglik"]["value"].iloc[0] - ll_abs
    if df_tol is not None:
        for _, row in r[r.kind == "df"].iterrows():
            assert fx.loc[names[row["name"]], "df"] == pytest.approx(row.value, rel=df_tol)


@pytest.mark.r
def test_lme4_cbpp_with_trials(cbpp):
    _check_mixed(hc.fit(cbpp, CBPP, backend="lme4", family="binomial"), ref("cbpp_glmer"))


@pytest.mark.r
def test_lme4_poisson_with_an_offset(mmmec):
    _check_mixed(hc.fit(mmmec, MMMEC, backend="lme4", family="poisson"), ref("mmmec_poisson"))


@pytest.mark.r
def test_lme4_negative_binomial(mmmec):
    fit = hc.fit(mmmec, MMMEC, backend="lme4", family="negbinomial")
    _check_mixed(fit, ref("mmmec_nb"))
    assert fit.method == "ML (Laplace)"


@pytest.mark.r
def test_lme4_prior_weights_and_gaussian_offset_with_satterthwaite(mmmec):
    fit = hc.fit(mmmec, "lsmr ~ uvb + (1 | nation) + (1 | nation:region)", backend="lme4", weights="expected")
    _check_mixed(fit, ref("mmmec_weighted_lmer"), se_frac=1e-5, sd_rel=1e-5, df_tol=1e-5)
    fit = hc.fit(mmmec, "ldeaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)", backend="lme4")
    _check_mixed(fit, ref("mmmec_offset_lmer"), se_frac=1e-5, sd_rel=1e-5, df_tol=1e-5)


@pytest.mark.r
def test_the_stored_reference_is_what_r_gives_now(tmp_path):
    """Rerun the R script in an empty tree: the same numbers (to 1e-8) as the stored file. (The data copies are
    glmm_reference.R's: tests/test_glmmcore.py reruns that script and checks them.)"""
    (tmp_path / "tests" / "data").mkdir(parents=True)
    p = subprocess.run(["Rscript", str(DATA / "glm_reference.R")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    fresh = pd.read_csv(tmp_path / "tests" / "data" / "glm_reference.csv", dtype={"value": float})
    pd.testing.assert_frame_equal(fresh[["case", "kind", "name"]], REF[["case", "kind", "name"]])
    np.testing.assert_allclose(fresh["value"].to_numpy(), REF["value"].to_numpy(), rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------------- simulation
def _flat(levels_sd=0.0):
    """One level of 40 groups whose effects are all 0 (SD 0): the rows show the family's own distribution."""
    return (hc.LevelScenario("g", 40, {"(Intercept)": levels_sd}),)


def test_simulated_negative_binomial_with_exposure_has_its_moments_and_truth():
    sc = hc.Scenario(levels=_flat(), n_obs=500, family="negbinomial", theta=3.0, exposure=(2.0, 2.0),
                     fixed={"(Intercept)": 1.0, "x1": 0.0, "x2": 0.0})
    data, truth = hc.simulate(sc, seed=4)
    assert sc.formula() == "y ~ x1 + x2 + offset(log_exposure) + (1 | g)"
    np.testing.assert_allclose(data["log_exposure"], np.log(2.0))
    mu = 2.0 * np.e
    y = data["y"].to_numpy()
    se_mean = np.sqrt((mu + mu ** 2 / 3.0) / len(y))
    assert abs(y.mean() - mu) < 4 * se_mean
    assert y.var() == pytest.approx(mu + mu ** 2 / 3.0, rel=0.08)  # 20,000 rows: the NB2 variance, not Poisson's
    theta = truth.table.set_index(["group", "term"]).loc[("Dispersion", "theta"), "estimate"]
    assert theta == 3.0
    fit = hc.fit(data, sc.formula(), backend="glm", family="negbinomial")
    tt = fit.tidy().set_index(["group", "term"])
    assert abs(tt.loc[("Dispersion", "theta"), "estimate"] - 3.0) < 0.3
    assert abs(tt.loc[("", "(Intercept)"), "estimate"] - 1.0) < 4 * tt.loc[("", "(Intercept)"), "std_error"]


def test_simulated_binomial_trials_and_poisson_exposure_are_recovered():
    sc = hc.Scenario(family="binomial", trials=(5, 30), fixed={"(Intercept)": -0.5, "x1": 0.0, "x2": 0.4})
    data, truth = hc.simulate(sc, seed=2)
    assert sc.formula().startswith("cbind(y, trials - y) ~ x1 + x2 + (1 + x1 | market)")
    assert data["trials"].between(5, 30).all() and (data["y"] <= data["trials"]).all()
    assert set(data["trials"]) == set(range(5, 31))
    fit = hc.fit(data, sc.formula(), backend="glm", family="binomial")  # market effects absorbed by dummies
    x2 = fit.tidy("fixed").set_index("term").loc["x2"]
    assert abs(x2.estimate - 0.4) < 4 * x2.std_error
    sc = hc.Scenario(family="poisson", exposure=(1.0, 100.0), fixed={"(Intercept)": -2.0, "x1": 0.0, "x2": 0.3})
    data, truth = hc.simulate(sc, seed=2)
    assert data["exposure"].between(1.0, 100.0).all()
    np.testing.assert_allclose(np.log(data["exposure"]), data["log_exposure"])
    fit = hc.fit(data, sc.formula(), backend="glm", family="poisson")
    x2 = fit.tidy("fixed").set_index("term").loc["x2"]
    assert abs(x2.estimate - 0.3) < 4 * x2.std_error
    assert "Dispersion" not in set(truth.table["group"])


def test_scenarios_round_trip_and_refuse_what_does_not_fit():
    for sc in (hc.Scenario(family="negbinomial", theta=2.0, exposure=(1, 10)), hc.Scenario(family="binomial", trials=8)):
        assert hc.Scenario.from_dict(json_round_trip(sc.to_dict())) == sc
    assert "theta" not in hc.Scenario().to_dict()  # absent when unused: earlier studies' definitions still match
    with pytest.raises(SpecError, match="theta .* is required for family='negbinomial'"):
        hc.Scenario(family="negbinomial")
    with pytest.raises(SpecError, match="only for it"):
        hc.Scenario(family="poisson", theta=2.0)
    with pytest.raises(SpecError, match="trials are for family='binomial'"):
        hc.Scenario(family="poisson", trials=5)
    with pytest.raises(SpecError, match="exposure must be"):
        hc.Scenario(family="poisson", exposure=(0, 3))


def json_round_trip(d):
    import json

    return json.loads(json.dumps(d))


# ---------------------------------------------------------------------------------------------------- pymc, brms
@pytest.mark.parametrize("family, formula", [
    ("binomial", CBPP),
    ("negbinomial", "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"),
])
def test_pymc_likelihood_uses_trials_offsets_and_theta(family, formula, cbpp, mmmec):
    """The model's log-likelihood of y at its initial point (group effects 0, beta at the prior means, theta 1)
    equals scipy's binomial with the rows' trials / NB2 with the offset (no sampling)."""
    pytest.importorskip("pymc")
    from scipy import stats

    from hiercompare.backends import pymc as pymc_backend
    from hiercompare.priors import resolve_priors

    data = cbpp if family == "binomial" else mmmec
    md = prepare(ModelSpec.from_formula(formula, family=family), data)
    model, names = pymc_backend.build_model(md, resolve_priors(md, None), "rows")
    point = model.initial_point()
    beta = point["beta"]
    eta = md.X @ beta + md.offset
    if family == "binomial":
        want = stats.binom.logpmf(md.y, md.trials, 1 / (1 + np.exp(-eta))).sum()
    else:
        assert names["theta"] == "theta"
        theta = float(np.exp(point["theta_log__"]))
        want = stats.nbinom.logpmf(md.y, theta, theta / (theta + np.exp(eta))).sum()
    assert all(np.all(point[k] == 0) for k in point if k.startswith("z_"))
    got = model.compile_logp(vars=[model["y"]], sum=True)(point)
    assert got == pytest.approx(want, rel=1e-10)


def test_brms_inputs_for_trials_offsets_and_negbinomial(cbpp, mmmec):
    """What reaches brms (no sampling): y | trials() with the trials as data, offset() with its column, the shape
    prior, the family names fit_brms.R switches on."""
    from hiercompare.backends import brms as brms_backend

    md = prepare(ModelSpec.from_formula(CBPP, family="binomial"), cbpp)
    frame, names = brms_backend.brms_data(md)
    assert brms_backend.brms_formula(md, names) == (
        "incidence | trials(hc_d_trials) ~ 0 + Intercept + hc_d1 + hc_d2 + hc_d3 + (1 | herd)")
    np.testing.assert_array_equal(frame["hc_d_trials"], cbpp["size"])
    assert brms_backend.brms_family(md) == "binomial_trials"
    md = prepare(ModelSpec.from_formula(MMMEC, family="negbinomial"), mmmec)
    frame, names = brms_backend.brms_data(md)
    assert brms_backend.brms_formula(md, names) == (
        "deaths ~ 0 + Intercept + uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)")
    np.testing.assert_array_equal(frame["log_expected"], mmmec["log_expected"])
    table = brms_backend.prior_table(md, brms_backend.resolve_priors(md, None), names)
    assert table["class"] == ["b", "b", "sd", "shape"] and table["kind"][-1] == "gamma"
    assert (table["p1"][-1], table["p2"][-1]) == (0.01, 0.01)
    binary = cbpp.assign(any=(cbpp["incidence"] > 0).astype(int))
    md = prepare(ModelSpec.from_formula("any ~ C(period) + (1 | herd)", family="binomial"), binary)
    assert brms_backend.brms_family(md) == "binomial" and "hc_d_trials" not in brms_backend.brms_data(md)[0]


def _near_lme4(bayes, freq, k=2.5):
    """Every fixed effect, SD and theta of a Bayesian fit within k posterior SDs of lme4's estimate."""
    a = bayes.tidy(["fixed", "ran_pars"]).set_index(["group", "term"])
    b = freq.tidy(["fixed", "ran_pars"]).set_index(["group", "term"])
    assert list(a.index) == list(b.index)
    z = (a["estimate"] - b["estimate"]).abs() / a["std_error"]
    assert (z < k).all(), z.to_dict()


@pytest.mark.slow
@pytest.mark.r
def test_pymc_and_brms_fit_trials_offsets_and_negbinomial(cbpp, mmmec):
    pytest.importorskip("pymc")
    nb = "deaths ~ uvb + offset(log_expected) + (1 | nation)"
    for data, formula, family in ((cbpp, CBPP, "binomial"), (mmmec, nb, "negbinomial")):
        ref_fit = hc.fit(data, formula, backend="lme4", family=family)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hc.ConvergenceWarning)  # short runs: the estimates are what is tested
            p = hc.fit(data, formula, backend="pymc", family=family, draws=500, tune=500, seed=1)
            b = hc.fit(data, formula, backend="brms", family=family, iter=500, warmup=500, seed=1)
        for fit in (p, b):
            _near_lme4(fit, ref_fit)
            pp = fit.posterior_predictive(thin=5)
            assert pp.shape[1] == len(data) and (pp >= 0).all()
            assert abs(pp.mean() - data[fit.spec.response].mean()) < 0.1 * data[fit.spec.response].mean()
            if family == "binomial":
                assert (pp <= cbpp["size"].to_numpy()).all()
            assert np.isfinite(fit.loo().elpd_loo)


def test_native_prior_weights_equal_weighted_lmer(mmmec):
    """native with weights= (the LMM on rows scaled by sqrt(w), plus 0.5 sum(log w)) reproduces lmer's weighted
    REML fit and lmerTest's df, without R."""
    r = ref("mmmec_weighted_lmer")
    fit = hc.fit(mmmec, "lsmr ~ uvb + (1 | nation) + (1 | nation:region)", backend="native", weights="expected",
                 condvar="beta_fixed")
    _check_mixed(fit, r, se_frac=1e-4, sd_rel=1e-4, df_tol=1e-4)
    assert fit.loglik == pytest.approx(r[r.kind == "loglik"]["value"].iloc[0], abs=1e-6)
    rv = fit.tidy("ran_vals")
    mine = {f"{g}|{lev}": (e, s) for g, lev, e, s in zip(rv.group, rv.level, rv.estimate, rv.std_error)}
    for kind, i in (("ranef", 0), ("ranef_sd", 1)):
        rows = r[r.kind == kind]
        close([mine[n][i] for n in rows["name"]], rows["value"], 1e-4)
    unweighted = hc.fit(mmmec, "lsmr ~ uvb + (1 | nation) + (1 | nation:region)", backend="native")
    ones = hc.fit(mmmec, "lsmr ~ uvb + (1 | nation) + (1 | nation:region)", backend="native",
                  weights=np.ones(len(mmmec)))
    close(ones.tidy()["estimate"], unweighted.tidy()["estimate"], 1e-10)
    close(ones.loglik, unweighted.loglik, 1e-10)
