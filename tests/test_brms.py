"""The brms backend: recovery, agreement with lme4, the compiled-model cache, labels, priors, errors.

One Stan compile for the whole module: every fit here has the structure of the default scenario's model
(``y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)``, gaussian, the default prior classes), so after
the first fit compiles, every other fit (other data, other prior values, another process) reuses it. The
module uses its own empty cache folder so that the first fit really compiles.

Sampling is shortened where a test allows (the recovery fit keeps 2 x 200 draws after 200 warmup iterations;
the cache, label and prior fits use a few hundred rows and 1 core, so that rstan's worker start-up is not
timed); their ConvergenceWarnings are expected and checked where it matters.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import hiercompare as hc
from hiercompare.backends import brms as brms_backend
from hiercompare.design import prepare
from hiercompare.errors import BackendError, ConvergenceWarning, SpecError

pytestmark = [pytest.mark.r, pytest.mark.slow]

FORMULA = hc.Scenario().formula()
# Posterior-mean SD vs the SD of the effects actually drawn (realized truth) on the default scenario (10 markets,
# 50 submarkets, 5000 rows): the market SDs rest on 10 groups, so their posterior is wide and right-skewed.
SD_TOLERANCE = {("market", "sd__(Intercept)"): 0.40, ("market", "sd__x1"): 0.40,
                ("market:submarket", "sd__(Intercept)"): 0.20, ("Residual", "sd__Observation"): 0.05}


def _fit(data, formula=FORMULA, **kw):
    """hc.fit on brms with ConvergenceWarnings collected (short test runs trigger them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        fit = hc.fit(data, formula, backend="brms", **kw)
        seconds = time.perf_counter() - t0
    conv = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    return fit, seconds, conv


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("brms_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("HIERCOMPARE_CACHE", str(path))
    brms_backend.clear_memory_cache()  # so that the first fit below really compiles
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def first(cache_dir, seed_data):
    """The default scenario (seed 123), fitted first: this fit compiles the model."""
    data, truth = seed_data
    fit, seconds, conv = _fit(data, seed=2024, chains=2, iter=200, warmup=200, cores=2)
    print(f"\nbrms first fit (compile + sampling, 5000 rows, 2 x (200 + 200)): {seconds:.1f} s "
          f"(compile {fit.diagnostics['compile_seconds']:.1f} s, sampling {fit.diagnostics['sampling_seconds']:.1f} s); "
          f"R-hat max {fit.diagnostics['rhat_max']:.3f}, bulk ESS min {fit.diagnostics['ess_bulk_min']:.0f}, "
          f"tail ESS min {fit.diagnostics['ess_tail_min']:.0f}, divergences {fit.diagnostics['divergences']}")
    return fit, truth, seconds, conv


def ro_env(name):
    import rpy2.robjects as ro
    from hiercompare import rbridge

    with rbridge._LOCK:
        return ro.r["Sys.getenv"](name)[0]


def _small(seed, n_obs=8):
    return hc.simulate(hc.Scenario(n_obs=n_obs), seed=seed)


def test_compiler_flags_respect_the_users_makevars_and_key_the_cache(tmp_path):
    """Ours unless the user has R_MAKEVARS_USER or ~/.R/Makevars; the flags in force are part of the cache key."""
    from hiercompare import rbridge
    import rpy2.robjects as ro

    rbridge.call("fit_brms.R", "hc_versions", ro.StrVector([]))  # sources fit_brms.R
    assert "CXX14FLAGS = -O3" in brms_backend.STAN_MAKEVARS.read_text()
    dot_r = tmp_path / ".R"
    dot_r.mkdir()
    with rbridge._LOCK:
        r = ro.r
        before = r("Sys.getenv('R_MAKEVARS_USER', unset = NA)")[0]
        r.assign("hc_ours", str(brms_backend.STAN_MAKEVARS))
        r.assign("hc_dot_r", str(dot_r))
        try:
            r("Sys.unsetenv('R_MAKEVARS_USER')")
            mine = r("hc_brms_makevars(hc_ours, hc_dot_r)")
            assert list(mine.rx2("path")) == [str(brms_backend.STAN_MAKEVARS)]
            assert list(mine.rx2("text"))[0] == "hiercompare Makevars" and "CXX14FLAGS = -O3" in list(mine.rx2("text"))
            (dot_r / "Makevars").write_text("CXX14FLAGS = -O1\n")
            theirs = r("hc_brms_makevars(hc_ours, hc_dot_r)")
            assert list(theirs.rx2("path")) == [""] and list(theirs.rx2("text"))[1:] == ["CXX14FLAGS = -O1"]
            (dot_r / "Makevars").unlink()
            r.assign("hc_env_mk", str(tmp_path / "mine.mk"))
            r("Sys.setenv(R_MAKEVARS_USER = hc_env_mk)")
            env = r("hc_brms_makevars(hc_ours, hc_dot_r)")
            assert list(env.rx2("path")) == [""] and "mine.mk" in list(env.rx2("text"))[0]
            r("Sys.unsetenv('R_MAKEVARS_USER')")
            keys = {r(f"hc_brms_key('model {{}}', {x})")[0] for x in
                    ("hc_brms_makevars(hc_ours, hc_dot_r)$text", "c('user Makevars', 'CXX14FLAGS = -O1')",
                     "character(0)")}
            assert len(keys) == 3
        finally:
            if isinstance(before, str) and before != "NA":
                r.assign("hc_before", before)
                r("Sys.setenv(R_MAKEVARS_USER = hc_before)")
            else:
                r("Sys.unsetenv('R_MAKEVARS_USER')")


# ------------------------------------------------------------------------------------- the first fit
def test_first_fit_compiles_and_reports(first, cache_dir):
    fit, _, seconds, conv = first
    d = fit.diagnostics
    assert d["compiled"] is True and d["cache"] == "compiled"
    assert d["compile_seconds"] > 5  # a real C++ compile, not a cache hit
    assert d["cache_path"].startswith(str(cache_dir)) and os.path.exists(d["cache_path"])
    assert fit.method == "NUTS (brms/rstan)" and fit.loglik is None and fit.nobs == 5000
    assert "0 + Intercept" in d["brms_formula"] and "(1 + x1 | market)" in d["brms_formula"]
    code = d["stan_code"]
    assert code == fit.raw["stan_code"]
    assert "lkj_corr_cholesky_lpdf(L_1 | hc_prior_" in code and "normal_lpdf(b[1] | hc_prior_1_1, hc_prior_1_2)" in code
    assert "student_t_lpdf(sigma | hc_prior_" in code
    # every prior number is Stan data, none is a literal in the program
    assert "real hc_prior_1_1;" in code
    # compiled with hiercompare's flags (-O3, no -g) unless this machine's user has a Makevars of their own
    user_makevars = os.environ.get("R_MAKEVARS_USER") or any(
        os.path.exists(os.path.expanduser(f"~/.R/{f}")) for f in ("Makevars",))
    flags = d["compiler_flags"]
    assert ro_env("R_MAKEVARS_USER") == (os.environ.get("R_MAKEVARS_USER") or "")  # set only during the compile
    if user_makevars:
        assert flags[0].startswith("user Makevars")
    else:
        assert flags[0] == "hiercompare Makevars" and "CXX14FLAGS = -O3" in flags
    # the convergence verdict follows its documented rule, and a warning comes exactly when it fails
    rule = (d["rhat_max"] <= 1.01 and d["ess_bulk_min"] >= 400 and d["ess_tail_min"] >= 400
            and d["divergences"] == 0)
    assert d["converged"] == rule and bool(conv) == (not rule)
    assert d["rhat_max"] < 1.05, f"chains disagree: {d['rhat_max']} at {d['rhat_max_variable']}"
    assert len(fit.raw["convergence"]) == 3 + 4 + 10 * 2 + 50 + 1  # b, sd/cor, r (market, submarket), sigma
    # a Monte Carlo SE for every tidy row (what hc.compare's pymc-vs-brms rule uses), below the posterior SD
    mcse = pd.DataFrame(d["mcse"]).merge(fit.tidy(), on=["effect", "group", "level", "term"])
    assert len(mcse) == len(fit.table) and (mcse["mcse"] > 0).all() and (mcse["mcse"] < mcse["std_error"]).all()


def test_recovery_default_scenario(first):
    fit, truth, _, _ = first
    fixed = fit.tidy("fixed").set_index("term")
    for term, value in truth.fixef.items():
        lo, hi = fixed.loc[term, ["conf_low", "conf_high"]]
        assert lo <= value <= hi, f"{term}: truth {value} outside the 95% interval [{lo:.3f}, {hi:.3f}]"
    rp = fit.tidy("ran_pars").set_index(["group", "term"])
    tr = truth.tidy("ran_pars").set_index(["group", "term"])
    for key, tol in SD_TOLERANCE.items():
        est, real = rp.loc[key, "estimate"], tr.loc[key, "realized"]
        print(f"{key}: posterior mean {est:.3f}, realized {real:.3f} ({abs(est - real) / real:.1%})")
        assert abs(est - real) <= tol * real, f"{key}: {est:.3f} vs realized {real:.3f} (tolerance {tol:.0%})"
    cor = ("market", "cor__(Intercept).x1")
    assert rp.loc[cor, "conf_low"] <= tr.loc[cor, "realized"] <= rp.loc[cor, "conf_high"]
    # group deviations: every label of hiercompare's tree, close to the drawn effects
    for group in ("market", "market:submarket"):
        est, real = fit.ranef(group), truth.ranef(group)
        assert sorted(est.index) == sorted(real.index)
        for term in est.columns:
            r = np.corrcoef(est[term], real.loc[est.index, term])[0, 1]
            assert r > 0.8, f"{group} {term}: correlation with the drawn effects only {r:.2f}"


def test_close_to_lme4_and_native(first, seed_data):
    fit, _, _, _ = first
    data, _ = seed_data
    post = fit.tidy(["fixed", "ran_pars"]).set_index(["effect", "group", "term"])
    for other in ("lme4", "native"):
        ref = hc.fit(data, FORMULA, backend=other).tidy(["fixed", "ran_pars"]).set_index(["effect", "group", "term"])
        both = post[["estimate", "std_error"]].join(ref[["estimate"]].add_suffix(f"_{other}"), how="inner")
        both["diff_in_posterior_sds"] = (both["estimate"] - both[f"estimate_{other}"]) / both["std_error"]
        print(f"\nbrms posterior means vs {other}:\n{both.round(4).to_string()}")
        fixed = both.loc["fixed"]
        assert (fixed["diff_in_posterior_sds"].abs() < 1).all(), fixed
        assert len(both) == 8


def test_psis_loo_from_the_kept_draws(first):
    """fit.loo(): ArviZ's PSIS-LOO of the pointwise Gaussian log-likelihood at the kept joint draws; its lppd is
    the log of the mean likelihood over the draws, which we compute by hand, and p_loo = lppd - elpd_loo."""
    from scipy import stats
    from scipy.special import logsumexp

    from hiercompare.comparison import loo_table

    fit, _, _, _ = first
    elpd = fit.loo()
    md, draws = fit.model, fit.raw["draws"]
    eta = brms_backend._linear_predictor(fit)
    ll = stats.norm.logpdf(md.y[None, :], loc=eta, scale=draws["sigma"][:, None])
    lppd = float((logsumexp(ll, axis=0) - np.log(ll.shape[0])).sum())
    assert int(elpd["n_samples"]) == ll.shape[0] == 200 and int(elpd["n_data_points"]) == 5000
    assert float(elpd["p_loo"]) == pytest.approx(lppd - float(elpd["elpd_loo"]), rel=1e-9)
    # 3 fixed + 4 variance parameters + 10 x 2 + 50 group effects, partly pooled: fewer effective parameters
    assert 20 < float(elpd["p_loo"]) < 80
    row = loo_table([fit]).iloc[0]
    assert row["elpd_loo"] == pytest.approx(float(elpd["elpd_loo"])) and row["note"] == "" or "Pareto" in row["note"]


# ------------------------------------------------------------------------------------- the cache
def test_cached_fit_in_process(first):
    _, _, first_seconds, _ = first
    data, _ = _small(seed=7)
    fit, seconds, conv = _fit(data, seed=3, iter=100, warmup=100, cores=1)
    d = fit.diagnostics
    print(f"\nbrms first fit {first_seconds:.1f} s; cached fit on new data (same process) {seconds:.1f} s "
          f"({seconds / first_seconds:.0%})")
    assert d["compiled"] is False and d["cache"] == "memory" and d["compile_seconds"] == 0
    # this fit is smaller than the first (400 rows, 2 x 200 iterations): the time claim here is only that
    # no compile happened; the like-for-like first-vs-second ratio is measured by `make bench` (bench/bayes.py)
    assert seconds < 0.5 * first[0].diagnostics["compile_seconds"]
    # 2 x 100 draws cannot give a bulk ESS of 400 for each of ~75 parameters: the warning must say so
    assert d["converged"] is False and conv and "ESS" in str(conv[0].message)
    assert fit.ranef("market").shape == (10, 2)


def test_parallel_chains_fork_or_socket_cluster_give_the_same_draws(first):
    """With no other thread the chains run in forked R processes; with another thread alive rstan's socket
    cluster runs them. Same seed: the same draws (rstan's own parallel path: one chain each, chain_id 1..2)."""
    import threading

    data, _ = _small(seed=13)
    assert threading.active_count() == 1, "another thread is alive; this test needs the main thread alone"
    forked, _, _ = _fit(data, seed=9, chains=2, iter=100, warmup=100, cores=2)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        cluster, _, _ = _fit(data, seed=9, chains=2, iter=100, warmup=100, cores=2)
    finally:
        stop.set()
        other.join()
    one, _, _ = _fit(data, seed=9, chains=2, iter=100, warmup=100, cores=1)
    assert forked.diagnostics["parallel_chains"] == "fork"
    assert cluster.diagnostics["parallel_chains"] == "rstan socket cluster"
    assert one.diagnostics["parallel_chains"] == "one process"
    cols = ["estimate", "std_error", "conf_low", "conf_high"]
    for other_fit in (cluster, one):
        np.testing.assert_array_equal(forked.table[cols].to_numpy(float), other_fit.table[cols].to_numpy(float))
    assert forked.diagnostics["draws"] == 200 and len(forked.diagnostics["chain_seconds"]["sample"]) == 2


def test_forked_chains_that_fail_are_dropped_with_a_warning_or_fail_the_fit(first):
    """A chain that errors in its forked process: the fit keeps the other chain and says so; all failing is an
    error carrying the chains' message. (rstan::sampling is replaced for the test, per chain_id.)"""
    import rpy2.robjects as ro
    from hiercompare import rbridge

    data, _ = _small(seed=17)
    with rbridge._LOCK:
        ro.r("""hc_test_real_sampling <- rstan::sampling
                hc_test_mock <- function(fail) function(object, ..., chain_id = 1L) {
                  if (chain_id %in% fail) stop("hc test: chain ", chain_id, " fails")
                  hc_test_real_sampling(object, ..., chain_id = chain_id)
                }
                utils::assignInNamespace("sampling", hc_test_mock(2L), "rstan")""")
    try:
        fit, _, _ = _fit(data, seed=4, chains=2, iter=100, warmup=100, cores=2)
        with rbridge._LOCK:
            ro.r('utils::assignInNamespace("sampling", hc_test_mock(1:2), "rstan")')
        with pytest.raises(BackendError, match=r"(?s)chain.s. 1, 2 failed: .*hc test: chain 1 fails"):
            _fit(data, seed=4, chains=2, iter=100, warmup=100, cores=2)
    finally:
        with rbridge._LOCK:
            ro.r('utils::assignInNamespace("sampling", hc_test_real_sampling, "rstan")')
    assert fit.diagnostics["parallel_chains"] == "fork"
    assert fit.diagnostics["draws"] == 100 and len(fit.diagnostics["chain_seconds"]["sample"]) == 1
    assert any("chain(s) 2 failed: " in w and "hc test: chain 2 fails" in w and "other chain" in w
               for w in fit.diagnostics["warnings"])


def test_cached_fit_in_new_process(first, cache_dir):
    compile_seconds = first[0].diagnostics["compile_seconds"]
    code = (
        "import json, time, warnings\n"
        "import hiercompare as hc\n"
        "warnings.simplefilter('ignore')\n"
        "data, _ = hc.simulate(hc.Scenario(n_obs=8), seed=11)\n"
        "t0 = time.perf_counter()\n"
        f"fit = hc.fit(data, {FORMULA!r}, backend='brms', seed=5, iter=100, warmup=100, cores=1)\n"
        "d = fit.diagnostics\n"
        "print('RESULT ' + json.dumps({'seconds': time.perf_counter() - t0, 'compiled': d['compiled'],\n"
        "      'cache': d['cache'], 'cache_path': d['cache_path'], 'n_ranef': len(fit.tidy('ran_vals'))}))\n"
    )
    env = dict(os.environ, HIERCOMPARE_CACHE=str(cache_dir))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])
    print(f"\nbrms fit in a new process with the disk cache: {out['seconds']:.1f} s "
          f"(the compile took {compile_seconds:.1f} s)")
    assert out["compiled"] is False and out["cache"] == "disk"
    assert out["cache_path"].startswith(str(cache_dir))
    assert out["seconds"] < 0.5 * compile_seconds
    assert out["n_ranef"] == 10 * 2 + 50


