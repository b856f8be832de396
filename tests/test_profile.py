"""Intervals for the variance parameters (hiercompare.profile): profile likelihood against lme4, the bootstrap.

``tests/data/profile_reference.csv`` (written by ``tests/data/profile_reference.R``, lme4 1.1-31) holds lme4's
``confint(fit, parm = "theta_", method = "profile")`` on the committed CSVs (sleepstudy, pastes, exam, oats, dietox,
and lme4's Dyestuff2, whose batch SD is 0), REML and ML fits, and lme4's exact zeta at each reported end (its own
deviance, the other parameters minimised at that value).

The checks, per interval end (``known`` = lme4, ``unknown`` = ours):

* our zeta at lme4's end equals lme4's exact zeta there to 2e-4 (absolute): the two profiles are the same curve;
* where lme4's spline put its end within 1e-3 of zeta = +-1.96, our end equals lme4's to 1e-3, relative for SDs
  (and the residual SD), absolute for correlations. lme4 reads its ends off a spline through a grid, which is
  coarse where the profile is flat: on Oats its Block SD's lower end 2.7867 has zeta -1.9583 by lme4's own
  deviance; ours, 2.7658, has -1.95996. Such ends are checked by the first rule only;
* an end that lme4 reports at a bound (0 for an SD whose profile stays above -1.96 down to 0) is that bound here.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import mixedcore, profile
from hiercompare.design import prepare
from hiercompare.errors import SpecError

HERE = Path(__file__).parent
ROOT = HERE.parent
REF = pd.read_csv(HERE / "data" / "profile_reference.csv")
FILES = {"sleepstudy": HERE / "data" / "sleepstudy.csv", "dyestuff2": HERE / "data" / "dyestuff2.csv"}
Q = 1.959963984540054
CASES = [key for key, _ in REF.groupby(["dataset", "formula", "method"], sort=False)]


def load(name: str) -> pd.DataFrame:
    path = FILES.get(name, ROOT / "hiercompare" / "data" / f"{name}.csv")
    return pd.read_csv(path, dtype={"Subject": str} if name == "sleepstudy" else None)


def close_end(known: float, unknown: float, name: str) -> bool:
    if "cor__" in name:
        return abs(unknown - known) <= 1e-3
    return abs(unknown - known) <= 1e-3 * abs(known)


@pytest.mark.parametrize("dataset,formula,method", CASES, ids=[f"{d}-{f}-{m}" for d, f, m in CASES])
def test_profile_intervals_match_lme4(dataset, formula, method):
    ref = REF[(REF.dataset == dataset) & (REF.formula == formula) & (REF.method == method)]
    data = load(dataset)
    fit = hc.fit(data, formula, backend="native", method=method)
    assert fit.diagnostics["ran_pars_ci"].startswith("profile likelihood")
    rp = fit.tidy("ran_pars")
    got = {f"{g}|{t}": (lo, hi) for g, t, lo, hi in zip(rp.group, rp.term, rp.conf_low, rp.conf_high)}
    assert sorted(got) == sorted(ref.name)
    # the same profile, kept, to evaluate zeta at lme4's ends
    pr = profile.profile(mixedcore.from_model_data(prepare(fit.spec, data)))
    for r in ref.itertuples():
        group, term = r.name.split("|")
        for known, zeta_known, unknown, side in ((r.conf_low, r.zeta_low, got[r.name][0], -1),
                                                 (r.conf_high, r.zeta_high, got[r.name][1], 1)):
            at_bound = known == 0 or abs(known) == 1
            if at_bound:
                assert unknown == known, (r.name, side, unknown, known)
            if known != r.estimate:
                z = pr.zeta(group, term, known)
                assert z == pytest.approx(zeta_known, abs=2e-4), (r.name, side, z, zeta_known)
            if not at_bound and abs(abs(zeta_known) - Q) <= 1e-3:
                assert close_end(known, unknown, r.name), (r.name, side, unknown, known)
            if not at_bound:
                assert pr.zeta(group, term, unknown) == pytest.approx(side * Q, abs=1e-4), (r.name, side)


def test_reml_and_ml_fits_get_the_same_intervals_as_lme4_does():
    """lme4's profile() refits a REML fit by ML; so do we (the reference has both, equal to 1e-6)."""
    data = load("sleepstudy")
    a = hc.fit(data, "Reaction ~ Days + (Days | Subject)", backend="native", method="REML").tidy("ran_pars")
    b = hc.fit(data, "Reaction ~ Days + (Days | Subject)", backend="native", method="ML").tidy("ran_pars")
    assert not np.allclose(a.estimate, b.estimate, rtol=1e-3)  # different estimates ...
    np.testing.assert_allclose(a[["conf_low", "conf_high"]], b[["conf_low", "conf_high"]], rtol=1e-5)  # same CIs


