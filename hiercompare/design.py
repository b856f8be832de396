"""Model matrices from a spec and a DataFrame: the one place that turns columns into numbers.

Every backend receives a :class:`ModelData` (validated data, response, fixed design X with canonical column
names, the varying-term columns Z of each level, and the :class:`~hiercompare.hierarchy.Hierarchy`), so no
backend re-reads the formula or names coefficients its own way.

Categorical fixed terms use treatment coding with the first (sorted) level as reference, as R does by default;
their columns are named ``x[T.level]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import DataError, SpecError
from .hierarchy import Hierarchy
from .spec import INTERCEPT, FixedTerm, ModelSpec


@dataclass(frozen=True)
class FixedColumn:
    name: str  # canonical name, e.g. "x1", "x1:x2", "region[T.north]"
    r_name: str  # what R's model.matrix calls it, e.g. "x1", "x1:x2", "regionnorth"
    term: FixedTerm
    level: str | None = None  # category for a treatment dummy

    @classmethod
    def dummy(cls, variable: str, level, term: FixedTerm) -> "FixedColumn":
        """The treatment dummy of ``level`` of a categorical ``variable``: ``x[T.level]``, in R ``xlevel``."""
        return cls(f"{variable}[T.{level}]", f"{variable}{level}", term, level)


@dataclass
class ModelData:
    """Validated data and model matrices for one spec.

    Beside the response and designs, three per-row arrays carry what the likelihood needs (every backend reads
    them from here, never from the data frame):

    ``offset``
        ``(n,)`` float: the sum of the formula's ``offset(column)`` terms, on the linear-predictor scale
        (lme4's meaning: ``eta = X beta + Z b + offset``); zeros when the formula has none. Always set.
    ``trials``
        ``(n,)`` float: the binomial number of trials per row, ``s + f`` for ``cbind(s, f) ~ ...`` or ``n`` for
        ``cbind(s, n - s) ~ ...``, and ones for a 0/1 binomial response; ``y`` then holds the successes (a
        count, not a proportion). ``None`` for every other family.
    ``weights``
        ``(n,)`` float prior weights (``fit(..., weights=)``, lme4/lm semantics: a Gaussian row's residual
        variance is ``sigma^2 / w``), or ``None`` when none were given (the same as all ones).
    """

    spec: ModelSpec
    data: pd.DataFrame  # the rows used (after an explicit na_action='drop'), index reset
    y: np.ndarray
    X: np.ndarray
    columns: tuple[FixedColumn, ...]
    Z: dict[str, np.ndarray]  # group -> (n, k) columns of the level's varying terms, in GroupLevel.terms order
    hierarchy: Hierarchy
    categories: dict[str, tuple[str, ...]]
    notes: list[str] = field(default_factory=list)
    dropped_rows: int = 0
    offset: np.ndarray | None = None  # (n,) float, zeros when the formula has no offset() (set in __post_init__)
    trials: np.ndarray | None = None  # (n,) float for binomial (ones for a 0/1 response); None otherwise
    weights: np.ndarray | None = None  # (n,) float prior weights, or None

    def __post_init__(self) -> None:
        rows = len(self.y)
        if self.offset is None:
            self.offset = np.zeros(rows)
        if self.trials is None and self.spec.family == "binomial":
            self.trials = np.ones(rows)

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def has_offset(self) -> bool:
        """True when the formula has an ``offset()`` term (``offset`` is then not all zeros by construction)."""
        return bool(self.spec.offsets)

    def offset_for(self, newdata: pd.DataFrame) -> np.ndarray:
        """The offset for new rows: the sum of the formula's offset columns in ``newdata`` (zeros if none)."""
        return _offset(self.spec, newdata)

    def trials_for(self, newdata: pd.DataFrame) -> np.ndarray | None:
        """The binomial trials for new rows (``cbind`` columns read from ``newdata``; ones for a 0/1 response);
        ``None`` for other families."""
        return _trials(self.spec, newdata, None)

    @property
    def fixed_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed design for new rows, with the categories learned at fit time."""
        check_columns(newdata, self.spec.fixed_variables + self.spec.slope_variables, what="newdata")
        return _fixed_design(self.spec, newdata, self.categories)[0]

    def z_matrix(self, group: str, newdata: pd.DataFrame) -> np.ndarray:
        lv = self.hierarchy.level(group).spec
        return _z_columns(lv.terms, newdata)


def prepare(spec: ModelSpec, data: pd.DataFrame, na_action: str = "error", weights=None) -> ModelData:
    """Validate ``data`` against ``spec`` and build the model matrices.

    ``weights``: Gaussian prior weights (lme4/lm semantics), a column name of ``data`` or an array of
    ``len(data)`` positive finite numbers; rows dropped by ``na_action='drop'`` drop their weight too.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if na_action not in ("error", "drop"):
        raise SpecError(f"na_action must be 'error' or 'drop', got {na_action!r}")
    used = list(spec.variables)
    check_columns(data, used, what="data")
    frame = data[used].copy()
    w_name = None
    if weights is not None:
        if spec.family != "gaussian":
            raise SpecError(f"weights= are Gaussian prior weights (lme4/lm semantics), not for family={spec.family!r}; "
                            "for a binomial outcome with trials write cbind(successes, failures) ~ ... instead")
        w_name = "(weights)"  # not a valid formula name, so it cannot clash with a model column
        if isinstance(weights, str):
            check_columns(data, [weights], what="data (weights=)")
            frame[w_name] = data[weights].to_numpy()
        else:
            w = np.asarray(weights)
            if w.ndim != 1 or len(w) != len(data):
                raise DataError(f"weights= must be a column name or an array of {len(data)} values (one per row of "
                                f"data); got shape {w.shape}")
            frame[w_name] = w
        if not _is_numeric(frame[w_name]):
            raise DataError(f"weights= must be numeric (dtype is {frame[w_name].dtype})")
        used = used + [w_name]
    notes: list[str] = []
    missing = frame.isna()
    numeric_cols = [c for c in used if _is_numeric(frame[c])]
    for c in numeric_cols:
        missing[c] = missing[c] | ~np.isfinite(frame[c].to_numpy(dtype=float, na_value=np.nan))
    bad_rows = missing.any(axis=1)
    dropped = int(bad_rows.sum())
    if dropped:
        per_col = {c: int(n) for c, n in missing.sum().items() if n}
        listing = ", ".join(f"{c} ({n} rows)" for c, n in per_col.items())
        if na_action == "error":
            raise DataError(
                f"missing or non-finite values in used columns: {listing}. Clean them, or pass "
                "na_action='drop' to drop those rows (the count is recorded in the Fit's diagnostics)"
            )
        frame = frame.loc[~bad_rows]
        notes.append(f"na_action='drop' removed {dropped} of {len(data)} rows with missing values ({listing})")
    frame = frame.reset_index(drop=True)
    if len(frame) == 0:
        raise DataError("no rows left to fit")
    wts = None
    if w_name is not None:
        wts = frame.pop(w_name).to_numpy(dtype=float)
        if (wts <= 0).any():
            raise DataError(f"weights= must be positive ({int((wts <= 0).sum())} rows are <= 0); drop rows with "
                            "weight 0 from the data")
    y = _response(spec, frame[spec.response])
    trials = _trials(spec, frame, y)
    if spec.has_trials and spec.trials is not None:
        frame[spec.failures_column] = trials - y  # the failures reach R as a data column (spec.failures_column)
    offset = _offset(spec, frame)
    for v in spec.slope_variables:
        if not _is_numeric(frame[v]):
            raise DataError(
                f"the varying slope {v!r} must be a numeric column (dtype is {frame[v].dtype}); "
                "categorical varying slopes are not supported"
            )
    X, columns, categories = _fixed_design(spec, frame, None)
    hierarchy = Hierarchy.build(spec, frame)
    Z = {lv.group: _z_columns(lv.spec.terms, frame) for lv in hierarchy.levels}
    rank = np.linalg.matrix_rank(X) if X.shape[1] else 0
    if rank < X.shape[1]:
        raise DataError(
            f"the fixed-effect design is rank deficient (rank {rank} < {X.shape[1]} columns: "
            f"{[c.name for c in columns]}); remove collinear predictors"
        )
    return ModelData(
        spec=spec, data=frame, y=y, X=X, columns=columns, Z=Z, hierarchy=hierarchy,
        categories=categories, notes=notes, dropped_rows=dropped, offset=offset, trials=trials, weights=wts,
    )


def weighted_view(md: ModelData) -> ModelData:
    """A Gaussian ModelData whose rows are scaled by ``sqrt(weights)`` (``y``, ``X``, every ``Z`` and the offset),
    ``weights`` None: an unweighted LMM on it has the weighted model's likelihood (lme4/lm prior weights,
    residual variance ``sigma^2 / w``) up to the constant ``0.5 * sum(log w)``, which the weighted
    log-likelihood adds. Estimates, BLUPs, df and profiles are the weighted model's. ``md`` itself without weights.
    """
    if md.weights is None:
        return md
    from dataclasses import replace

    r = np.sqrt(md.weights)
    return replace(md, y=md.y * r, X=md.X * r[:, None], Z={g: z * r[:, None] for g, z in md.Z.items()},
                   offset=md.offset * r, weights=None)


def check_columns(data: pd.DataFrame, needed, what: str = "data") -> None:
    missing = [c for c in dict.fromkeys(needed) if c not in data.columns]
    if missing:
        have = list(map(str, data.columns))
        raise DataError(
            f"column(s) {missing} are missing from the {what}; it has {have[:20]}"
            + (" ..." if len(have) > 20 else "")
            + ". Rename the columns or change the formula"
        )


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)


