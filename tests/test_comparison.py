"""Model comparison: LRT, AIC/BIC and LOO against R's anova() and ArviZ.

Reference numbers: tests/data/anova_reference.csv, written by tests/data/anova_reference.R (lme4 1.1-31, R 4.2.2:
``anova()`` of ``lmer(..., REML = FALSE)`` fits on the committed CSVs), quoted to 17 significant digits. Without
R, the native engine's numbers are checked against that file; with R, the file is regenerated live and the lme4
backend's numbers are checked against it, both to 1e-6 (absolute; the statistics are 50-10,000 in size).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2

import hiercompare as hc
from hiercompare import comparison, datasets
from hiercompare.comparison import information_criteria, lrt, lrt_table, ml_refits
from hiercompare.spec import ModelSpec

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
REF = pd.read_csv(DATA / "anova_reference.csv")
TOL = 1e-6


def _load(name: str) -> pd.DataFrame:
    if name == "sleepstudy":
        return pd.read_csv(DATA / "sleepstudy.csv", dtype={"Subject": str})
    if name == "pastes":
        return datasets.load("pastes")  # hiercompare/data/pastes.csv
    return datasets.load("exam")


def _ref(name: str) -> pd.DataFrame:
    return REF[REF["dataset"] == name].reset_index(drop=True)


@pytest.fixture(scope="module")
def native_fits():
    """Native ML fits of every reference formula, in the reference file's (anova's) order."""
    return {name: ml_refits(_load(name), list(_ref(name)["formula"])) for name in REF["dataset"].unique()}


def _check_against(ref: pd.DataFrame, fits, tol_ll: tuple[float, float], tol: float):
    """``fits`` (in ref's order) give ref's logLik within tol_ll = (below, above), and AIC, BIC, LRT within tol."""
    canon = [ModelSpec.from_formula(f).formula for f in ref["formula"]]
    ic = information_criteria(fits)
    assert list(ic["formula"]) == canon
    assert list(ic["n_params"]) == list(ref["npar"])
    assert list(ic["nobs"]) == list(ref["nobs"])
    d = ic["loglik"].to_numpy() - ref["logLik"].to_numpy()
    assert (d >= -tol_ll[0]).all() and (d <= tol_ll[1]).all(), d
    np.testing.assert_allclose(ic["AIC"], ref["AIC"], rtol=0, atol=tol)
    np.testing.assert_allclose(ic["BIC"], ref["BIC"], rtol=0, atol=tol)
    table = lrt_table(fits)
    assert list(table["model_small"]) == canon[:-1] and list(table["model_big"]) == canon[1:]
    assert list(table["df"]) == list(ref["Df"][1:].astype(int))
    np.testing.assert_allclose(table["statistic"], ref["Chisq"][1:], rtol=0, atol=tol)
    np.testing.assert_allclose(table["p_value_naive_chi2"], ref["p_chisq"][1:], rtol=1e-6, atol=1e-12)
    return ic, table


# ---------------------------------------------------------------------- against the stored R numbers (no R)
@pytest.mark.parametrize("name", ["sleepstudy", "pastes", "exam"])
def test_native_loglik_reaches_lme4s(native_fits, name):
    """native's ML optimum is lme4's, or higher by at most 1e-6 (seen: 7.8e-7 on Exam's random slope)."""
    ref = _ref(name)
    d = np.array([f.loglik for f in native_fits[name]]) - ref["logLik"].to_numpy()
    assert (d >= -1e-9).all() and (d <= 1e-6).all(), d


@pytest.mark.parametrize("name", ["sleepstudy", "pastes", "exam"])
def test_anova_on_lme4s_logliks_equals_r(native_fits, name):
    """Parameter counts, AIC, BIC, LRT statistic, df and the naive p-value are anova()'s, given lme4's logLik."""
    ref = _ref(name)
    fits = [dataclasses.replace(f, loglik=float(ll)) for f, ll in zip(native_fits[name], ref["logLik"])]
    ic, _ = _check_against(ref, fits, tol_ll=(1e-12, 1e-12), tol=TOL)
    np.testing.assert_allclose(ic["delta_AIC"], ref["AIC"] - ref["AIC"].min(), atol=TOL)
    assert ic["delta_BIC"].min() == 0


@pytest.mark.parametrize("name", ["sleepstudy", "pastes", "exam"])
def test_native_anova_close_to_r(native_fits, name):
    """On native's own logLik: within 2 x the 1e-6 by which its optimum may exceed lme4's."""
    _check_against(_ref(name), native_fits[name], tol_ll=(1e-9, 1e-6), tol=2e-6)


# ---------------------------------------------------------------------- against a live R
@pytest.fixture(scope="module")
def r_reference(tmp_path_factory):
    from hiercompare import rbridge

    ok, why = rbridge.availability(("lme4",))
    assert ok, why
    import rpy2.robjects as ro
    from rpy2.robjects.conversion import localconverter

    out = tmp_path_factory.mktemp("anova") / "anova_reference.csv"
    with localconverter(ro.default_converter):
        ro.r["source"](str(DATA / "anova_reference.R"))
        ro.globalenv["hc_anova_reference"](str(ROOT), str(out))
    return pd.read_csv(out)


@pytest.mark.r
def test_stored_reference_is_what_r_computes(r_reference):
    assert list(r_reference["formula"]) == list(REF["formula"])
    for col in ("npar", "nobs", "Df"):
        assert r_reference[col].equals(REF[col]), col
    for col in ("logLik", "AIC", "BIC", "deviance", "Chisq"):
        np.testing.assert_allclose(r_reference[col], REF[col], rtol=0, atol=1e-8, err_msg=col)


@pytest.mark.r
@pytest.mark.parametrize("name", ["sleepstudy", "pastes", "exam"])
def test_lme4_backend_anova_equals_r(r_reference, name):
    """The lme4 backend's ML refits through hiercompare give R's anova() to 1e-6."""
    ref = r_reference[r_reference["dataset"] == name].reset_index(drop=True)
    fits = ml_refits(_load(name), list(ref["formula"]), backend="lme4")
    assert all(f.method == "ML" for f in fits)
    _check_against(ref, fits, tol_ll=(TOL / 2, TOL / 2), tol=TOL)


# ---------------------------------------------------------------------- reference distributions
def test_chi_bar_square_for_one_new_intercept_variance(native_fits):
    """(1 | batch) -> (1 | batch/cask): one intercept variance on its boundary, 0.5 chi2(0) + 0.5 chi2(1)."""
    small, big = native_fits["pastes"]
    r = lrt(small, big)
    x = r["statistic"]
    assert x > 50 and r["df"] == 1
    assert r["p_value"] == 0.5 * chi2.sf(x, 1)
    assert r["p_value_naive_chi2"] == chi2.sf(x, 1)
    assert r["reference_distribution"] == "0.5*chi2(0) + 0.5*chi2(1)"
    assert "chi-bar-square" in r["note"] and "Self & Liang 1987" in r["note"]
    assert "sd__(Intercept) | batch:cask" in r["note"]
    assert r["added"] == ["sd__(Intercept) | batch:cask"]


def test_reference_distribution_per_kind_of_difference(native_fits):
    """sleepstudy: fixed only -> chi2(1); a slope variance (||) -> 0.5 chi2(0) + 0.5 chi2(1); its covariance
    with the intercept (|| -> |) -> chi2(1), an interior parameter. Exam: slope variance with its covariance
    -> 0.5 chi2(1) + 0.5 chi2(2) (Stram & Lee)."""
    t = lrt_table(native_fits["sleepstudy"])
    x = t["statistic"].to_numpy()
    assert list(t["reference_distribution"]) == ["chi2(1)", "0.5*chi2(0) + 0.5*chi2(1)", "chi2(1)"]
    assert t["p_value"][0] == chi2.sf(x[0], 1)
    assert t["p_value"][1] == 0.5 * chi2.sf(x[1], 1)
    assert t["p_value"][2] == chi2.sf(x[2], 1)
    assert "fixed effects only" in t["note"][0]
    assert "covariance" in t["note"][2] and "interior" in t["note"][2]
    e = lrt_table(native_fits["exam"])
    assert list(e["reference_distribution"]) == ["chi2(1)", "0.5*chi2(1) + 0.5*chi2(2)", "chi2(1)"]
    x = e["statistic"][1]
    assert e["p_value"][1] == 0.5 * chi2.sf(x, 1) + 0.5 * chi2.sf(x, 2)
    assert e["p_value_naive_chi2"][1] == chi2.sf(x, 2)
    assert "Stram & Lee 1994" in e["note"][1]


def test_two_new_variances_fall_back_to_a_conservative_chi2():
    exam = datasets.load("exam").assign(girl=lambda d: (d["sex"] == "F").astype(float))
    small, big = ml_refits(exam, ["normexam ~ standLRT + (1 | school)",
                                  "normexam ~ standLRT + (1 + standLRT + girl | school)"])
    r = lrt(small, big)
    assert r["df"] == 5
    assert r["reference_distribution"] == "chi2(5) (conservative)"
    assert r["p_value"] == r["p_value_naive_chi2"] == chi2.sf(r["statistic"], 5)
    assert "2 variances" in r["note"] and "conservative" in r["note"]


def test_chibar2_sf():
    assert comparison.chibar2_sf(2.0, 1) == 0.5 * chi2.sf(2.0, 1)
    assert comparison.chibar2_sf(2.0, 3) == 0.5 * chi2.sf(2.0, 2) + 0.5 * chi2.sf(2.0, 3)
    assert comparison.chibar2_sf(0.0, 1) == 1.0  # the point mass at 0
    assert comparison.chibar2_sf(-1e-9, 1) == 1.0
    assert comparison.chibar2_sf(chi2.ppf(0.9, 1), 1) == pytest.approx(0.05, rel=1e-12)


def test_variance_estimated_at_zero_gives_p_one():
    """A random intercept whose ML variance is 0: statistic ~0, the mixture's point mass, p = 1."""
    rng = np.random.default_rng(4)
    d = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(8)], 10), "h": np.tile(["a", "b"], 40)})
    d["h"] = d["g"] + d["h"]
    d["x"] = rng.normal(size=len(d))
    d["y"] = 0.5 * d["x"] + np.repeat(rng.normal(size=8), 10) + rng.normal(size=len(d))
    small, big = ml_refits(d, ["y ~ x + (1 | g)", "y ~ x + (1 | g) + (1 | g:h)"])
    r = lrt(small, big)
    if big.varcorr.query("group == 'g:h'")["estimate"].iloc[0] > 1e-4:  # pragma: no cover - data guard
        pytest.skip("this draw's g:h variance is not at 0")
    assert abs(r["statistic"]) <= comparison.ZERO_STATISTIC
    assert r["p_value"] == 1.0 and "point mass" in r["note"]


