"""Fixed-effect inference (hiercompare.inference) against lmerTest and pbkrtest.

Reference numbers: tests/data/inference_reference.csv, written by tests/data/inference_reference.R (lmerTest 3.1-3,
pbkrtest 0.5.2, lme4 1.1-31, R 4.2.2): ``lmerTest::contest(fit, diag(p), joint = FALSE, confint = TRUE)`` with
Satterthwaite's and Kenward-Roger's df, on lmer fits (optimizer bobyqa) of the committed CSVs, quoted to 17
significant digits with the lme4 estimates they were computed at. Two of the fits are on the boundary (Oats with a
correlated nitro slope: correlation 1; dietox's (1 | Cu): SD 0), where the derivatives step across theta = 0.

Tolerances, and why:

* At lme4's own estimates (the stored ``ran_pars``), the Satterthwaite df agree with lmerTest's to 1e-6 relative
  (seen: 3e-8). Both difference the same functions with numDeriv's Richardson scheme from the same steps; what
  is left is the rounding of two implementations of the deviance (~1e-12) divided by squared steps, and the
  exact sigma derivatives used here. lmerTest's own error is of that size too: on sleepstudy, where the exact
  df is 17 (Kenward-Roger gives 17 to 1e-14), it reports 17.0000052.
  Kenward-Roger's df and adjusted SEs have no numerical derivatives: 1e-9 (seen: 6e-14).
* Native's own fits: df to 1e-4 relative (the brief; seen: 1.3e-6), SEs 1e-5, interval ends 1e-5, p-values 1e-3
  relative (a p-value amplifies the relative difference of t by about t^2; seen: 6e-5). The estimates differ
  from lme4's by up to 2e-6 (relative), and the df move with them.
* mixedlm's own fits: df to 5e-4 (seen: 1.1e-4, Pastes, where statsmodels' variance estimates are 1e-4 from
  lme4's). Its SEs are statsmodels' (a different convention; up to 7% from lme4's on Exam), so its intervals are
  not compared, except Kenward-Roger's, whose adjusted SEs are computed here: 5e-4.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import hiercompare as hc
from hiercompare import inference, mixedcore
from hiercompare.design import prepare
from hiercompare.errors import SpecError
from hiercompare.fitting import as_spec
from hiercompare.results import tidy_frame

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[1]
REF = pd.read_csv(DATA / "inference_reference.csv")
FILES = {"sleepstudy": DATA / "sleepstudy.csv"}
MODELS = list(REF.groupby(["dataset", "formula", "method"], sort=False).groups)
IDS = [f"{d}|{f}|{m}" for d, f, m in MODELS]
DDF = {"Satterthwaite": "satterthwaite", "Kenward-Roger": "kenward-roger"}
COLS = ["estimate", "std_error", "df", "t_value", "p_value", "conf_low", "conf_high"]


def _data(name: str) -> pd.DataFrame:
    return pd.read_csv(FILES.get(name, ROOT / "hiercompare" / "data" / f"{name}.csv"))


def _ref(ref: pd.DataFrame, dataset, formula, method, kind="coef", ddf=None) -> pd.DataFrame:
    sub = ref[(ref["dataset"] == dataset) & (ref["formula"] == formula) & (ref["method"] == method)
              & (ref["kind"] == kind)]
    if ddf is not None:
        sub = sub[sub["ddf"] == ddf]
    return sub.reset_index(drop=True)


def _at_lme4_estimates(dataset, formula, method):
    """ModelData, core, theta and sigma at the stored lme4 estimates."""
    md = prepare(as_spec(formula), _data(dataset))
    core = mixedcore.from_model_data(md)
    rp = _ref(REF, dataset, formula, method, kind="ran_pars")
    table = tidy_frame([dict(effect="ran_pars", group=g, term=t, estimate=e)
                        for g, t, e in zip(rp["ddf"], rp["term"], rp["estimate"])])
    lams, sigma = inference.varpar_from_table(md, table)
    return md, core, inference.theta_of(core, lams), sigma


def _r_order(md, ref: pd.DataFrame) -> np.ndarray:
    """Positions of ref's (R-named) terms in the design."""
    names = [c.r_name for c in md.columns]
    return np.array([names.index(t) for t in ref["term"]])


