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


def test_sd_disagreement_and_boundary_flag(mixed_fit):
    sd_sub = lambda t: (t["effect"] == "ran_pars") & (t["group"] == "market:submarket")
    off = hc.compare([mixed_fit, _as(mixed_fit, "lme4", scale=(sd_sub, 1.05))])
    assert set(off.loc[off["param_class"] == "sd", "verdict"]) == {"agree", "disagree"}
    # the same difference on a fit flagged singular is reported as boundary, not failed
    b = _as(mixed_fit, "lme4", scale=(sd_sub, 1.05))
    b.diagnostics["singular"] = True
    flagged = hc.compare([mixed_fit, b])
    assert set(flagged.loc[flagged["param_class"] == "sd", "verdict"]) == {"agree", "boundary"}
    assert summary(flagged).set_index("param_class").loc["sd", "verdict"] == "boundary"


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


def test_info_pairs_have_no_verdict(mixed_fit, seed_data):
    data, _ = seed_data
    ols = hc.fit(data, F, backend="ols")
    t = hc.compare([ols, mixed_fit])
    assert set(t["verdict"]) == {"info"}
    assert np.isnan(t["tolerance"]).all()
    with pytest.raises(ValueError, match="at least two fits"):
        hc.compare([ols])
