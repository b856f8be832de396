"""K-fold cross-validation grouped at a chosen level, for every backend through :func:`hiercompare.fit`.

Three kinds of folds (:func:`grouped_folds`):

* ``level="market"`` (the top grouping factor): leave-top-groups-out. Whole markets are held out, so the
  held-out rows are predicted for **new** groups at that level and every level below it (a held-out market's
  submarkets are all held out with it).
* ``level="market:submarket"`` (a deeper factor, as written in the formula): leave-leaf-groups-out. Whole
  submarkets are held out; their markets stay in training through their other submarkets (or not, where a
  market has a single submarket: then the market is new too, and the predictive variance says so).
* ``level="rows"``: rows within groups, stratified by the leaf group so that every group keeps at least one
  row in training (a leaf group with a single row is never held out; a note says how many).

Labels of nested factors are compared as full paths (``Market_1:Sub0`` is not ``Market_2:Sub0``), exactly as
:class:`~hiercompare.hierarchy.Hierarchy` builds them, and the folds are checked after they are drawn: no
held-out group at the fold level or below it has a row in training.

Folds are drawn from ``numpy.random.default_rng(seed)``: groups are dealt in a random order, each to the fold
with the fewest rows so far, and the most balanced of 50 such deals (and the largest-first deal, kept only
where strictly better) is used, so folds are about as balanced in rows as the group sizes allow and differ
between seeds; rows are dealt round-robin within each leaf group, continuing across groups (fold sizes differ
by at most one row).

:func:`cross_validate` fits every backend on every fold's training rows with :func:`hiercompare.fit` and
predicts the held-out rows with ``Fit.predict``; it reports per fold and across folds (mean, SE = SD/sqrt(K)
over the folds that ran):

* ``rmse``: root mean squared error of the held-out rows (on the response scale);
* ``lpd_mean``: the mean pointwise log predictive density of the held-out rows (see :data:`LPD_DEFINITION`);
* binomial: ``log_loss`` (mean Bernoulli negative log-likelihood at the plug-in probability); poisson:
  ``deviance`` (mean Poisson unit deviance at the plug-in mean).

Groups unseen in training are what grouped CV is about, so ``predict()``'s handling of new labels (population
level at that level, i.e. deviation 0, and a warning) is asked for deliberately (``allow_new_levels=True``
where ``predict`` takes it) and its unseen-group warning is silenced here; any other warning is recorded in
the fold's ``warnings``.

A fold whose training rows lack a level of a categorical fixed effect that its held-out rows have cannot be
predicted (the effect of that level is not estimated): every backend's row for that fold is recorded with
status ``error`` and that reason, and the summary says over how many folds each mean was taken.
"""
from __future__ import annotations

import inspect
import json
import re
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .backends import REGISTRY, get_backend
from .design import check_columns
from .errors import BackendUnavailable, DataError, SpecError
from .hierarchy import Hierarchy
from .results import RESIDUAL, Fit, cor_term, sd_term
from .spec import ModelSpec

ROWS = "rows"
#: backends cross-validated when ``backends`` is not given
DEFAULT_BACKENDS = ("native", "lme4", "mixedlm", "ols", "lightgbm")
#: backends run only when named (slow: networks trained or posteriors sampled K times)
OPT_IN_BACKENDS = ("torch", "pymc", "brms")

LPD_DEFINITION = (
    "Pointwise log predictive density of a held-out row, plug-in (the fit's point estimates, their uncertainty "
    "not propagated). Gaussian: log N(y; mu, v) with mu = Fit.predict(row) and predictive variance "
    "v = sigma^2 + sum over the levels at which the row's group is unseen in training of z' Sigma_level z "
    "(z: the row's varying-term values at that level, e.g. (1, x1); Sigma_level: that level's covariance from "
    "the fit's ran_pars sd__/cor__ rows; sigma: the Residual sd__Observation). A level at which the row's group "
    "was seen adds nothing (its deviation is in mu). Backends without such ran_pars use what they have, "
    "recorded per fold in variance_source: sigma^2 from the training residuals (mean squared residual) when the "
    "fit has no Residual SD, and for a level without SDs the empirical covariance of the fit's own group "
    "deviations (ran_vals) at that level (ols: no-pooling dummy deviations; lightgbm-cat, torch-embed: their "
    "descriptive contrasts, and their Residual SD is the training RMSE), which includes their estimation "
    "noise. Binomial / Poisson: log of the integral of p(y | eta) over eta ~ N(eta_hat, sum of z' Sigma_level z "
    "over the unseen levels) (adaptive Gauss-Hermite, 40 nodes; the plug-in p(y | eta_hat) where every group was "
    "seen). lpd_mean is the mean over a fold's held-out rows; lpd in the summary is the mean of the folds' "
    "lpd_mean."
)
RMSE_DEFINITION = ("sqrt(mean((y - prediction)^2)) over a fold's held-out rows, prediction = Fit.predict(type="
                   "'response'): population level (deviation 0) at every level where the row's group is unseen")