# ---------------------------------------------------------------------- at lme4's estimates: the algorithms
@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_satterthwaite_at_lme4_estimates_is_lmertest(model):
    md, core, theta, sigma = _at_lme4_estimates(*model)
    # the estimates reproduce lme4's REML / ML log-likelihood, so the point is the same
    ll = _ref(REF, *model, kind="loglik")["estimate"].iloc[0]
    assert -core.deviance(theta, reml=model[2] == "REML") / 2 == pytest.approx(ll, abs=1e-7)
    ref = _ref(REF, *model, ddf="Satterthwaite")
    idx = _r_order(md, ref)
    st = inference.satterthwaite(core, theta, sigma, reml=model[2] == "REML")
    assert st.notes == []
    np.testing.assert_allclose(st.dfs()[idx], ref["df"], rtol=1e-6)
    se = np.sqrt(np.diag(st.vcov_beta))[idx]
    np.testing.assert_allclose(se, ref["std_error"], rtol=1e-9)
    cols = inference.t_columns(ref["estimate"], se, st.dfs()[idx])
    for c in ("conf_low", "conf_high"):
        np.testing.assert_allclose(cols[c], ref[c], rtol=1e-8, err_msg=c)
    np.testing.assert_allclose(cols["p_value"], ref["p_value"], rtol=1e-4)


@pytest.mark.parametrize("model", [m for m in MODELS if m[2] == "REML"], ids=[i for m, i in zip(MODELS, IDS)
                                                                             if m[2] == "REML"])
def test_kenward_roger_at_lme4_estimates_is_pbkrtest(model):
    md, core, theta, sigma = _at_lme4_estimates(*model)
    ref = _ref(REF, *model, ddf="Kenward-Roger")
    idx = _r_order(md, ref)
    kr = inference.kenward_roger(md, core.lambdas(theta), sigma)
    np.testing.assert_allclose(kr.dfs()[idx], ref["df"], rtol=1e-9)
    np.testing.assert_allclose(np.sqrt(np.diag(kr.vcov_adj))[idx], ref["std_error"], rtol=1e-9)


def _dense_vcov_adj(md, lambdas, sigma):
    """pbkrtest's vcovAdj16_internal as written, with n x n matrices: the reference for the q x q algebra."""
    levels = md.hierarchy.levels
    n = md.n
    G, gamma = [], []
    for lv, lam in zip(levels, lambdas):
        Z = md.Z[lv.group]
        k = Z.shape[1]
        cov = sigma ** 2 * lam @ lam.T
        same = lv.codes[:, None] == lv.codes[None, :]
        terms = list(lv.spec.terms)
        for block in lv.spec.blocks:
            ix = [terms.index(t) for t in block]
            for a in range(len(ix)):
                for b in range(a + 1):
                    E = np.zeros((k, k))
                    E[ix[a], ix[b]] = E[ix[b], ix[a]] = 1.0
                    G.append(same * (Z @ E @ Z.T))
                    gamma.append(cov[ix[a], ix[b]])
    G.append(np.eye(n))
    gamma.append(sigma ** 2)
    Sigma = sum(g * m for g, m in zip(gamma, G))
    Si = np.linalg.inv(Sigma)
    X = md.X
    Phi = np.linalg.inv(X.T @ Si @ X)
    H = [g @ Si for g in G]
    O = [h @ X for h in H]
    P = [-(o.T @ Si @ X) for o in O]
    ng = len(G)
    Q = {(r, s): O[r].T @ Si @ O[s] for r in range(ng) for s in range(r, ng)}
    IE2 = np.empty((ng, ng))
    for i in range(ng):
        for j in range(i, ng):
            IE2[i, j] = IE2[j, i] = (np.sum(H[i].T * H[j]) - 2 * np.sum(Phi * Q[i, j])
                                     + np.sum((Phi @ P[i]) * (P[j] @ Phi)))
    W = 2 * np.linalg.inv(IE2)
    U = np.zeros_like(Phi)
    for i in range(ng - 1):
        for j in range(i + 1, ng):
            U += W[i, j] * (Q[i, j] - P[i] @ Phi @ P[j])
    U = U + U.T
    for i in range(ng):
        U += W[i, i] * (Q[i, i] - P[i] @ Phi @ P[i])
    return Phi + 2 * Phi @ U @ Phi, P, W, Phi