def _response(spec: ModelSpec, s: pd.Series) -> np.ndarray:
    if not _is_numeric(s):
        raise DataError(
            f"the response {spec.response!r} must be numeric (dtype is {s.dtype}); convert it, "
            "e.g. 0/1 for a binomial outcome"
        )
    y = s.to_numpy(dtype=float)
    if spec.family == "binomial" and not spec.has_trials and not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"family='binomial' needs a 0/1 response; {spec.response!r} has other values. For "
                        "successes out of n trials write cbind(successes, n - successes) ~ ...")
    if spec.family in ("poisson", "negbinomial") or spec.has_trials:
        if (y < 0).any() or (y != np.round(y)).any():
            what = "successes" if spec.has_trials else "counts"
            raise DataError(f"family={spec.family!r} needs non-negative integer {what} in {spec.response!r}")
    if spec.family == "gaussian" and np.ptp(y) == 0:
        raise DataError(f"the response {spec.response!r} is constant; there is nothing to model")
    return y


def _trials(spec: ModelSpec, frame: pd.DataFrame, y: np.ndarray | None) -> np.ndarray | None:
    """Binomial trials per row (``y`` given: checked against the successes); None for other families."""
    if spec.family != "binomial":
        return None
    if not spec.has_trials:
        return np.ones(len(frame))
    col = spec.failures if spec.failures is not None else spec.trials
    check_columns(frame, [col], what="data")
    s = frame[col]
    if not _is_numeric(s):
        raise DataError(f"the binomial {'failures' if spec.failures else 'trials'} column {col!r} must be numeric "
                        f"(dtype is {s.dtype})")
    v = s.to_numpy(dtype=float)
    if (v != np.round(v)).any() or (v < 0).any():
        raise DataError(f"the binomial {'failures' if spec.failures else 'trials'} column {col!r} must hold "
                        "non-negative integers")
    if spec.failures is not None:
        successes = y if y is not None else frame[spec.response].to_numpy(dtype=float)
        return v + successes
    if y is not None and (y > v).any():
        bad = int((y > v).sum())
        raise DataError(f"{bad} rows have more successes ({spec.response!r}) than trials ({col!r}) in "
                        f"{spec.response_text()}")
    return v


