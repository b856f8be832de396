"""Grouped K-fold cross-validation (hiercompare.crossval): folds, leaks, determinism, metrics by hand."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import hiercompare as hc
from hiercompare.crossval import (LPD_DEFINITION, CVResult, cross_validate, glmm_log_density, grouped_folds,
                                  level_covariance)
from hiercompare.errors import SpecError

TREE_FORMULA = ("y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket) "
                "+ (1 | market:submarket:block)")
FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"
PASTES = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"
FAST = {"lightgbm": {"max_rounds": 15, "validation_fraction": 0.0},
        "lightgbm-cat": {"max_rounds": 15, "validation_fraction": 0.0}}


@pytest.fixture(scope="module")
def tree():
    """An unbalanced 3-level tree; bare labels (Sub0, B0) repeat under every parent, some leaves have one row."""
    sc = hc.Scenario(
        levels=(hc.LevelScenario("market", 7, {"(Intercept)": 0.8, "x1": 0.5}, ((1.0, 0.3), (0.3, 1.0)),
                                 label="M{i}"),
                hc.LevelScenario("submarket", (1, 4), {"(Intercept)": 0.4}, label="Sub{i}"),
                hc.LevelScenario("block", (1, 3), {"(Intercept)": 0.3}, label="B{i}")),
        n_obs=(1, 6))
    data, _ = hc.simulate(sc, seed=11)
    return data


@pytest.fixture(scope="module")
def small():
    """Two levels, 8 markets of 1-4 submarkets of 3-12 rows: small enough to fit every fold quickly."""
    sc = hc.Scenario(
        levels=(hc.LevelScenario("market", 8, {"(Intercept)": 0.8, "x1": 0.5}, ((1.0, 0.3), (0.3, 1.0)),
                                 label="M{i}"),
                hc.LevelScenario("submarket", (1, 4), {"(Intercept)": 0.4}, label="S{i}")),
        n_obs=(3, 12))
    data, _ = hc.simulate(sc, seed=5)
    return data


def paths(data: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """Full-path labels written out independently of hiercompare.hierarchy."""
    out = data[columns[0]].astype(str)
    for c in columns[1:]:
        out = out + "/" + data[c].astype(str)
    return out.to_numpy()


def check_partition(folds, n):
    tests = np.concatenate([te for _, te in folds])
    assert len(np.unique(tests)) == len(tests)  # every row held out at most once
    for train, test in folds:
        assert np.array_equal(train, np.sort(train)) and np.array_equal(test, np.sort(test))
        assert len(np.intersect1d(train, test)) == 0
        assert len(train) + len(test) == n  # the rest of the rows train
    return tests


TREE_LEVELS = {"market": ["market"], "market:submarket": ["market", "submarket"],
               "market:submarket:block": ["market", "submarket", "block"]}


@pytest.mark.parametrize("level", list(TREE_LEVELS))
def test_groups_never_leak_into_training_on_an_unbalanced_tree(tree, level):
    folds = grouped_folds(tree, TREE_FORMULA, level, k=4, seed=3)
    assert len(folds) == 4
    tests = check_partition(folds, len(tree))
    assert len(tests) == len(tree)  # group folds hold every row out once
    depth = list(TREE_LEVELS).index(level)
    for train, test in folds:
        # the held-out groups and every group below them (full paths) have no row in training
        for cols in list(TREE_LEVELS.values())[depth:]:
            p = paths(tree, cols)
            assert not set(p[test]) & set(p[train]), (level, cols)
    # bare labels do repeat across parents, so comparing full paths is what keeps the check honest
    if level != "market":
        bare = tree[TREE_LEVELS[level][-1]].to_numpy()
        assert any(set(bare[te]) & set(bare[tr]) for tr, te in folds)
    # balanced in rows as far as the group sizes allow: no fold exceeds the smallest by more than one group
    sizes = [len(te) for _, te in folds]
    biggest = pd.Series(paths(tree, TREE_LEVELS[level])).value_counts().max()
    assert max(sizes) - min(sizes) <= biggest


def test_rows_folds_keep_every_group_in_training(tree):
    folds = grouped_folds(tree, TREE_FORMULA, "rows", k=3, seed=3)
    tests = check_partition(folds, len(tree))
    leaf = paths(tree, ["market", "submarket", "block"])
    counts = pd.Series(leaf).value_counts()
    # single-row leaves are never held out; every other row is held out exactly once
    singles = set(counts[counts == 1].index)
    assert singles, "the fixture should contain single-row leaf groups"
    assert set(np.setdiff1d(np.arange(len(tree)), tests)) == set(np.flatnonzero(np.isin(leaf, list(singles))))
    for train, test in folds:
        assert set(leaf[test]) <= set(leaf[train])  # every held-out row's leaf group (so all its ancestors) trains
    sizes = [len(te) for _, te in folds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("level,k", [("batch", 5), ("batch:cask", 5), ("rows", 2)])
def test_pastes_folds(pastes, level, k):
    folds = grouped_folds(pastes, PASTES, level, k=k, seed=0)
    check_partition(folds, len(pastes))
    batch, cask = paths(pastes, ["batch"]), paths(pastes, ["batch", "cask"])
    for train, test in folds:
        if level == "batch":
            assert not set(batch[test]) & set(batch[train])
            assert not set(cask[test]) & set(cask[train])
        elif level == "batch:cask":
            assert not set(cask[test]) & set(cask[train])
            assert set(batch[test]) <= set(batch[train])  # 3 casks per batch: the batch itself stays seen
        else:
            assert set(cask[test]) <= set(cask[train])
    assert [len(te) for _, te in folds] == {"batch": [12] * 5, "batch:cask": [12] * 5, "rows": [30, 30]}[level]


def test_folds_are_deterministic_by_seed(tree):
    for level in ("market", "market:submarket", "rows"):
        a = grouped_folds(tree, TREE_FORMULA, level, k=3, seed=42)
        b = grouped_folds(tree, TREE_FORMULA, level, k=3, seed=42)
        c = grouped_folds(tree, TREE_FORMULA, level, k=3, seed=43)
        assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
        assert any(not np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def test_bad_arguments(pastes):
    with pytest.raises(SpecError, match=r"choose one of \['batch', 'batch:cask', 'rows'\]"):
        grouped_folds(pastes, PASTES, "cask", k=3)
    with pytest.raises(SpecError, match="at least 11 groups at batch"):
        grouped_folds(pastes, PASTES, "batch", k=11)
    with pytest.raises(SpecError, match="k must be an integer >= 2"):
        grouped_folds(pastes, PASTES, "batch", k=1)
    with pytest.raises(SpecError, match="unknown backend"):
        cross_validate(pastes, PASTES, backends=["nope"], level="batch")


def _sigma_by_hand(f: hc.Fit, group: str, terms: list[str]) -> np.ndarray:
    vc = f.varcorr
    est = dict(zip(zip(vc["group"], vc["term"]), vc["estimate"]))
    sd = np.array([est[(group, f"sd__{t}")] for t in terms])
    S = np.diag(sd ** 2)
    if len(terms) == 2:
        S[0, 1] = S[1, 0] = est[(group, f"cor__{terms[0]}.{terms[1]}")] * sd[0] * sd[1]
    return S


def test_native_leave_markets_out_by_hand(small):
    cv = cross_validate(small, FORMULA, backends=["native"], level="market", k=4, seed=7)
    assert isinstance(cv, CVResult)
    train, test = grouped_folds(small, FORMULA, "market", k=4, seed=7)[1]
    f = hc.fit(small.iloc[train], FORMULA, backend="native")
    te = small.iloc[test]
    b = f.fixef
    mu = b["(Intercept)"] + b["x1"] * te["x1"].to_numpy() + b["x2"] * te["x2"].to_numpy()  # new markets: 0 deviation
    y = te["y"].to_numpy()
    row = cv.folds[(cv.folds["backend"] == "native") & (cv.folds["fold"] == 1)].iloc[0]
    assert row["status"] == "ok" and row["n_test"] == len(test) and row["n_test_unseen"] == len(test)
    assert abs(row["rmse"] - np.sqrt(np.mean((y - mu) ** 2))) < 1e-10
    # the log density of one held-out row: a new market and a new submarket add z' Sigma z and sigma_sub^2
    z = np.array([1.0, te["x1"].iloc[0]])
    var = (f.varcorr.set_index(["group", "term"]).loc[("Residual", "sd__Observation"), "estimate"] ** 2
           + z @ _sigma_by_hand(f, "market", ["(Intercept)", "x1"]) @ z
           + _sigma_by_hand(f, "market:submarket", ["(Intercept)"])[0, 0])
    pt = cv.pointwise[(cv.pointwise["backend"] == "native") & (cv.pointwise["fold"] == 1)]
    assert pt["row"].iloc[0] == test[0]
    assert abs(pt["lpd"].iloc[0] - stats.norm.logpdf(y[0], mu[0], np.sqrt(var))) < 1e-10
    assert abs(pt["prediction"].iloc[0] - mu[0]) < 1e-10
    assert abs(row["lpd_mean"] - pt["lpd"].mean()) < 1e-12
    s = cv.summary.set_index("backend").loc["native"]
    per_fold = cv.folds.loc[cv.folds["backend"] == "native", "rmse"].to_numpy()
    assert s["n_folds_ok"] == 4 and abs(s["rmse"] - per_fold.mean()) < 1e-12
    assert abs(s["rmse_se"] - per_fold.std(ddof=1) / 2) < 1e-12
    assert "z' Sigma_level z" in cv.definitions["lpd"] == LPD_DEFINITION


def test_lpd_where_the_market_is_seen_and_the_submarket_is_not(small):
    cv = cross_validate(small, FORMULA, backends=["native"], level="market:submarket", k=4, seed=2)
    train, test = grouped_folds(small, FORMULA, "market:submarket", k=4, seed=2)[0]
    f = hc.fit(small.iloc[train], FORMULA, backend="native")
    te = small.iloc[test]
    seen = np.flatnonzero(te["market"].isin(set(small["market"].iloc[train])).to_numpy())
    i = int(seen[0])
    r = te.iloc[i]
    b, m = f.fixef, f.ranef("market").loc[r["market"]]
    mu = b["(Intercept)"] + b["x1"] * r["x1"] + b["x2"] * r["x2"] + m["(Intercept)"] + m["x1"] * r["x1"]
    sd = f.varcorr.set_index(["group", "term"])["estimate"]
    var = sd[("Residual", "sd__Observation")] ** 2 + sd[("market:submarket", "sd__(Intercept)")] ** 2
    pt = cv.pointwise[cv.pointwise["fold"] == 0].iloc[i]
    assert pt["row"] == test[i]
    assert abs(pt["prediction"] - mu) < 1e-10
    assert abs(pt["predictive_var"] - var) < 1e-10
    assert abs(pt["lpd"] - stats.norm.logpdf(r["y"], mu, np.sqrt(var))) < 1e-10


def test_lightgbm_and_ols_run_in_cv(small):
    cv = cross_validate(small, FORMULA, backends=["ols", "lightgbm", "lightgbm-cat"], level="market", k=3,
                        seed=1, options=FAST)
    assert (cv.folds["status"] == "ok").all(), cv.folds[["backend", "fold", "reason"]]
    assert np.isfinite(cv.folds[["rmse", "lpd_mean", "fit_seconds"]].to_numpy(dtype=float)).all()
    summary = cv.summary.set_index("backend")
    assert list(summary.loc[["ols", "lightgbm", "lightgbm-cat"], "n_folds_ok"]) == [3, 3, 3]
    src = cv.folds.set_index(["backend", "fold"])["variance_source"]
    # ols has no variance components: the spread of its own dummy deviations stands in for them
    assert "market: empirical covariance of ran_vals" in src[("ols", 0)]
    assert "market: ran_pars" in src[("lightgbm", 0)]
    # the opt-in backends are listed, not silently left out
    assert set(summary.index[summary["status"] == "not run"]) == {"torch", "pymc", "brms"}
    assert summary.loc["torch", "opt_in"] and not summary.loc["ols", "opt_in"]
    json.dumps(cv.to_dict())  # JSON-ready (NaN -> null)


def test_ols_variance_by_hand_for_a_new_market(small):
    """ols has no ran_pars for the groups: a new market's variance is the empirical covariance of its deviations."""
    cv = cross_validate(small, FORMULA, backends=["ols"], level="market", k=4, seed=7)
    train, test = grouped_folds(small, FORMULA, "market", k=4, seed=7)[0]
    f = hc.fit(small.iloc[train], FORMULA, backend="ols")
    te = small.iloc[test]
    S_m = np.cov(f.ranef("market")[["(Intercept)", "x1"]].to_numpy(), rowvar=False)
    s2_sub = np.var(f.ranef("market:submarket")["(Intercept)"].to_numpy(), ddof=1)
    z = np.array([1.0, te["x1"].iloc[0]])
    var = f.varcorr["estimate"].iloc[-1] ** 2 + z @ S_m @ z + s2_sub
    pt = cv.pointwise[cv.pointwise["fold"] == 0].iloc[0]
    assert abs(pt["predictive_var"] - var) < 1e-10
    S, src = level_covariance(f, "market", ("(Intercept)", "x1"))
    assert np.allclose(S, S_m) and src.startswith("empirical covariance")


