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
    """Validated data and model matrices for one spec."""

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

    @property
    def n(self) -> int:
        return len(self.y)

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


def prepare(spec: ModelSpec, data: pd.DataFrame, na_action: str = "error") -> ModelData:
    """Validate ``data`` against ``spec`` and build the model matrices."""
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    if na_action not in ("error", "drop"):
        raise SpecError(f"na_action must be 'error' or 'drop', got {na_action!r}")
    used = list(spec.variables)
    check_columns(data, used, what="data")
    frame = data[used].copy()
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
    y = _response(spec, frame[spec.response])
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
        categories=categories, notes=notes, dropped_rows=dropped,
    )


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
    if spec.family == "binomial" and not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"family='binomial' needs a 0/1 response; {spec.response!r} has other values")
    if spec.family == "poisson" and ((y < 0).any() or (y != np.round(y)).any()):
        raise DataError(f"family='poisson' needs non-negative integer counts in {spec.response!r}")
    if spec.family == "gaussian" and np.ptp(y) == 0:
        raise DataError(f"the response {spec.response!r} is constant; there is nothing to model")
    return y


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
