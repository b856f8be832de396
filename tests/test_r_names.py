"""Fit.tidy(names="r"): fixed-effect terms as R names them (the R package's hc_tidy shows these). The reference
is lme4's own fixef() names, computed by R on the same data."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import hiercompare as hc
from hiercompare.errors import DataError

FORMULA = "y ~ x1 + x2 + sex + livch + C(reg) + x1:x2 + (1 + x1 | market)"
R_FORMULA = "y ~ x1 + x2 + sex + livch + reg + x1:x2 + (1 + x1 | market)"  # reg a factor column in R


@pytest.fixture(scope="module")
def data(seed_data):
    d = seed_data[0].copy()
    rng = np.random.default_rng(4)
    d["sex"] = rng.choice(["F", "M"], len(d))
    d["livch"] = rng.choice(["0", "1", "2", "3+"], len(d))
    d["reg"] = rng.integers(1, 4, len(d))  # numeric, categorical through C(reg)
    return d


@pytest.fixture(scope="module")
def fit(data):
    return hc.fit(data, FORMULA, backend="native")


def test_default_names_are_unchanged(fit):
    assert fit.tidy("fixed")["term"].tolist() == [
        "(Intercept)", "x1", "x2", "sex[T.M]", "livch[T.1]", "livch[T.2]", "livch[T.3+]", "reg[T.2]", "reg[T.3]",
        "x1:x2"]
    assert fit.tidy().equals(fit.tidy(names="python"))


def test_r_names_change_only_fixed_terms(fit):
    py, r = fit.tidy(), fit.tidy(names="r")
    assert r["term"][py["effect"] == "fixed"].tolist() == [
        "(Intercept)", "x1", "x2", "sexM", "livch1", "livch2", "livch3+", "reg2", "reg3", "x1:x2"]
    assert r.drop(columns="term").equals(py.drop(columns="term"))
    assert r["term"][py["effect"] != "fixed"].equals(py["term"][py["effect"] != "fixed"])
    assert fit.tidy("fixed", names="r")["term"].tolist() == r["term"][py["effect"] == "fixed"].tolist()


def test_bad_option_and_fit_without_design(fit):
    with pytest.raises(ValueError, match="names must be 'python' or 'r'"):
        fit.tidy(names="R")
    bare = dataclasses.replace(fit, model=None)
    with pytest.raises(DataError, match="loaded without its data"):
        bare.tidy(names="r")
    assert bare.tidy("ran_pars", names="r").equals(fit.tidy("ran_pars"))  # no fixed rows: nothing to rename


@pytest.mark.r
@pytest.mark.parametrize("intercept", [True, False])
def test_r_names_are_lme4s(data, intercept):
    import rpy2.robjects as ro

    from hiercompare import rbridge

    formula = FORMULA if intercept else FORMULA.replace("y ~ ", "y ~ 0 + ")
    r_formula = R_FORMULA if intercept else R_FORMULA.replace("y ~ ", "y ~ 0 + ")
    mine = hc.fit(data, formula, backend="native").tidy("fixed", names="r")
    frame = data[["y", "x1", "x2", "sex", "livch", "reg", "market"]]
    rdf = rbridge.dataframe(frame, {"sex": None, "livch": None, "reg": None, "market": None})
    with rbridge._LOCK:
        fixef = ro.r("function(d, f) lme4::fixef(lme4::lmer(stats::as.formula(f), data = d, REML = TRUE))")(
            rdf, r_formula)
        names = list(ro.r["names"](fixef))
    assert mine["term"].tolist() == names
    # the same coefficients under those names (native matches lme4 to 1e-6 relative)
    np.testing.assert_allclose(mine["estimate"].to_numpy(), np.asarray(fixef), rtol=1e-5, atol=1e-8)