def test_failures_are_recorded_with_their_reason(small):
    cv = cross_validate(small, FORMULA, backends=["native", "ols"], level="market", k=3,
                        options={"ols": {"no_such_option": 1}})
    ols = cv.folds[cv.folds["backend"] == "ols"]
    assert len(ols) == 3 and (ols["status"] == "error").all()
    assert ols["reason"].str.contains("no_such_option").all()
    s = cv.summary.set_index("backend")
    assert s.loc["ols", "status"] == "failed" and "no_such_option" in s.loc["ols", "reason"]
    assert s.loc["native", "status"] == "ok"
    # a family the backend does not fit: skipped with the backend's reason, on every fold
    binary = small.assign(y=(small["y"] > small["y"].median()).astype(float))
    cvb = cross_validate(binary, FORMULA, backends=["mixedlm"], level="market", k=3, family="binomial")
    assert (cvb.folds["status"] == "skipped").all()
    assert "fits families ['gaussian']" in cvb.summary.loc[0, "reason"]
    assert "log_loss" in cvb.folds and "log_loss" in cvb.definitions


def test_a_fold_that_loses_a_categorical_level_is_an_error_with_the_reason(small):
    data = small.copy()
    data["region"] = np.where(data["market"] == "M0", "north", "south")  # only market M0 is "north"
    f = "y ~ x1 + region + (1 | market)"
    cv = cross_validate(data, f, backends=["native"], level="market", k=4, seed=0)
    held = [i for i, (_, te) in enumerate(grouped_folds(data, f, "market", k=4, seed=0))
            if (data["market"].iloc[te] == "M0").any()]
    bad = cv.folds[cv.folds["status"] == "error"]
    assert list(bad["fold"]) == held
    assert "lack 'region' level(s) ['north']" in bad["reason"].iloc[0]
    s = cv.summary.iloc[0]
    assert s["status"] == "partial" and s["n_folds_ok"] == 3 and "means over 3 of 4 folds" in s["reason"]


