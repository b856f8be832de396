"""The parametric bootstrap's designs for counts, proportions and weighted Gaussian data: the draws of
DesignScenario (and the shared sampler simulate.draw_response) have the fitted model's moments.

Data: lme4's cbpp (binomial with trials) and mlmRev's Mmmec (Poisson / NB with the expected count as exposure),
tests/data/glmm_cbpp.csv and glmm_mmmec.csv (origin in hiercompare/data/SOURCES.md). Every check is a Monte
Carlo check with its tolerance derived from the number of draws; the seeds are fixed, so the numbers are
reproducible.

Each design draw gives new group effects b (the Truth's ran_vals); given them, the row's mean is the inverse link
of X beta + offset + Z b. The checks standardise each draw by the family's conditional mean and variance at that
b (computed here from the data, the reference fit's estimates and the Truth, not from the code under test):
over all rows and draws the standardised values have mean 0 and variance 1, and per row the sum over draws of
``y - E[y | b]`` divided by its SD is a z-score.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.design import prepare
from hiercompare.simulate import WEIGHTS_COLUMN, DesignScenario, draw_response, scenario_from_dict

DATA = __import__("pathlib").Path(__file__).parent / "data"
POISSON = "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"
NB = "deaths ~ uvb + offset(log_expected) + (1 | nation)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
CBPP_FAILURES = "cbind(incidence, failures) ~ period + (1 | herd)"
DRAWS = 600
Z_MAX = 4.5  # per-row |z| bound: P(|N(0,1)| > 4.5) = 6.8e-6, so < 0.3% over 354 rows even if independent


@pytest.fixture(scope="module")
def mmmec():
    d = pd.read_csv(DATA / "glmm_mmmec.csv")
    return d


@pytest.fixture(scope="module")
def cbpp():
    d = pd.read_csv(DATA / "glmm_cbpp.csv", dtype={"herd": str, "period": str})
    d["failures"] = d["size"] - d["incidence"]
    return d


def _draws(sc, data, response, offset, n=DRAWS):
    """``n`` design draws: the responses (n, rows) and each draw's X beta + offset + Z b, with b the Truth's drawn
    effects (computed from the data and the truth table, not from the code under test)."""
    spec = hc.ModelSpec.from_formula(sc.formula_text, family=sc.family)
    md = prepare(spec, data)
    ys, etas = [], []
    for s in range(n):
        sim, truth = hc.simulate(sc, seed=s)
        ys.append(sim[response].to_numpy(dtype=float))
        t = truth.table
        fe = t[t.effect == "fixed"].set_index("term")["estimate"]
        eta = md.X @ fe.reindex(md.fixed_names).to_numpy() + offset
        rv = t[t.effect == "ran_vals"]
        for lv in md.hierarchy.levels:
            b = rv[rv.group == lv.group].set_index("level")["estimate"].reindex(lv.labels).to_numpy()
            assert np.isfinite(b).all()
            eta = eta + b[lv.codes]
        etas.append(eta)
    return np.array(ys), np.array(etas)


def _check_standardised(y, mean, var):
    """Pooled over rows and draws: mean 0 and variance 1 of (y - mean) / sd; per row: |z| < Z_MAX."""
    r = (y - mean) / np.sqrt(var)
    n = r.size
    assert abs(r.mean()) < 5 / np.sqrt(n), r.mean()
    # the variance of r^2's mean: at most ~ (kurtosis - 1) / n; with these families' kurtosis (< 10 here)
    # 0.05 is > 5 of its SEs at 600 x 56 values and far below the gap a wrong variance leaves (see each test)
    assert abs((r ** 2).mean() - 1) < 0.05, (r ** 2).mean()
    z = (y - mean).sum(axis=0) / np.sqrt(var.sum(axis=0))
    assert np.abs(z).max() < Z_MAX, np.abs(z).max()
    return float((r ** 2).mean())


def test_poisson_design_keeps_the_exposure_in_the_mean(mmmec):
    ref = hc.fit(mmmec, POISSON, backend="native", family="poisson")
    sc = DesignScenario.from_fit(ref, mmmec)
    ys, etas = _draws(sc, mmmec, "deaths", mmmec["log_expected"].to_numpy())
    # the mean given b is expected * exp(X beta + Z b): the exposure scales it (here read from the data column
    # 'expected', not from the offset the code used)
    mu = mmmec["expected"].to_numpy() * np.exp(etas - mmmec["log_expected"].to_numpy())
    _check_standardised(ys, mu, mu)
    # without the offset the means would be off by the exposure, 1.2 to 2,400 deaths: far outside the bound
    assert (ys.mean(axis=0) / mmmec["expected"]).between(0.2, 5).all()
    # the other marginal moment: E[y] = expected * exp(X beta + (sd_nation^2 + sd_region^2) / 2)
    vc = ref.tidy("ran_pars").set_index("group")["estimate"]
    s2 = vc["nation"] ** 2 + vc["nation:region"] ** 2
    fixed_eta = ref.model.X @ ref.fixef.reindex(ref.model.fixed_names).to_numpy()
    m = mmmec["expected"].to_numpy() * np.exp(fixed_eta + s2 / 2)
    # the nation effect is shared by every row of a nation (9 nations): the national total's relative SE over
    # 600 draws is about sqrt(exp(s2) - 1) / sqrt(600) ~ 1.8%; 4 SEs on the grand total
    assert ys.sum() / (DRAWS * m.sum()) == pytest.approx(1.0, abs=4 * np.sqrt(np.exp(s2) - 1) / np.sqrt(DRAWS))


def test_negative_binomial_design_has_the_fitted_size(mmmec):
    ref = hc.fit(mmmec, NB, backend="native", family="negbinomial")
    size = float(ref.tidy("ran_pars").set_index("term").loc["theta", "estimate"])
    sc = DesignScenario.from_fit(ref, mmmec)
    ys, etas = _draws(sc, mmmec, "deaths", mmmec["log_expected"].to_numpy())
    mu = np.exp(etas)
    pooled = _check_standardised(ys, mu, mu + mu ** 2 / size)
    # a Poisson draw at the same means would give (r^2) ~ 1 / (1 + mu / size), about 0.4 here, not 1
    assert np.mean(mu / (mu + mu ** 2 / size)) < 0.7 and pooled > 0.9
    # the truth carries the size: its bootstrap row compares every engine's theta with it
    _, truth = hc.simulate(sc, seed=0)
    t = truth.tidy("ran_pars").set_index(["group", "term"])["estimate"]
    assert t[("Dispersion", "theta")] == pytest.approx(size, rel=1e-15)


@pytest.mark.parametrize("formula", [CBPP, CBPP_FAILURES])
def test_binomial_design_draws_successes_out_of_each_rows_trials(cbpp, formula):
    ref = hc.fit(cbpp, formula, backend="native", family="binomial")
    sc = DesignScenario.from_fit(ref, cbpp)
    again = scenario_from_dict(json.loads(json.dumps(sc.to_dict())))  # what a worker process receives
    n = cbpp["size"].to_numpy(dtype=float)
    ys, etas = _draws(again, cbpp, "incidence", np.zeros(len(cbpp)))
    assert ((ys >= 0) & (ys <= n) & (ys == np.round(ys))).all()
    p = 1 / (1 + np.exp(-etas))
    # mean of successes n p, variance n p (1 - p); a Bernoulli draw (one trial) would miss both by far
    _check_standardised(ys, n * p, n * p * (1 - p))
    sim, _ = hc.simulate(again, seed=1)
    if "failures" in formula:  # cbind(s, f): the failures column follows the new successes
        np.testing.assert_array_equal(sim["failures"] + sim["incidence"], n)
    else:  # cbind(s, n - s): the trials column is the user's
        np.testing.assert_array_equal(sim["size"], n)
    hc.fit(sim, formula, backend="native", family="binomial")  # a valid data set for every refit


def test_gaussian_design_with_weights_draws_residual_variance_sigma2_over_w():
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), 8)
    w = rng.choice([0.25, 1.0, 4.0], size=len(g))
    x = rng.normal(size=len(g))
    y = 1 + 0.5 * x + rng.normal(0, 0.7, 12)[g] + rng.normal(size=len(g)) / np.sqrt(w)
    data = pd.DataFrame({"y": y, "x": x, "g": [f"G{i}" for i in g], "w": w})
    ref = hc.fit(data, "y ~ x + (1 | g)", backend="native", weights="w")
    sigma = float(ref.tidy("ran_pars").set_index("group").loc["Residual", "estimate"])
    sc = DesignScenario.from_fit(ref, data)
    assert sc.fit_options == {"weights": WEIGHTS_COLUMN}
    sc = scenario_from_dict(json.loads(json.dumps(sc.to_dict())))
    ys, etas = _draws(sc, data, "y", np.zeros(len(data)))
    _check_standardised(ys, etas, np.broadcast_to(sigma ** 2 / w, ys.shape))
    # by weight class: the residual variance is sigma^2 / w (0.25 -> 4 sigma^2, 4 -> sigma^2 / 4); each class has
    # ~32 rows x 600 draws, so its variance ratio has a relative SE of ~1%: 5% is 5 SEs
    res = ys - etas
    for wv in (0.25, 1.0, 4.0):
        assert res[:, w == wv].var() * wv / sigma ** 2 == pytest.approx(1.0, abs=0.05)
    sim, truth = hc.simulate(sc, seed=0)
    np.testing.assert_array_equal(sim[WEIGHTS_COLUMN].to_numpy(), w)
    # realized residual SD is of the standardised residuals sqrt(w) e, an estimate of sigma
    real = truth.tidy("ran_pars").set_index("group").loc["Residual", "realized"]
    assert real == pytest.approx(sigma, rel=0.2)


def test_weighted_bootstrap_refits_with_the_weights(tmp_path):
    """The study's refits get weights= (the design's column): native's weighted fit of the first data set equals
    a direct weighted fit of it."""
    from hiercompare.bootstrap import bootstrap_design

    rng = np.random.default_rng(5)
    g = np.repeat(np.arange(10), 6)
    w = rng.choice([0.5, 2.0], size=len(g))
    data = pd.DataFrame({"y": rng.normal(size=len(g)) / np.sqrt(w) + rng.normal(0, 0.5, 10)[g],
                         "g": [f"G{i}" for i in g], "w": w})
    spec = hc.ModelSpec.from_formula("y ~ 1 + (1 | g)")
    out = bootstrap_design(data, spec, ["native", "ols"], 2, seed=3, out=tmp_path / "b", weights="w")
    s = out["bootstrap_summary"]
    assert set(s["backend"]) == {"native", "ols"} and (s["n_used"] == 2).all()
    ref = hc.fit(data, spec, backend="native", weights="w")
    r = out["bootstrap_reference"].set_index(["group", "term"])["reference_value"]
    assert r[("Residual", "sd__Observation")] == pytest.approx(
        ref.tidy("ran_pars").set_index("group").loc["Residual", "estimate"], rel=1e-12)
    from hiercompare.study.storage import read_results

    table = read_results(tmp_path / "b")
    sc = DesignScenario.from_fit(ref, data, name="bootstrap")
    rep0 = table[(table.backend == "native") & (table.replication == 0)]
    sim, _ = hc.simulate(sc, seed=int(rep0["seed"].iloc[0]))
    direct = hc.fit(sim, spec, backend="native", weights=WEIGHTS_COLUMN)
    got = rep0[rep0.term == "(Intercept)"]["estimate"].iloc[0]
    assert got == pytest.approx(direct.fixef["(Intercept)"], rel=1e-10)
    unweighted = hc.fit(sim, spec, backend="native")
    assert abs(unweighted.fixef["(Intercept)"] - got) > 1e-6  # the weights did change the refit


def test_draw_response_moments():
    """The shared sampler over 200,000 draws of one row each: binomial n p and n p (1 - p), Poisson mu with an
    offset, NB2 mu + mu^2 / size, Gaussian sigma^2 / w (relative tolerance 2%, > 5 Monte Carlo SEs)."""
    rng = np.random.default_rng(0)
    D = 200_000
    eta = np.full((D, 1), 0.4)
    y = draw_response("binomial", eta, rng, trials=[7])
    p = 1 / (1 + np.exp(-0.4))
    assert y.mean() == pytest.approx(7 * p, rel=0.01) and y.var() == pytest.approx(7 * p * (1 - p), rel=0.02)
    y = draw_response("poisson", eta + np.log(3.0), rng)  # exposure 3: three times the mean
    assert y.mean() == pytest.approx(3 * np.exp(0.4), rel=0.01) and y.var() == pytest.approx(3 * np.exp(0.4), rel=0.02)
    mu = np.exp(1.5)
    y = draw_response("negbinomial", np.full((D, 1), 1.5), rng, size=2.5)
    assert y.mean() == pytest.approx(mu, rel=0.01) and y.var() == pytest.approx(mu + mu ** 2 / 2.5, rel=0.03)
    y = draw_response("gaussian", np.zeros((D, 2)), rng, sigma=2.0, weights=[4.0, 0.25])
    np.testing.assert_allclose(y.var(axis=0), [1.0, 16.0], rtol=0.02)
    with pytest.raises(hc.SpecError, match="size"):
        draw_response("negbinomial", eta, rng)


def test_design_validation(cbpp):
    ref = hc.fit(cbpp, CBPP, backend="native", family="binomial")
    d = DesignScenario.from_fit(ref, cbpp).to_dict()
    assert "weights" not in d  # unweighted designs keep their earlier definition (a resumed study matches)
    d["weights"] = [1.0] * len(cbpp)
    with pytest.raises(hc.SpecError, match="Gaussian"):
        DesignScenario.from_dict(d)
    d.pop("weights")
    d["family"] = "negbinomial"
    with pytest.raises(hc.SpecError, match="size"):
        DesignScenario.from_dict(d)