def test_kenward_roger_q_by_q_algebra_is_pbkrtests_n_by_n():
    """An unbalanced three-level tree with a correlated slope at the top and an independent (||) slope in the
    middle, at an arbitrary point: the q x q rewrite equals pbkrtest's n x n formulas."""
    rng = np.random.default_rng(4)
    rows = []
    for m in range(5):
        for s in range(rng.integers(1, 4)):
            for u in range(rng.integers(1, 3)):
                for _ in range(rng.integers(1, 5)):
                    rows.append(dict(m=f"M{m}", s=f"S{s}", u=f"U{u}", x=rng.normal(), w=rng.normal()))
    data = pd.DataFrame(rows)
    data["y"] = 1 + data["x"] + rng.normal(size=len(data))
    md = prepare(as_spec("y ~ x + w + (1 + x | m) + (1 + w || m:s) + (1 | m:s:u)"), data)
    lams = [np.array([[0.8, 0.0], [-0.3, 0.5]]), np.diag([0.6, 0.4]), np.array([[0.7]])]
    kr = inference.kenward_roger(md, lams, 1.3)
    adj, P, W, Phi = _dense_vcov_adj(md, lams, 1.3)
    np.testing.assert_allclose(kr.vcov_beta, Phi, rtol=1e-10)
    np.testing.assert_allclose(kr.vcov_adj, adj, rtol=1e-9, atol=1e-12 * np.abs(adj).max())
    dense = [inference.lb_ddf(np.eye(3)[[j]], Phi, P, W) for j in range(3)]
    np.testing.assert_allclose(kr.dfs(), dense, rtol=1e-8)


def test_richardson_is_numderivs_genD():
    """genD's Richardson table on a function with known derivatives (including a coordinate at 0, where
    numDeriv steps by eps)."""
    f = lambda x: np.array([np.exp(x[0]) * np.sin(x[1]) + x[2] ** 2 * x[0], np.cos(x[0] * x[2])])
    x = np.array([0.3, 1.1, 0.0])
    f0, grad, hess = inference.richardson(f, x)
    e, s, c = np.exp(0.3), np.sin(1.1), np.cos(1.1)
    np.testing.assert_allclose(grad[0], [e * s, e * c, 0.0], atol=1e-9)
    # at x = 0 the steps are eps = 1e-4 / 2^k: rounding of f (1e-16) over h^2 (1.6e-10) leaves ~1e-6 there
    np.testing.assert_allclose(hess[0], [[e * s, e * c, 0], [e * c, -e * s, 0], [0, 0, 0.6]], atol=1e-5)
    np.testing.assert_allclose(hess[1], [[0, 0, 0], [0, 0, 0], [0, 0, -0.09]], atol=1e-5)
    np.testing.assert_allclose(hess[0][:2, :2], [[e * s, e * c], [e * c, -e * s]], atol=1e-8)


# ---------------------------------------------------------------------- the engines' own fits
@pytest.mark.parametrize("model", MODELS, ids=IDS)
@pytest.mark.parametrize("ddf", ["Satterthwaite", "Kenward-Roger"])
def test_native_fit_matches_lmertest(model, ddf):
    dataset, formula, method = model
    ref = _ref(REF, *model, ddf=ddf)
    if ref.empty:
        pytest.skip("Kenward-Roger is for REML fits")
    f = hc.fit(_data(dataset), formula, backend="native", method=method, df=DDF[ddf])
    assert f.diagnostics["df_method"] == DDF[ddf] and f.diagnostics["notes"] == []
    t = f.tidy("fixed", names="r").set_index("term").loc[ref["term"]]
    np.testing.assert_allclose(t["df"], ref["df"], rtol=1e-4)
    np.testing.assert_allclose(t["std_error"], ref["std_error"], rtol=1e-5)
    for c in ("conf_low", "conf_high"):
        np.testing.assert_allclose(t[c], ref[c], rtol=1e-5, err_msg=c)
    np.testing.assert_allclose(t["p_value"], ref["p_value"], rtol=1e-3)


SINGULAR = {"yield ~ nitro + Variety + (1 + nitro | Block)", "Weight ~ Time + (1 | Cu) + (1 | Cu:Litter)"}
MIXEDLM = [(m, i) for m, i in zip(MODELS, IDS) if m[1] not in SINGULAR and "Litter:Pig" not in m[1]]