def test_unseen_group_warnings_are_silenced_and_others_kept(pastes, monkeypatch):
    original = hc.Fit.predict

    def predict(self, newdata=None, type="link", allow_new_levels=False):
        assert allow_new_levels  # CV asks for new groups on purpose
        warnings.warn("12 rows have batch groups unseen in fitting", UserWarning)
        warnings.warn("something else", RuntimeWarning)
        return original(self, newdata, type=type)

    monkeypatch.setattr(hc.Fit, "predict", predict)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cv = cross_validate(pastes, PASTES, backends=["native"], level="batch", k=5)
    assert (cv.folds["status"] == "ok").all()
    assert (cv.folds["warnings"] == "RuntimeWarning: something else").all()


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_glmm_log_density_against_quadrature(family):
    # the last row lies far in the tail of N(eta, var) (a count of 30 at eta 0): the nodes must move to it
    y = np.array([1.0, 0.0, 3.0, 30.0]) if family == "poisson" else np.array([1.0, 0.0, 1.0, 1.0])
    eta, var = np.array([0.3, -1.2, 0.9, 0.0]), np.array([0.0, 0.7, 2.5, 1.0])
    got = glmm_log_density(y, eta, var, family)

    def p(yy, e):
        if family == "binomial":
            return stats.bernoulli.pmf(yy, 1 / (1 + np.exp(-e)))
        return stats.poisson.pmf(yy, np.exp(e))

    assert abs(got[0] - np.log(p(y[0], eta[0]))) < 1e-12  # var 0: the plug-in density
    for i in (1, 2, 3):
        sd = np.sqrt(var[i])
        want, _ = integrate.quad(lambda e: p(y[i], e) * stats.norm.pdf(e, eta[i], sd), eta[i] - 12 * sd,
                                 eta[i] + 12 * sd, epsabs=1e-13)
        assert abs(got[i] - np.log(want)) < 1e-8


