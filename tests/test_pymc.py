"""pymc backend: the likelihoods it samples are checked against dense N x N computations; sampling checked
for recovery, agreement with the exact frequentist fit, diagnostics and posterior predictive / LOO.

Documented tolerances for recovery on the seed scenario (seed 123): fixed effects inside their 95% intervals;
posterior means of the SDs within 40% (market terms, 10 groups) and 15% (submarkets, 50 groups) of the SDs
realised by the drawn effects, residual SD within 3%.
"""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.linalg import block_diag

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.design import prepare

pytestmark = pytest.mark.skipif("pymc" not in hc.available_backends(), reason="pymc not installed")
F = hc.Scenario().formula()


def _small(formula="y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"):
    sc = hc.Scenario(levels=(hc.LevelScenario("market", 4, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1)),
                                              label="M{i}"),
                             hc.LevelScenario("submarket", (2, 3), {"(Intercept)": 0.4}, label="S{i}")),
                     n_obs=(3, 6))
    data, _ = hc.simulate(sc, seed=3)
    return prepare(hc.ModelSpec.from_formula(formula), data)


def _dense_loglik(md, Ls, beta, sigma):
    Zs, Gs = [], []
    for li, lv in enumerate(md.hierarchy.levels):
        for g in range(lv.n_groups):
            Zs.append(md.Z[lv.group] * (lv.codes == g)[:, None])
            Gs.append(Ls[li] @ Ls[li].T)
    Z = np.hstack(Zs)
    V = Z @ block_diag(*Gs) @ Z.T + sigma ** 2 * np.eye(md.n)
    return stats.multivariate_normal(md.X @ beta, V).logpdf(md.y)


@pytest.mark.parametrize("formula", ["y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
                                     "y ~ x1 + x2 + (1 + x1 || market) + (1 + x2 | market:submarket)"])
def test_marginal_likelihood_equals_dense(formula):
    import pytensor
    import pytensor.tensor as pt

    from hiercompare.backends.pymc import _marginal_loglik

    md = _small(formula)
    core = mixedcore.from_model_data(md)
    rng = np.random.default_rng(1)
    Ls = []
    for lv in md.hierarchy.levels:
        k = len(lv.spec.terms)
        A = np.tril(rng.normal(0.4, 0.2, (k, k)))
        A[np.diag_indices(k)] = np.abs(A[np.diag_indices(k)]) + 0.2
        if len(lv.spec.blocks) > 1:
            A = np.diag(np.diag(A))
        Ls.append(A)
    beta, sigma = np.array([0.9, -0.2, 0.5]), 0.8
    Lv = [pt.as_tensor_variable(L) for L in Ls]
    f = pytensor.function([], _marginal_loglik(pt, core, Lv, pt.as_tensor_variable(beta),
                                               pt.as_tensor_variable(sigma)))
    assert float(f()) == pytest.approx(_dense_loglik(md, Ls, beta, sigma), abs=1e-9)


def test_chol_solve_unrolled():
    import pytensor
    import pytensor.tensor as pt

    from hiercompare.backends.pymc import _chol_solve

    rng = np.random.default_rng(2)
    G, k, R = 5, 3, 4
    A = np.stack([(lambda m: m @ m.T + k * np.eye(k))(rng.normal(size=(k, k))) for _ in range(G)])
    B = rng.normal(size=(G, k, R))
    half, W = _chol_solve(pt, pt.as_tensor_variable(A), pt.as_tensor_variable(B), k)
    h, w = pytensor.function([], [half, W])()
    L = np.linalg.cholesky(A)
    assert h == pytest.approx(np.log(np.diagonal(L, axis1=1, axis2=2)).sum(), rel=1e-12)
    np.testing.assert_allclose(w, np.linalg.solve(L, B), rtol=1e-10)


