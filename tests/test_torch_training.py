"""The ``torch`` backend's training loop (issue 13, item 5): full batch on small data (the earlier loop, unchanged),
shuffled minibatches above ``AUTO_FULL_BATCH_ROWS`` rows or on request, torch's thread count, the device.

Tolerances: a minibatch fit of the default linear scenario against ``native`` as test_torch.py's full-batch fit
(submarket and residual SDs within 15%, market SDs within 35%, national intercept within 0.1); on
``sin_threshold`` the learned f correlates > 0.9 with the true f (projected off the fixed design).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.design import prepare
from hiercompare.errors import SpecError
from hiercompare.fitting import as_spec
from hiercompare.simulate import nonlinear_part

torch = pytest.importorskip("torch", reason="torch is not installed (make install installs its CPU build)")
from hiercompare.backends.torch import AUTO_BATCH, AUTO_FULL_BATCH_ROWS, _batch_size  # noqa: E402

FORMULA = hc.Scenario().formula()


def _small(data: pd.DataFrame) -> pd.DataFrame:
    return data[data["market"].isin([f"Market_{i}" for i in range(5)])].reset_index(drop=True)


def _sds(fit) -> dict:
    v = fit.varcorr
    v = v[v["term"].str.startswith("sd__")]
    return dict(zip(v["group"] + "|" + v["term"], v["estimate"]))


def test_batch_size_rule():
    assert _batch_size("auto", 5_000) is None and _batch_size("auto", AUTO_FULL_BATCH_ROWS) is None
    assert _batch_size("auto", AUTO_FULL_BATCH_ROWS + 1) == AUTO_BATCH
    assert _batch_size(None, 10**6) is None
    assert _batch_size(256, 5_000) == 256 and _batch_size(5_000, 5_000) is None  # a batch of every row: full
    for bad in (0, -3, "big"):
        with pytest.raises(SpecError, match="batch_size"):
            _batch_size(bad, 5_000)


def test_small_data_trains_full_batch_as_before(seed_data):
    """On the default scenario's size "auto" is the earlier loop: full batch, refit every 10, patience 15."""
    small = _small(seed_data[0])
    opts = dict(validation_fraction=0, epochs=30, hidden=(16, 16), seed=2)
    a = hc.fit(small, FORMULA, backend="torch", **opts)
    b = hc.fit(small, FORMULA, backend="torch", batch_size=None, refit_every=10, patience=15, **opts)
    d = a.diagnostics
    assert d["batch_size"] is None and d["refit_every"] == 10 and d["patience"] == 15
    pd.testing.assert_frame_equal(a.tidy(), b.tidy())


def test_minibatches_keep_the_linear_scenarios_sds(seed_data):
    data, _ = seed_data
    nat = hc.fit(data, FORMULA, backend="native")
    tor = hc.fit(data, FORMULA, backend="torch", seed=0, batch_size=1024)
    d = tor.diagnostics
    assert d["batch_size"] == 1024 and d["refit_every"] == 1 and d["patience"] == 31  # 150 steps of 5 batches
    assert d["validation"]["used"] and d["epochs_chosen"] in d["validation"]["epochs"]
    ref, got = _sds(nat), _sds(tor)
    for key, r in ref.items():
        tol = 0.15 if key.startswith(("market:submarket|", "Residual|")) else 0.35
        assert abs(got[key] / r - 1) < tol, (key, got[key], r)
    assert abs(tor.fixef["(Intercept)"] - nat.fixef["(Intercept)"]) < 0.1
    parts = tor.decompose()
    np.testing.assert_allclose(parts.drop(columns="prediction").sum(axis=1), tor.predict(), atol=1e-10)


def test_minibatches_learn_the_nonlinear_f():
    sc = hc.Scenario(nonlinear="sin_threshold")
    data, _ = hc.simulate(sc, seed=123)
    fit = hc.fit(data, FORMULA, backend="torch", seed=0, batch_size=1024)
    X = prepare(as_spec(FORMULA), data).X
    f_true = nonlinear_part(sc, data)
    f_true = f_true - X @ np.linalg.lstsq(X, f_true, rcond=None)[0]
    assert np.corrcoef(fit.nonlinear(data), f_true)[0, 1] > 0.9
    v = fit.diagnostics["validation"]
    assert v["best_mse"] < v["mse_epoch0"]


