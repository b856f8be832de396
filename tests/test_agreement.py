import dataclasses

import numpy as np
import pytest

import hiercompare as hc
from hiercompare.agreement import TOLERANCES, Tol, pair_class, summary

F = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


@pytest.fixture(scope="module")
def mixed_fit(seed_data):
    data, _ = seed_data
    return hc.fit(data, F, backend="mixedlm")


def _as(fit, backend, scale=None, shift=None):
    """A copy of ``fit`` relabelled as another backend, optionally with perturbed numbers."""
    table = fit.table.copy()
    if scale:
        mask, factor = scale
        table.loc[mask(table), "estimate"] *= factor
    if shift:
        mask, delta = shift
        table.loc[mask(table), "estimate"] += delta
    return dataclasses.replace(fit, backend=backend, table=table, diagnostics=dict(fit.diagnostics))


def test_identical_fits_agree(mixed_fit):
    table = hc.compare([mixed_fit, _as(mixed_fit, "lme4")])
    assert set(table["verdict"]) <= {"agree", "info"}
    assert (table.loc[table["verdict"] != "info", "diff"] == 0).all()


def test_tolerance_edges(mixed_fit):
    fixed = lambda t: (t["effect"] == "fixed") & (t["term"] == "x2")
    within = hc.compare([mixed_fit, _as(mixed_fit, "lme4", scale=(fixed, 1 + 0.5e-4))])
    beyond = hc.compare([mixed_fit, _as(mixed_fit, "lme4", scale=(fixed, 1 + 2e-4))])
    row = lambda t: t[(t["term"] == "x2") & (t["quantity"] == "estimate")].iloc[0]
    assert row(within)["verdict"] == "agree"
    assert row(beyond)["verdict"] == "disagree"
    assert row(beyond)["rel_diff"] == pytest.approx(2e-4 / (1 + 2e-4), rel=1e-6)
    s = summary(beyond).set_index("param_class")
    assert s.loc["fixed", "verdict"] == "DISAGREE" and s.loc["fixed", "disagree"] == 1


def test_sd_disagreement_and_singular_flag_masks_nothing(mixed_fit):
    sd_sub = lambda t: (t["effect"] == "ran_pars") & (t["group"] == "market:submarket")
    off = hc.compare([mixed_fit, _as(mixed_fit, "lme4", scale=(sd_sub, 1.05))])
    assert set(off.loc[off["param_class"] == "sd", "verdict"]) == {"agree", "disagree"}
    # the backend's singular flag alone says no term is on the boundary: the 5% SD difference still fails
    b = _as(mixed_fit, "lme4", scale=(sd_sub, 1.05))
    b.diagnostics["singular"] = True
    flagged = hc.compare([mixed_fit, b])
    assert set(flagged.loc[flagged["param_class"] == "sd", "verdict"]) == {"agree", "disagree"}
    assert summary(flagged).set_index("param_class").loc["sd", "verdict"] == "DISAGREE"


def _rows(t, effect, group, term, quantity="estimate"):
    return t[(t["effect"] == effect) & (t["group"] == group) & (t["term"] == term) & (t["quantity"] == quantity)]


