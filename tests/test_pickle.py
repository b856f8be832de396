"""Every registered backend's Fit pickles, and the copy gives the same table, predictions and decomposition.

Fits travel between processes (study workers, the demo's second process), so a Fit and all it holds (the
ModelData, a learner's f(x) with its booster or network, the InferenceData and the Bayesian extras, the
summaries of the R backends) must pickle. Each backend fits a small tree (10 markets x 5 submarkets x 6 rows)
with its sampler or learner kept short; the unpickled copy must give tidy() equal to the letter, and
predict() and decompose() equal to 1e-12 on the fitted rows and on new rows that include an unseen market and
an unseen submarket of a seen market.
"""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.backends import REGISTRY, backends

OPTIONS = {  # short runs: the test is about what the Fit holds, not about the fit's quality
    "pymc": dict(draws=100, tune=100, chains=2),
    "brms": dict(iter=100, warmup=100, chains=2, cores=1),
    "torch": dict(epochs=30, hidden=(8,)),
    "torch-embed": dict(epochs=30, hidden=(8,)),
    "lightgbm": dict(max_rounds=30),
    "lightgbm-cat": dict(max_rounds=30),
}
NEEDS_R = {"r_lm", "r_glm", "lme4", "brms"}
SLOW = {"pymc", "brms"}  # a compile on the first fit of a process (nutpie) or machine (Stan, then cached)


def _param(name: str):
    marks = [pytest.mark.r] * (name in NEEDS_R) + [pytest.mark.slow] * (name in SLOW)
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(scope="module")
def small():
    sc = hc.Scenario(n_obs=6)
    data, _ = hc.simulate(sc, seed=7)
    new = data.sample(40, random_state=1).reset_index(drop=True)
    new.loc[:9, "market"] = "Market_new"  # an unseen market: its submarkets are unseen too
    new.loc[10:19, "submarket"] = "Sub_new"  # an unseen submarket of a seen market
    return sc.formula(), data, new


@pytest.mark.parametrize("backend", [_param(name) for name in REGISTRY])
def test_fit_pickles_with_predictions_unchanged(backend, small):
    formula, data, new = small
    info = backends([backend])[backend]
    if not info["available"]:
        pytest.skip(f"{backend} is not available here: {info['reason']}")
    family = None
    if "gaussian" not in info["families"]:  # glm / r_glm: the same tree with a count response
        family = "poisson"
        data = data.assign(y=np.random.default_rng(5).poisson(np.exp(np.clip(data["y"] / data["y"].std(), -3, 3))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hc.ConvergenceWarning)  # the short sampler runs do not converge
        fit = hc.fit(data, formula, backend=backend, seed=1, family=family, **OPTIONS.get(backend, {}))
    copy = pickle.loads(pickle.dumps(fit))
    pd.testing.assert_frame_equal(copy.tidy(), fit.tidy(), check_exact=True)
    assert fit.decompose(new).attrs["unseen"] == {"market": 10, "market:submarket": 20}
    for rows in (None, new):
        want, got = fit.decompose(rows), copy.decompose(rows)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-12)
        assert got.attrs["unseen"] == want.attrs["unseen"]
        np.testing.assert_allclose(copy.predict(rows), fit.predict(rows), rtol=0, atol=1e-12)
    if fit.extras:  # the Bayesian extras are bound to the copy itself, not to the original
        assert all(extra.args[0] is copy for extra in copy.extras.values())
        np.testing.assert_array_equal(copy.posterior_predictive(thin=10, seed=3),
                                      fit.posterior_predictive(thin=10, seed=3))
