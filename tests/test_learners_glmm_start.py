"""The learners' GLMM random effects (lightgbm, torch on binomial / poisson / negbinomial) start their first fit
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