@pytest.mark.parametrize("model", [m for m, _ in MIXEDLM], ids=[i for _, i in MIXEDLM])
def test_mixedlm_fit_df_match_lmertest(model):
    """Not dietox's slope model (a slope at the nested level, which mixedlm cannot fit), nor the two boundary fits:
    there mixedlm stops inside the parameter space (dietox's Cu SD 0.46 where lme4 and native have 0; Oats'
    correlation 0.991 where they have 1), and the df at its estimates are another number (6.1 against 61.0 for
    dietox's intercept)."""
    dataset, formula, method = model
    data = _data(dataset)
    for ddf in ("Satterthwaite", "Kenward-Roger"):
        ref = _ref(REF, *model, ddf=ddf)
        if ref.empty:
            continue
        f = hc.fit(data, formula, backend="mixedlm", method=method, df=DDF[ddf])
        t = f.tidy("fixed", names="r").set_index("term").loc[ref["term"]]
        np.testing.assert_allclose(t["df"], ref["df"], rtol=5e-4, err_msg=ddf)
        if ddf == "Kenward-Roger":
            for c in ("std_error", "conf_low", "conf_high"):
                np.testing.assert_allclose(t[c], ref[c], rtol=5e-4, err_msg=c)
        else:  # statsmodels' own SE, with the t quantile of these df
            q = stats.t.ppf(0.975, t["df"])
            np.testing.assert_allclose(t["conf_high"] - t["estimate"], q * t["std_error"], rtol=1e-12)


# ---------------------------------------------------------------------- options and the schema
def test_z_option_and_default_per_family(sleepstudy):
    f = hc.fit(sleepstudy, "Reaction ~ Days + (Days | Subject)", backend="native", df="z")
    t = f.tidy("fixed")
    assert np.isinf(t["df"]).all() and f.diagnostics["df_method"] == "z"
    z = stats.norm.ppf(0.975)
    np.testing.assert_allclose(t["conf_high"], t["estimate"] + z * t["std_error"], rtol=1e-14)
    np.testing.assert_allclose(t["p_value"], 2 * stats.norm.sf(np.abs(t["estimate"] / t["std_error"])), rtol=1e-12)
    assert inference.df_method(None) == "satterthwaite" and inference.df_method(None, "poisson") == "z"
    assert inference.df_method("Kenward-Roger") == inference.df_method("kr") == "kenward-roger"


def test_refusals(sleepstudy):
    formula = "Reaction ~ Days + (Days | Subject)"
    with pytest.raises(SpecError, match="df must be one of"):
        hc.fit(sleepstudy, formula, backend="native", df="t")
    with pytest.raises(SpecError, match="REML"):
        hc.fit(sleepstudy, formula, backend="native", method="ML", df="kenward-roger")
    with pytest.raises(SpecError, match="Gaussian"):
        inference.df_method("satterthwaite", "binomial")
    with pytest.raises(TypeError, match="ols takes no options"):
        hc.fit(sleepstudy, formula, backend="ols", df="z")


def test_only_fixed_rows_have_df_and_pickling_keeps_them(sleepstudy):
    f = hc.fit(sleepstudy, "Reaction ~ Days + (Days | Subject)", backend="native")
    t = f.tidy()
    assert list(t.columns)[-4:] == ["df", "p_value", "interval", "backend"]
    assert t.loc[t["effect"] != "fixed", ["df", "p_value"]].isna().all().all()
    assert np.isfinite(t.loc[t["effect"] == "fixed", "df"]).all()
    back = pickle.loads(pickle.dumps(f))
    pd.testing.assert_frame_equal(back.tidy(), t)
    js = f.to_dict()["tidy"]
    assert js[0]["df"] == pytest.approx(t["df"].iloc[0], rel=1e-12)


def test_streamed_fit_gives_the_in_memory_df(tmp_path):
    """A fit on per-leaf sums read in batches: the same Satterthwaite and Kenward-Roger numbers (the latter from
    Z'Z, Z'X and X'X assembled from the sums)."""
    data = _data("oats")
    path = tmp_path / "oats.csv"
    data.to_csv(path, index=False)
    formula = "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)"
    for ddf in ("satterthwaite", "kenward-roger"):
        mem = hc.fit(data, formula, backend="native", df=ddf).tidy("fixed")
        st = hc.fit(str(path), formula, backend="native", df=ddf, batch_rows=10).tidy("fixed")
        for c in ("estimate", "std_error", "df", "conf_low", "conf_high", "p_value"):
            np.testing.assert_allclose(st[c], mem[c], rtol=1e-7, err_msg=f"{ddf} {c}")


