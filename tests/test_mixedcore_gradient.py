"""mixedcore's analytic gradient of the profiled deviance (docs/mixedcore.md, sections 8 and 9) and the fast paths.

The gradient is checked against finite differences (fourth-order central differences of the deviance, which are
accurate to about 1e-9 here) to 1e-6 relative on trees of 1, 2 and 3 levels, with correlated slopes at the top,
in the middle and at the leaf, independent (||) terms, REML and ML, in both engines (compiled and numpy); the
engines agree with each other and with the dense elimination of section 3.3.
"""
import pickle

import numpy as np
import pytest

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.design import prepare

ENGINES = ["numpy"] + (["numba"] if mixedcore._jit_module() is not None else [])


def _three_level():
    sc = hc.Scenario(levels=(
        hc.LevelScenario("a", 6, {"(Intercept)": 0.8, "x1": 0.5}, ((1, 0.3), (0.3, 1))),
        hc.LevelScenario("b", (2, 5), {"(Intercept)": 0.4, "x2": 0.3}, ((1, -0.2), (-0.2, 1))),
        hc.LevelScenario("c", (2, 4), {"(Intercept)": 0.3})), n_obs=(3, 12))
    return hc.simulate(sc, seed=3)[0]


def _two_level():
    sc = hc.Scenario(levels=(
        hc.LevelScenario("authority", 12, {"(Intercept)": 0.5, "x1": 0.3}, ((1, 0.4), (0.4, 1))),
        hc.LevelScenario("school", (3, 9), {"(Intercept)": 0.6})), n_obs=(2, 10))
    return hc.simulate(sc, seed=11)[0]


CASES = [
    ("2 levels, correlated slope at the top", "two",
     "y ~ x1 + x2 + (1 + x1 | authority) + (1 | authority:school)"),
    ("3 levels, correlated slopes at two levels", "three",
     "y ~ x1 + x2 + (1 + x1 | a) + (1 + x2 | a:b) + (1 | a:b:c)"),
    ("3 levels, 3x3 block at the top, || in the middle", "three",
     "y ~ x1 + x2 + (1 + x1 + x2 | a) + (1 + x2 || a:b) + (1 | a:b:c)"),
    ("3 levels, correlated 3x3 block at the leaf", "three",
     "y ~ x1 + x2 + (1 | a) + (1 + x1 | a:b) + (1 + x1 + x2 | a:b:c)"),
    ("2 levels, a slope without intercept at the leaf", "three", "y ~ x1 + (1 + x1 + x2 || a) + (0 + x1 | a:b)"),
    ("1 level, no fixed intercept", "three", "y ~ 0 + x1 + (1 + x1 | a)"),
]


@pytest.fixture(scope="module")
def cores():
    data = {"two": _two_level(), "three": _three_level()}
    return {name: mixedcore.from_model_data(prepare(hc.ModelSpec.from_formula(f), data[d]))
            for name, d, f in CASES}


def _theta(core, seed):
    rng = np.random.default_rng(seed)
    th = core.theta0 + 0.3 * rng.standard_normal(len(core.theta0))
    return np.where(np.isfinite(core.lower), np.abs(th) + 0.05, th)


def _finite_differences(core, theta, reml, h=1e-3):
    f = lambda t: core._deviance_from(*core._eliminate(t)[:2], reml)[0]  # the dense reference elimination
    out = np.empty_like(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = h
        out[i] = (-f(theta + 2 * e) + 8 * f(theta + e) - 8 * f(theta - e) + f(theta - 2 * e)) / (12 * h)
    return out


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("reml", [True, False], ids=["REML", "ML"])
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_gradient_matches_finite_differences(cores, name, reml, engine):
    core = cores[name]
    for seed in (1, 2):
        theta = _theta(core, seed)
        dev, grad = core.deviance_and_gradient(theta, reml, engine=engine)
        dense = core._deviance_from(*core._eliminate(theta)[:2], reml)[0]
        assert dev == pytest.approx(dense, rel=1e-12, abs=1e-9)
        assert core.deviance(theta, reml) == pytest.approx(dense, rel=1e-12, abs=1e-9)
        fd = _finite_differences(core, theta, reml)
        scale = np.maximum(np.abs(fd), 1e-2 * np.abs(fd).max())
        assert np.max(np.abs(grad - fd) / scale) < 1e-6, (grad, fd)


@pytest.mark.skipif(len(ENGINES) < 2, reason="numba is not installed")
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_engines_agree(cores, name):
    core = cores[name]
    theta = _theta(core, 5)
    for reml in (True, False):
        d1, g1 = core.deviance_and_gradient(theta, reml, engine="numpy")
        d2, g2 = core.deviance_and_gradient(theta, reml, engine="numba")
        assert d1 == pytest.approx(d2, rel=1e-12)
        np.testing.assert_allclose(g1, g2, rtol=1e-8, atol=1e-8 * np.abs(g1).max())
    # at a boundary (a zero SD) the gradient exists and the engines still agree
    theta[np.flatnonzero(np.isfinite(core.lower))[0]] = 0.0
    np.testing.assert_allclose(core.deviance_and_gradient(theta, True, engine="numpy")[1],
                               core.deviance_and_gradient(theta, True, engine="numba")[1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("engine", ENGINES)
def test_fit_uses_the_gradient_and_certifies_the_optimum(seed_data, engine):
    md = prepare(hc.ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"),
                 seed_data[0])
    core = mixedcore.from_model_data(md)
    core.engine = engine
    res = core.fit(reml=True)
    assert res.converged
    assert res.n_evals < 60  # was 208 with central-difference gradients
    assert any(m.startswith("Newton:") for m in res.optimizer)
    g = core.gradient(res.theta, True)
    free = ~(np.isfinite(core.lower) & (res.theta <= 0))
    assert np.abs(g[free]).max() < 1e-3
    # a warm start at the optimum (the learners' refits) costs a handful of evaluations
    again = core.fit(reml=True, theta0=res.theta)
    assert again.n_evals < 20 and again.deviance <= res.deviance + 1e-9


def test_blups_are_computed_on_first_access_from_the_sums_at_solve_time(seed_data):
    md = prepare(hc.ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"),
                 seed_data[0])
    core = mixedcore.from_model_data(md)
    theta = core.fit().theta
    res = core.solve(theta)
    assert isinstance(res.effects, mixedcore._PendingEffects)
    core.set_response(md.y, offset=np.linspace(0, 1, md.n))  # new sums: res keeps the ones it was solved on
    fresh = mixedcore.from_model_data(md).solve(theta)
    for a, b in zip(res.blups + res.blup_cov, fresh.blups + fresh.blup_cov):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    pending = core.solve(theta)
    back = pickle.loads(pickle.dumps(pending))  # pickling resolves the effects first (no core inside)
    assert not isinstance(back.effects, mixedcore._PendingEffects)
    np.testing.assert_allclose(back.blups[0], pending.blups[0])


@pytest.mark.skipif(len(ENGINES) < 2, reason="numba is not installed")
def test_compiled_pass_over_the_rows_equals_bincount(seed_data):
    md = prepare(hc.ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"),
                 seed_data[0])
    old = mixedcore.ENGINE
    try:
        out = {}
        for engine in ("numpy", "numba"):
            mixedcore.ENGINE = engine
            core = mixedcore.from_model_data(md)
            first = core.C.copy()
            core.set_response(md.y, offset=np.cos(np.arange(md.n)))
            out[engine] = first, core.C
    finally:
        mixedcore.ENGINE = old
    for a, b in zip(out["numpy"], out["numba"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)
