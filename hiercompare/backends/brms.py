"""``brms``: the spec's model in R brms, sampled by Stan's NUTS (rstan), through rpy2 (r_scripts/fit_brms.R).

The model
    ``y ~ 0 + Intercept + x1 + ... + (1 + x1 | market) + (1 | market:submarket)`` with the priors of
    :meth:`hiercompare.priors.Priors.default` (or given ones), the same model the ``pymc`` backend samples:

    * ``0 + Intercept``: the intercept is an ordinary coefficient on the raw scale with prior class ``b``,
      coef ``Intercept`` (brms's ``Intercept`` class would put the prior on the intercept of centred
      predictors, a different parameter). It is reported as ``(Intercept)``.
    * group effects are non-centred in brms's Stan code (``r = z * sd`` for one term,
      ``r = (diag(sd) L z)'`` with an LKJ prior on the Cholesky factor ``L`` for a correlated block);
      ``||`` gives independent SDs.
    * families: gaussian (identity), binomial (logit: a 0/1 response as brms ``bernoulli()``; ``cbind()``
      trials as ``binomial()`` with ``y | trials(hc_d_trials)``, the trials a data column), poisson (log),
      negbinomial (brms ``negbinomial()``, NB2: its ``shape`` is theta, reported as ``Dispersion`` /
      ``theta``, prior class ``shape``). ``offset()`` terms stay in the formula, their columns sent as data.

Priors as data, not code
    Every prior number is passed as a Stan data variable (a brms ``stanvar`` named ``hc_prior_<row>_<k>``)
    and the ``set_prior`` strings are built in R from fixed templates (``normal(hc_prior_3_1, hc_prior_3_2)``)
    and the design's coefficient names. Nothing typed by a user is pasted into R or Stan code, and the Stan
    program depends only on the model's structure, not on the data-scaled prior values.

Compiled models are reused
    The Stan compile (35-90 s here) happens once per Stan program. The key is the MD5 of the generated Stan
    code plus the R, brms, rstan and StanHeaders versions, so a cached model is used exactly when it is the
    same program. Lookup order: this process (an R environment), then the disk cache
    (``<cache_dir>/<key>.rds``, an rstan ``stanmodel`` with its shared object inside, written atomically),
    then a compile (and the disk entry is written). A fit then runs ``rstan::sampling`` of that model on the
    new data's ``standata``, which is what ``update(fit, newdata = ..., recompile = FALSE)`` does.
    ``diagnostics["compiled"]`` says whether this fit compiled; ``diagnostics["cache"]`` says where the model
    came from (``memory``, ``disk``, ``compiled``). The default ``cache_dir`` is ``$HIERCOMPARE_CACHE/brms``,
    else ``~/.cache/hiercompare/brms``.

Labels
    Grouping columns reach R as factors of neutral tokens (``g1``, ``g2``, ... per column), so brms cannot
    alter, merge (its ``a_b`` pasting for ``a:b``) or re-sort the labels; each brms level is mapped back to
    hiercompare's label through the rows it indexes (``J_<id>`` in brms's Stan data), never by string editing.

Output
    Fixed effects, SDs, correlations, the residual SD and every group's deviations: posterior mean
    (estimate), posterior SD (std_error), 2.5% and 97.5% quantiles (conf_low, conf_high). Diagnostics: R-hat
    max, bulk and tail ESS min (posterior::summarise_draws, or rstan::monitor without the posterior package)
    over b, sd, cor, sigma and r, divergences and max-treedepth hits; a :class:`ConvergenceWarning` and
    ``converged=False`` when R-hat > 1.01, an ESS < 400 or any divergence. ``diagnostics["mcse"]`` holds the
    Monte Carlo SE of every posterior mean, keyed like the tidy rows (used by :func:`hiercompare.compare`);
    ``fit.raw["convergence"]`` the per-variable table under brms's names. The generated Stan program is
    ``fit.diagnostics["stan_code"]`` (also ``fit.raw["stan_code"]``). ``loglik`` is None.
    ``keep_draws`` joint posterior draws (default 200, evenly spaced over the chains) of the fixed effects,
    every group's effects and sigma are kept in ``fit.raw["draws"]``, in hiercompare's order (fixed names;
    labels and terms of each level); ``fit.posterior_predictive()`` draws new responses for the fitted rows
    from them (the linear predictor ``X b + sum Z r`` of each draw, then the family's likelihood), as the
    pymc backend does; used by :mod:`hiercompare.ppc`.

Speed
    With ``cores > 1`` the chains run in forked R processes when this Python process has no other thread
    (about 0.5 s of overhead), otherwise in the socket cluster of new R processes that rstan starts (R
    embedded by rpy2 counts as interactive, where rstan does not fork; 3-5 s per fit), e.g. in a Dask
    worker; ``diagnostics["parallel_chains"]`` says which. Either way the draws are the same for a seed.
    Stan models are compiled at -O3 without -g (``r_scripts/stan_makevars.mk``) unless the user has a
    Makevars of their own: ~15% less time per gradient than R's "-g -O2", the same draws
    (``bench/brms_flags.py``). Stan's gradient cost grows with the rows (about 0.39 ms per gradient on the
    default 5,000-row scenario here).
"""
from __future__ import annotations

