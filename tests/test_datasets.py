"""The shipped public data sets: each CSV is R's data, checked through lme4's own fits on R's own copies.

``tests/data/datasets_reference.csv`` holds lme4's REML fits of every formula of :mod:`hiercompare.datasets` on
the R packages' data (written by ``tests/data/datasets_reference.R``, 17 digits, the best of lme4's four
built-in optimizers). Without R, native on our CSV copies must reproduce them: if a copy lost a row, a digit or
a label's nesting, the likelihood moves.
"""
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare import datasets

HERE = Path(__file__).parent
REF = pd.read_csv(HERE / "data" / "datasets_reference.csv", dtype={"value": float})
ROOT = HERE.parent


def test_every_data_set_loads_and_has_its_origin():
    sources = (ROOT / "hiercompare" / "data" / "SOURCES.md").read_text()
    sizes = {"exam": 4059, "egsingle": 7230, "dietox": 861, "oats": 72, "pastes": 60}
    assert sorted(datasets.names()) == sorted(sizes)
    for name, n in sizes.items():
        assert len(datasets.load(name)) == n
        assert f"{name}.csv" in sources
        assert len(datasets.info(name).formulas) >= 2
    with pytest.raises(hc.DataError, match="no data set 'nope'.*exam"):
        datasets.load("nope")


CASES = [(d, f) for d in datasets.names() for f in datasets.info(d).formulas]


@pytest.mark.parametrize("name,formula", CASES, ids=[f"{d}-{i}" for d in datasets.names() for i in (1, 2)])
def test_native_on_the_csv_reproduces_lme4_on_rs_data(name, formula):
    ref = REF[(REF.dataset == name) & (REF.formula == formula)]
    assert len(ref), "no reference row: rerun tests/data/datasets_reference.R"
    f = hc.fit(datasets.load(name), formula, backend="native")
    ll = ref[ref.kind == "loglik"]["value"].iloc[0]
    # native's optimum is at least lme4's best (1e-6: optimizer tolerance) and not far above it
    assert ll - 1e-6 <= f.loglik <= ll + 1e-4, (f.loglik, ll)
    tidy = f.tidy(names="r")
    fx = tidy[tidy.effect == "fixed"].set_index("term")
    for r in ref[ref.kind == "fixef"].itertuples():
        se = ref[(ref.kind == "fixef_se") & (ref.name == r.name)]["value"].iloc[0]
        # within 1e-3 of the fixed effect's SE (the optimum is flat to that order in the variance parameters)
        assert abs(fx.loc[r.name, "estimate"] - r.value) < 1e-3 * se, (r.name, fx.loc[r.name, "estimate"], r.value)
        assert fx.loc[r.name, "std_error"] == pytest.approx(se, rel=2e-3), r.name
    rp = tidy[tidy.effect == "ran_pars"]
    mine = dict(zip(rp["group"] + "|" + rp["term"], rp["estimate"]))
    for r in ref[ref.kind == "ran_pars"].itertuples():
        assert r.name in mine, (r.name, sorted(mine))
        if r.name.split("|")[1].startswith("cor__"):
            assert mine[r.name] == pytest.approx(r.value, abs=5e-3), r.name
        else:
            assert mine[r.name] == pytest.approx(r.value, rel=5e-3, abs=1e-4), r.name


def test_mixedlm_never_keeps_an_infinite_likelihood():
    """statsmodels' first optimiser returns cov_re = 0 with llf = +inf on Exam's random-intercept model; the
    backend kept it ("Cannot predict random effects from singular covariance"). Now the finite optimum wins."""
    formula = datasets.info("exam").formulas[0]
    ref = REF[(REF.dataset == "exam") & (REF.formula == formula) & (REF.kind == "loglik")]["value"].iloc[0]
    f = hc.fit(datasets.load("exam"), formula, backend="mixedlm")
    assert np.isfinite(f.loglik) and f.loglik == pytest.approx(ref, abs=1e-5)


@pytest.mark.r
def test_the_stored_reference_is_what_lme4_gives_now(tmp_path):
    """Rerun the R script (into a copy of the tree's data) and compare with the stored file to 1e-8."""
    work = tmp_path / "root"
    (work / "tests" / "data").mkdir(parents=True)
    (work / "hiercompare" / "data").mkdir(parents=True)
    (work / "hiercompare" / "data" / "dietox.csv").write_bytes((ROOT / "hiercompare/data/dietox.csv").read_bytes())
    script = ROOT / "tests" / "data" / "datasets_reference.R"
    p = subprocess.run(["Rscript", str(script)], cwd=work, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    fresh = pd.read_csv(work / "tests" / "data" / "datasets_reference.csv", dtype={"value": float})
    pd.testing.assert_frame_equal(fresh[["dataset", "formula", "kind", "name"]], REF[["dataset", "formula", "kind", "name"]])
    np.testing.assert_allclose(fresh["value"].to_numpy(), REF["value"].to_numpy(), rtol=1e-8, atol=1e-10)


def test_ols_names_a_group_level_covariate_it_cannot_estimate():
    """Exam's schavg is constant within schools and Oats' Variety within Block:Variety plots: no-pooling dummies
    absorb them (R's lm gives NA), and ols says which columns, instead of blaming group sizes."""
    with pytest.raises(hc.SpecError, match=r"\['schavg'\] are constant within the groups"):
        hc.fit(datasets.load("exam"), datasets.info("exam").formulas[1], backend="ols")
    with pytest.raises(hc.SpecError, match=r"Variety\[T.Marvellous\].*constant within the groups"):
        hc.fit(datasets.load("oats"), datasets.info("oats").formulas[1], backend="ols")