def test_streamed_sums_give_the_rows_cross_products(tmp_path):
    data = _data("dietox")[["Weight", "Time", "Litter", "Pig"]]
    path = tmp_path / "dietox.parquet"
    data.to_parquet(path)
    formula = "Weight ~ Time + (1 | Litter) + (1 + Time | Litter:Pig)"
    st = hc.fit(str(path), formula, backend="native", df="z")
    md = prepare(as_spec(formula), data)
    a, b = inference.cross_products(st.model), inference.cross_products(md)
    assert st.model.hierarchy.levels[-1].n_groups == md.hierarchy.levels[-1].n_groups
    # the same groups may be numbered differently: compare what does not depend on the order
    np.testing.assert_allclose(a[2], b[2], rtol=1e-12)
    assert a[3] == b[3]
    np.testing.assert_allclose(np.sort(a[0].toarray().ravel()), np.sort(b[0].toarray().ravel()), rtol=1e-12)
    np.testing.assert_allclose(a[1].sum(axis=0), b[1].sum(axis=0), rtol=1e-12)


def test_a_failing_satterthwaite_falls_back_to_z_and_says_so(sleepstudy, monkeypatch):
    def boom(*a, **k):
        raise np.linalg.LinAlgError("singular")

    monkeypatch.setattr(inference, "satterthwaite", boom)
    f = hc.fit(sleepstudy, "Reaction ~ Days + (Days | Subject)", backend="native")
    assert np.isinf(f.tidy("fixed")["df"]).all()
    assert any("could not be computed" in n for n in f.diagnostics["notes"])