import functools
import math
import os
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from .. import rbridge
from ..design import ModelData
from ..errors import BackendError, SpecError
from ..priors import Priors, resolve_priors
from ..results import DISPERSION, RESIDUAL, THETA, Fit, cor_term, sd_term, tidy_frame
from ..spec import INTERCEPT
from . import sampling
from .base import Backend

BRMS_INTERCEPT = "Intercept"
_COEF = re.compile(r"^[A-Za-z][A-Za-z0-9_.:]*$")
_DUMMY = "hc_d"  # prefix of the treatment-dummy columns passed for categorical fixed terms
TRIALS = f"{_DUMMY}_trials"  # the binomial trials column of y | trials(...) (user columns cannot start with hc_d)
# Compiler flags for brms's Stan models (-O3, no -g), used unless the user has a Makevars of their own;
# see hc_brms_makevars in r_scripts/fit_brms.R.
STAN_MAKEVARS = rbridge.SCRIPTS / "stan_makevars.mk"


def default_cache_dir() -> Path:
    """Where compiled brms models are kept across processes.

    ``$HIERCOMPARE_CACHE/brms`` when the environment variable is set, else ``~/.cache/hiercompare/brms``.
    """
    root = os.environ.get("HIERCOMPARE_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "hiercompare") / "brms"


def clear_memory_cache() -> int:
    """Forget the compiled models held in this process (the disk cache is kept); returns how many there were.

    Mostly for tests and benchmarks that need a fit to go to the disk cache or compile.
    """
    ok, _ = rbridge.availability(("brms", "rstan"))
    if not ok:
        return 0
    import rpy2.robjects as ro

    with rbridge._LOCK:
        rbridge._source("fit_brms.R")
        n = int(ro.r("length(ls(.hc_brms_models))")[0])
        ro.r("rm(list = ls(.hc_brms_models), envir = .hc_brms_models)")
    return n


class BrmsBackend(Backend):
    """R brms (Stan NUTS through rstan), with the shared default priors and a compiled-model cache."""

    name = "brms"
    families = ("gaussian", "binomial", "poisson", "negbinomial")
    features = frozenset({"offset", "trials"})
    description = "R brms (Stan NUTS via rstan) through rpy2; compiled models cached in memory and on disk"
    takes_seed = True

    def availability(self):
        return rbridge.availability(("brms", "rstan"))

    def check(self, spec) -> None:
        super().check(spec)
        clash = [v for v in spec.variables if v == BRMS_INTERCEPT or v.startswith(_DUMMY)]
        if clash:
            raise SpecError(f"column name(s) {clash} are reserved by the brms backend ('Intercept' and names "
                            f"starting with {_DUMMY!r}); rename the column(s)")

    def fit(self, md: ModelData, chains: int = 2, iter: int = 1000, warmup: int = 1000, cores: int = 2,
            seed: int | None = None, adapt_delta: float = 0.9, max_treedepth: int = 10,
            priors: Priors | dict | None = None, cache_dir: str | os.PathLike | bool | None = None,
            keep_draws: int = 200, **options) -> Fit:
        """Sample the model with brms and summarise the posterior in the Fit schema.

        Parameters
        ----------
        md : ModelData
            Validated data and design (from :func:`hiercompare.design.prepare`).
        chains : int
            Markov chains (default 2).
        iter : int
            Draws kept per chain, after warmup (default 1000). brms's own ``iter`` counts warmup too; it is
            set to ``warmup + iter``.
        warmup : int
            Warmup (adaptation) iterations per chain, discarded (default 1000).
        cores : int
            Chains run in parallel on this many cores (default 2).
        seed : int, optional
            Stan's seed; None draws one in R. Seeds of 2**31 - 1 and above are reduced modulo 2**31 - 1 (R's
            integers are 32-bit signed). The seed used is ``diagnostics["seed"]``.
        adapt_delta : float
            Target acceptance rate of NUTS adaptation, in (0, 1) (default 0.9, as the pymc backend's
            ``target_accept``).
        max_treedepth : int
            NUTS maximum tree depth (default 10).
        priors : Priors or dict, optional
            A :class:`~hiercompare.priors.Priors`, or a dict of per-class overrides of
            ``Priors.default(md)``; default ``Priors.default(md)``.
        cache_dir : path, False or None
            Folder of the cross-process cache of compiled models; None for :func:`default_cache_dir`,
            False for no disk cache (the in-process cache is always used).
        keep_draws : int
            Joint posterior draws kept in ``fit.raw["draws"]`` for ``fit.posterior_predictive()`` (default 200,
            evenly spaced over the chains; at most the draws there are); 0 keeps none (and the fit then has no
            posterior predictive draws).

        Returns
        -------
        Fit
            ``method="NUTS (brms/rstan)"``, ``loglik=None``; ``diagnostics`` has the convergence summary,
            ``compiled``, ``cache``, timings, the priors, the brms formula and the Stan code.
        """
        if options:
            raise TypeError(f"unknown brms options {sorted(options)}; the options are chains, iter, warmup, cores, "
                            "seed, adapt_delta, max_treedepth, priors, cache_dir, keep_draws")
        chains, iter, warmup, cores, max_treedepth = (
            _int(chains, "chains", 1), _int(iter, "iter", 1), _int(warmup, "warmup", 0), _int(cores, "cores", 1),
            _int(max_treedepth, "max_treedepth", 1))
        keep_draws = _int(keep_draws, "keep_draws", 0)
        adapt_delta = float(adapt_delta)
        if not 0 < adapt_delta < 1:
            raise SpecError(f"adapt_delta must be in (0, 1), got {adapt_delta}")
        if seed is not None:  # R integers are 32-bit signed: larger seeds (study units use 32-bit) are folded
            seed = _int(seed, "seed", 0) % (2**31 - 1)
        pri = resolve_priors(md, priors)
        frame, names = brms_data(md)
        formula = brms_formula(md, names)
        table = prior_table(md, pri, names)
        cdir = _cache_dir(cache_dir)
        # parallel chains: forked R processes when this process has no other thread (see hc_brms_sampling)
        fork = cores > 1 and chains > 1 and os.name == "posix" and threading.active_count() == 1
        parallel = "fork" if fork else ("rstan socket cluster" if cores > 1 and chains > 1 else "one process")

        out = rbridge.call(
            "fit_brms.R", "hc_fit_brms", rbridge.dataframe(frame, {v: None for v in md.spec.grouping_variables}),
            formula, brms_family(md), _strs(table["class"]), _strs(table["coef"]), _strs(table["kind"]),
            rbridge.floats(table["p1"]), rbridge.floats(table["p2"]), rbridge.floats(table["p3"]),
            chains, iter, warmup, cores, float("nan") if seed is None else seed, adapt_delta, max_treedepth, cdir,
            str(STAN_MAKEVARS), fork, keep_draws)

        rows = _fixed_rows(md, names, out["fixef"]) + _ran_pars_rows(md, out["ran_pars"])
        for block in out["ranef"]:
            rows += _ran_vals_rows(md, block)
        diag = _diagnostics(out)
        diag["mcse"] = [{"effect": r["effect"], "group": r.get("group", ""), "level": r.get("level", ""),
                         "term": r["term"], "mcse": r["mcse"]} for r in rows]
        cache = out["cache"]
        diag.update({
            "compiled": cache["source"] == "compiled",
            "cache": cache["source"],
            "cache_key": cache["key"],
            "cache_path": cache["path"] or None,
            "compiler_flags": list(cache.get("flags") or []),
            "parallel_chains": parallel,
            "compile_seconds": float(cache["seconds"]) if cache["source"] == "compiled" else 0.0,
            "model_load_seconds": float(cache["seconds"]) if cache["source"] != "compiled" else 0.0,
            "sampling_seconds": float(out["sampling_seconds"]),
            "chains": chains, "iter": iter, "warmup": warmup, "cores": cores, "adapt_delta": adapt_delta,
            "max_treedepth": max_treedepth, "seed": int(out["seed"]), "draws": int(out["draws"]),
            "priors": pri.to_dict(), "brms_priors": list(out["prior_text"]),
            "brms_formula": out["brms_formula"], "stan_code": out["stan_code"],
        })
        diag["warnings"] += list(cache.get("notes") or [])
        sampling.warn_if_unconverged("brms", diag, "run more iterations (iter, warmup) or raise adapt_delta")
        conv = out["convergence"]
        raw = {"stan_code": out["stan_code"], "brms_formula": out["brms_formula"],
               "convergence": pd.DataFrame({"variable": conv["variable"], "rhat": _floats(conv["rhat"]),
                                            "ess_bulk": _floats(conv["ess_bulk"]),
                                            "ess_tail": _floats(conv["ess_tail"]), "mcse_mean": _floats(conv["mcse"])})}
        if out.get("kept_draws"):
            raw["draws"] = _posterior_draws(md, names, out)
        fit = Fit(backend=self.name, spec=md.spec, table=tidy_frame(rows), model=md, loglik=None,
                  method="NUTS (brms/rstan)", nobs=int(out["nobs"]), diagnostics=diag, raw=raw)
        if "draws" in raw:  # a module function bound to the fit (not a lambda), so the Fit pickles
            fit.extras = {"posterior_predictive": functools.partial(posterior_predictive, fit),
                          "loo": functools.partial(loo, fit)}
        return fit

    def precompile(self, md: ModelData, priors: Priors | dict | None = None,
                   cache_dir: str | os.PathLike | bool | None = None) -> dict:
        """Put the compiled Stan model of ``md`` in the model cache without sampling.

        The same first two steps as :meth:`fit` (brms builds the Stan program; it is compiled unless the cache
        has it), so a later fit of the same structure, in this process or another with the same ``cache_dir``,
        starts sampling at once. The demo runs this in a second process while the Python backends fit.

        Returns
        -------
        dict
            ``key`` (the Stan program's hash), ``source`` ("compiled", "disk" or "memory"), ``seconds``,
            ``path`` of the cache entry and ``notes``.
        """
        self.check(md.spec)
        pri = resolve_priors(md, priors)
        frame, names = brms_data(md)
        table = prior_table(md, pri, names)
        return rbridge.call(
            "fit_brms.R", "hc_precompile_brms", rbridge.dataframe(frame, {v: None for v in md.spec.grouping_variables}),
            brms_formula(md, names), brms_family(md), _strs(table["class"]), _strs(table["coef"]),
            _strs(table["kind"]), rbridge.floats(table["p1"]), rbridge.floats(table["p2"]),
            rbridge.floats(table["p3"]), _cache_dir(cache_dir), str(STAN_MAKEVARS))

    def versions(self):
        return rbridge.versions(("brms", "rstan", "StanHeaders", "posterior"))


def precompile_main(argv: list[str] | None = None) -> int:
    """``python -m hiercompare.backends.brms DATA.pkl FORMULA FAMILY``: precompile, print the result as JSON.

    DATA.pkl is a pickled DataFrame written by the caller; the default priors and cache are used. For compiling
    a model ahead of time, e.g. before a study, so that its first fits do not wait for the compile.
    """
    import json
    import sys

    from ..design import prepare
    from ..spec import ModelSpec

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print("usage: python -m hiercompare.backends.brms DATA.pkl FORMULA FAMILY", file=sys.stderr)
        return 2
    data = pd.read_pickle(args[0])
    md = prepare(ModelSpec.from_formula(args[1], family=args[2]), data)
    backend = BrmsBackend()  # get_backend's availability check, without importing the registry (one-way imports)
    ok, reason = backend.availability()
    if not ok:
        print(json.dumps({"error": f"brms: {reason}"}))
        return 1
    print(json.dumps(backend.precompile(md)))
    return 0


# ---------------------------------------------------------------------------------------------- inputs
def brms_data(md: ModelData) -> tuple[pd.DataFrame, dict[str, str]]:
    """The data frame sent to R and the map from our fixed-effect names to brms's coefficient names.

    Numeric columns go as they are; categorical fixed terms as their treatment dummies (``hc_d<j>``, the
    design's own columns, so R's contrasts play no part); grouping columns as tokens ``g<k>``.
    """
    spec = md.spec
    cols: dict[str, np.ndarray] = {spec.response: md.y}
    names: dict[str, str] = {}
    numeric = set(spec.slope_variables)
    for j, c in enumerate(md.columns):
        if c.name == INTERCEPT:
            names[c.name] = BRMS_INTERCEPT
        elif c.level is not None:
            dummy = f"{_DUMMY}{j}"
            cols[dummy] = md.X[:, j]
            names[c.name] = dummy
        else:
            if not _COEF.match(c.name):
                raise SpecError(f"fixed term {c.name!r} cannot be named in brms")
            names[c.name] = c.name
            numeric.update(c.term.variables)
    for v in sorted(numeric) + list(spec.offsets):
        if v != spec.response:
            cols[v] = md.data[v].to_numpy(dtype=float)
    if spec.has_trials:
        cols[TRIALS] = md.trials
    for v in spec.grouping_variables:
        codes, _ = pd.factorize(md.data[v].astype(str), sort=False)
        cols[v] = ("g" + pd.Series(codes + 1).astype(str)).to_numpy(dtype=object)
    return pd.DataFrame(cols), names


def brms_formula(md: ModelData, names: dict[str, str]) -> str:
    """brms formula text: ``y ~ 0 + Intercept + x1 + ... + (1 + x1 | market) + ...``, the spec's own rendering
    (:func:`hiercompare.rbridge.r_formula`, grammar-checked) with the fixed part named as ``names`` says."""
    response = f"{md.spec.response} | trials({TRIALS})" if md.spec.has_trials else None
    return rbridge.r_formula(md.spec, fixed=["0"] + [names[n] for n in md.fixed_names], response=response)


def brms_family(md: ModelData) -> str:
    """The family as fit_brms.R names it: ``binomial`` is brms's bernoulli (a 0/1 response), ``binomial_trials``
    its binomial with ``trials()``."""
    return "binomial_trials" if md.spec.has_trials else md.spec.family


def prior_table(md: ModelData, pri: Priors, names: dict[str, str]) -> dict[str, list]:
    """One row per brms prior: class, coef (brms name), kind and up to three numeric parameters."""
    rows = []
    for n in md.fixed_names:
        rows.append(("b", names[n], pri.intercept if n == INTERCEPT else pri.b[n]))
    rows.append(("sd", "", pri.sd))
    if md.spec.family == "gaussian":
        rows.append(("sigma", "", pri.sigma))
    if md.spec.family == "negbinomial":
        rows.append(("shape", "", pri.shape))
    if any(len(block) > 1 for lv in md.spec.levels for block in lv.blocks):
        rows.append(("cor", "", pri.cor))
    table = {"class": [], "coef": [], "kind": [], "p1": [], "p2": [], "p3": []}
    for cls, coef, dist in rows:
        if coef and not _COEF.match(coef):
            raise SpecError(f"coefficient name {coef!r} cannot be used in a brms prior")
        pars = [float(v) for v in dist[1:]] + [math.nan] * (4 - len(dist))
        for key, val in zip(("class", "coef", "kind", "p1", "p2", "p3"), (cls, coef, dist[0], *pars)):
            table[key].append(val)
    return table


def _cache_dir(cache_dir) -> str:
    if cache_dir is False:
        return ""
    path = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir).expanduser()
    return str(path.resolve())


