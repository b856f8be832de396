"""The torch backends: ``torch`` (LMMNN-style neural f(x) + mixedcore random effects) and ``torch-embed``
(the seed's embedding network, a labelled baseline).

Tolerances (stated once, used below):

* linear default scenario, ``torch`` vs ``native`` (the exact linear LMM, the right model there): SDs of
  ``market:submarket`` and the residual within 15% relative, the market intercept and slope SDs within 35%;
  the national intercept within 0.1 absolute.
* ``sin_threshold`` scenario, ``torch`` vs an oracle (mixedcore with the TRUE f(x) as offset, same training
  rows): residual SD within 5%, submarket SD within 10%, market intercept and slope SDs within 15% (measured on
  data seeds 123, 1, 2, 3: every ratio within 0.98-1.02). Held-out RMSE (20% of the rows of every submarket):
  below 0.9 x the linear ``native`` fit's and below 1.05 x the oracle's (measured: 0.80 and 1.01-1.03).
* decompositions add up to predict() to 1e-10.
"""
from __future__ import annotations

import importlib

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import mixedcore
from hiercompare.backends import get_backend
from hiercompare.backends.learners import group_aware_split
from hiercompare.backends.torch import TorchBackend, TorchEmbedBackend
from hiercompare.design import prepare
from hiercompare.errors import BackendUnavailable, DataError, SpecError
from hiercompare.fitting import as_spec
from hiercompare.simulate import nonlinear_part

pytest.importorskip("torch", reason="torch is not installed (make install installs its CPU build)")

FORMULA = hc.Scenario().formula()


def _sds(fit) -> dict:
    v = fit.varcorr
    v = v[v["term"].str.startswith("sd__")]
    return dict(zip(v["group"] + "|" + v["term"], v["estimate"]))


def _assert_adds_up(fit, newdata=None):
    d = fit.decompose(newdata)
    parts = d.drop(columns="prediction").sum(axis=1).to_numpy()
    pred = fit.predict(newdata)
    np.testing.assert_allclose(parts, pred, rtol=0, atol=1e-10)
    np.testing.assert_allclose(d["prediction"].to_numpy(), pred, rtol=0, atol=1e-12)
    return d


# ----------------------------------------------------------------------------------------- (a) linear scenario
@pytest.fixture(scope="module")
def linear_fits(seed_data):
    data, _ = seed_data
    nat = hc.fit(data, FORMULA, backend="native")
    tor = hc.fit(data, FORMULA, backend="torch", seed=0)
    return data, nat, tor


def _check_sds_vs(reference: dict, got: dict, tight: float, loose: float):
    for key, ref in reference.items():
        tol = tight if key.startswith(("market:submarket|", "Residual|")) else loose
        assert abs(got[key] / ref - 1) < tol, (key, got[key], ref, tol)


def test_linear_scenario_recovers_native_sds(linear_fits):
    data, nat, tor = linear_fits
    ref, got = _sds(nat), _sds(tor)
    assert set(ref) == set(got) == {"market|sd__(Intercept)", "market|sd__x1", "market:submarket|sd__(Intercept)",
                                    "Residual|sd__Observation"}
    _check_sds_vs(ref, got, tight=0.15, loose=0.35)
    assert abs(tor.fixef["(Intercept)"] - nat.fixef["(Intercept)"]) < 0.1
    assert tor.method == "REML" and np.isfinite(tor.loglik)
    d = tor.diagnostics
    assert d["converged"] and d["validation"]["used"] and d["device"] in ("cpu", "cuda")
    assert d["epochs_chosen"] in d["validation"]["epochs"]
    assert "conditional" in d["loglik_note"]
    dec = _assert_adds_up(tor)
    assert "nonlinear" in dec.columns
    # f is projected off the fixed design on the fitting rows: no mean, no linear part
    f = dec["nonlinear"].to_numpy()
    assert abs(f.mean()) < 1e-8
    X = prepare(as_spec(FORMULA), data).X
    assert np.abs(X.T @ f).max() < 1e-6 * len(f)


def test_linear_scenario_forced_training_keeps_sds(seed_data, linear_fits):
    """Even when made to train 150 epochs without validation, the network does not eat the group structure."""
    data, _ = seed_data
    nat = linear_fits[1]
    tor = hc.fit(data, FORMULA, backend="torch", seed=0, validation_fraction=0, epochs=150)
    assert tor.diagnostics["epochs_chosen"] == 150 and not tor.diagnostics["validation"]["used"]
    assert np.std(tor.nonlinear(data)) > 1e-3  # it did learn something
    _check_sds_vs(_sds(nat), _sds(tor), tight=0.15, loose=0.35)
    _assert_adds_up(tor, data.iloc[:200])