def boundary_data(seed: int) -> pd.DataFrame:
    """25 groups of 12 rows with no group variation at all: y = 1 + x + e."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(25), 12)
    x = rng.normal(size=g.size)
    return pd.DataFrame(dict(y=1 + x + rng.normal(size=g.size), x=x, g=g.astype(str)))


def test_boundary_fits():
    """An SD estimated at 0 gets the lower limit 0 (lme4's Dyestuff2 is in the reference above); a correlation
    estimated at +-1 gets that end; ends found where zeta = +-1.96."""
    # seed 0: both SDs 0 (the correlation is undefined, so it has no interval)
    fit = hc.fit(boundary_data(0), "y ~ x + (1 + x | g)", backend="native", method="ML")
    rp = fit.tidy("ran_pars").set_index("term")
    for t in ("sd__(Intercept)", "sd__x"):
        assert rp.loc[t, "estimate"] < 1e-6 and rp.loc[t, "conf_low"] == 0 and 0 < rp.loc[t, "conf_high"] < 1, t
    assert np.isnan(rp.loc["cor__(Intercept).x", "estimate"]) and np.isnan(rp.loc["cor__(Intercept).x", "conf_low"])
    assert any("undefined" in n for n in fit.diagnostics["notes"])
    lo, hi = rp.loc["sd__Observation", ["conf_low", "conf_high"]]
    assert lo < rp.loc["sd__Observation", "estimate"] < hi
    # seed 3: the correlation at +1 (a singular fit with both SDs positive)
    md = prepare(hc.ModelSpec.from_formula("y ~ x + (1 + x | g)"), boundary_data(3))
    pr = profile.profile(mixedcore.from_model_data(md))
    iv = pr.intervals.set_index("term")
    assert iv.loc["cor__(Intercept).x", "estimate"] == pytest.approx(1.0, abs=1e-6)
    assert iv.loc["cor__(Intercept).x", "conf_high"] == 1.0
    lo = iv.loc["cor__(Intercept).x", "conf_low"]
    assert lo == -1.0 or pr.zeta("g", "cor__(Intercept).x", lo) == pytest.approx(-Q, abs=1e-4)
    assert iv.loc["sd__(Intercept)", "conf_low"] == 0  # its profile stays above -1.96 down to 0
    assert pr.zeta("g", "sd__(Intercept)", 0.0) > -Q
    for t in ("sd__x", "sd__Observation"):
        assert pr.zeta("g" if t == "sd__x" else "Residual", t, iv.loc[t, "conf_low"]) == pytest.approx(-Q, abs=1e-4)
    assert not pr.notes


def test_reml_criterion_profile_is_centred_on_the_reml_estimate():
    data = load("pastes")
    md = prepare(hc.ModelSpec.from_formula("strength ~ 1 + (1 | batch) + (1 | batch:cask)"), data)
    core = mixedcore.from_model_data(md)
    pr = profile.profile(core, reml=True)
    fit = hc.fit(data, md.spec, backend="native", ran_pars_ci="none").tidy("ran_pars")
    est = dict(zip(fit.group + "|" + fit.term, fit.estimate))
    for r in pr.intervals.itertuples():
        assert r.estimate == pytest.approx(est[f"{r.group}|{r.term}"], rel=1e-4)
        assert pr.zeta(r.group, r.term, r.conf_high) == pytest.approx(Q, abs=1e-4)
        if r.conf_low > 0:
            assert pr.zeta(r.group, r.term, r.conf_low) == pytest.approx(-Q, abs=1e-4)
    ml = profile.profile(core)  # the ML profile of the same model is a different interval
    assert not np.allclose(pr.intervals.conf_high, ml.intervals.conf_high, rtol=1e-3)


def test_deviance_on_the_sd_scale_and_its_gradient():
    """D(phi) at sigma's own optimum is mixedcore's profiled deviance; the analytic gradient (through the second
    core's r2 and the Cholesky factor's derivative) matches central differences, a 3 x 3 block included."""
    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(20), 10)
    x1, x2 = rng.normal(size=g.size), rng.normal(size=g.size)
    b = rng.multivariate_normal(np.zeros(3), [[1, .5, .2], [.5, 1, .3], [.2, .3, .5]], size=20)
    y = 1 + x1 + b[g, 0] + b[g, 1] * x1 + b[g, 2] * x2 + rng.normal(size=g.size)
    h = (np.arange(g.size) // 5) % 2  # two leaf groups in each g
    data = pd.DataFrame(dict(y=y + 0.5 * rng.normal(size=40)[2 * g + h], x1=x1, x2=x2, g=g.astype(str),
                             h=h.astype(str)))
    md = prepare(hc.ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 + x2 | g) + (1 | g:h)"), data)
    core = mixedcore.from_model_data(md)
    for reml in (False, True):
        dev = profile.Deviance(core, reml=reml)
        lay = dev.layout
        phi = np.array([0.9, 0.8, 0.6, 0.3, -0.2, 0.4, 0.5, 1.1])
        assert [p.kind for p in lay.pars] == ["sd", "sd", "sd", "cor", "cor", "cor", "sd", "sigma"]
        np.testing.assert_allclose(lay.phi(lay.theta(phi), phi[-1]), phi, rtol=1e-12)
        res = core.solve(lay.theta(phi), reml=reml)  # sigma at its optimum for this theta
        at_hat = lay.phi(lay.theta(phi), res.sigma)
        np.testing.assert_allclose(dev(at_hat, grad=False)[0], res.deviance, rtol=1e-11)
        v, grad = dev(phi)
        num = np.array([(dev(phi + e, grad=False)[0] - dev(phi - e, grad=False)[0]) / 2e-6
                        for e in 1e-6 * np.eye(len(phi))])
        np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-5)


def test_ran_pars_ci_option():
    data = load("pastes")
    f = "strength ~ 1 + (1 | batch:cask)"
    none = hc.fit(data, f, backend="native", ran_pars_ci="none")
    assert none.tidy("ran_pars")[["conf_low", "conf_high"]].isna().all().all()
    assert none.diagnostics["ran_pars_ci"] == "none"
    assert none.tidy("fixed")[["conf_low", "conf_high"]].notna().all().all()  # the fixed effects keep theirs
    with pytest.raises(SpecError, match="ran_pars_ci must be one of"):
        hc.fit(data, f, backend="native", ran_pars_ci="wald")
    boot = hc.fit(data, f, backend="native", ran_pars_ci="bootstrap", ran_pars_nsim=40, ran_pars_seed=7)
    again = hc.fit(data, f, backend="native", ran_pars_ci="bootstrap", ran_pars_nsim=40, ran_pars_seed=7)
    rp = boot.tidy("ran_pars")
    assert (rp.conf_low < rp.estimate).all() and (rp.estimate < rp.conf_high).all()
    pd.testing.assert_frame_equal(rp, again.tidy("ran_pars"))  # the seed reproduces the draws
    assert boot.diagnostics["ran_pars_ci"].startswith("parametric bootstrap, 40 draws")


def test_streamed_fit_gets_profile_intervals_but_no_bootstrap(tmp_path):
    data = load("pastes")
    path = tmp_path / "pastes.csv"
    data.to_csv(path, index=False)
    f = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"
    streamed = hc.fit(str(path), f, backend="native").tidy("ran_pars")
    memory = hc.fit(data, f, backend="native").tidy("ran_pars")
    np.testing.assert_allclose(streamed[["conf_low", "conf_high"]], memory[["conf_low", "conf_high"]], rtol=1e-6)
    with pytest.raises(SpecError, match="per-leaf sums"):
        hc.fit(str(path), f, backend="native", ran_pars_ci="bootstrap")


@pytest.mark.slow
def test_bootstrap_intervals_cover_the_truth_in_a_small_simulation():
    """40 data sets from a known truth (15 groups of 6, group SD 1, residual SD 1), 60 bootstrap draws each: the
    95% percentile intervals must cover the true group SD and the true residual SD in at least 32 of the 40 data
    sets (80%; P(fewer) < 0.01 at a true 93% coverage), and must exclude twice the true SD in at least 32 (an
    interval that is simply very wide fails this)."""
    rng = np.random.default_rng(2024)
    g = np.repeat(np.arange(15), 6)
    cover = {"sd__(Intercept)": 0, "sd__Observation": 0}
    exclude_double = dict(cover)
    for rep in range(40):
        y = 1.0 + rng.normal(size=15)[g] + rng.normal(size=g.size)
        data = pd.DataFrame(dict(y=y, g=g.astype(str)))
        fit = hc.fit(data, "y ~ 1 + (1 | g)", backend="native", ran_pars_ci="bootstrap", ran_pars_nsim=60,
                     ran_pars_seed=rep)
        for r in fit.tidy("ran_pars").itertuples():
            cover[r.term] += r.conf_low <= 1.0 <= r.conf_high
            exclude_double[r.term] += not (r.conf_low <= 2.0 <= r.conf_high)
    assert min(cover.values()) >= 32, cover
    assert min(exclude_double.values()) >= 32, exclude_double


@pytest.mark.r
def test_lme4_fits_get_the_profile_intervals():
    """The lme4 backend's intervals: the same profile on mixedcore, started at lme4's estimates."""
    for dataset, formula in (("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
                             ("pastes", "strength ~ 1 + (1 | batch) + (1 | batch:cask)")):
        ref = REF[(REF.dataset == dataset) & (REF.formula == formula) & (REF.method == "REML")]
        fit = hc.fit(load(dataset), formula, backend="lme4")
        rp = fit.tidy("ran_pars")
        got = {f"{g}|{t}": (lo, hi) for g, t, lo, hi in zip(rp.group, rp.term, rp.conf_low, rp.conf_high)}
        for r in ref.itertuples():
            assert close_end(r.conf_low, got[r.name][0], r.name) or r.conf_low == got[r.name][0] == 0, r.name
            assert close_end(r.conf_high, got[r.name][1], r.name), r.name


@pytest.mark.r
@pytest.mark.slow
def test_the_stored_reference_is_what_lme4_gives_now(tmp_path):
    """Rerun the R script and compare with the stored file (1e-8 relative; it takes about a minute)."""
    out = tmp_path / "profile_reference.csv"
    code = f'source("tests/data/profile_reference.R"); hc_profile_reference(".", "{out}")'
    p = subprocess.run(["Rscript", "-e", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    fresh = pd.read_csv(out)
    keys = ["dataset", "formula", "method", "name"]
    pd.testing.assert_frame_equal(fresh[keys], REF[keys])
    cols = ["estimate", "conf_low", "conf_high", "zeta_low", "zeta_high"]
    np.testing.assert_allclose(fresh[cols].to_numpy(float), REF[cols].to_numpy(float), rtol=1e-8, atol=1e-10)