def _int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise SpecError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _strs(values) -> object:
    import rpy2.robjects as ro

    return ro.StrVector([str(v) for v in values])


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


# ---------------------------------------------------------------------------------------------- outputs
def _term(coef: str) -> str:
    return INTERCEPT if coef == BRMS_INTERCEPT else coef


def _summ(s: dict, i: int) -> dict:
    """Tidy columns of entry i, plus ``mcse`` (the Monte Carlo SE of the mean; kept out of the tidy table)."""
    mcse = s["mcse"][i]
    return dict(estimate=s["mean"][i], std_error=s["sd"][i], conf_low=s["lo"][i], conf_high=s["hi"][i],
                mcse=np.nan if mcse is None else float(mcse))


def _fixed_rows(md: ModelData, names: dict[str, str], fe: dict) -> list[dict]:
    ours = {b: n for n, b in names.items()}
    got = list(fe["names"])
    if sorted(got) != sorted(ours):
        raise BackendError(f"brms returned coefficients {got}, which do not match the design {md.fixed_names} "
                           f"(sent to brms as {list(ours)})")
    index = {b: i for i, b in enumerate(got)}
    return [dict(effect="fixed", term=n, **_summ(fe, index[names[n]])) for n in md.fixed_names]


def _ran_pars_rows(md: ModelData, rp: dict) -> list[dict]:
    groups = set(md.hierarchy.groups)
    rows = []
    for i, (group, kind, c1, c2) in enumerate(zip(rp["group"], rp["kind"], rp["coef1"], rp["coef2"])):
        if kind == "sigma":
            rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), **_summ(rp, i)))
            continue
        if kind == "shape":
            rows.append(dict(effect="ran_pars", group=DISPERSION, term=THETA, **_summ(rp, i)))
            continue
        if group not in groups:
            raise BackendError(f"brms returned an unknown grouping factor {group!r} (expected one of {sorted(groups)})")
        term = sd_term(_term(c1)) if kind == "sd" else cor_term(_term(c1), _term(c2))
        rows.append(dict(effect="ran_pars", group=group, term=term, **_summ(rp, i)))
    return rows