def test_conditional_effect_draws_match_blups():
    """sample_effects draws from p(b | beta, sigma, Lambda, y): its mean and SD equal the BLUP and the
    beta-conditional SD of mixedcore at the same parameters (Monte Carlo tolerance 5 SE)."""
    md = _small()
    core = mixedcore.from_model_data(md)
    res = core.fit(condvar="beta_fixed")
    lam = core.lambdas(res.theta)
    rng = np.random.default_rng(5)
    n = 4000
    draws = [core.sample_effects(lam, res.beta, res.sigma, rng) for _ in range(n)]
    for li in range(core.L):
        d = np.stack([x[li] for x in draws])
        sd = np.sqrt(np.diagonal(res.blup_cov[li], axis1=1, axis2=2))
        np.testing.assert_allclose(d.mean(0), res.blups[li], atol=5 * sd.max() / np.sqrt(n))
        np.testing.assert_allclose(d.std(0), sd, rtol=0.06)


@pytest.fixture(scope="module")
def pymc_fit(seed_data):
    data, _ = seed_data
    return hc.fit(data, F, backend="pymc", seed=1)


@pytest.mark.slow
def test_recovery_and_diagnostics(pymc_fit, seed_data):
    data, truth = seed_data
    f = pymc_fit
    d = f.diagnostics
    assert d["converged"] and d["divergences"] == 0 and d["rhat_max"] < 1.01 and d["ess_bulk_min"] > 400
    assert d["collapse"] == "all" and d["sampler"] == "nutpie"
    rec = hc.recovery(f, truth)
    fixed = rec[rec["effect"] == "fixed"]
    assert fixed["covers"].all(), fixed
    rp = rec[rec["effect"] == "ran_pars"].set_index(["group", "term"])
    for key, tol in {("market", "sd__(Intercept)"): 0.4, ("market", "sd__x1"): 0.4,
                     ("market:submarket", "sd__(Intercept)"): 0.15}.items():
        assert abs(rp.loc[key, "estimate"] / rp.loc[key, "realized"] - 1) < tol, key
    assert rp.loc[("Residual", "sd__Observation"), "estimate"] == pytest.approx(1.0, rel=0.03)
    # every parameter class and label present; coordinates carry the labels
    idata = f.raw
    assert list(idata.posterior["r_market"].coords["market__labels"].values) == [f"Market_{i}" for i in range(10)]
    assert idata.attrs["backend"] == "pymc" and idata.attrs["formula"] == f.spec.formula


@pytest.mark.slow
def test_agrees_with_exact_fit(pymc_fit, seed_data):
    """Flat-ish priors, 5,000 rows: posterior means of fixed effects within 0.5 posterior SD of the REML fit,
    and the BLUPs within 0.5 posterior SD of the posterior means of the group effects."""
    data, _ = seed_data
    n = hc.fit(data, F, backend="native")
    a, b = pymc_fit.tidy(), n.tidy()
    m = a.merge(b, on=["effect", "group", "level", "term"], suffixes=("_p", "_n"))
    fx = m[m["effect"] == "fixed"]
    assert ((fx["estimate_p"] - fx["estimate_n"]).abs() < 0.5 * fx["std_error_p"]).all()
    rv = m[m["effect"] == "ran_vals"]
    assert ((rv["estimate_p"] - rv["estimate_n"]).abs() < 0.5 * rv["std_error_p"]).all()


@pytest.mark.slow
def test_posterior_predictive_and_loo(pymc_fit, seed_data):
    data, _ = seed_data
    pp = pymc_fit.posterior_predictive(thin=10)
    assert pp.shape == (200, 5000)
    assert abs(pp.mean() - data["y"].mean()) < 0.05
    assert pp.std(axis=0).mean() == pytest.approx(1.0, rel=0.1)  # predictive SD ~ residual SD
    lo = pymc_fit.loo(thin=4)
    assert np.isfinite(lo.elpd_loo) and -7300 < lo.elpd_loo < -7000
    with pytest.raises(hc.HierCompareError, match="provides no loo"):
        hc.fit(data, F, backend="native").loo()