# ---------------------------------------------------------------------- refusals
def test_non_nested_pair_is_refused(native_fits):
    sleep = _load("sleepstudy")
    a, b = ml_refits(sleep, ["Reaction ~ Days + (1 | Subject)", "Reaction ~ 1 + (Days || Subject)"])
    with pytest.raises(hc.SpecError, match=r"is not nested in .*fixed effect\(s\) \['Days'\].*information_criteria"):
        lrt(a, b)
    with pytest.raises(hc.SpecError, match=r"is not nested.*variance\(s\) \['sd__Days \| Subject'\]"):
        lrt(b, a)
    # the consecutive pair in a table gets a row with the reason, not a number
    t = lrt_table([a, b])
    assert len(t) == 1 and np.isnan(t["statistic"][0]) and t["note"][0].startswith("not tested:")
    # the same two the wrong way round: said so
    m1, _, _, m3 = native_fits["sleepstudy"]
    with pytest.raises(hc.SpecError, match="pass the smaller model first"):
        lrt(m3, m1)
    with pytest.raises(hc.SpecError, match="same parameters"):
        lrt(m1, m1)


def test_different_rows_are_refused():
    sleep = _load("sleepstudy")
    f1, f2 = "Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"
    small = hc.fit(sleep.iloc[:-10], f1, backend="native", method="ML")
    big = hc.fit(sleep, f2, backend="native", method="ML")
    with pytest.raises(hc.DataError, match="different rows: 170 .* and 180"):
        lrt(small, big)
    t = lrt_table([big, small])  # a row saying why, where anova() stops with an error
    assert len(t) == 1 and np.isnan(t["p_value"][0]) and "different rows: 170" in t["note"][0]
    changed = sleep.copy()
    changed.loc[5, "Reaction"] += 1.0
    with pytest.raises(hc.DataError, match="different response values"):
        lrt(hc.fit(changed, f1, backend="native", method="ML"), big)
    shuffled = sleep.copy()
    shuffled["Days"] = shuffled["Days"].to_numpy()[::-1]
    with pytest.raises(hc.DataError, match=r"column\(s\) \['Days'\] differ"):
        lrt(hc.fit(shuffled, f1, backend="native", method="ML"), big)