def _offset(spec: ModelSpec, frame: pd.DataFrame) -> np.ndarray:
    """The sum of the formula's offset columns (zeros without one); each must be numeric and finite."""
    out = np.zeros(len(frame))
    if spec.offsets:
        check_columns(frame, spec.offsets, what="data")
    for o in spec.offsets:
        if not _is_numeric(frame[o]):
            raise DataError(f"the offset column {o!r} must be numeric (dtype is {frame[o].dtype}); an offset is on "
                            "the linear predictor's scale, e.g. log(exposure) for a Poisson count")
        v = frame[o].to_numpy(dtype=float)
        if not np.isfinite(v).all():
            raise DataError(f"the offset column {o!r} has missing or non-finite values (log of a zero exposure?)")
        out = out + v
    return out


def _fixed_design(spec: ModelSpec, frame: pd.DataFrame, categories: dict | None):
    learn = categories is None
    categories = {} if learn else categories
    cols: list[np.ndarray] = []
    meta: list[FixedColumn] = []
    n = len(frame)
    if spec.intercept:
        cols.append(np.ones(n))
        meta.append(FixedColumn(INTERCEPT, INTERCEPT, FixedTerm((INTERCEPT,))))
    for term in spec.fixed:
        is_cat = term.categorical or (len(term.variables) == 1 and not _is_numeric(frame[term.variables[0]]))
        if is_cat:
            v = term.variables[0]
            values = frame[v].astype(str).to_numpy(dtype=object)
            if learn:
                levels = tuple(sorted(pd.unique(values)))
                if len(levels) < 2:
                    raise DataError(f"the categorical predictor {v!r} has a single level; drop it from the formula")
                categories[v] = levels
            levels = categories[v]
            unseen = sorted(set(values) - set(levels))
            if unseen:
                raise DataError(f"{v!r} has levels not seen when fitting: {unseen[:5]}; predictions need known levels")
            start = 0 if not spec.intercept and not any(m.level is not None for m in meta) else 1
            for lev in levels[start:]:
                cols.append((values == lev).astype(float))
                meta.append(FixedColumn.dummy(v, lev, term))
            continue
        prod = np.ones(n)
        for v in term.variables:
            if not _is_numeric(frame[v]):
                raise DataError(f"{v!r} in the interaction {term.name} must be numeric (dtype {frame[v].dtype})")
            prod = prod * frame[v].to_numpy(dtype=float)
        cols.append(prod)
        meta.append(FixedColumn(term.name, term.name, term))
    X = np.column_stack(cols) if cols else np.empty((n, 0))
    return X, tuple(meta), categories


def _z_columns(terms, frame: pd.DataFrame) -> np.ndarray:
    n = len(frame)
    cols = [np.ones(n) if t == INTERCEPT else frame[t].to_numpy(dtype=float) for t in terms]
    return np.column_stack(cols)