SE_DEFINITION = "SD of the per-fold values (ddof=1) / sqrt(number of folds that ran)"
FAMILY_METRIC = {"gaussian": None, "binomial": "log_loss", "poisson": "deviance"}
FAMILY_METRIC_DEFINITION = {
    "log_loss": "mean of -[y log p + (1 - y) log(1 - p)] over held-out rows, p = Fit.predict(type='response') "
                "clipped to [1e-15, 1 - 1e-15] (plug-in; new groups at the population level)",
    "deviance": "mean Poisson unit deviance 2 [y log(y / mu) - (y - mu)] over held-out rows, "
                "mu = Fit.predict(type='response') (plug-in; new groups at the population level)",
}
_GH_NODES = 40

FOLD_COLUMNS = ["backend", "fold", "n_train", "n_test", "n_test_groups", "n_test_unseen", "rmse", "lpd_mean",
                "fit_seconds", "status", "reason", "converged", "variance_source", "warnings"]


# ---------------------------------------------------------------------------------------------- folds
def grouped_folds(data: pd.DataFrame, spec_or_formula: str | ModelSpec, level: str, k: int = 5,
                  seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds of ``data`` grouped at ``level``: a list of ``(train_idx, test_idx)`` positional index arrays.

    Parameters
    ----------
    data : DataFrame
    spec_or_formula : str or ModelSpec
        The model; its grouping factors define the tree (nesting is checked, labels are full paths).
    level : str
        A grouping factor as written in the formula (``"market"``, ``"market:submarket"``): whole groups at
        that level are held out (and with them every group below them); or ``"rows"``: rows within groups,
        stratified by the leaf group so every group keeps a row in training.
    k : int
        Number of folds (2 <= k <= number of groups at ``level``, or of rows).
    seed : int
        Seed of the ``numpy.random.Generator`` that orders groups and rows; the same seed gives the same folds.

    Examples
    --------
    >>> import hiercompare as hc
    >>> data, _ = hc.simulate(hc.Scenario(), seed=1)
    >>> folds = grouped_folds(data, "y ~ x1 + (1 | market) + (1 | market:submarket)", "market", k=5)
    >>> [len(test) for _, test in folds]
    [1000, 1000, 1000, 1000, 1000]
    """
    return _make_folds(data, _as_spec(spec_or_formula), level, k, seed).folds


@dataclass
class _Folds:
    folds: list[tuple[np.ndarray, np.ndarray]]
    level: str
    hierarchy: Hierarchy | None
    test_groups: list[np.ndarray]  # held-out labels at the fold level (rows: leaf labels of the test rows)
    notes: list[str] = field(default_factory=list)


def _as_spec(spec_or_formula, family: str | None = None) -> ModelSpec:
    from .fitting import as_spec

    return as_spec(spec_or_formula, family)


def _make_folds(data: pd.DataFrame, spec: ModelSpec, level: str | None, k, seed) -> _Folds:
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"cross-validation needs a pandas DataFrame in memory, got {type(data).__name__}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise SpecError(f"k must be an integer >= 2, got {k!r}")
    k = int(k)
    n = len(data)
    groups = [lv.group for lv in spec.levels]
    if level is None:
        level = ROWS if not groups else None
    hierarchy = None
    if groups:
        check_columns(data, spec.grouping_variables, what="data")
        hierarchy = Hierarchy.build(spec, data)  # nesting checked here: a NestingError names the fix
        if level is None:
            level = hierarchy.levels[0].group
    if level != ROWS and level not in groups:
        raise SpecError(f"level {level!r} is not a grouping factor of {spec.formula!r}; choose one of "
                        f"{groups + [ROWS]} (a factor as written in the formula, or 'rows')")
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    if level == ROWS:
        fold_of, notes = _row_folds(hierarchy, n, k, rng)
        leaf = hierarchy.levels[-1] if hierarchy is not None else None
        labels = leaf.labels[leaf.codes] if leaf is not None else None
    else:
        lv = hierarchy.level(level)
        G = lv.n_groups
        if k > G:
            raise SpecError(f"k={k} folds need at least {k} groups at {level}; it has {G}. Use k <= {G}")
        group_fold = _balanced_group_folds(lv.counts(), k, rng)
        fold_of = group_fold[lv.codes]
        labels = lv.labels[lv.codes]
    folds, test_groups = [], []
    for f in range(k):
        test = np.flatnonzero(fold_of == f)
        train = np.flatnonzero((fold_of != f))
        if len(test) == 0:
            raise DataError(f"fold {f} has no held-out rows: too few rows that can be held out for k={k}")
        folds.append((train.astype(np.int64), test.astype(np.int64)))
        test_groups.append(np.unique(labels[test].astype(str)) if labels is not None else np.array([], dtype=str))
    out = _Folds(folds=folds, level=level, hierarchy=hierarchy, test_groups=test_groups, notes=notes)
    _check_no_leak(out)
    return out


def _balanced_group_folds(sizes: np.ndarray, k: int, rng: np.random.Generator, draws: int = 50) -> np.ndarray:
    """Fold of every group, as balanced in rows as a few tries find, and different for different seeds.

    Each try deals the groups, in an order drawn from ``rng``, each to the fold with the fewest rows so far;
    the try with the smallest largest fold (then the smallest spread) is kept, the earliest among equals. The
    deterministic largest-first deal is tried last, so it is kept only where it is strictly better.
    """
    G = len(sizes)
    orders = [rng.permutation(G) for _ in range(draws)]
    lpt = rng.permutation(G)
    orders.append(lpt[np.argsort(-sizes[lpt], kind="stable")])
    best, best_key = None, None
    for order in orders:
        load = np.zeros(k, dtype=np.int64)
        fold = np.empty(G, dtype=np.int64)
        for g in order:
            f = int(np.argmin(load))  # ties: the lowest fold index
            fold[g] = f
            load[f] += sizes[g]
        key = (int(load.max()), int(load.max() - load.min()))
        if best_key is None or key < best_key:
            best, best_key = fold, key
    return best


def _row_folds(hierarchy: Hierarchy | None, n: int, k: int, rng: np.random.Generator):
    """Fold of every row: rows of each leaf group dealt round-robin, the deal continuing across groups."""
    fold = np.full(n, -1, dtype=np.int64)
    notes = []
    if hierarchy is None:
        strata = [np.arange(n)]
    else:
        codes = hierarchy.levels[-1].codes
        order = np.argsort(codes, kind="stable")
        strata = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
        strata = [strata[i] for i in rng.permutation(len(strata))]
    singles = 0
    nxt = 0
    for rows in strata:
        if hierarchy is not None and len(rows) < 2:
            singles += 1  # never held out: it would be an unseen group, which rows-CV promises not to make
            continue
        rows = rng.permutation(rows)
        fold[rows] = (nxt + np.arange(len(rows))) % k
        nxt = (nxt + len(rows)) % k
    if singles:
        leaf = hierarchy.levels[-1].group
        notes.append(f"{singles} {leaf} group(s) have a single row: kept in training in every fold (holding them "
                     "out would make them unseen groups)")
    # rows never held out (fold -1) are in every training set
    return fold, notes


def _check_no_leak(folds: _Folds) -> None:
    """No held-out group at the fold level or below it may have a row in training (full-path labels)."""
    h = folds.hierarchy
    if h is None or folds.level == ROWS:
        if h is not None:  # rows: every leaf group of a held-out row is in training
            leaf = h.levels[-1].codes
            for f, (train, test) in enumerate(folds.folds):
                missing = np.setdiff1d(leaf[test], leaf[train])
                if len(missing):
                    raise AssertionError(f"rows fold {f}: leaf groups {h.levels[-1].labels[missing[:3]]} unseen")
        return
    depth = [lv.group for lv in h.levels].index(folds.level)
    for f, (train, test) in enumerate(folds.folds):
        for lv in h.levels[depth:]:
            leaked = np.intersect1d(lv.codes[test], lv.codes[train])
            if len(leaked):
                raise AssertionError(f"fold {f}: held-out {lv.group} groups {lv.labels[leaked[:3]]} are in training")


# ---------------------------------------------------------------------------------------------- result
@dataclass
class CVResult:
    """What :func:`cross_validate` returns.

    Attributes
    ----------
    folds : DataFrame
        One row per backend and fold: ``backend, fold, n_train, n_test, n_test_groups`` (held-out groups at the
        fold level; for ``rows``, the leaf groups the held-out rows belong to), ``n_test_unseen`` (held-out rows
        whose group is new at one level or more), ``rmse, lpd_mean`` (and ``log_loss`` or ``deviance`` for
        binomial / poisson), ``fit_seconds, status`` (ok | error | unavailable | skipped), ``reason``,
        ``converged``, ``variance_source`` (where the predictive variance came from), ``warnings``.
    summary : DataFrame
        One row per backend: ``backend, level, k, n_folds_ok, rmse, rmse_se, lpd, lpd_se`` (and the family
        metric with its SE), ``fit_seconds`` (total over folds), ``default``, ``opt_in``, ``status``
        (ok | partial | failed | unavailable | skipped | not run) and ``reason``. Opt-in backends that were not
        asked for appear with status ``not run``.
    pointwise : DataFrame
        One row per backend and held-out row: ``backend, fold, row`` (position in the data), ``y``,
        ``prediction``, ``predictive_var``, ``lpd``.
    fold_info : DataFrame
        ``fold, n_train, n_test, n_test_groups, test_groups`` (the held-out labels, at most 20 shown).
    definitions : dict
        How rmse, lpd, the SEs and the family metric are computed (also in :meth:`to_dict`).
    """

    formula: str
    family: str
    level: str
    k: int
    seed: int
    folds: pd.DataFrame
    summary: pd.DataFrame
    pointwise: pd.DataFrame
    fold_info: pd.DataFrame
    definitions: dict
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready: settings, definitions, notes, fold_info, folds and summary (pointwise left out)."""
        def records(df):
            return json.loads(df.to_json(orient="records", double_precision=15))

        return {"formula": self.formula, "family": self.family, "level": self.level, "k": self.k,
                "seed": self.seed, "definitions": self.definitions, "notes": list(self.notes),
                "fold_info": records(self.fold_info), "folds": records(self.folds),
                "summary": records(self.summary)}

    def __repr__(self) -> str:
        cols = [c for c in ("backend", "n_folds_ok", "rmse", "rmse_se", "lpd", "lpd_se", "status")
                if c in self.summary]
        return (f"<CVResult {self.k}-fold at {self.level}, {self.formula}>\n"
                + self.summary[cols].to_string(index=False))


# ---------------------------------------------------------------------------------------------- cross_validate
def cross_validate(data: pd.DataFrame, formula: str | ModelSpec, backends: list[str] | str | None = None,
                   level: str | None = None, k: int = 5, seed: int = 0, family: str | None = None,
                   options: dict[str, dict] | None = None) -> CVResult:
    """K-fold cross-validation grouped at ``level``, for every backend, with held-out RMSE and log density.

    Parameters
    ----------
    data : DataFrame
    formula : str or ModelSpec
    backends : list of str, ``"default"`` or ``"all"``, optional
        Default: :data:`DEFAULT_BACKENDS` (native, lme4, mixedlm, ols, lightgbm). torch, pymc and brms are
        opt-in: name them (``backends=[..., "torch"]``) or pass ``"all"`` (every registered backend). Opt-in
        backends not run are listed in the summary with status ``not run``. A backend that cannot run here
        (``unavailable``), cannot fit the spec or family (``skipped``), or fails on a fold (``error``) is
        recorded with its reason, never dropped.
    level : str, optional
        ``"market"``, ``"market:submarket"`` (a grouping factor as written in the formula) or ``"rows"``; see
        :func:`grouped_folds`. Default: the top grouping factor (leave-top-groups-out), ``"rows"`` without one.
    k, seed : int
        Folds and the seed that draws them; fold ``f`` of a backend that draws random numbers is fitted with
        the seed ``SeedSequence([seed, f])`` gives.
    family : {"gaussian", "binomial", "poisson"}, optional
    options : dict of backend name -> dict of options, optional
        Passed to :func:`hiercompare.fit` for that backend, e.g. ``{"lightgbm": {"max_rounds": 50}}``
        (``"seed"`` there replaces the fold seed).

    Returns
    -------
    CVResult
        ``.folds`` (per backend and fold), ``.summary`` (means across folds with SE = SD/sqrt(K)),
        ``.pointwise``, ``.to_dict()``. The log predictive density is defined in :data:`LPD_DEFINITION`:
        for a Gaussian model, log N(y; prediction, sigma^2 + z' Sigma_level z summed over the levels at which
        the row's group is unseen in training).

    Examples
    --------
    >>> import hiercompare as hc
    >>> from hiercompare.crossval import cross_validate
    >>> data, _ = hc.simulate(hc.Scenario(), seed=1)
    >>> cv = cross_validate(data, "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)",
    ...                     backends=["native", "ols"], level="market", k=5)
    >>> list(cv.summary["backend"][:2])
    ['native', 'ols']
    """
    spec = _as_spec(formula, family)
    fam = spec.family
    made = _make_folds(data, spec, level, k, seed)
    k = len(made.folds)
    names, not_run = _resolve_backends(backends)
    options = dict(options or {})
    unknown = sorted(set(options) - set(REGISTRY))
    if unknown:
        raise SpecError(f"options for unknown backends {unknown}; registered backends are {sorted(REGISTRY)}")
    fold_problems = [_categorical_problem(data, spec, train, test) for train, test in made.folds]
    metric = FAMILY_METRIC[fam]
    rows, points = [], []
    for name in names:
        status, reason = _backend_status(name, spec)
        for f, (train, test) in enumerate(made.folds):
            base = dict(backend=name, fold=f, n_train=len(train), n_test=len(test),
                        n_test_groups=len(made.test_groups[f]), n_test_unseen=np.nan, rmse=np.nan,
                        lpd_mean=np.nan, fit_seconds=np.nan, status=status, reason=reason, converged=None,
                        variance_source="", warnings="")
            if metric:
                base[metric] = np.nan
            if status == "ok" and fold_problems[f]:
                base.update(status="error", reason=fold_problems[f])
            if base["status"] == "ok":
                out, pts = _run_fold(data, spec, name, train, test, f, seed, options.get(name, {}))
                base.update(out)
                if pts is not None:
                    points.append(pts)
            rows.append(base)
    folds = pd.DataFrame(rows, columns=FOLD_COLUMNS + ([metric] if metric else []))
    summary = _summarise(folds, names, not_run, made.level, k, metric)
    pointwise = (pd.concat(points, ignore_index=True) if points else
                 pd.DataFrame(columns=["backend", "fold", "row", "y", "prediction", "predictive_var", "lpd"]))
    fold_info = pd.DataFrame({
        "fold": np.arange(k), "n_train": [len(t) for t, _ in made.folds], "n_test": [len(t) for _, t in made.folds],
        "n_test_groups": [len(g) for g in made.test_groups],
        "test_groups": [", ".join(g[:20]) + (f" ... ({len(g)} in all)" if len(g) > 20 else "")
                        for g in made.test_groups],
    })
    definitions = {"lpd": LPD_DEFINITION, "rmse": RMSE_DEFINITION, "se": SE_DEFINITION,
                   "folds": _FOLD_DEFINITION[ROWS if made.level == ROWS else
                                             ("top" if made.hierarchy.levels[0].group == made.level else "deeper")]}
    if metric:
        definitions[metric] = FAMILY_METRIC_DEFINITION[metric]
    return CVResult(formula=spec.formula, family=fam, level=made.level, k=k, seed=seed, folds=folds,
                    summary=summary, pointwise=pointwise, fold_info=fold_info, definitions=definitions,
                    notes=list(made.notes))


_FOLD_DEFINITION = {
    "top": "leave-groups-out at the top level: whole groups held out (with every group below them); "
           "held-out rows are predicted as new groups",
    "deeper": "leave-groups-out at a deeper level: whole groups held out (with every group below them); their "
              "parents stay in training where they have other children",
    ROWS: "rows within groups: each leaf group's rows dealt across the folds, so every group keeps a row in training",
}


def _resolve_backends(backends) -> tuple[list[str], list[str]]:
    if backends is None or backends == "default":
        names = list(DEFAULT_BACKENDS)
    elif backends == "all":
        names = list(REGISTRY)
    elif isinstance(backends, str):
        names = [backends]
    else:
        names = list(dict.fromkeys(backends))
    unknown = [b for b in names if b not in REGISTRY]
    if unknown:
        raise SpecError(f"unknown backend(s) {unknown}; registered backends are {sorted(REGISTRY)}")
    if not names:
        raise SpecError("no backends to cross-validate")
    return names, [b for b in OPT_IN_BACKENDS if b not in names]


def _backend_status(name: str, spec: ModelSpec) -> tuple[str, str]:
    try:
        be = get_backend(name)
    except BackendUnavailable as exc:
        return "unavailable", str(exc)
    try:
        be.check(spec)
    except SpecError as exc:
        return "skipped", str(exc)
    return "ok", ""


def _categorical_problem(data: pd.DataFrame, spec: ModelSpec, train, test) -> str:
    """Why a fold cannot be predicted: held-out levels of a categorical fixed effect absent from training."""
    problems = []
    for term in spec.fixed:
        if len(term.variables) != 1 or term.variables[0] not in data:
            continue
        v = term.variables[0]
        col = data[v]
        if not (term.categorical or not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col))):
            continue
        values = col.astype(str).to_numpy(dtype=object)
        missing = sorted(set(values[test]) - set(values[train]))
        if missing:
            problems.append(f"{v!r} level(s) {missing[:5]}")
    if not problems:
        return ""
    return ("the training rows of this fold lack " + "; ".join(problems) + " of a categorical fixed effect, which "
            "occur only among its held-out rows, so their effect cannot be estimated; choose another seed or k, "
            "or a level whose groups share the categories")