def test_na_drop_keeps_every_model_on_the_same_rows():
    sleep = _load("sleepstudy").assign(z=lambda d: np.where(np.arange(len(d)) % 17 == 0, np.nan, d["Days"] ** 2))
    f1, f2 = "Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + z + (1 | Subject)"
    a, b = ml_refits(sleep, [f1, f2], na_action="drop")
    assert a.nobs == b.nobs == 180 - 11
    assert any("dropped 11 of 180" in n for n in a.diagnostics["notes"])
    assert lrt(a, b)["reference_distribution"] == "chi2(1)"
    one_by_one = [hc.fit(sleep, f, backend="native", method="ML", na_action="drop") for f in (f1, f2)]
    with pytest.raises(hc.DataError, match="na_action='drop'"):
        lrt(*one_by_one)


def test_methods_engines_and_likelihoods_must_match():
    sleep = _load("sleepstudy")
    f1, f2 = "Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)"
    reml = [hc.fit(sleep, f, backend="native") for f in (f1, f2)]
    r = lrt(*reml)  # REML criteria with the same fixed effects: allowed, and said
    assert r["method"] == "REML" and "REML criteria compared" in r["note"]
    reml0 = hc.fit(sleep, "Reaction ~ 1 + (1 | Subject)", backend="native")
    with pytest.raises(hc.SpecError, match="REML criteria of models with different fixed effects"):
        lrt(reml0, reml[0])
    ml = ml_refits(sleep, [f1, f2])
    with pytest.raises(hc.SpecError, match="different methods"):
        lrt(ml[0], reml[1])
    ols = hc.fit(sleep, f2, backend="ols")
    with pytest.raises(hc.SpecError, match="not the mixed model's likelihood"):
        lrt(ml[0], ols)
    with pytest.raises(hc.SpecError, match="likelihood engines"):
        ml_refits(sleep, [f1], backend="pymc")


