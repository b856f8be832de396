"""lightgbm and torch with genuine random effects for binary and count outcomes (issue 12, item 4): f(x) in the
linear predictor, the Laplace approximation's gradient from hiercompare.glmmcore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.backends import learners
from hiercompare.design import prepare
from hiercompare.fitting import as_spec

DATA = Path(__file__).parent / "data"
FORMULA = "y ~ x1 + (1 | market) + (1 | market:submarket)"


def _nonlinear(family: str, n: int = 3000, seed: int = 5) -> pd.DataFrame:
    """A nonlinear f(x1) (a bump the linear term cannot follow), market and submarket intercepts."""
    rng = np.random.default_rng(seed)
    market = rng.integers(0, 12, n)
    sub = rng.integers(0, 4, n)
    x1 = rng.uniform(-3, 3, n)
    eta = -0.3 + 1.5 * np.exp(-x1 ** 2) + rng.normal(0, 0.6, 12)[market] + rng.normal(0, 0.3, (12, 4))[market, sub]
    d = pd.DataFrame({"x1": x1, "market": [f"M{m}" for m in market], "submarket": [f"S{s}" for s in sub]})
    if family == "binomial":
        d["y"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    else:
        d["expo"] = rng.uniform(-1, 1, n)
        d["y"] = rng.poisson(np.exp(eta + 1.0 + d["expo"]))
    return d


@pytest.mark.parametrize("backend", ["lightgbm", "torch"])
def test_learner_learns_f_and_keeps_the_random_effects(backend):
    pytest.importorskip("lightgbm" if backend == "lightgbm" else "torch")
    d = _nonlinear("binomial")
    options = dict(max_rounds=300) if backend == "lightgbm" else dict(epochs=400)
    fit = hc.fit(d, FORMULA, backend=backend, family="binomial", seed=1, **options)
    linear = hc.fit(d, FORMULA, backend="native", family="binomial")
    assert fit.method == "ML (Laplace)" and fit.converged
    assert fit.loglik > linear.loglik + 20  # the bump in x1 is learned (logLik conditional on f)
    rp = fit.tidy("ran_pars").set_index(["group", "term"])["estimate"]
    assert hc.results.RESIDUAL not in {g for g, _ in rp.index}
    assert 0.3 < rp["market", "sd__(Intercept)"] < 1.2
    p = fit.predict(type="response")
    assert ((p > 0) & (p < 1)).all()
    # the learned f follows the bump: higher near x1 = 0 than at the ends
    f = fit.nonlinear(pd.DataFrame({"x1": [-2.8, 0.0, 2.8]}))
    assert f[1] > f[0] + 0.5 and f[1] > f[2] + 0.5
    # the deviations add up to the prediction, as for every backend
    parts = fit.decompose()
    np.testing.assert_allclose(parts.drop(columns="prediction").sum(axis=1), fit.predict(), rtol=1e-12)


def test_lightgbm_poisson_with_an_offset_and_the_negative_binomial():
    pytest.importorskip("lightgbm")
    d = _nonlinear("poisson")
    formula = "y ~ x1 + offset(expo) + (1 | market) + (1 | market:submarket)"
    fit = hc.fit(d, formula, backend="lightgbm", family="poisson", max_rounds=200, seed=2)
    assert np.corrcoef(np.log(fit.predict(type="response")), np.log(d["y"] + 0.5))[0, 1] > 0.8
    nb = hc.fit(d, formula, backend="lightgbm", family="negbinomial", max_rounds=100, seed=2)
    theta = nb.tidy("ran_pars")
    assert (theta["group"] == hc.results.DISPERSION).sum() == 1
    assert theta[theta["group"] == hc.results.DISPERSION]["estimate"].iloc[0] > 5  # poisson data: a large size


def test_without_boosting_the_learner_is_the_native_glmm():
    """With no rounds f is 0, so the final random effects are native's GLMM fit exactly."""
    pytest.importorskip("lightgbm")
    d = pd.read_csv(DATA / "glmm_contraception.csv")
    formula = "use ~ age + urban + (1 + urban | district)"
    fit = hc.fit(d, formula, backend="lightgbm", family="binomial", max_rounds=1, validation_fraction=0,
                 params={"learning_rate": 1e-12})
    native = hc.fit(d, formula, backend="native", family="binomial")
    assert fit.loglik == pytest.approx(native.loglik, abs=1e-6)
    a = fit.tidy("ran_pars").set_index("term")["estimate"]
    b = native.tidy("ran_pars").set_index("term")["estimate"]
    np.testing.assert_allclose(a[b.index], b, rtol=1e-4)


def test_newton_target_is_the_laplace_gradient_off_the_fixed_design():
    d = pd.read_csv(DATA / "glmm_mmmec.csv")
    md = prepare(as_spec("deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)",
                         "negbinomial"), d)
    re = learners.random_effects(md)
    assert isinstance(re, learners.GlmmRandomEffects)
    f = np.sin(md.data["uvb"].to_numpy())
    re.update(f, optimise=True)
    re.update(f + 0.01, optimise=False)
    target, w = re.newton_target(f + 0.01)
    g = 2 * w * (f + 0.01 - target)  # the projected gradient
    np.testing.assert_allclose(md.X.T @ g, 0.0, atol=1e-8 * np.abs(g).sum())
    raw, _ = re.core.offset_gradient(re.state)
    # what was taken out lies in span(W X)
    coef = np.linalg.lstsq(w[:, None] * md.X, raw - g, rcond=None)[0]
    np.testing.assert_allclose((w[:, None] * md.X) @ coef, raw - g, atol=1e-8 * np.abs(raw).max())


def test_baselines_stay_gaussian():
    d = _nonlinear("binomial", n=400)
    for backend in ("lightgbm-cat", "torch-embed"):
        with pytest.raises(hc.SpecError, match="gaussian"):
            hc.fit(d, FORMULA, backend=backend, family="binomial")