def test_singular_fit_gets_df_from_the_other_directions():
    """A fit on the boundary (no group effect in the data: the SD is 0). As lmerTest, the derivatives step to
    theta = -1e-4 and back; the deviance is even in theta there, so that direction adds nothing to the df, which
    are n - p = 58 (lmerTest 3.1-3 on the same rows: 58, and Kenward-Roger 10.77773 and 57.52047)."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(12), 5)
    data = pd.DataFrame(dict(g=g.astype(str), x=rng.normal(size=g.size)))
    data["y"] = 2 + data["x"] + rng.normal(size=g.size)  # no group effect: the SD goes to 0
    f = hc.fit(data, "y ~ x + (1 | g)", backend="native")
    assert f.diagnostics["singular"] and f.diagnostics["theta"] == [0.0]
    np.testing.assert_allclose(f.tidy("fixed")["df"], [58, 58], rtol=1e-6)
    kr = hc.fit(data, "y ~ x + (1 | g)", backend="native", df="kenward-roger").tidy("fixed")
    np.testing.assert_allclose(kr["df"], [10.77773, 57.52047], rtol=1e-6)


def test_storage_and_agreement_carry_df(sleepstudy):
    from hiercompare import agreement
    from hiercompare.study.storage import RESULT_COLUMNS, normalize

    assert {"df", "p_value"} <= set(RESULT_COLUMNS)
    old = normalize(pd.DataFrame([dict(scenario="s", replication=0, backend="native", effect="fixed", term="x",
                                       estimate=1.0, seed=1)]))  # a study written before df existed
    assert np.isnan(old["df"].iloc[0]) and old["df"].dtype == "float64"
    formula = "Reaction ~ Days + (Days | Subject)"
    fits = [hc.fit(sleepstudy, formula, backend=b) for b in ("native", "mixedlm")]
    tab = agreement.compare(fits)
    d = tab[tab["quantity"] == "df"]
    assert len(d) == 2 and (d["verdict"] == "agree").all() and (d["param_class"] == "fixed_df").all()
    np.testing.assert_allclose(d["value_a"], d["value_b"], rtol=1e-4)
    assert "fixed_df" in set(agreement.summary(tab)["param_class"])
    # z on both sides agrees; different methods are information only
    z = [hc.fit(sleepstudy, formula, backend=b, df="z") for b in ("native", "mixedlm")]
    assert set(agreement.compare(z).query("quantity == 'df'")["verdict"]) == {"agree"}
    assert set(agreement.compare([fits[0], z[1]]).query("quantity == 'df'")["verdict"]) == {"info"}
    kr = hc.fit(sleepstudy, formula, backend="mixedlm", df="kenward-roger")
    assert set(agreement.compare([fits[0], kr]).query("quantity == 'df'")["verdict"]) == {"info"}


# ---------------------------------------------------------------------- against a live R
@pytest.fixture(scope="module")
def r_reference(tmp_path_factory):
    import rpy2.robjects as ro
    from rpy2.robjects.conversion import localconverter

    out = tmp_path_factory.mktemp("inference") / "inference_reference.csv"
    with localconverter(ro.default_converter):
        ro.r["source"](str(DATA / "inference_reference.R"))
        ro.globalenv["hc_inference_reference"](str(ROOT), str(out))
    return pd.read_csv(out)


@pytest.mark.r
def test_stored_reference_is_what_r_computes(r_reference):
    key = ["dataset", "formula", "method", "kind", "ddf", "term"]
    assert r_reference[key].fillna("").equals(REF[key].fillna(""))
    for c in COLS:
        # df and p from numerical derivatives: 1e-7 leaves room for another BLAS's rounding
        np.testing.assert_allclose(r_reference[c], REF[c], rtol=1e-7 if c in ("df", "p_value") else 1e-9,
                                   err_msg=c)


@pytest.mark.r
@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_lme4_backend_is_lmertest(r_reference, model):
    """The lme4 backend through hiercompare (optimizer bobyqa as in the script): lmerTest's and pbkrtest's
    numbers. The backend hands R the grouping labels as text (Exam's schools sort 1, 10, 11, ...; the script's
    integer factor 1, 2, 3, ...), so bobyqa takes another path and, on the slope models of Exam and dietox, stops
    2e-7 SE from the script's optimum; there the df agree to 7e-7 (Satterthwaite) and 5e-8 (Kenward-Roger), the SEs
    to 7e-7, elsewhere to 2e-8 and 1e-14. Tested: estimates 1e-5 SE, df 1e-5, SEs and interval ends 1e-6."""
    dataset, formula, method = model
    for ddf in ("Satterthwaite", "Kenward-Roger"):
        ref = _ref(r_reference, *model, ddf=ddf)
        if ref.empty:
            continue
        f = hc.fit(_data(dataset), formula, backend="lme4", method=method, optimizer="bobyqa", df=DDF[ddf])
        t = f.tidy("fixed", names="r").set_index("term").loc[ref["term"]]
        np.testing.assert_allclose(t["estimate"], ref["estimate"], rtol=0, atol=1e-5 * ref["std_error"].min())
        np.testing.assert_allclose(t["df"], ref["df"], rtol=1e-5, err_msg=ddf)
        for c in ("std_error", "conf_low", "conf_high"):
            np.testing.assert_allclose(t[c], ref[c], rtol=1e-6, atol=1e-5 * ref["std_error"].min(),
                                       err_msg=f"{ddf} {c}")
        np.testing.assert_allclose(t["p_value"], ref["p_value"], rtol=1e-3, err_msg=ddf)


@pytest.mark.r
def test_glmer_fixed_effects_are_z(seed_data):
    data, _ = seed_data
    data = data.assign(yb=(data["y"] > data["y"].median()).astype(int))
    f = hc.fit(data, "yb ~ x1 + (1 | market)", backend="lme4", family="binomial")
    t = f.tidy("fixed")
    assert np.isinf(t["df"]).all() and f.diagnostics["df_method"] == "z"
    np.testing.assert_allclose(t["p_value"], 2 * stats.norm.sf(np.abs(t["estimate"] / t["std_error"])), rtol=1e-12)
    with pytest.raises(SpecError, match="Gaussian"):
        hc.fit(data, "yb ~ x1 + (1 | market)", backend="lme4", family="binomial", df="satterthwaite")


def test_cli_fit_takes_df(tmp_path, capsys):
    from hiercompare.cli import main

    path = tmp_path / "pastes.csv"
    _data("pastes").to_csv(path, index=False)
    for df, expected in (("kenward-roger", 9.0), ("z", None)):
        out = tmp_path / f"{df}.json"
        assert main(["fit", "--data", str(path), "--formula", "strength ~ 1 + (1 | batch) + (1 | batch:cask)",
                     "--backend", "native", "--df", df, "--out", str(out)]) == 0
        import json

        row = json.loads(out.read_text())["tidy"][0]
        assert row["effect"] == "fixed"
        assert (row["df"] is None) if expected is None else row["df"] == pytest.approx(expected, rel=1e-9)