def test_minibatches_are_seeded(seed_data):
    small = _small(seed_data[0])
    opts = dict(validation_fraction=0, epochs=4, hidden=(16, 16), batch_size=300)
    a = hc.fit(small, FORMULA, backend="torch", seed=3, **opts)
    b = hc.fit(small, FORMULA, backend="torch", seed=3, **opts)
    c = hc.fit(small, FORMULA, backend="torch", seed=4, **opts)
    pd.testing.assert_frame_equal(a.tidy(), b.tidy())
    assert not np.array_equal(a.nonlinear(small), c.nonlinear(small))


def test_minibatches_for_a_binary_outcome():
    """The GLMM learners' weighted working response, in minibatches (tests/test_glmm_learners.py's bump)."""
    rng = np.random.default_rng(5)
    n = 3000
    market, sub, x1 = rng.integers(0, 12, n), rng.integers(0, 4, n), rng.uniform(-3, 3, n)
    eta = -0.3 + 1.5 * np.exp(-x1 ** 2) + rng.normal(0, 0.6, 12)[market] + rng.normal(0, 0.3, (12, 4))[market, sub]
    d = pd.DataFrame({"x1": x1, "market": [f"M{m}" for m in market], "submarket": [f"S{s}" for s in sub],
                      "y": (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)})
    GF = "y ~ x1 + (1 | market) + (1 | market:submarket)"
    fit = hc.fit(d, GF, backend="torch", family="binomial", seed=1, epochs=100, batch_size=500)
    linear = hc.fit(d, GF, backend="native", family="binomial")
    assert fit.diagnostics["batch_size"] == 500 and fit.converged
    assert fit.loglik > linear.loglik + 20
    f = fit.nonlinear(pd.DataFrame({"x1": [-2.8, 0.0, 2.8]}))
    assert f[1] > f[0] + 0.5 and f[1] > f[2] + 0.5


def test_threads_are_set_for_the_fit_and_restored(seed_data):
    small = _small(seed_data[0])
    before = torch.get_num_threads()
    hc.fit(small, FORMULA, backend="torch", seed=0, validation_fraction=0, epochs=2, threads=1)
    assert torch.get_num_threads() == before
    with pytest.raises(SpecError, match="threads"):
        hc.fit(small, FORMULA, backend="torch", threads=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where no GPU is present")
def test_cuda_asked_for_without_a_gpu(seed_data):
    with pytest.raises(SpecError, match="no CUDA device"):
        hc.fit(_small(seed_data[0]), FORMULA, backend="torch", device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_the_cpu(seed_data):
    """Same options on the GPU and on the CPU: float32 arithmetic in another order, so close, not equal."""
    data, _ = seed_data
    opts = dict(seed=0, validation_fraction=0, epochs=40, batch_size=1024)
    gpu = hc.fit(data, FORMULA, backend="torch", device="cuda", **opts)
    cpu = hc.fit(data, FORMULA, backend="torch", device="cpu", **opts)
    assert gpu.diagnostics["device"].startswith("cuda") and cpu.diagnostics["device"] == "cpu"
    for key, v in _sds(cpu).items():
        assert abs(_sds(gpu)[key] / v - 1) < 0.02, key
    assert np.max(np.abs(gpu.nonlinear(data) - cpu.nonlinear(data))) < 0.05


def test_one_thread_is_the_cpu_default(seed_data):
    """One torch thread unless asked (docs/torch.md: two were 2.5-20x slower on this 2-core machine)."""
    small = _small(seed_data[0])
    before = torch.get_num_threads()
    f = hc.fit(small, FORMULA, backend="torch", seed=0, validation_fraction=0, epochs=2)
    assert f.diagnostics["threads"] == 1
    assert torch.get_num_threads() == before