def test_singular_fit_flags_only_its_boundary_terms(mixed_fit):
    """b's market slope SD collapses to the boundary (1e-6 of the residual SD): that SD, its correlation and
    the market slope deviations are 'boundary'; the market intercept deviations, moved by 5 SDs' worth of
    1e-2, and the submarket SD, 5% off, are still 'disagree' in the same pair."""
    resid = mixed_fit.table.loc[mixed_fit.table["group"] == "Residual", "estimate"].item()
    sd_x1 = lambda t: (t["effect"] == "ran_pars") & (t["group"] == "market") & (t["term"] == "sd__x1")
    b = _as(mixed_fit, "lme4", scale=(sd_x1, 0.0), shift=(sd_x1, 1e-6 * resid))
    t = b.table
    sd_int = mixed_fit.table.loc[(mixed_fit.table["group"] == "market")
                                 & (mixed_fit.table["term"] == "sd__(Intercept)"), "estimate"].item()
    t.loc[(t["group"] == "market") & (t["term"] == "cor__(Intercept).x1"), "estimate"] += 0.5
    t.loc[(t["effect"] == "ran_vals") & (t["group"] == "market") & (t["term"] == "x1"), "estimate"] += 0.3
    t.loc[(t["effect"] == "ran_vals") & (t["group"] == "market") & (t["term"] == "(Intercept)"),
          "estimate"] += 0.05 * sd_int
    t.loc[(t["effect"] == "ran_pars") & (t["group"] == "market:submarket"), "estimate"] *= 1.05
    b.diagnostics["singular"] = True
    table = hc.compare([mixed_fit, b])
    assert _rows(table, "ran_pars", "market", "sd__x1")["verdict"].item() == "boundary"
    assert _rows(table, "ran_pars", "market", "cor__(Intercept).x1")["verdict"].item() == "boundary"
    slopes = _rows(table, "ran_vals", "market", "x1")
    assert len(slopes) == mixed_fit.model.hierarchy.level("market").n_groups and set(slopes["verdict"]) == {"boundary"}
    intercepts = _rows(table, "ran_vals", "market", "(Intercept)")
    assert set(intercepts["verdict"]) == {"disagree"}
    np.testing.assert_allclose(intercepts["diff"].abs(), 0.05 * sd_int, rtol=1e-9)
    assert _rows(table, "ran_pars", "market:submarket", "sd__(Intercept)")["verdict"].item() == "disagree"
    assert _rows(table, "ran_pars", "market", "sd__(Intercept)")["verdict"].item() == "agree"
    assert set(table.loc[table["group"] == "market:submarket", "verdict"]) <= {"agree", "disagree", "info"}
    s = summary(table).set_index("param_class")
    assert s.loc["ran_vals", "verdict"] == "DISAGREE" and s.loc["ran_vals", "boundary"] == len(slopes)
    assert s.loc["sd", "verdict"] == "DISAGREE" and s.loc["sd", "boundary"] == 1


def test_boundary_terms_per_term():
    from hiercompare.agreement import boundary_terms
    from hiercompare.results import tidy_frame

    def fit(rows):
        table = tidy_frame([dict(effect="ran_pars", group=g, level="", term=t, estimate=e) for g, t, e in rows]
                           + [dict(effect="ran_pars", group="Residual", level="", term="sd__Observation",
                                  estimate=2.0)])
        return hc.Fit(backend="lme4", spec=hc.ModelSpec.from_formula(F), table=table)

    # an SD at 0.9e-3 of the residual SD (2.0) is on the boundary, at 1.1e-3 it is not
    f = fit([("g", "sd__(Intercept)", 1.8e-3), ("g", "sd__x1", 0.5), ("g", "cor__(Intercept).x1", 0.2),
             ("h", "sd__(Intercept)", 2.2e-3)])
    assert boundary_terms(f) == {("ran_pars", "g", "sd__(Intercept)"), ("ran_vals", "g", "(Intercept)"),
                                 ("ran_pars", "g", "cor__(Intercept).x1")}
    # a correlation at -0.9995 is on the boundary (|r| >= 1 - 1e-3), its SDs and deviations are not
    f = fit([("g", "sd__(Intercept)", 1.0), ("g", "sd__x1", 0.5), ("g", "cor__(Intercept).x1", -0.9995)])
    assert boundary_terms(f) == {("ran_pars", "g", "cor__(Intercept).x1")}
    assert boundary_terms(fit([("g", "sd__(Intercept)", 1.0), ("g", "sd__x1", 0.5),
                               ("g", "cor__(Intercept).x1", -0.998)])) == set()
    # three terms whose correlation matrix is singular with no pair at +-1: r12 = r13 = .7071, r23 = 0
    # gives eigenvalues 1 - sqrt(2 * .7071^2) ~ 0 -> every correlation of the group
    r = np.sqrt(0.5)
    f = fit([("g", "sd__(Intercept)", 1.0), ("g", "sd__x1", 0.5), ("g", "sd__x2", 0.5),
             ("g", "cor__(Intercept).x1", r), ("g", "cor__(Intercept).x2", r), ("g", "cor__x1.x2", 0.0)])
    assert boundary_terms(f) == {("ran_pars", "g", "cor__(Intercept).x1"), ("ran_pars", "g", "cor__(Intercept).x2"),
                                 ("ran_pars", "g", "cor__x1.x2")}


