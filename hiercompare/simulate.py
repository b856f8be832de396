"""Scenarios with known truth: any depth, balanced or unbalanced sizes, correlated varying terms, families.

``simulate(scenario, seed) -> (data, truth)``. The default :class:`Scenario` is the seed conversation's tree:
United_state -> 10 markets -> 5 submarkets -> 100 rows; national intercept 1.0; market intercept SD 0.8,
market slope SD for x1 0.5 with correlation 0.3; submarket intercept SD 0.4; beta_x2 0.6 (beta_x1 0, as in
the seed); residual SD 1.0. Predictors are independent N(0, 1) draws.

Counts and proportions: ``family="poisson"`` or ``"negbinomial"`` (NB2 with ``theta``: variance ``mu + mu^2 / theta``,
drawn as a gamma-Poisson mixture) and ``family="binomial"`` with ``trials`` (successes out of a drawn number of
trials per row, fitted as ``cbind(y, trials - y)``); ``exposure=(low, high)`` draws each row's exposure
log-uniformly in that range and adds ``log_exposure`` to the linear predictor with coefficient 1 (the formula's
``offset(log_exposure)``). These draws come after the predictors, so scenarios without them draw the same data
as before.

The default seed, 123, is the seed conversation's ``RANDOM_SEED``. Random numbers come from ``numpy.random.default_rng(SeedSequence(seed))`` in a fixed order (group effects
top-down, sizes, predictors, noise), so the same seed gives identical data.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from .errors import SpecError
from .results import DISPERSION, RESIDUAL, THETA, Truth, cor_term, sd_term, tidy_frame
from .schema import draw_response  # noqa: F401 - also hiercompare.simulate.draw_response, as before
from .spec import FAMILIES, INTERCEPT

Size = int | tuple[int, int]
TRIALS, EXPOSURE, LOG_EXPOSURE = "trials", "exposure", "log_exposure"  # the columns of trials and exposure


@dataclass(frozen=True)
class LevelScenario:
    """One level below the root.

    Parameters
    ----------
    name : column name of the level's labels (``market``)
    size : children per parent: an int (balanced) or ``(low, high)``, drawn uniformly per parent (inclusive)
    sd : SD of each varying term, e.g. ``{"(Intercept)": 0.8, "x1": 0.5}``
    corr : correlation matrix of the terms in ``sd``'s order (None: independent)
    label : format of a group's label, with ``{i}`` its index within its parent
    correlated : whether the fitted formula should estimate the correlations (``|``) or not (``||``)
    """

    name: str
    size: Size
    sd: dict[str, float]
    corr: tuple[tuple[float, ...], ...] | None = None
    label: str = "{name}_{i}"
    correlated: bool = True

    def corr_matrix(self) -> np.ndarray:
        k = len(self.sd)
        if self.corr is None:
            return np.eye(k)
        R = np.asarray(self.corr, dtype=float)
        if R.shape != (k, k) or not np.allclose(R, R.T) or not np.allclose(np.diag(R), 1):
            raise SpecError(f"level {self.name}: corr must be a symmetric {k}x{k} matrix with unit diagonal")
        if np.linalg.eigvalsh(R).min() <= 0:
            raise SpecError(f"level {self.name}: corr is not positive definite")
        return R


def _default_levels() -> tuple[LevelScenario, ...]:
    return (
        LevelScenario("market", 10, {INTERCEPT: 0.8, "x1": 0.5}, ((1.0, 0.3), (0.3, 1.0)), label="Market_{i}"),
        LevelScenario("submarket", 5, {INTERCEPT: 0.4}, None, label="Sub{i}"),
    )


@dataclass(frozen=True)
class Scenario:
    """A data-generating process with known truth (defaults: the seed conversation's tree)."""

    levels: tuple[LevelScenario, ...] = field(default_factory=_default_levels)
    n_obs: Size = 100
    fixed: dict[str, float] = field(default_factory=lambda: {INTERCEPT: 1.0, "x1": 0.0, "x2": 0.6})
    predictors: tuple[str, ...] = ("x1", "x2")
    residual_sd: float = 1.0
    family: str = "gaussian"
    response: str = "y"
    root: str = "United_state"  # the seed conversation's national root
    name: str = "seed"
    nonlinear: str | None = None  # a key of NONLINEAR: a known f(x) added to the linear predictor
    exposure: tuple[float, float] | None = None  # (low, high): exposure log-uniform per row, offset(log_exposure)
    trials: Size | None = None  # binomial trials per row (int or (low, high)); None: a 0/1 response
    theta: float | None = None  # negbinomial's dispersion (NB2); required for that family

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise SpecError(f"family {self.family!r} is not one of {FAMILIES}")
        if self.exposure is not None:
            lo, hi = (float(v) for v in self.exposure)
            if not 0 < lo <= hi or not np.isfinite(hi):
                raise SpecError(f"exposure must be (low, high) with 0 < low <= high, got {self.exposure!r}")
        if self.trials is not None:
            if self.family != "binomial":
                raise SpecError(f"trials are for family='binomial' (successes out of trials), not {self.family!r}")
            lo = self.trials[0] if isinstance(self.trials, (tuple, list)) else self.trials
            hi = self.trials[1] if isinstance(self.trials, (tuple, list)) else self.trials
            if int(lo) < 1 or int(hi) < int(lo):
                raise SpecError(f"trials must be an int >= 1 or (low, high) with 1 <= low <= high, got {self.trials!r}")
        if (self.family == "negbinomial") != (self.theta is not None):
            raise SpecError("theta (the negative binomial's dispersion, var = mu + mu^2 / theta) is required for "
                            f"family='negbinomial' and only for it (family is {self.family!r}, theta {self.theta!r})")
        if self.theta is not None and not (np.isfinite(self.theta) and self.theta > 0):
            raise SpecError(f"theta must be a positive number, got {self.theta!r}")
        if self.response in (TRIALS, EXPOSURE, LOG_EXPOSURE) + tuple(self.predictors):
            raise SpecError(f"the response cannot be called {self.response!r}: the name is taken")
        if not self.levels:
            raise SpecError("a scenario needs at least one level below the root")
        for lv in self.levels:
            lv.corr_matrix()
            for t in lv.sd:
                if t != INTERCEPT and t not in self.predictors:
                    raise SpecError(f"level {lv.name} varies {t!r}, which is not among predictors {self.predictors}")
            if any(s < 0 for s in lv.sd.values()):
                raise SpecError(f"level {lv.name}: SDs must be >= 0")
        for t in self.fixed:
            if t != INTERCEPT and t not in self.predictors:
                raise SpecError(f"fixed effect {t!r} is not among predictors {self.predictors}")
        if self.nonlinear is not None:
            if self.nonlinear not in NONLINEAR:
                raise SpecError(f"nonlinear must be one of {sorted(NONLINEAR)}, got {self.nonlinear!r}")
            missing = set(NONLINEAR[self.nonlinear][1]) - set(self.predictors)
            if missing:
                raise SpecError(f"nonlinear {self.nonlinear!r} needs predictors {sorted(missing)}")

    # ------------------------------------------------------------------ formula
    def group_name(self, depth: int) -> str:
        """lme4's name of level ``depth`` (0-based): ``market``, ``market:submarket``, ..."""
        return ":".join(lv.name for lv in self.levels[: depth + 1])

    def formula(self) -> str:
        rhs = list(self.predictors)
        for d, lv in enumerate(self.levels):
            slopes = [t for t in lv.sd if t != INTERCEPT]
            lhs = " + ".join((["1"] if INTERCEPT in lv.sd else ["0"]) + slopes)
            bar = "|" if lv.correlated or len(lv.sd) == 1 else "||"
            rhs.append(f"({lhs} {bar} {self.group_name(d)})")
        if self.exposure is not None:
            rhs.insert(len(self.predictors), f"offset({LOG_EXPOSURE})")
        y = self.response
        lhs = f"cbind({y}, {TRIALS} - {y})" if self.trials is not None else y
        return f"{lhs} ~ " + " + ".join(rhs)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = [asdict(lv) for lv in self.levels]
        for key in ("exposure", "trials", "theta"):  # absent when unused: earlier studies' definitions still match
            if d[key] is None:
                del d[key]
        return json.loads(json.dumps(d))

    @classmethod
    def from_dict(cls, d: dict) -> "Scenario":
        d = dict(d)
        levels = []
        for lv in d.pop("levels", []):
            lv = dict(lv)
            if isinstance(lv.get("size"), list):
                lv["size"] = tuple(lv["size"])
            if lv.get("corr") is not None:
                lv["corr"] = tuple(tuple(r) for r in lv["corr"])
            levels.append(LevelScenario(**lv))
        if isinstance(d.get("n_obs"), list):
            d["n_obs"] = tuple(d["n_obs"])
        if "predictors" in d:
            d["predictors"] = tuple(d["predictors"])
        for key in ("exposure", "trials"):
            if isinstance(d.get(key), list):
                d[key] = tuple(d[key])
        return cls(levels=tuple(levels) if levels else _default_levels(), **d)


def _sin_threshold(X: dict) -> np.ndarray:
    x1, x2 = X["x1"], X["x2"]
    return 0.8 * np.sin(2.0 * x2) + 0.6 * (x2 > 0.5) + 0.5 * x1 * x2 - 0.3 * x2


# name -> (f, predictors it reads). Each f is centred so that E f(x) = 0 for independent N(0, 1) predictors,
# keeping the national intercept interpretable: E[0.8 sin(2 x2)] = 0, E[0.6 (x2 > 0.5)] = 0.6 P(Z > 0.5),
# E[0.5 x1 x2] = 0, E[-0.3 x2] = 0.
NONLINEAR = {
    "sin_threshold": (lambda X: _sin_threshold(X) - 0.6 * 0.3085375387259869, ("x1", "x2")),
}


def nonlinear_part(scenario: "Scenario", data: pd.DataFrame) -> np.ndarray:
    """The true nonlinear part f(x) of a scenario, evaluated on ``data`` (0 where the scenario has none)."""
    if scenario.nonlinear is None:
        return np.zeros(len(data))
    f, cols = NONLINEAR[scenario.nonlinear]
    return f({c: data[c].to_numpy(dtype=float) for c in cols})


def _sizes(rng: np.random.Generator, size: Size, n_parents: int) -> np.ndarray:
    if isinstance(size, (tuple, list)):
        lo, hi = int(size[0]), int(size[1])
        if lo < 1 or hi < lo:
            raise SpecError(f"size range {size} must satisfy 1 <= low <= high")
        return rng.integers(lo, hi + 1, size=n_parents)
    if int(size) < 1:
        raise SpecError(f"size must be >= 1, got {size}")
    return np.full(n_parents, int(size))


def simulate(scenario: Scenario | None = None, seed: int | None = 123) -> tuple[pd.DataFrame, Truth]:
    """Draw one data set and its truth.

    Examples
    --------
    >>> data, truth = simulate(Scenario(), seed=1)
    >>> data.shape
    (5000, 6)
    >>> sorted(truth.tidy("ran_pars")["group"].unique())
    ['Residual', 'market', 'market:submarket']
    """
    if isinstance(scenario, DesignScenario):
        return scenario.simulate(seed)
    sc = scenario or Scenario()
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    parents, labels, effects, leaf_n = _draw_tree(sc, rng)
    leaf = np.repeat(np.arange(len(labels[-1])), leaf_n)
    data, noise = _draw_rows(sc, parents, effects, leaf, rng)
    data["national"] = np.full(len(leaf), sc.root, dtype=object)
    idx = _level_index(sc, parents, leaf)
    for d, lv in enumerate(sc.levels):
        own = np.array([s.rsplit(":", 1)[-1] for s in labels[d + 1]], dtype=object)
        data[lv.name] = own[idx[d]]
    frame = pd.DataFrame(data)
    noise_sd = None if noise is None else float(noise.std(ddof=1))
    return frame, Truth(table=_truth_table(sc, labels, effects, noise_sd), scenario=sc.to_dict(), seed=seed)


def _draw_tree(sc: Scenario, rng: np.random.Generator):
    """The tree, top down: parent index and label of every group per level, its effects, then leaf sizes."""
    parents = [np.zeros(1, dtype=int)]  # root
    labels = [np.array([sc.root], dtype=object)]
    effects: list[np.ndarray] = []
    for lv in sc.levels:
        n_par = len(labels[-1])
        sizes = _sizes(rng, lv.size, n_par)
        par = np.repeat(np.arange(n_par), sizes)
        local = np.concatenate([np.arange(s) for s in sizes])
        own = np.array([lv.label.format(i=i, name=lv.name) for i in local], dtype=object)
        lab = own if len(labels) == 1 else labels[-1][par] + ":" + own
        parents.append(par)
        labels.append(lab)
        sd = np.array(list(lv.sd.values()), dtype=float)
        chol = np.linalg.cholesky(lv.corr_matrix())
        effects.append((rng.standard_normal((len(lab), len(sd))) @ chol.T) * sd)  # SD 0 allowed
    leaf_n = _sizes(rng, sc.n_obs, len(labels[-1]))
    return parents, labels, effects, leaf_n


def _level_index(sc: Scenario, parents, leaf: np.ndarray) -> list[np.ndarray]:
    """Group index of every row at every level (leaf upwards)."""
    idx = [None] * len(sc.levels)
    cur = leaf
    for d in range(len(sc.levels) - 1, -1, -1):
        idx[d] = cur
        cur = parents[d + 1][cur]
    return idx


def _draw_rows(sc: Scenario, parents, effects, leaf: np.ndarray, rng: np.random.Generator):
    """Predictors (one standard-normal draw per predictor, in order), then the outcome, for rows in ``leaf``."""
    n = len(leaf)
    idx = _level_index(sc, parents, leaf)
    X = {p: rng.standard_normal(n) for p in sc.predictors}
    eta = np.full(n, sc.fixed.get(INTERCEPT, 0.0))
    for p in sc.predictors:
        eta = eta + sc.fixed.get(p, 0.0) * X[p]
    if sc.nonlinear is not None:
        eta = eta + NONLINEAR[sc.nonlinear][0](X)
    for d, lv in enumerate(sc.levels):
        for j, term in enumerate(lv.sd):
            z = 1.0 if term == INTERCEPT else X[term]
            eta = eta + effects[d][idx[d], j] * z
    extra = {}
    if sc.exposure is not None:  # drawn after the predictors: scenarios without exposure keep their data
        lo, hi = np.log(float(sc.exposure[0])), np.log(float(sc.exposure[1]))
        log_e = rng.uniform(lo, hi, size=n) if hi > lo else np.full(n, lo)
        extra = {EXPOSURE: np.exp(log_e), LOG_EXPOSURE: log_e}
        eta = eta + log_e
    noise = None
    if sc.family == "gaussian":
        noise = rng.normal(0.0, sc.residual_sd, size=n)
        y = eta + noise
    elif sc.family == "binomial":
        trials = np.ones(n, dtype=np.int64) if sc.trials is None else _sizes(rng, sc.trials, n)
        y = rng.binomial(trials, 1 / (1 + np.exp(-eta))).astype(float)
        if sc.trials is not None:
            extra[TRIALS] = trials.astype(float)
    elif sc.family == "negbinomial":  # NB2 as a gamma-Poisson mixture: E = mu, var = mu + mu^2 / theta
        mu = np.exp(eta)
        y = rng.poisson(rng.gamma(sc.theta, mu / sc.theta)).astype(float)
    else:
        y = rng.poisson(np.exp(eta)).astype(float)
    return {sc.response: y, **X, **extra}, noise


#: rows drawn from one random stream by :func:`simulate_to_parquet` (the data do not depend on chunk_rows)
PARQUET_BLOCK = 1 << 16


def simulate_to_parquet(scenario: Scenario | None, path, seed: int | None = 123, chunk_rows: int = 1 << 20,
                        compression: str = "snappy") -> Truth:
    """Draw a large data set straight to a Parquet file, ``chunk_rows`` rows at a time; return its truth.

    The tree, the group effects and the leaf sizes are drawn as :func:`simulate` draws them (same seed, same
    truth: ``ran_vals`` and ``ran_pars`` are identical); the rows are drawn in blocks of
    :data:`PARQUET_BLOCK` rows, block ``b`` from ``SeedSequence(seed).spawn``'s ``b``-th child, so the file does
    not depend on ``chunk_rows`` (rounded up to whole blocks; one row group each) but its rows differ from
    :func:`simulate`'s. Memory is one chunk. Label columns are dictionary-encoded; the residual's realized SD
    is computed from running sums. The scenario and seed are stored in the file's metadata
    (``hiercompare.scenario``, ``hiercompare.seed``).

    Examples
    --------
    >>> truth = simulate_to_parquet(Scenario(), "/tmp/seed.parquet", seed=1)  # doctest: +SKIP
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    sc = scenario or Scenario()
    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root)
    parents, labels, effects, leaf_n = _draw_tree(sc, rng)
    ends = np.cumsum(leaf_n)
    n = int(ends[-1])
    dicts = []
    for d in range(len(sc.levels)):
        own = np.array([s.rsplit(":", 1)[-1] for s in labels[d + 1]], dtype=object)
        uniq, code = np.unique(own.astype(str), return_inverse=True)
        dicts.append((pa.array(uniq, type=pa.string()), code.astype(np.int32)))
    per_chunk = max(1, -(-int(chunk_rows) // PARQUET_BLOCK))
    meta = {b"hiercompare.scenario": json.dumps(sc.to_dict()).encode(), b"hiercompare.seed": json.dumps(seed).encode()}
    s1 = s2 = 0.0
    writer = None
    try:
        n_blocks = -(-n // PARQUET_BLOCK)
        for first in range(0, n_blocks, per_chunk):
            cols: dict = {}
            for b in range(first, min(first + per_chunk, n_blocks)):
                rows = np.arange(b * PARQUET_BLOCK, min((b + 1) * PARQUET_BLOCK, n))
                leaf = np.searchsorted(ends, rows, side="right")
                brng = np.random.default_rng(np.random.SeedSequence(root.entropy, spawn_key=(b,)))
                data, noise = _draw_rows(sc, parents, effects, leaf, brng)
                if noise is not None:
                    s1, s2 = s1 + noise.sum(), s2 + noise @ noise
                data["national"] = np.zeros(len(rows), dtype=np.int32)
                for d, (lv, i) in enumerate(zip(sc.levels, _level_index(sc, parents, leaf))):
                    data[lv.name] = dicts[d][1][i]
                for k, v in data.items():
                    cols.setdefault(k, []).append(v)
            arrays = {}
            for k, parts in cols.items():
                v = np.concatenate(parts)
                if k == "national":
                    v = pa.DictionaryArray.from_arrays(v, pa.array([sc.root], type=pa.string()))
                elif k in {lv.name for lv in sc.levels}:
                    v = pa.DictionaryArray.from_arrays(v, dicts[[lv.name for lv in sc.levels].index(k)][0])
                arrays[k] = v
            table = pa.table(arrays).replace_schema_metadata(meta)
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, compression=compression)
            writer.write_table(table, row_group_size=len(table))
    finally:
        if writer is not None:
            writer.close()
    noise_sd = float(np.sqrt((s2 - s1 * s1 / n) / (n - 1))) if sc.family == "gaussian" else None
    return Truth(table=_truth_table(sc, labels, effects, noise_sd), scenario=sc.to_dict(), seed=seed)


def _truth_table(sc: Scenario, labels, effects, noise_sd) -> pd.DataFrame:
    rows = []
    for t in (INTERCEPT,) + tuple(sc.predictors):
        rows.append(dict(effect="fixed", term=t, estimate=sc.fixed.get(t, 0.0), realized=sc.fixed.get(t, 0.0)))
    for d, lv in enumerate(sc.levels):
        group = sc.group_name(d)
        terms = list(lv.sd)
        R = lv.corr_matrix()
        eff = effects[d]
        real_sd = eff.std(axis=0, ddof=1)
        real_corr = np.corrcoef(eff, rowvar=False) if len(terms) > 1 else np.ones((1, 1))
        for j, t in enumerate(terms):
            rows.append(dict(effect="ran_pars", group=group, term=sd_term(t), estimate=lv.sd[t], realized=real_sd[j]))
        if lv.correlated:
            for i in range(len(terms)):
                for j in range(i + 1, len(terms)):
                    rows.append(dict(effect="ran_pars", group=group, term=cor_term(terms[i], terms[j]),
                                     estimate=R[i, j], realized=real_corr[i, j]))
        for g, lab in enumerate(labels[d + 1]):
            for j, t in enumerate(terms):
                rows.append(dict(effect="ran_vals", group=group, level=lab, term=t, estimate=eff[g, j],
                                 realized=eff[g, j]))
    if sc.family == "gaussian":
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=sc.residual_sd,
                         realized=noise_sd))
    if sc.family == "negbinomial":
        rows.append(dict(effect="ran_pars", group=DISPERSION, term=THETA, estimate=float(sc.theta), realized=np.nan))
    table = tidy_frame(rows)
    table["realized"] = [r.get("realized", np.nan) for r in rows]
    return table


# ---------------------------------------------------------------------------------------------------- responses
# ---------------------------------------------------------------------------------------------------- designs
def _plain(v):
    """A JSON-safe Python scalar (numpy scalars -> int/float/str)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


#: the column of a design's simulated data that holds the user's prior weights (passed to fit() as weights=)
WEIGHTS_COLUMN = "(weights)"


@dataclass(frozen=True, eq=False)
class DesignScenario:
    """A user's own design with the parameters of a reference fit: the parametric bootstrap's scenario.

    The rows, the predictors, the tree, every group's size, the formula's offsets, the binomial trials and the
    prior weights are the user's; each simulation draws new group effects from the reference fit's covariance
    matrices and a new response from the family at ``eta = X beta + offset + sum over levels of Z b``
    (:func:`draw_response`):

    * gaussian: ``eta + e``, ``e ~ N(0, sigma^2 / w)`` with the reference fit's residual SD and the rows' prior
      weights ``w`` (1 without weights); the weights travel with the data as the column :data:`WEIGHTS_COLUMN`;
    * binomial: successes out of each row's trials (``cbind(s, f)``: ``f`` is rewritten as ``trials - s``;
      ``cbind(s, n - s)``: ``n`` is kept; a 0/1 response: one trial) at the inverse logit of ``eta``;
    * poisson: ``Poisson(exp(eta))``, so an exposure offset scales the mean;
    * negbinomial: NB2 with the reference fit's size (ran_pars ``Dispersion`` ``theta``): mean ``exp(eta)``,
      variance ``mu + mu^2 / theta``.

    The truth is the reference fit's fixed effects and variance parameters (and residual SD or NB size), with
    the drawn effects' SDs and correlations as ``realized``. Used as a :class:`~hiercompare.study.Study`
    scenario, so a bootstrap is resumable and runs locally or on Dask.
    """

    formula_text: str
    data: dict  # column -> list of values (the columns the formula reads), row order kept
    fixed: dict  # fixed-effect design column -> value
    ran_pars: tuple  # (group, term, value) of the reference fit's SDs and correlations, Residual / Dispersion included
    family: str = "gaussian"
    name: str = "design"
    reference: str = "native"
    weights: tuple | None = None  # the user's Gaussian prior weights, one per row (None: unweighted)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise SpecError(f"family {self.family!r} is not one of {FAMILIES}")
        par = {(g, t) for g, t, _ in self.ran_pars}
        if self.family == "gaussian" and (RESIDUAL, sd_term("Observation")) not in par:
            raise SpecError("a gaussian design needs the reference fit's residual SD (ran_pars Residual "
                            "sd__Observation)")
        if self.family == "negbinomial" and (DISPERSION, THETA) not in par:
            raise SpecError("a negative binomial design needs the reference fit's size (ran_pars Dispersion theta)")
        if self.weights is not None:
            if self.family != "gaussian":
                raise SpecError(f"prior weights are Gaussian (lme4/lm semantics), not for family {self.family!r}")
            n = len(next(iter(self.data.values()))) if self.data else 0
            w = np.asarray(self.weights, dtype=float)
            if w.shape != (n,) or not (np.isfinite(w).all() and (w > 0).all()):
                raise SpecError(f"weights must be {n} positive numbers, one per row")

    def formula(self) -> str:
        return self.formula_text

    @property
    def fit_options(self) -> dict:
        """What every refit needs beside the formula: ``weights=`` naming :data:`WEIGHTS_COLUMN` when weighted."""
        return {"weights": WEIGHTS_COLUMN} if self.weights is not None else {}

    @classmethod
    def from_fit(cls, fit, data: pd.DataFrame, name: str = "design") -> "DesignScenario":
        """The design of ``data`` (the rows ``fit`` was fitted on) with ``fit``'s estimates as the truth; the fit's
        prior weights (``fit.model.weights``) are kept."""
        spec = fit.spec
        cols = {c: [_plain(v) for v in data[c].tolist()] for c in spec.variables}
        fixed = {str(k): float(v) for k, v in fit.fixef.items()}
        rp = fit.tidy("ran_pars")
        pars = tuple((str(r.group), str(r.term), float(r.estimate)) for r in rp.itertuples())
        w = getattr(fit.model, "weights", None) if fit.model is not None else None
        if w is not None and len(w) != len(data):
            raise SpecError(f"the fit's weights have {len(w)} rows, the data {len(data)}: pass the rows it was "
                            "fitted on")
        weights = None if w is None else tuple(float(v) for v in np.asarray(w, dtype=float))
        return cls(formula_text=spec.formula, data=cols, fixed=fixed, ran_pars=pars, family=spec.family, name=name,
                   reference=fit.backend, weights=weights)

    def to_dict(self) -> dict:
        d = {"kind": "design", "formula_text": self.formula_text, "data": self.data, "fixed": self.fixed,
             "ran_pars": [list(p) for p in self.ran_pars], "family": self.family, "name": self.name,
             "reference": self.reference}
        if self.weights is not None:  # absent when unweighted: earlier bootstraps' definitions still match
            d["weights"] = list(self.weights)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DesignScenario":
        d = {k: v for k, v in d.items() if k != "kind"}
        d["ran_pars"] = tuple(tuple(p) for p in d["ran_pars"])
        if d.get("weights") is not None:
            d["weights"] = tuple(d["weights"])
        return cls(**d)

    def covariance(self, group: str, terms) -> np.ndarray:
        """The reference covariance matrix of one level's varying terms (absent correlations are 0)."""
        par = {(g, t): v for g, t, v in self.ran_pars}
        sd = np.array([par.get((group, sd_term(t)), 0.0) for t in terms])
        R = np.eye(len(terms))
        for i in range(len(terms)):
            for j in range(i + 1, len(terms)):
                c = par.get((group, cor_term(terms[i], terms[j])), par.get((group, cor_term(terms[j], terms[i]))))
                if c is not None and np.isfinite(c):
                    R[i, j] = R[j, i] = c
        return R * np.outer(sd, sd)

    def _design(self):
        """(spec, the user's rows, their ModelData), prepared once per instance (each simulate() reuses them)."""
        cached = self.__dict__.get("_prepared")
        if cached is None:
            from .design import prepare
            from .spec import ModelSpec

            spec = ModelSpec.from_formula(self.formula_text, family=self.family)
            frame = pd.DataFrame(self.data)
            cached = (spec, frame, prepare(spec, frame))
            object.__setattr__(self, "_prepared", cached)  # a cache, not a field: frozen dataclass
        return cached

    def simulate(self, seed) -> tuple[pd.DataFrame, Truth]:
        spec, frame, md = self._design()
        rng = np.random.default_rng(np.random.SeedSequence(seed))
        beta = np.array([self.fixed[n] for n in md.fixed_names])
        eta = md.X @ beta + md.offset
        rows = [dict(effect="fixed", term=n, estimate=self.fixed[n], realized=self.fixed[n]) for n in md.fixed_names]
        for lv in md.hierarchy.levels:
            terms = list(lv.spec.terms)
            cov = self.covariance(lv.group, terms)
            w, V = np.linalg.eigh(cov)
            root = V * np.sqrt(np.clip(w, 0, None))  # a square root that allows a singular (boundary) fit
            b = rng.standard_normal((lv.n_groups, len(terms))) @ root.T
            eta = eta + np.einsum("ij,ij->i", md.Z[lv.group], b[lv.codes])
            real_sd = b.std(axis=0, ddof=1) if lv.n_groups > 1 else np.full(len(terms), np.nan)
            for j, t in enumerate(terms):
                rows.append(dict(effect="ran_pars", group=lv.group, term=sd_term(t), estimate=np.sqrt(cov[j, j]),
                                 realized=real_sd[j]))
            for block in lv.spec.blocks:
                for a in range(len(block)):
                    for c in range(a + 1, len(block)):
                        i, j = terms.index(block[a]), terms.index(block[c])
                        denom = np.sqrt(cov[i, i] * cov[j, j])
                        real = np.corrcoef(b[:, i], b[:, j])[0, 1] if lv.n_groups > 2 else np.nan
                        rows.append(dict(effect="ran_pars", group=lv.group, term=cor_term(terms[i], terms[j]),
                                         estimate=cov[i, j] / denom if denom > 0 else np.nan, realized=real))
            for g, lab in enumerate(lv.labels):
                for j, t in enumerate(terms):
                    rows.append(dict(effect="ran_vals", group=lv.group, level=lab, term=t, estimate=b[g, j],
                                     realized=b[g, j]))
        par = {(g, t): v for g, t, v in self.ran_pars}
        out = frame.copy()
        if self.family == "gaussian":
            sigma = par[(RESIDUAL, sd_term("Observation"))]
            y = draw_response("gaussian", eta, rng, sigma=sigma, weights=self.weights)
            noise = y - eta
            if self.weights is not None:  # the realized SD of the standardised residuals, sqrt(w) e
                noise = noise * np.sqrt(np.asarray(self.weights, dtype=float))
            rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=sigma,
                             realized=float(noise.std(ddof=1))))
            if self.weights is not None:
                out[WEIGHTS_COLUMN] = np.asarray(self.weights, dtype=float)
        elif self.family == "binomial":
            y = draw_response("binomial", eta, rng, trials=md.trials)
            if spec.failures is not None:  # cbind(s, f): the failures follow the new successes
                out[spec.failures] = md.trials - y
        elif self.family == "negbinomial":
            size = par[(DISPERSION, THETA)]
            y = draw_response("negbinomial", eta, rng, size=size)
            rows.append(dict(effect="ran_pars", group=DISPERSION, term=THETA, estimate=size, realized=np.nan))
        else:
            y = draw_response(self.family, eta, rng)
        out[spec.response] = y
        table = tidy_frame(rows)
        table["realized"] = [r.get("realized", np.nan) for r in rows]
        return out, Truth(table=table, scenario={"kind": "design", "name": self.name, "reference": self.reference,
                                                 "formula": self.formula_text}, seed=seed)


def scenario_from_dict(d: dict):
    """A :class:`Scenario` or a :class:`DesignScenario` from its ``to_dict()``."""
    return DesignScenario.from_dict(d) if d.get("kind") == "design" else Scenario.from_dict(d)