# ---------------------------------------------------------------------- tables
def test_lrt_table_orders_by_parameters_and_groups_by_engine(native_fits):
    fits = native_fits["sleepstudy"]
    shuffled = [fits[3], fits[1], fits[0], fits[2]]
    t = lrt_table(shuffled)
    assert list(t["n_params_small"]) == [3, 4, 5] and list(t["n_params_big"]) == [4, 5, 6]
    assert (t["backend"] == "native").all() and (t["method"] == "ML").all()
    # REML fits and the ML fits are different groups: no pair across them
    reml = hc.fit(_load("sleepstudy"), "Reaction ~ Days + (Days | Subject)", backend="native")
    assert len(lrt_table(fits + [reml])) == 3


def test_information_criteria_rows_without_a_likelihood(native_fits):
    sleep = _load("sleepstudy")
    ols = hc.fit(sleep, "Reaction ~ Days + (Days | Subject)", backend="ols")
    reml = hc.fit(sleep, "Reaction ~ Days + (Days | Subject)", backend="native")
    ic = information_criteria(native_fits["sleepstudy"] + [ols, reml])
    assert list(ic.columns) == comparison.IC_COLUMNS
    assert np.isnan(ic["AIC"][4]) and "not the mixed model's likelihood" in ic["note"][4]
    assert ic["delta_AIC"][5] == 0 and "REML criterion" in ic["note"][5]  # its own comparable set
    assert "deltas within the fits of Reaction (gaussian, ML) on the same 180 rows" in ic["note"][0]
    assert ic["delta_AIC"][:4].min() == 0
    assert comparison.n_params(reml) == 6