def test_blup_tolerance_is_relative_to_the_term_sd(mixed_fit):
    """A market intercept deviation 0.5e-2 SD off agrees, 2e-2 SD off disagrees; the row's tolerance is
    1e-2 x the larger of the two fits' SDs of that group term."""
    tab = mixed_fit.table
    sd_int = tab.loc[(tab["group"] == "market") & (tab["term"] == "sd__(Intercept)"), "estimate"].item()
    first = tab.loc[(tab["effect"] == "ran_vals") & (tab["group"] == "market"), "level"].iloc[0]
    one = lambda t: ((t["effect"] == "ran_vals") & (t["group"] == "market") & (t["level"] == first)
                     & (t["term"] == "(Intercept)"))
    within = hc.compare([mixed_fit, _as(mixed_fit, "lme4", shift=(one, 0.5e-2 * sd_int))])
    beyond = hc.compare([mixed_fit, _as(mixed_fit, "lme4", shift=(one, 2e-2 * sd_int))])
    row = lambda t: t[one(t) & (t["quantity"] == "estimate")].iloc[0]
    assert row(within)["verdict"] == "agree" and row(beyond)["verdict"] == "disagree"
    assert row(beyond)["tolerance"] == pytest.approx(1e-2 * sd_int, rel=1e-12)
    assert row(beyond)["tol_kind"] == "abs: 0.01 x SD"
    s = summary(beyond).set_index("param_class")
    assert s.loc["ran_vals", "tolerance"] == 1e-2 and s.loc["ran_vals", "tol_kind"] == "x SD of the group term"


def test_verdicts_do_not_depend_on_the_units(seed_data):
    """native vs mixedlm on the same data with y in units and in thousandths of them (y x 1000): the same
    verdict on every row. At x 1000 the deviations differ by more than 1e-2 in absolute terms, so a fixed
    absolute BLUP tolerance would call them disagreeing."""
    data, _ = seed_data
    big = data.assign(y=data["y"] * 1000)
    one = hc.compare([hc.fit(data, F, backend="native"), hc.fit(data, F, backend="mixedlm")])
    thousand = hc.compare([hc.fit(big, F, backend="native"), hc.fit(big, F, backend="mixedlm")])
    key = ["effect", "group", "level", "term", "quantity"]
    merged = one.merge(thousand, on=key, suffixes=("_1", "_1000"))
    assert len(merged) == len(one) == len(thousand) > 100
    assert (merged["verdict_1"] == merged["verdict_1000"]).all()
    assert set(merged["verdict_1"]) == {"agree", "info"}
    rv = merged[(merged["param_class_1"] == "ran_vals")]
    assert rv["diff_1000"].abs().max() > 1e-2
    # the bound follows the units: 1000 x, up to the fits' own SD differences (within their 1e-2 rule)
    np.testing.assert_allclose(rv["tolerance_1000"], 1000 * rv["tolerance_1"], rtol=1e-2)


def test_loglik_and_missing_parameters(mixed_fit):
    b = dataclasses.replace(_as(mixed_fit, "lme4"), loglik=mixed_fit.loglik + 2e-4)
    t = hc.compare([mixed_fit, b])
    assert t.loc[t["param_class"] == "loglik", "verdict"].item() == "disagree"
    c = _as(mixed_fit, "lme4")
    c.table = c.table[c.table["term"] != "cor__(Intercept).x1"]
    t = hc.compare([mixed_fit, c])
    assert t.loc[t["term"] == "cor__(Intercept).x1", "verdict"].item() == "missing"
    # different estimation methods are not compared on the log-likelihood
    d = dataclasses.replace(_as(mixed_fit, "lme4"), method="ML")
    assert "loglik" not in set(hc.compare([mixed_fit, d])["param_class"])


def test_pair_classes_and_rules():
    assert pair_class("ols", "r_lm") == "least_squares"
    assert pair_class("lme4", "mixedlm") == "mixed"
    assert pair_class("ols", "lme4") == "info"
    assert TOLERANCES["least_squares"]["fixed"] == Tol(1e-8, "rel")
    assert TOLERANCES["mixed"]["sd"] == Tol(1e-2, "rel") and TOLERANCES["mixed"]["loglik"] == Tol(1e-4, "abs")
    assert Tol(1e-2, "abs").ok(1.0, 1.0099) and not Tol(1e-2, "abs").ok(1.0, 1.0101)
    assert TOLERANCES["mixed"]["ran_vals"] == Tol(1e-2, "sd")
    assert Tol(1e-2, "sd").ok(0.0, 4.9, sd=500.0) and not Tol(1e-2, "sd").ok(0.0, 5.1, sd=500.0)


def test_info_pairs_have_no_verdict(mixed_fit, seed_data):
    data, _ = seed_data
    ols = hc.fit(data, F, backend="ols")
    t = hc.compare([ols, mixed_fit])
    assert set(t["verdict"]) == {"info"}
    assert np.isnan(t["tolerance"]).all()
    with pytest.raises(ValueError, match="at least two fits"):
        hc.compare([ols])