def test_precompile_finds_or_builds_the_same_model(first, cache_dir, tmp_path):
    """What the demo runs in a second process (`python -m hiercompare.backends.brms`): the same Stan program
    (same cache key as the first fit, whatever the data), from the disk cache in a new process."""
    key = first[0].diagnostics["cache_key"]
    data, _ = _small(seed=21)
    md = prepare(hc.ModelSpec.from_formula(FORMULA), data)
    got = brms_backend.BrmsBackend().precompile(md)
    assert got["key"] == key and got["source"] == "memory"
    data.to_pickle(tmp_path / "d.pkl")
    env = dict(os.environ, HIERCOMPARE_CACHE=str(cache_dir))
    proc = subprocess.run([sys.executable, "-m", "hiercompare.backends.brms", str(tmp_path / "d.pkl"), FORMULA,
                           "gaussian"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["key"] == key and out["source"] == "disk" and out["path"].startswith(str(cache_dir))
    bad = subprocess.run([sys.executable, "-m", "hiercompare.backends.brms", str(tmp_path / "d.pkl")],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage" in bad.stderr


# ------------------------------------------------------------------------------------- labels, priors, errors
def _tricky_labels(seed=0):
    """Labels that brms would paste, re-sort or rename: case, spaces, '_' collisions, digits, non-ASCII."""
    rng = np.random.default_rng(seed)
    markets = {"a_b": -3.0, "a": -1.8, "B": -0.6, "b c": 0.6, "10": 1.8, "Zürich-1": 3.0}
    subs = {"a_b": ["c", "Sub0"], "a": ["b_c", "Sub0"], "B": ["x", "Sub0"], "b c": ["y", "Sub0"],
            "10": ["9", "Sub0"], "Zürich-1": ["ü", "Sub0"]}
    sub_effect, rows = {}, []
    for m, me in markets.items():
        for k, s in enumerate(subs[m]):
            sub_effect[f"{m}:{s}"] = 1.2 if k == 0 else -1.2
            for _ in range(15):
                x1, x2 = rng.normal(size=2)
                y = 0.5 + me + sub_effect[f"{m}:{s}"] + 0.6 * x2 + rng.normal(scale=0.3)
                rows.append(dict(y=y, x1=x1, x2=x2, market=m, submarket=s))
    return pd.DataFrame(rows), markets, sub_effect


def test_labels_map_back_exactly(first):
    data, markets, sub_effect = _tricky_labels()
    fit, _, _ = _fit(data, seed=4, iter=150, warmup=150, cores=1)
    assert fit.diagnostics["compiled"] is False  # same structure as the first fit
    md = fit.model
    for group, truth in (("market", markets), ("market:submarket", sub_effect)):
        est = fit.ranef(group)
        assert list(est.index) == list(md.hierarchy.level(group).labels)  # exactly hiercompare's labels
        assert set(est.index) == set(truth)
    assert {"a_b:c", "a:b_c"} <= set(fit.ranef("market:submarket").index)  # brms's pasting would merge these
    # Each label must carry ITS group's deviation. The split of a cell's mean between its market and its
    # submarket is set by the shrinkage, but their sum (the cell mean at x = 0) is what the 15 rows measure
    # (SE about 0.08); the true cell means are at least 1.2 apart, so any mix-up of labels fails here.
    market, sub = fit.ranef("market")["(Intercept)"], fit.ranef("market:submarket")["(Intercept)"]
    for label, effect in sub_effect.items():
        m = label.rsplit(":", 1)[0] if label.count(":") == 1 else None
        assert m in markets, label
        est = fit.fixef["(Intercept)"] + market[m] + sub[label]
        true = 0.5 + markets[m] + effect
        assert abs(est - true) < 0.3, f"cell {label!r}: {est:.2f} vs {true:.2f}"


def test_priors_are_passed_through(first):
    data, _ = _small(seed=13)
    priors = {"b": {"x1": ("normal", 0.0, 1.0), "x2": ("normal", 3.0, 0.001)}, "intercept": ("normal", -2.0, 0.001)}
    fit, _, _ = _fit(data, seed=6, iter=100, warmup=100, cores=1, priors=priors)
    d = fit.diagnostics
    assert d["compiled"] is False  # new prior VALUES do not change the Stan program
    fe = fit.fixef
    assert abs(fe["x2"] - 3.0) < 0.01 and abs(fe["(Intercept)"] + 2.0) < 0.01  # the tight priors dominate
    assert d["priors"]["b"]["x2"] == ["normal", 3.0, 0.001]
    assert d["brms_priors"][2] == "normal(hc_prior_3_1, hc_prior_3_2)"


def test_bad_priors_and_options_are_refused_before_r():
    data, _ = _small(seed=13, n_obs=4)
    with pytest.raises(SpecError, match=r"unknown: \['x3'\]"):
        hc.fit(data, FORMULA, backend="brms", priors={"b": {"x1": ("normal", 0, 1), "x2": ("normal", 0, 1),
                                                            "x3": ("normal", 0, 1)}})
    with pytest.raises(SpecError, match="positive"):
        hc.fit(data, FORMULA, backend="brms", priors={"sd": ("student_t", 3, 0, -1.0)})
    with pytest.raises(SpecError, match="adapt_delta"):
        hc.fit(data, FORMULA, backend="brms", adapt_delta=1.5)
    with pytest.raises(TypeError, match="unknown brms options"):
        hc.fit(data, FORMULA, backend="brms", draws=10)


def test_brms_rejection_becomes_backend_error_with_r_message(monkeypatch):
    """A prior on a coefficient the model lacks reaches brms (bypassing the Python check): R's message comes back."""
    real = brms_backend.prior_table

    def with_bogus_prior(md, pri, names):
        table = real(md, pri, names)
        for key, val in (("class", "b"), ("coef", "nonexistent"), ("kind", "normal"), ("p1", 0.0), ("p2", 1.0),
                         ("p3", float("nan"))):
            table[key].append(val)
        return table

    monkeypatch.setattr(brms_backend, "prior_table", with_bogus_prior)
    data, _ = _small(seed=13, n_obs=4)
    with pytest.raises(BackendError) as err:
        hc.fit(data, FORMULA, backend="brms", iter=10, warmup=10, cores=1)
    msg = str(err.value)
    assert "brms rejected the model" in msg and "do not correspond to any model parameter" in msg
    assert "nonexistent" in msg


def test_stan_compile_error_carries_stanc_message():
    """Stan code that does not compile: the compile stage of fit_brms.R keeps stanc's own message."""
    import rpy2.robjects as ro

    from hiercompare import rbridge

    with rbridge._LOCK:
        rbridge._source("fit_brms.R")
        res = ro.r('function(code) hc_brms_compile_error(hc_capture(hc_brms_model(code, "bad_key", "")))')(
            "parameters { real theta; } model { theta ~ no_such_distribution(); }")
    msg = res[0]
    assert msg.startswith("Stan could not compile the brms model:")
    assert "no_such_distribution" in msg and "SYNTAX ERROR" in msg and "above error" in msg


@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_formula_and_prior_table_per_family(family):
    """What is sent to brms for the other families and for independent (||) terms (no sampling: each family
    would need its own Stan compile of about a minute)."""
    from hiercompare.design import prepare

    data, _ = hc.simulate(hc.Scenario(n_obs=4, family=family), seed=1)
    spec = hc.ModelSpec.from_formula("y ~ x1 + x2 + (1 + x1 || market) + (1 | market:submarket)", family=family)
    md = prepare(spec, data)
    frame, names = brms_backend.brms_data(md)
    assert brms_backend.brms_formula(md, names) == (
        "y ~ 0 + Intercept + x1 + x2 + (1 + x1 || market) + (1 | market:submarket)")
    table = brms_backend.prior_table(md, brms_backend.resolve_priors(md, None), names)
    assert table["class"] == ["b", "b", "b", "sd"]  # no sigma (not gaussian), no cor (|| has none)
    assert table["coef"][:3] == ["Intercept", "x1", "x2"] and table["p1"][0] == 0.0 and table["p2"][0] == 2.5
    assert set(frame["market"]) == {f"g{k}" for k in range(1, 11)}  # neutral tokens, not the labels