def _level_codes(md: ModelData, block: dict):
    """The level of a brms ranef block and, for brms's level j, hiercompare's label code (through the rows)."""
    group = block["group"]
    lv = md.hierarchy.level(group)
    J = np.asarray(block["J"], dtype=np.int64) - 1
    n_levels = int(block["n_levels"])
    pairs = pd.DataFrame({"j": J, "code": lv.codes}).drop_duplicates()
    if (len(pairs) != n_levels or n_levels != lv.n_groups or pairs["j"].nunique() != n_levels
            or pairs["code"].nunique() != n_levels):
        raise BackendError(f"brms's {n_levels} levels of {group} do not correspond one to one to hiercompare's "
                           f"{lv.n_groups} labels")
    code_of = np.empty(n_levels, dtype=np.int64)
    code_of[pairs["j"].to_numpy()] = pairs["code"].to_numpy()
    return lv, code_of


def _ran_vals_rows(md: ModelData, block: dict) -> list[dict]:
    """Group deviations; brms's level j is the label of the rows whose grouping index J is j."""
    group = block["group"]
    if group not in set(md.hierarchy.groups):
        raise BackendError(f"brms returned deviations for an unknown grouping factor {group!r}")
    lv, code_of = _level_codes(md, block)
    order = np.argsort(code_of)  # rows in hiercompare's label order
    rows = []
    for j in order:
        label = lv.labels[code_of[j]]
        for k, coef in enumerate(block["coefs"]):
            s = {key: block[key][k] for key in ("mean", "sd", "lo", "hi", "mcse")}
            rows.append(dict(effect="ran_vals", group=group, level=label, term=_term(coef), **_summ(s, j)))
    return rows