def _fold_seed(seed: int, fold: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(fold)]).generate_state(1)[0])


_UNSEEN_WARNING = re.compile(r"unseen|not seen|new level|new group|allow_new_levels", re.IGNORECASE)


NO_SD_INTERVALS = frozenset({"native", "lme4"})  # backends whose SD intervals (ran_pars_ci) CV switches off


def _run_fold(data, spec, name, train, test, fold, seed, opts) -> tuple[dict, pd.DataFrame | None]:
    from .fitting import fit

    opts = dict(opts)
    fold_seed = opts.pop("seed", _fold_seed(seed, fold))
    if name in NO_SD_INTERVALS:  # held-out scores need no intervals for the SDs: skip the profile (2-3x a fit)
        opts.setdefault("ran_pars_ci", "none")
    train_df = data.iloc[train].reset_index(drop=True)
    test_df = data.iloc[test].reset_index(drop=True)
    t0 = time.perf_counter()
    kept: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fit(train_df, spec, backend=name, seed=fold_seed, **opts)
        kept += [f"{w.category.__name__}: {w.message}" for w in caught]
    except Exception as exc:  # noqa: BLE001 - any failure of a backend on a fold is recorded, not raised
        return dict(status="error", reason=f"fit failed: {type(exc).__name__}: {exc}",
                    fit_seconds=time.perf_counter() - t0), None
    seconds = time.perf_counter() - t0
    try:
        scored, pts, extra_warnings = _score(result, test_df, spec.family)
    except Exception as exc:  # noqa: BLE001
        return dict(status="error", reason=f"prediction failed: {type(exc).__name__}: {exc}", fit_seconds=seconds,
                    converged=result.diagnostics.get("converged")), None
    kept += extra_warnings
    pts.insert(0, "row", test)
    pts.insert(0, "fold", fold)
    pts.insert(0, "backend", name)
    converged = result.diagnostics.get("converged")
    return dict(status="ok", reason="", fit_seconds=seconds,
                converged=None if converged is None else bool(converged),
                warnings="; ".join(dict.fromkeys(kept)), **scored), pts


