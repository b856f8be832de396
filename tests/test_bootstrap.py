"""The parametric bootstrap on a user's design: DesignScenario draws, and the Study that refits them."""
import json

import numpy as np
import pytest

import hiercompare as hc
from hiercompare.bootstrap import bootstrap_design
from hiercompare.simulate import DesignScenario, scenario_from_dict

FORMULA = "strength ~ 1 + (1 | batch) + (1 | batch:cask)"


@pytest.fixture(scope="module")
def reference():
    data = hc.datasets.load("pastes")
    return data, hc.fit(data, FORMULA, backend="native")


def test_design_keeps_the_rows_and_redraws_the_response(reference):
    data, ref = reference
    sc = DesignScenario.from_fit(ref, data)
    again = scenario_from_dict(json.loads(json.dumps(sc.to_dict())))  # what a worker process receives
    a, truth = hc.simulate(again, seed=5)
    b, _ = hc.simulate(sc, seed=5)
    np.testing.assert_array_equal(a["strength"].to_numpy(), b["strength"].to_numpy())
    assert (a[["batch", "cask"]].to_numpy() == data[["batch", "cask"]].to_numpy()).all()
    assert not np.allclose(a["strength"], data["strength"])
    c, _ = hc.simulate(sc, seed=6)
    assert not np.allclose(a["strength"], c["strength"])
    # the truth is the reference fit's values, exactly
    t = truth.tidy(["fixed", "ran_pars"]).set_index(["group", "term"])["estimate"]
    r = ref.tidy(["fixed", "ran_pars"]).set_index(["group", "term"])["estimate"]
    np.testing.assert_allclose(t.loc[r.index].to_numpy(), r.to_numpy(), rtol=1e-15)


def test_design_draws_have_the_reference_moments(reference):
    """Over 4000 draws the response's mean is the intercept and its variance the sum of the three variances."""
    data, ref = reference
    sc = DesignScenario.from_fit(ref, data)
    ys = np.array([hc.simulate(sc, seed=s)[0]["strength"].to_numpy() for s in range(4000)])
    vc = ref.tidy("ran_pars").set_index("group")["estimate"]
    total = float((vc ** 2).sum())
    # per row, 4000 draws: the mean's SE is sqrt(total / 4000) = 0.05; allow 5 SEs at the worst of 60 rows
    assert np.abs(ys.mean(axis=0) - ref.fixef["(Intercept)"]).max() < 5 * np.sqrt(total / 4000)
    # the pooled variance over rows: SE of a variance from 4000 draws ~ total * sqrt(2 / 4000) per row
    assert abs(ys.var(axis=0, ddof=1).mean() / total - 1) < 0.05
    # two casks of one batch share the batch effect: their covariance is the batch variance
    i, j = data.index[(data.batch == "A") & (data.cask == "a")][0], data.index[(data.batch == "A") & (data.cask == "b")][0]
    cov = np.cov(ys[:, i], ys[:, j])[0, 1]
    assert abs(cov - vc["batch"] ** 2) < 0.1 * total


def test_bootstrap_refits_every_backend_and_resumes(reference, tmp_path):
    data, ref = reference
    out = tmp_path / "boot"
    first = bootstrap_design(data, ref.spec, ["native", "ols"], 6, seed=3, out=out)
    s = first["bootstrap_summary"]
    assert set(s["backend"]) == {"native", "ols"}
    row = s[(s.backend == "native") & (s.term == "(Intercept)")].iloc[0]
    assert row["n_rep"] == 6 and row["truth"] == pytest.approx(ref.fixef["(Intercept)"], rel=1e-15)
    # the same call again reads the part files: identical numbers
    again = bootstrap_design(data, ref.spec, ["native", "ols"], 6, seed=3, out=out)
    np.testing.assert_array_equal(again["bootstrap_summary"]["mean_estimate"].to_numpy(),
                                  s["mean_estimate"].to_numpy())
    # the fixed intercept of native and ols (sum-to-zero dummies) is the same number on balanced data
    o = s[(s.backend == "ols") & (s.term == "(Intercept)")].iloc[0]
    assert o["mean_estimate"] == pytest.approx(row["mean_estimate"], rel=1e-10)