def test_torch_runs_in_cv_when_asked_for(small):
    cv = cross_validate(small, FORMULA, backends=["torch"], level="market", k=2, seed=0,
                        options={"torch": {"epochs": 10, "hidden": (4,), "validation_fraction": 0.0}})
    assert (cv.folds["status"] == "ok").all(), cv.folds["reason"].tolist()
    s = cv.summary.set_index("backend")
    assert s.loc["torch", "opt_in"] and s.loc["torch", "n_folds_ok"] == 2
    assert set(s.index[s["status"] == "not run"]) == {"pymc", "brms"}


@pytest.mark.r
def test_binomial_cv_with_lme4_log_loss_and_lpd_by_hand():
    sc = hc.Scenario(family="binomial", n_obs=(5, 15),
                     levels=(hc.LevelScenario("market", 8, {"(Intercept)": 0.8}, label="M{i}"),
                             hc.LevelScenario("submarket", (1, 3), {"(Intercept)": 0.4}, label="S{i}")))
    data, _ = hc.simulate(sc, seed=2)
    f = "y ~ x1 + x2 + (1 | market) + (1 | market:submarket)"
    cv = cross_validate(data, f, backends=["lme4", "native"], level="market", k=3, family="binomial")
    lme4 = cv.folds[cv.folds["backend"] == "lme4"]
    assert (lme4["status"] == "ok").all(), lme4["reason"].tolist()
    assert (cv.folds.loc[cv.folds["backend"] == "native", "status"] == "ok").all()  # native's GLMM (issue 12)
    pt = cv.pointwise[(cv.pointwise["fold"] == 0) & (cv.pointwise["backend"] == "lme4")]
    p = pt["prediction"].to_numpy()
    y = pt["y"].to_numpy()
    assert abs(lme4["log_loss"].iloc[0] - np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p)))) < 1e-12
    # a new market and submarket: the Bernoulli density integrated over N(eta, sd_m^2 + sd_s^2)
    train, test = grouped_folds(data, f, "market", k=3, seed=0)[0]
    fit = hc.fit(data.iloc[train], f, backend="lme4", family="binomial")
    sd = fit.varcorr.set_index(["group", "term"])["estimate"]
    v = sd[("market", "sd__(Intercept)")] ** 2 + sd[("market:submarket", "sd__(Intercept)")] ** 2
    eta = np.log(p[0] / (1 - p[0]))
    s = np.sqrt(v)
    want, _ = integrate.quad(lambda e: stats.bernoulli.pmf(y[0], 1 / (1 + np.exp(-e))) * stats.norm.pdf(e, eta, s),
                             eta - 12 * s, eta + 12 * s, epsabs=1e-13)
    assert abs(pt["lpd"].iloc[0] - np.log(want)) < 1e-7
    assert abs(pt["predictive_var"].iloc[0] - v) < 1e-8