@pytest.mark.slow
def test_binomial_noncentred_runs():
    sc = hc.Scenario(family="binomial", fixed={"(Intercept)": -0.3, "x1": 0.0, "x2": 0.8}, residual_sd=0.0, n_obs=60)
    data, truth = hc.simulate(sc, seed=2)
    f = hc.fit(data, sc.formula(), backend="pymc", family="binomial", draws=300, tune=300, seed=3)
    assert f.diagnostics["collapse"] == "none"
    fixed = hc.recovery(f, truth).query("effect == 'fixed'")
    assert fixed["covers"].all(), fixed


def test_priors_and_bad_options(seed_data):
    data, _ = seed_data
    with pytest.raises(hc.SpecError, match="unknown prior classes"):
        hc.fit(data, F, backend="pymc", priors={"slope": ("normal", 0, 1)})
    with pytest.raises(hc.SpecError, match="half-Student-t"):
        hc.fit(data, F, backend="pymc", priors={"sd": ("normal", 0, 1)})
    with pytest.raises(hc.SpecError, match="collapse"):
        hc.fit(data, F, backend="pymc", collapse="sideways")


def test_partial_prior_override_is_the_same_spec_error_as_brms(seed_data):
    """A dict of b priors that misses a coefficient was a raw KeyError inside model building; it is now the
    SpecError brms gives (both backends resolve their priors with hiercompare.priors.resolve_priors)."""
    from hiercompare.backends import brms as brms_backend
    from hiercompare.backends import pymc as pymc_backend

    assert pymc_backend.resolve_priors is brms_backend.resolve_priors
    data, _ = seed_data
    with pytest.raises(hc.SpecError, match=r"the b priors must name exactly the design's coefficients "
                                           r"\['x1', 'x2'\]; missing: \['x2'\]; give one prior per coefficient"):
        hc.fit(data, F, backend="pymc", priors={"b": {"x1": ("normal", 0, 1)}})
    with pytest.raises(hc.SpecError, match=r"unknown: \['x3'\]"):
        hc.fit(data, F, backend="pymc", priors={"b": {"x1": ("normal", 0, 1), "x2": ("normal", 0, 1),
                                                      "x3": ("normal", 0, 1)}})
    with pytest.raises(hc.SpecError, match="needs positive scale"):
        hc.fit(data, F, backend="pymc", priors={"sd": ("student_t", 3, 0, -1.0)})


@pytest.mark.slow
def test_bayes_agreement_rule_on_two_independent_runs(pymc_fit, seed_data):
    """Two runs of the same posterior with different seeds must pass the pymc-vs-brms rule (posterior means
    within max(4 combined MCSEs, 0.1 posterior SD); posterior SDs within 15%); a shifted copy must fail."""
    import dataclasses

    from hiercompare.agreement import summary

    data, _ = seed_data
    other = hc.fit(data, F, backend="pymc", seed=99)
    as_brms = dataclasses.replace(other, backend="brms")
    s = summary(hc.compare([pymc_fit, as_brms])).set_index("param_class")
    assert (s["verdict"] == "agree").all(), s
    assert len(pymc_fit.diagnostics["mcse"]) == len(pymc_fit.table) and all(
        0 < r["mcse"] < 0.05 for r in pymc_fit.diagnostics["mcse"])
    shifted = dataclasses.replace(as_brms, table=as_brms.table.assign(
        estimate=np.where(as_brms.table["term"] == "x2", as_brms.table["estimate"] + 0.01, as_brms.table["estimate"])))
    t = hc.compare([pymc_fit, shifted])
    assert t.loc[(t["term"] == "x2") & (t["quantity"] == "estimate"), "verdict"].item() == "disagree"


