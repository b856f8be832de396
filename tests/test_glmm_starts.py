"""Where glmmcore's optimisation starts, and that it reaches glmer's optimum in the validation studies' cases.

The learners' GLMM random effects (lightgbm, torch on binomial / poisson / negbinomial) start their first fit
where glmmcore starts by itself (its penalised quasi-likelihood start), so that with f(x) = 0 they reach native's
optimum. From theta = 1 they stopped at a boundary of the negative binomial's likelihood on the seed tree (market
slope's Cholesky element 0, log-likelihood 17 lower than native's), found by validation/count_nb.toml."""
from __future__ import annotations

import numpy as np

import hiercompare as hc
from hiercompare import glmmcore
from hiercompare.backends.learners import GlmmRandomEffects
from hiercompare.design import prepare
from hiercompare.fitting import as_spec
from hiercompare.simulate import Scenario
from hiercompare.study.units import unit_seed


def test_first_fit_reaches_natives_optimum_negbinomial():
    sc = Scenario(family="negbinomial", theta=2.0, fixed={"(Intercept)": 0.5, "x1": 0.0, "x2": 0.3})
    data, _ = hc.simulate(sc, seed=2)
    md = prepare(as_spec(sc.formula(), "negbinomial"), data)
    native = glmmcore.from_model_data(md).fit()
    re = GlmmRandomEffects(md)
    res = re.update(np.zeros(md.n), optimise=True, final=True)
    assert res.loglik >= native.loglik - 1e-6
    np.testing.assert_allclose(res.theta, native.theta, atol=1e-3)
    np.testing.assert_allclose(res.nb_theta, native.nb_theta, rtol=1e-3)


def test_boundary_fit_from_the_quasi_likelihood_start_is_restarted():
    """validation/count.toml, scenario poisson_exposure, replication 1: from the quasi-likelihood start the Laplace
    fit ended at a market correlation of 1 (singular) with log-likelihood -7400.115; glmer (lme4 1.1.31, default
    start) reaches -7390.706021215 (interior). fit() now restarts a boundary fit (theta = 0.5, then 1) and keeps the
    better optimum."""
    sc = Scenario(family="poisson", exposure=(0.5, 2.0), fixed={"(Intercept)": 0.5, "x1": 0.0, "x2": 0.3})
    data, _ = hc.simulate(sc, seed=unit_seed(20240506, 1, 1))
    md = prepare(as_spec(sc.formula(), "poisson"), data)
    res = glmmcore.from_model_data(md).fit()
    assert res.loglik >= -7390.706021215 - 1e-6
    assert not res.singular
    assert any("restarted from theta" in n for n in res.notes)


def test_boundary_fit_negbinomial_restart_reaches_glmer_nb():
    """validation/count_nb.toml, replication 3: the quasi-likelihood start ended with the submarket SD at 0 and the
    NB size at 1.39 (log-likelihood -10187.29), lme4's start (theta = 1) at the market intercept's boundary
    (-9870.47); glmer.nb reaches -9856.60843 (lme4 1.1.31). The restart from theta = 0.5 reaches it."""
    sc = Scenario(family="negbinomial", theta=2.0, fixed={"(Intercept)": 0.5, "x1": 0.0, "x2": 0.3})
    data, _ = hc.simulate(sc, seed=unit_seed(20240507, 0, 3))
    md = prepare(as_spec(sc.formula(), "negbinomial"), data)
    res = glmmcore.from_model_data(md).fit()
    assert res.loglik >= -9856.60842984278 - 1e-6
    assert not res.singular
    assert abs(res.nb_theta - 1.9712) < 1e-3