def _posterior_draws(md: ModelData, names: dict[str, str], out: dict) -> dict:
    """The kept joint draws in hiercompare's order: ``b`` (S, p) by ``md.fixed_names``, ``sigma`` (S,) or
    None, ``r`` {group: (S, G, k)} by the level's labels and terms, ``total`` (the draws they were taken from)."""
    d = out["kept_draws"]
    b = np.asarray(d["b"], dtype=float).reshape(int(d["n"]), -1)
    index = {bn: i for i, bn in enumerate(out["fixef"]["names"])}
    r = {}
    for block in out["ranef"]:
        lv, code_of = _level_codes(md, block)
        terms = [_term(c) for c in block["coefs"]]
        arr = np.zeros((b.shape[0], lv.n_groups, len(lv.spec.terms)))
        for k, term in enumerate(terms):
            if term not in lv.spec.terms:
                raise BackendError(f"brms returned draws of {block['group']} {term!r}, not a varying term of "
                                   f"{list(lv.spec.terms)}")
            m = np.asarray(block["draws"][k], dtype=float).reshape(b.shape[0], -1)
            arr[:, code_of, lv.spec.terms.index(term)] = m
        r[lv.group] = arr
    sigma, shape = d.get("sigma"), d.get("shape")
    return {"b": b[:, [index[names[n]] for n in md.fixed_names]], "r": r, "total": int(d["total"]),
            "sigma": None if sigma is None else np.asarray(sigma, dtype=float).reshape(-1),
            "shape": None if shape is None else np.asarray(shape, dtype=float).reshape(-1)}