def test_compiled_model_reused_within_a_process():
    """A study fits one structure many times: the second fit swaps its data (per-leaf sums, rows, data-scaled
    prior scales) into the compiled model of the first, with the same draws as a fresh compile on that data.
    Unbalanced trees (5 to 40 rows per leaf) so that the rows and the priors differ between the data sets."""
    import importlib.util
    import warnings

    from hiercompare.backends import pymc as pymc_backend

    if not importlib.util.find_spec("nutpie"):
        pytest.skip("the compiled-model reuse is nutpie's (with_data); nutpie is not installed")
    sc = hc.Scenario(n_obs=(5, 40))
    d1, _ = hc.simulate(sc, seed=1)
    d2, _ = hc.simulate(sc, seed=2)
    assert len(d1) != len(d2)

    def fit(data):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return hc.fit(data, sc.formula(), backend="pymc", seed=3, draws=200, tune=200)

    pymc_backend.clear_compiled_cache()
    first, second = fit(d1), fit(d2)
    assert first.diagnostics["compiled_model"] == "compiled" and first.diagnostics["compile_seconds"] > 1
    assert second.diagnostics["compiled_model"] == "reused (this process)"
    assert second.diagnostics["compile_seconds"] < 0.2 * first.diagnostics["compile_seconds"]
    assert pymc_backend.clear_compiled_cache() == 1
    fresh = fit(d2)
    assert fresh.diagnostics["compiled_model"] == "compiled"
    cols = ["estimate", "std_error", "conf_low", "conf_high"]
    np.testing.assert_array_equal(second.table[cols].to_numpy(float), fresh.table[cols].to_numpy(float))
    assert not np.allclose(first.table["estimate"], second.table["estimate"])  # a different data set indeed
    # two threads (a Dask worker with two) fitting both data sets at once on the one cached model: each gets
    # the draws of its own fresh compile
    import threading

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=lambda k=k, d=d: out.__setitem__(k, hc.fit(
            d, sc.formula(), backend="pymc", seed=3, draws=200, tune=200))) for k, d in (("d1", d1), ("d2", d2))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert {f.diagnostics["compiled_model"] for f in out.values()} == {"reused (this process)"}
    np.testing.assert_array_equal(out["d1"].table[cols].to_numpy(float), first.table[cols].to_numpy(float))
    np.testing.assert_array_equal(out["d2"].table[cols].to_numpy(float), fresh.table[cols].to_numpy(float))
    # what decides reuse: the structure (another formula, other labels -> another key), and only the collapsed
    # gaussian model with normal priors on the fixed effects is swappable
    md1 = prepare(hc.ModelSpec.from_formula(sc.formula()), d1)
    md2 = prepare(hc.ModelSpec.from_formula(sc.formula()), d2)
    from hiercompare.priors import Priors

    pri1, pri2 = Priors.default(md1), Priors.default(md2)
    assert pri1.sd[3] != pri2.sd[3]  # data-scaled, yet the same structure
    assert pymc_backend._structure_key(md1, pri1) == pymc_backend._structure_key(md2, pri2)
    other = prepare(hc.ModelSpec.from_formula("y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"), d1)
    assert pymc_backend._structure_key(other, Priors.default(other)) != pymc_backend._structure_key(md1, pri1)
    relabelled = prepare(hc.ModelSpec.from_formula(sc.formula()), d1.assign(market="m_" + d1["market"]))
    assert (pymc_backend._structure_key(relabelled, Priors.default(relabelled))
            != pymc_backend._structure_key(md1, pri1))
    wider = pri1.replace(sd=("student_t", 4.0, 0.0, pri1.sd[3]))
    assert pymc_backend._structure_key(md1, wider) != pymc_backend._structure_key(md1, pri1)
    t_prior = pri1.replace(b={"x1": ("student_t", 3.0, 0.0, 2.0), "x2": pri1.b["x2"]})
    assert pymc_backend._swappable(md1, pri1, "suffstats", "all")
    assert not pymc_backend._swappable(md1, t_prior, "suffstats", "all")
    assert not pymc_backend._swappable(md1, pri1, "suffstats", "leaf")