def test_design_refuses_an_unknown_family_or_missing_parameters(reference):
    """Every family of the spec is drawn (tests/test_simulate_design_counts.py checks their moments); a design
    needs the parameters of its family."""
    data, ref = reference
    sc = DesignScenario.from_fit(ref, data).to_dict()
    with pytest.raises(hc.SpecError, match="family"):
        DesignScenario.from_dict({**sc, "family": "gamma"})
    with pytest.raises(hc.SpecError, match="size"):
        DesignScenario.from_dict({**sc, "family": "negbinomial"})
    no_residual = [p for p in sc["ran_pars"] if p[0] != "Residual"]
    with pytest.raises(hc.SpecError, match="residual SD"):
        DesignScenario.from_dict({**sc, "ran_pars": no_residual})


def test_a_study_leaves_no_thread_behind(reference, tmp_path):
    """tqdm's monitor thread outlived Study.run, and with a second thread alive brms's chains could no longer fork
    in that process (test_brms failed after this module): the study's bar starts none."""
    import threading

    data, ref = reference
    before = threading.active_count()
    bootstrap_design(data, ref.spec, ["native"], 2, seed=1, out=tmp_path / "t", progress=lambda m: None)
    assert threading.active_count() == before, [t.name for t in threading.enumerate()]


def test_cli_compare_bootstrap_on_counts_with_an_offset(tmp_path):
    """`hiercompare compare --bootstrap N` on a count outcome with an exposure offset (mlmRev's Mmmec, melanoma
    deaths with the expected count): the draws come from native's Laplace fit (Poisson, the exposure in the mean)
    and native and glm are refitted on each; the bootstrap table has both, every replication used."""
    from pathlib import Path

    import pandas as pd

    from hiercompare.cli import main

    data = Path(__file__).parent / "data" / "glmm_mmmec.csv"
    out = tmp_path / "mm"
    formula = "deaths ~ uvb + offset(log_expected) + (1 | nation) + (1 | nation:region)"
    code = main(["compare", str(data), "--formula", formula, "--family", "poisson", "--backends", "native,glm",
                 "--cv", "none", "--bootstrap", "3", "--seed", "1", "--out", str(out)])
    assert code == 0
    s = pd.read_csv(out / "tables" / "bootstrap_summary.csv")
    assert set(s["backend"]) == {"native", "glm"}
    assert (s["n_rep"] == 3).all() and (s["n_used"] == 3).all()
    assert {"sd__(Intercept)"} <= set(s.loc[s.backend == "native", "term"])
    ref = pd.read_csv(out / "tables" / "bootstrap_reference.csv")
    assert ref["reference"].iloc[0] == "native ML (Laplace)"
    d = pd.read_csv(data)
    native = hc.fit(d, formula, backend="native", family="poisson")
    row = s[(s.backend == "native") & (s.term == "uvb")].iloc[0]
    assert row["truth"] == pytest.approx(native.fixef["uvb"], rel=1e-10)
    assert "9. Parametric bootstrap" in (out / "report.html").read_text()


def test_a_learners_conditional_intervals_are_not_counted_as_ordinary_coverage(tmp_path):
    # lightgbm's default intervals treat its learned f(x) as known: the bootstrap table shows their coverage only
    # as conditional_coverage, beside interval = conditional_on_f, and native's as ordinary coverage
    data, _ = hc.simulate(hc.Scenario(n_obs=1000), seed=2)
    spec = hc.fit(data, "y ~ x1 + x2 + (1 | market)", backend="native").spec
    s = bootstrap_design(data, spec, ["native", "lightgbm"], 3, seed=1, out=tmp_path / "b")["bootstrap_summary"]
    lg = s[(s.backend == "lightgbm") & (s.effect == "fixed")]
    nat = s[(s.backend == "native") & (s.effect == "fixed")]
    assert len(lg) == 3 and (lg["interval"] == "conditional_on_f").all()
    assert lg["coverage"].isna().all() and lg["conditional_coverage"].between(0, 1).all()
    assert (nat["interval"] == "").all() and nat["coverage"].between(0, 1).all()
    assert nat["conditional_coverage"].isna().all()