def posterior_predictive(fit: Fit, thin: int = 1, seed: int = 0) -> np.ndarray:
    """Draws of new responses for the fitted rows from the kept posterior draws: array (draws, rows).

    Each kept draw gives the linear predictor ``X b + sum over levels of Z r[group]``; the response is drawn
    from the family at it (gaussian with that draw's sigma, binomial with the rows' trials at the inverse logit,
    Poisson at exp, negative binomial with that draw's shape); the formula's offsets are in the linear predictor.
    ``thin`` keeps every thin-th of the kept draws.
    """
    md = fit.model
    draws = fit.raw["draws"]
    rng = np.random.default_rng(seed)
    eta = draws["b"][::thin] @ md.X.T + md.offset
    for group, r in draws["r"].items():
        lv = md.hierarchy.level(group)
        eta = eta + np.einsum("nk,snk->sn", md.Z[group], r[::thin][:, lv.codes, :])
    fam = fit.spec.family
    if fam == "gaussian":
        return eta + rng.normal(size=eta.shape) * draws["sigma"][::thin][:, None]
    if fam == "binomial":
        n = md.trials if md.trials is not None else np.ones(md.n)
        return rng.binomial(n.astype(np.int64), 1 / (1 + np.exp(-eta))).astype(float)
    if fam == "negbinomial":  # NB2 as numpy's negative_binomial(theta, theta / (theta + mu))
        theta = draws["shape"][::thin][:, None]
        return rng.negative_binomial(theta, theta / (theta + np.exp(eta))).astype(float)
    return rng.poisson(np.exp(eta)).astype(float)