def _predict(result: Fit, newdata: pd.DataFrame, type: str) -> tuple[np.ndarray, list[str]]:
    """``result.predict`` with new groups allowed and predict()'s unseen-group warning silenced on purpose."""
    kwargs = {"type": type}
    if "allow_new_levels" in inspect.signature(result.predict).parameters:
        kwargs["allow_new_levels"] = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = np.asarray(result.predict(newdata, **kwargs), dtype=float)
    other = [f"{w.category.__name__}: {w.message}" for w in caught
             if not (_UNSEEN_WARNING.search(str(w.message)) or "Unseen" in w.category.__name__
                     or "NewLevel" in w.category.__name__)]
    return pred, other


def _score(result: Fit, test: pd.DataFrame, family: str):
    md = result._require_model()
    y = test[result.spec.response].to_numpy(dtype=float)
    var_unseen, unseen_any, sources = _unseen_variance(result, test)
    mu, other = _predict(result, test, "response")
    out = {"rmse": float(np.sqrt(np.mean((y - mu) ** 2))), "n_test_unseen": int(unseen_any.sum())}
    if family == "gaussian":
        s2, src = _residual_variance(result, md)
        v = s2 + var_unseen
        lpd = -0.5 * (np.log(2 * np.pi * v) + (y - mu) ** 2 / v)
        sources.insert(0, f"Residual: {src}")
    else:
        eta, more = _predict(result, test, "link")
        other += more
        lpd = glmm_log_density(y, eta, var_unseen, family)
        v = var_unseen
        if family == "binomial":
            p = np.clip(mu, 1e-15, 1 - 1e-15)
            out["log_loss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                ylog = np.where(y > 0, y * np.log(y / mu), 0.0)
            out["deviance"] = float(np.mean(2 * (ylog - (y - mu))))
    out["lpd_mean"] = float(np.mean(lpd))
    out["variance_source"] = "; ".join(sources)
    pts = pd.DataFrame({"y": y, "prediction": mu, "predictive_var": v, "lpd": lpd})
    return out, pts, other


def _residual_variance(result: Fit, md) -> tuple[float, str]:
    """sigma^2: the fit's Residual sd__Observation, else the mean squared training residual."""
    rp = result.table[(result.table["effect"] == "ran_pars") & (result.table["group"] == RESIDUAL)
                      & (result.table["term"] == sd_term("Observation"))]
    if len(rp) and np.isfinite(rp["estimate"].iloc[0]):
        return float(rp["estimate"].iloc[0]) ** 2, "ran_pars sd__Observation"
    fitted, _ = _predict(result, md.data, "response")
    return float(np.mean((md.y - fitted) ** 2)), "mean squared training residual (no Residual SD in ran_pars)"


def level_covariance(result: Fit, group: str, terms: tuple[str, ...]) -> tuple[np.ndarray, str]:
    """Sigma of one level, terms in ``terms`` order: from ran_pars, else the empirical covariance of ran_vals.

    Returns the matrix and where it came from. ran_pars: ``sd__t`` and ``cor__a.b`` (a correlation absent,
    as for ``||``, is 0; an SD absent is 0 and said). Without any ``sd__`` row for the level: the covariance
    (ddof=1) over groups of the fit's own deviations (ran_vals) of those terms.
    """
    q = len(terms)
    tab = result.table
    rp = tab[(tab["effect"] == "ran_pars") & (tab["group"] == group)]
    est = dict(zip(rp["term"], rp["estimate"]))
    sds = {t: est.get(sd_term(t)) for t in terms}
    if any(v is not None for v in sds.values()):
        sd = np.array([0.0 if v is None or not np.isfinite(v) else float(v) for v in sds.values()])
        R = np.eye(q)
        for i in range(q):
            for j in range(i + 1, q):
                c = est.get(cor_term(terms[i], terms[j]), est.get(cor_term(terms[j], terms[i])))
                if c is not None and np.isfinite(c):
                    R[i, j] = R[j, i] = float(c)
        absent = [t for t, v in sds.items() if v is None]
        note = "ran_pars" + (f" (no SD for {absent}: 0)" if absent else "")
        return R * np.outer(sd, sd), note
    rv = tab[(tab["effect"] == "ran_vals") & (tab["group"] == group)]
    if len(rv) == 0:
        return np.zeros((q, q)), "none (no ran_pars or ran_vals for this level): 0"
    wide = rv.pivot(index="level", columns="term", values="estimate").reindex(columns=list(terms))
    present = [t for t in terms if wide[t].notna().any()]
    S = np.zeros((q, q))
    if len(wide) >= 2 and present:
        idx = [terms.index(t) for t in present]
        S[np.ix_(idx, idx)] = np.atleast_2d(np.cov(wide[present].fillna(0.0).to_numpy(dtype=float), rowvar=False))
    absent = [t for t in terms if t not in present]
    return S, (f"empirical covariance of ran_vals over {len(wide)} groups"
               + (f" (no deviations for {absent}: 0)" if absent else ""))


def _unseen_variance(result: Fit, test: pd.DataFrame):
    """Per held-out row: sum over levels where its group is unseen of z' Sigma z; which rows; the sources."""
    md = result._require_model()
    total = np.zeros(len(test))
    unseen_any = np.zeros(len(test), dtype=bool)
    sources = []
    for lv in md.hierarchy.levels:
        unseen = lv.codes_for(test) < 0
        S, src = level_covariance(result, lv.group, lv.spec.terms)
        sources.append(f"{lv.group}: {src}")
        if unseen.any():
            Z = md.z_matrix(lv.group, test)
            total += np.where(unseen, np.einsum("ni,ij,nj->n", Z, S, Z), 0.0)
            unseen_any |= unseen
    return total, unseen_any, sources


def glmm_log_density(y: np.ndarray, eta: np.ndarray, var: np.ndarray, family: str) -> np.ndarray:
    """log of the integral of p(y | e) N(e; eta, var) de for Bernoulli (logit) or Poisson (log) rows.

    Adaptive Gauss-Hermite quadrature (40 nodes, as lme4's nAGQ): the nodes are centred at the mode of the
    integrand and scaled by its curvature there (Newton steps per row), so a Poisson count far in the tail of
    N(eta, var) is integrated as accurately as one near eta. Rows with ``var == 0`` get the plug-in
    p(y | eta) exactly.
    """
    from scipy.special import gammaln, logsumexp

    y, eta, var = (np.asarray(a, dtype=float) for a in (y, eta, var))
    if family not in ("binomial", "poisson"):
        raise SpecError(f"glmm_log_density is for binomial or poisson, not {family!r}")

    def loglik(e, yy):
        if family == "binomial":
            return yy * e - np.logaddexp(0.0, e)  # log p(y | e), y in {0, 1}
        return yy * e - np.exp(e) - gammaln(yy + 1)

    out = loglik(eta, y)  # var 0: the plug-in density
    r = var > 0
    if not r.any():
        return out
    yr, er, vr = y[r], eta[r], var[r]
    m = er.copy()
    for _ in range(100):  # Newton on the strictly concave log integrand h(e) = log p(y | e) + log N(e; eta, var)
        mean = 1 / (1 + np.exp(-m)) if family == "binomial" else np.exp(m)
        curv = (mean * (1 - mean) if family == "binomial" else mean) + 1 / vr
        step = np.clip((yr - mean - (m - er) / vr) / curv, -2.0, 2.0)
        m = m + step
        if np.max(np.abs(step)) < 1e-12:
            break
    mean = 1 / (1 + np.exp(-m)) if family == "binomial" else np.exp(m)
    s = 1 / np.sqrt((mean * (1 - mean) if family == "binomial" else mean) + 1 / vr)
    t, w = np.polynomial.hermite_e.hermegauss(_GH_NODES)
    e = m[:, None] + s[:, None] * t[None, :]
    h = loglik(e, yr[:, None]) - 0.5 * (e - er[:, None]) ** 2 / vr[:, None] - 0.5 * np.log(2 * np.pi * vr[:, None])
    # integral of exp(h) = s * integral of exp(h(m + s t) + t^2 / 2) phi(t) dt * sqrt(2 pi)
    out[r] = np.log(s) + logsumexp(h + 0.5 * t[None, :] ** 2 + np.log(w)[None, :], axis=1)
    return out


# ---------------------------------------------------------------------------------------------- summary
def _summarise(folds: pd.DataFrame, names, not_run, level, k, metric) -> pd.DataFrame:
    rows = []
    metrics = [("rmse", "rmse"), ("lpd_mean", "lpd")] + ([(metric, metric)] if metric else [])
    for name in names:
        sub = folds[folds["backend"] == name]
        ok = sub[sub["status"] == "ok"]
        row = dict(backend=name, level=level, k=k, n_folds_ok=len(ok))
        for col, label in metrics:
            vals = ok[col].to_numpy(dtype=float)
            row[label] = float(np.mean(vals)) if len(vals) else np.nan
            row[f"{label}_se"] = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) >= 2 else np.nan
        row["fit_seconds"] = float(np.nansum(sub["fit_seconds"].to_numpy(dtype=float)))
        row["default"] = name in DEFAULT_BACKENDS
        row["opt_in"] = name in OPT_IN_BACKENDS
        statuses = set(sub["status"])
        bad = sub[sub["status"] != "ok"]
        if statuses == {"ok"}:
            row["status"], row["reason"] = "ok", ""
        elif len(ok):
            row["status"] = "partial"
            row["reason"] = (f"means over {len(ok)} of {k} folds; "
                             + "; ".join(f"fold {f}: {r}" for f, r in zip(bad["fold"], bad["reason"])))
        else:
            only = statuses.pop() if len(statuses) == 1 else "error"
            row["status"] = only if only in ("unavailable", "skipped") else "failed"
            reasons = list(dict.fromkeys(bad["reason"]))
            row["reason"] = reasons[0] if len(reasons) == 1 else "; ".join(
                f"fold {f}: {r}" for f, r in zip(bad["fold"], bad["reason"]))
        rows.append(row)
    for name in not_run:
        row = dict(backend=name, level=level, k=k, n_folds_ok=0, default=False, opt_in=True, status="not run",
                   reason=f"opt-in (slow: fitted once per fold); pass backends=[..., {name!r}] to include it")
        rows.append(row)
    cols = ["backend", "level", "k", "n_folds_ok", "rmse", "rmse_se", "lpd", "lpd_se"]
    if metric:
        cols += [metric, f"{metric}_se"]
    cols += ["fit_seconds", "default", "opt_in", "status", "reason"]
    return pd.DataFrame(rows, columns=cols)


__all__ = ["grouped_folds", "cross_validate", "CVResult", "DEFAULT_BACKENDS", "OPT_IN_BACKENDS", "ROWS",
           "LPD_DEFINITION", "level_covariance", "glmm_log_density"]