# ----------------------------------------------------------------------------------------- (b) nonlinear scenario
@pytest.fixture(scope="module")
def nonlinear_case():
    sc = hc.Scenario(nonlinear="sin_threshold")
    data, truth = hc.simulate(sc, seed=123)
    md = prepare(as_spec(FORMULA), data)
    held = group_aware_split(md, 0.2, seed=7)  # 20% of the rows of every submarket
    train, test = data[~held].reset_index(drop=True), data[held].reset_index(drop=True)
    nat = hc.fit(train, FORMULA, backend="native")
    tor = hc.fit(train, FORMULA, backend="torch", seed=0)
    md_tr = prepare(as_spec(FORMULA), train)
    oracle = mixedcore.from_model_data(md_tr, offset=nonlinear_part(sc, train)).fit()
    # oracle prediction of the held-out rows: true f + X beta + Z b (BLUPs of the oracle fit)
    po = nonlinear_part(sc, test) + md_tr.fixed_matrix(test) @ oracle.beta
    for li, lv in enumerate(md_tr.hierarchy.levels):
        po = po + np.einsum("nk,nk->n", md_tr.z_matrix(lv.group, test), oracle.blups[li][lv.codes_for(test)])
    return dict(sc=sc, train=train, test=test, nat=nat, tor=tor, oracle=oracle, oracle_pred=po)


def _oracle_sds(res) -> dict:
    return {"market|sd__(Intercept)": np.sqrt(res.cov[0][0, 0]), "market|sd__x1": np.sqrt(res.cov[0][1, 1]),
            "market:submarket|sd__(Intercept)": np.sqrt(res.cov[1][0, 0]), "Residual|sd__Observation": res.sigma}


@pytest.mark.slow
def test_nonlinear_beats_linear_on_held_out_rows(nonlinear_case):
    c = nonlinear_case
    y = c["test"]["y"].to_numpy()
    rmse = {name: float(np.sqrt(np.mean((y - p) ** 2))) for name, p in
            [("native", c["nat"].predict(c["test"])), ("torch", c["tor"].predict(c["test"])),
             ("oracle", c["oracle_pred"])]}
    assert rmse["torch"] < 0.9 * rmse["native"], rmse
    assert rmse["torch"] < 1.05 * rmse["oracle"], rmse
    _assert_adds_up(c["tor"], c["test"])
    assert c["tor"].decompose(c["test"]).attrs["unseen"] == {"market": 0, "market:submarket": 0}


@pytest.mark.slow
def test_nonlinear_variance_components_close_to_oracle(nonlinear_case):
    c = nonlinear_case
    orc, got, lin = _oracle_sds(c["oracle"]), _sds(c["tor"]), _sds(c["nat"])
    tol = {"market|sd__(Intercept)": 0.15, "market|sd__x1": 0.15, "market:submarket|sd__(Intercept)": 0.10,
           "Residual|sd__Observation": 0.05}
    for key, t in tol.items():
        assert abs(got[key] / orc[key] - 1) < t, (key, got[key], orc[key])
    # the linear fit's residual SD absorbs f: the comparison above can fail
    assert lin["Residual|sd__Observation"] / orc["Residual|sd__Observation"] > 1.15
    # f itself: the learned f tracks the true f up to a linear function of the fixed design
    train = c["train"]
    X = prepare(as_spec(FORMULA), train).X
    f_true = nonlinear_part(c["sc"], train)
    f_true = f_true - X @ np.linalg.lstsq(X, f_true, rcond=None)[0]
    f_hat = c["tor"].nonlinear(train)
    assert np.corrcoef(f_hat, f_true)[0, 1] > 0.9
    assert c["tor"].diagnostics["validation"]["best_mse"] < c["tor"].diagnostics["validation"]["mse_epoch0"]


# ----------------------------------------------------------------------------------------- (c) torch-embed
@pytest.fixture(scope="module")
def embed_fit(seed_data):
    data, _ = seed_data
    return data, hc.fit(data, FORMULA, backend="torch-embed", seed=0, epochs=400)