def _linear_predictor(fit: Fit) -> np.ndarray:
    """The kept draws' linear predictor for the fitted rows, (draws, rows)."""
    md, draws = fit.model, fit.raw["draws"]
    eta = draws["b"] @ md.X.T + md.offset
    for group, r in draws["r"].items():
        lv = md.hierarchy.level(group)
        eta = eta + np.einsum("nk,snk->sn", md.Z[group], r[:, lv.codes, :])
    return eta


def loo(fit: Fit):
    """PSIS-LOO (arviz) from the pointwise log-likelihood of every row at the kept joint draws (``keep_draws``,
    default 200, evenly spaced over the chains, given to ArviZ as one chain). With few draws the Pareto-k
    estimates are less reliable: ArviZ's threshold for a good k falls with the number of draws (0.57 at 200)."""
    import arviz as az
    import xarray as xr
    from scipy import stats

    md, draws = fit.model, fit.raw["draws"]
    eta = _linear_predictor(fit)
    fam = fit.spec.family
    if fam == "gaussian":
        ll = stats.norm.logpdf(md.y[None, :], loc=eta, scale=draws["sigma"][:, None])
    elif fam == "binomial":
        from scipy.special import gammaln

        n = md.trials if md.trials is not None else np.ones(md.n)
        choose = gammaln(n + 1) - gammaln(md.y + 1) - gammaln(n - md.y + 1)  # 0 for a 0/1 response
        ll = choose + md.y * -np.logaddexp(0, -eta) + (n - md.y) * -np.logaddexp(0, eta)
    elif fam == "negbinomial":
        theta = draws["shape"][:, None]
        ll = stats.nbinom.logpmf(md.y[None, :], theta, theta / (theta + np.exp(eta)))
    else:
        ll = stats.poisson.logpmf(md.y[None, :], np.exp(eta))
    post = xr.Dataset({f"b_{j}": (("chain", "draw"), draws["b"][None, :, j]) for j in range(draws["b"].shape[1])})
    idata = az.InferenceData(posterior=post, log_likelihood=xr.Dataset({"y": (("chain", "draw", "obs"), ll[None])}))
    return az.loo(idata, pointwise=True)


def _diagnostics(out: dict) -> dict:
    conv = out["convergence"]
    diag = sampling.convergence(conv["variable"], _floats(conv["rhat"]), _floats(conv["ess_bulk"]),
                                _floats(conv["ess_tail"]), out["divergences"])
    diag["warnings"] = list(out.get("warnings") or []) + list(out.get("messages") or []) + diag["warnings"]
    diag.update({"singular": False,
                 "treedepth_hits": int(out["treedepth_hits"]), "mean_leapfrog_steps": float(out["mean_leapfrog"]),
                 "chain_seconds": {k: [float(v) for v in out["chain_seconds"][k]] for k in ("warmup", "sample")},
                 "convergence_tool": conv["tool"]})
    return diag


if __name__ == "__main__":
    raise SystemExit(precompile_main())