# ---------------------------------------------------------------------- LOO
def _elpd_fit(formula: str, ll: np.ndarray, backend: str = "pymc"):
    import arviz as az
    import xarray as xr

    idata = az.InferenceData(
        posterior=xr.Dataset({"mu": (("chain", "draw"), np.zeros(ll.shape[:2]))}),
        log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll)}))
    elpd = az.loo(idata, pointwise=True)
    fit = hc.Fit(backend=backend, spec=ModelSpec.from_formula(formula), table=pd.DataFrame())
    fit.extras = {"loo": lambda: elpd}
    return fit, elpd


def test_loo_table_matches_arviz():
    import arviz as az
    from scipy import stats

    rng = np.random.default_rng(1)
    n, chains, draws = 60, 2, 500
    y = rng.normal(size=n)
    y[:3] += 15  # outliers: Pareto k above 1 under the normal model
    mu = rng.normal(0, 0.2, size=(chains, draws, 1))
    ll_a = stats.norm.logpdf(y, loc=mu, scale=1.0)
    ll_b = stats.t.logpdf(y, df=3, loc=mu, scale=1.0)
    fa, ea = _elpd_fit("y ~ 1 + (1 | g)", ll_a)
    fb, eb = _elpd_fit("y ~ x + (1 | g)", ll_b)
    brms = hc.Fit(backend="brms", spec=ModelSpec.from_formula("y ~ 1 + (1 | g)"), table=pd.DataFrame())
    t = comparison.loo_table([fa, fb, brms])
    assert list(t.columns) == comparison.LOO_COLUMNS
    comp = az.compare({"a": ea, "b": eb}, ic="loo", scale="log")
    for i, (name, e) in enumerate((("a", ea), ("b", eb))):
        assert t["elpd_loo"][i] == e["elpd_loo"] and t["se"][i] == e["se"] and t["p_loo"][i] == e["p_loo"]
        assert t["rank"][i] == comp.loc[name, "rank"] and t["elpd_diff"][i] == comp.loc[name, "elpd_diff"]
        assert t["dse"][i] == comp.loc[name, "dse"] and t["weight"][i] == comp.loc[name, "weight"]
        k = e["pareto_k"].values
        good_k = min(1 - 1 / np.log10(chains * draws), 0.7)
        assert t["good_k"][i] == pytest.approx(good_k)
        assert t["pareto_k_good"][i] == (k < good_k).sum()
        assert t["pareto_k_bad"][i] == ((k >= good_k) & (k < 1)).sum()
        assert t["pareto_k_very_bad"][i] == (k >= 1).sum()
        assert t["pareto_k_good"][i] + t["pareto_k_bad"][i] + t["pareto_k_very_bad"][i] == n
    assert t["rank"][1] == 0  # the t model fits the outliers
    assert t["pareto_k_very_bad"][0] == 3 and "3 Pareto k above" in t["note"][0]
    assert np.isnan(t["elpd_loo"][2]) and "kept no posterior draws" in t["note"][2]


@pytest.mark.slow
def test_loo_table_on_pymc_fits():
    sleep = _load("sleepstudy")
    fits = [hc.fit(sleep, f, backend="pymc", draws=300, tune=300, chains=2, seed=1)
            for f in ("Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)")]
    t = comparison.loo_table(fits)
    assert t["elpd_loo"].notna().all() and set(t["rank"]) == {0, 1}
    assert (t["n_data_points"] == 180).all() and (t["n_samples"] == 600).all()
    assert t.loc[t["rank"] == 0, "formula"].iloc[0] == "Reaction ~ 1 + Days + (1 + Days | Subject)"