def test_embed_is_a_labelled_baseline_whose_parts_add_up(embed_fit, seed_data):
    data, fit = embed_fit
    d = fit.diagnostics
    assert d["baseline"] is True and d["label"].startswith("BASELINE")
    assert any("BASELINE" in n for n in d["notes"]) and any("slopes are not represented" in n for n in d["notes"])
    assert fit.loglik is None
    # ran_pars: only the residual SD, equal to the training RMSE of predict()
    rp = fit.tidy("ran_pars")
    assert list(zip(rp["group"], rp["term"])) == [("Residual", "sd__Observation")]
    rmse = np.sqrt(np.mean((data["y"].to_numpy() - fit.predict()) ** 2))
    assert rp["estimate"].iloc[0] == pytest.approx(rmse, rel=1e-12)
    assert set(d["deviation_sd"]) == {"market", "market:submarket"}
    rv = fit.tidy("ran_vals")
    assert set(rv["term"]) == {"(Intercept)"} and len(rv) == 10 + 50
    assert rv["std_error"].isna().all()
    dec = _assert_adds_up(fit)
    assert (dec["market|x1"] == 0).all()
    # the telescoping definition: averaged over each market's training rows, predict() equals the network
    net = fit.raw.decomposition()["network"]
    by_market = pd.DataFrame({"m": data["market"], "p": fit.predict(), "n": net}).groupby("m").mean()
    np.testing.assert_allclose(by_market["p"], by_market["n"], atol=1e-8)
    # the deviations are the group structure, not noise: they track the generating market intercepts
    truth = seed_data[1].ranef("market")["(Intercept)"]
    est = fit.ranef("market")["(Intercept)"].reindex(truth.index)
    assert np.corrcoef(est, truth)[0, 1] > 0.8


def test_embed_unseen_groups_get_the_population_part(embed_fit):
    data, fit = embed_fit
    new = data.iloc[:5].copy()
    new["market"] = "Market_unseen"
    d = _assert_adds_up(fit, new)
    assert d.attrs["unseen"]["market"] == 5 and d.attrs["unseen"]["market:submarket"] == 5
    np.testing.assert_allclose(fit.predict(new), (d["national"] + d["nonlinear"]).to_numpy(), atol=1e-12)


# ----------------------------------------------------------------------------------------- (d) errors, seeds
def test_nan_features_at_predict_raise(linear_fits, embed_fit):
    data = linear_fits[0]
    bad = data.iloc[:10].copy()
    bad.loc[bad.index[3], "x2"] = np.nan
    for fit in (linear_fits[2], embed_fit[1]):
        with pytest.raises(DataError, match="NaN"):
            fit.predict(bad)


def test_same_seed_same_numbers_and_seed_is_passed(seed_data):
    data, _ = seed_data
    small = data[data["market"].isin([f"Market_{i}" for i in range(5)])].reset_index(drop=True)
    opts = dict(validation_fraction=0, epochs=40, hidden=(16, 16))
    a = hc.fit(small, FORMULA, backend="torch", seed=3, **opts)
    b = hc.fit(small, FORMULA, backend="torch", seed=3, **opts)
    c = hc.fit(small, FORMULA, backend="torch", seed=4, **opts)
    assert a.diagnostics["seed_used"] == 3 and a.provenance["seed"] == 3
    pd.testing.assert_frame_equal(a.tidy(), b.tidy())
    np.testing.assert_array_equal(a.nonlinear(small), b.nonlinear(small))
    assert not np.array_equal(a.nonlinear(small), c.nonlinear(small))
    e1 = hc.fit(small, FORMULA, backend="torch-embed", seed=3, **opts)
    e2 = hc.fit(small, FORMULA, backend="torch-embed", seed=3, **opts)
    pd.testing.assert_frame_equal(e1.tidy(), e2.tidy())


def test_options_are_checked(seed_data):
    data, _ = seed_data
    with pytest.raises(SpecError, match="not variables of the formula"):
        hc.fit(data, FORMULA, backend="torch", features=("x3",))
    with pytest.raises(SpecError, match="method"):
        hc.fit(data, FORMULA, backend="torch", method="bayes")
    with pytest.raises(TypeError, match="unknown torch options"):
        hc.fit(data, FORMULA, backend="torch", trees=3)
    with pytest.raises(SpecError, match="gaussian"):  # the naive baseline stays Gaussian; torch fits GLMMs too
        hc.fit(data.assign(y=(data["y"] > 1).astype(float)), FORMULA, backend="torch-embed", family="binomial")


def test_unavailable_without_torch(monkeypatch):
    real = importlib.import_module

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_torch)  # what Backend.availability() calls
    for cls in (TorchBackend, TorchEmbedBackend):
        ok, why = cls().availability()
        assert not ok and "pip install torch" in why
    for name in ("torch", "torch-embed"):
        with pytest.raises(BackendUnavailable, match="pip install torch"):
            get_backend(name)
