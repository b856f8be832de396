"""Per-leaf sufficient statistics accumulated chunk by chunk, and merged across partitions.

The native engine's likelihood reads the rows only through per-leaf cross-products of ``[z_1 .. z_L, X, y]``
(:mod:`hiercompare.mixedcore`, ``docs/mixedcore.md``). Those are sums, so they can be added up batch by batch
from a file, or per partition on a cluster and combined. :class:`Sums` holds them for one data source:

* per *cell* (one distinct combination of the grouping columns' labels), the cross-products of the *base*
  columns: the constant ``1``, each numeric fixed term (products for ``x1:x2``), each varying slope, the
  response, and one indicator per level of every categorical fixed term;
* the labels of each grouping column and the levels of each categorical column, coded in the order they are
  first seen (the same label always gets the same code, in every chunk and every partition);
* the row count, the rows dropped for missing values per column, the response's range.

Nothing is decided before the last chunk. :meth:`Sums.finalize` sorts the labels and levels, builds the
:class:`~hiercompare.hierarchy.Hierarchy` from the distinct cells with the in-memory code (same nesting
checks, same messages), picks each categorical term's reference level (the first sorted level, as
:mod:`hiercompare.design` does) and selects the model's columns. Treatment coding needs no first pass: the
treatment columns are a subset of the full set of level indicators, so their cross-products are a selection of
the indicators' cross-products, and an indicator of a level first seen late is zero on every earlier row (its
cross-products there are the zeros the arrays are padded with).

Per chunk the cost is one ``bincount`` per pair of numeric base columns (10 for the seed's formula) plus one
per numeric base column for each categorical term; memory is cells x base columns^2, never rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import pandas as pd

from .design import FixedColumn, ModelData
from .errors import DataError, NestingError
from .hierarchy import Hierarchy
from .spec import INTERCEPT, FixedTerm, ModelSpec

NUMERIC, TEXT = "numeric", "text"
RANK_TOL = 1e-10  # smallest eigenvalue of the column-scaled X'X, relative to the largest, of a full-rank design


class Chunk(Protocol):
    """One chunk of rows as the accumulator reads it (adapters for pyarrow and pandas are in sources.py)."""

    n: int

    def kind(self, column: str) -> tuple[str, str]:
        """``(NUMERIC or TEXT, the column's type as the reader names it)``."""

    def numeric(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(float64 values, missing-or-non-finite mask)``."""

    def labels(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """``(int64 codes into uniques, -1 where missing; uniques as str, as pandas' astype(str) writes them)``."""


@dataclass(frozen=True)
class Plan:
    """What to read from every chunk, decided once from the spec and the column types of the first chunk."""

    spec: ModelSpec
    kinds: dict  # column -> (NUMERIC | TEXT, type name)
    numeric: tuple[str, ...]  # base numeric columns; "1" first
    products: tuple[tuple[str, ...], ...]  # the variables multiplied for each numeric base column
    categorical: tuple[str, ...]  # variables of the categorical fixed terms, in formula order
    labels: tuple[str, ...]  # grouping variables
    first: str  # where the types were read

    @property
    def response_index(self) -> int:
        return self.numeric.index(self.spec.response)


def make_plan(spec: ModelSpec, kinds: dict, where: str) -> Plan:
    """Check the column types against the spec (the in-memory checks of design.py, same wording) and plan."""
    missing = [c for c in spec.variables if c not in kinds]
    if missing:
        have = list(kinds)
        raise DataError(f"{where}: column(s) {missing} are missing from the data; it has {have[:20]}"
                        + (" ..." if len(have) > 20 else "") + ". Rename the columns or change the formula")
    kind = {c: kinds[c][0] for c in spec.variables}
    dtype = {c: kinds[c][1] for c in spec.variables}
    r = spec.response
    if kind[r] != NUMERIC:
        raise DataError(f"{where}: the response {r!r} must be numeric (dtype is {dtype[r]}); convert it, "
                        "e.g. 0/1 for a binomial outcome")
    for v in spec.slope_variables:
        if kind[v] != NUMERIC:
            raise DataError(f"{where}: the varying slope {v!r} must be a numeric column (dtype is {dtype[v]}); "
                            "categorical varying slopes are not supported")
    numeric, products, categorical = ["1"], [()], []
    for term in spec.fixed:
        if term.categorical or (len(term.variables) == 1 and kind[term.variables[0]] != NUMERIC):
            categorical.append(term.variables[0])
            continue
        for v in term.variables:
            if kind[v] != NUMERIC:
                raise DataError(f"{where}: {v!r} in the interaction {term.name} must be numeric (dtype {dtype[v]})")
        if term.name not in numeric:
            numeric.append(term.name)
            products.append(tuple(term.variables))
    for v in spec.slope_variables + (r,):
        if v not in numeric:
            numeric.append(v)
            products.append((v,))
    return Plan(spec=spec, kinds={c: kinds[c] for c in spec.variables}, numeric=tuple(numeric),
                products=tuple(products), categorical=tuple(dict.fromkeys(categorical)),
                labels=spec.grouping_variables, first=where)


@dataclass
class SummaryData(ModelData):
    """A :class:`~hiercompare.design.ModelData` that holds per-leaf sums instead of rows (a streamed source).

    ``data``, ``X``, ``y``, ``Z`` and the levels' row codes are empty (the rows were never held); ``n`` is the
    number of rows fitted, ``sums`` the per-leaf cross-products of ``[z_1 .. z_L, X, y]`` in the order
    :class:`~hiercompare.mixedcore.MixedCore` uses (``sums[:, 0, 0]`` is each leaf's row count when the top
    level has an intercept). Prediction on new rows works as for any ModelData (``fixed_matrix``,
    ``z_matrix``, the levels' labels).
    """

    rows: int = 0
    sums: np.ndarray | None = None
    leaf_rows: np.ndarray | None = None  # rows per leaf group (the hierarchy's leaf order)
    source: str = ""
    stream: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.rows


@dataclass
class Sums:
    """Per-cell cross-products of one source, growing as chunks arrive (see the module docstring)."""

    plan: Plan
    na_action: str = "error"
    labels: dict = field(default_factory=dict)  # variable -> {label: code}, codes in order of first appearance
    levels: dict = field(default_factory=dict)  # categorical variable -> {level: base column index}
    cells: dict = field(default_factory=dict)  # tuple of label codes -> cell index
    where: list = field(default_factory=list)  # cell index -> where it was first seen
    C: np.ndarray = field(default=None, repr=False)  # (capacity, D, D); valid [:n_cells, :D, :D]
    D: int = 0
    rows: int = 0
    read: int = 0
    chunks: int = 0
    dropped: dict = field(default_factory=dict)
    y_range: tuple = (np.inf, -np.inf)

    def __post_init__(self):
        if self.na_action not in ("error", "drop"):
            raise DataError(f"na_action must be 'error' or 'drop', got {self.na_action!r}")
        for v in self.plan.labels:
            self.labels.setdefault(v, {})
        for v in self.plan.categorical:
            self.levels.setdefault(v, {})
        if self.C is None:
            self.D = len(self.plan.numeric)
            self.C = np.zeros((16, self.D, self.D))

    # ------------------------------------------------------------------ growth
    def _reserve(self, cells: int, D: int) -> None:
        cap, Dc = self.C.shape[0], self.C.shape[1]
        if cells <= cap and D <= Dc:
            return
        new = np.zeros((max(cells, 2 * cap if cells > cap else cap), max(D, Dc), max(D, Dc)))
        new[:cap, :Dc, :Dc] = self.C
        self.C = new

    def _level_column(self, v: str, level: str) -> int:
        col = self.levels[v].get(level)
        if col is None:
            col = self.levels[v][level] = self.D
            self.D += 1
        return col

    def _cell(self, key: tuple, where: str) -> int:
        i = self.cells.get(key)
        if i is None:
            i = self.cells[key] = len(self.cells)
            self.where.append(where)
        return i

    # ------------------------------------------------------------------ one chunk
    def add(self, chunk: Chunk, where: str) -> None:
        """Check one chunk (types, missing values) and add its rows' cross-products. ``where`` names it."""
        plan, n = self.plan, chunk.n
        self.read += n
        self.chunks += 1
        if n == 0:
            return
        for c, (k, t) in plan.kinds.items():
            k2, t2 = chunk.kind(c)
            if k2 != k:
                raise DataError(f"{where}: column {c!r} has type {t2} here but {t} in {plan.first}; a column must "
                                "hold one type in every file and partition (numbers or labels), so convert it")
        values, miss = {}, {}
        for c in plan.spec.variables:
            if plan.kinds[c][0] == NUMERIC:
                values[c], miss[c] = chunk.numeric(c)
        codes = {}
        for c in plan.labels + plan.categorical:
            codes[c] = chunk.labels(c)
            m = codes[c][0] < 0
            miss[c] = miss[c] | m if c in miss else m
        bad = np.zeros(n, dtype=bool)
        for m in miss.values():
            bad |= m
        if bad.any():
            per_col = {c: int(m.sum()) for c, m in miss.items() if m.any()}
            listing = ", ".join(f"{c} ({k} rows)" for c, k in per_col.items())
            if self.na_action == "error":
                raise DataError(f"{where}: missing or non-finite values in used columns: {listing}; the first at row "
                                f"{int(np.argmax(bad))} of this chunk. Clean them, or pass na_action='drop' to drop "
                                "those rows (the count is recorded in the Fit's diagnostics)")
            for c, k in per_col.items():
                self.dropped[c] = self.dropped.get(c, 0) + k
            keep = ~bad
            values = {c: v[keep] for c, v in values.items()}
            codes = {c: (cd[keep], u) for c, (cd, u) in codes.items()}
            n = int(keep.sum())
            if n == 0:
                return
        self.rows += n
        y = values[plan.spec.response]
        self.y_range = (min(self.y_range[0], float(y.min())), max(self.y_range[1], float(y.max())))
        cell = self._cells_of(codes, n, where)
        G = len(self.cells)
        cat = {}
        for v in plan.categorical:
            local, uniques = codes[v]
            cat[v] = np.array([self._level_column(v, u) for u in uniques], dtype=np.int64)[local]
        self._reserve(G, self.D)
        self._accumulate(cell, G, values, cat)

    def _cells_of(self, codes: dict, n: int, where: str) -> np.ndarray:
        """Cell index of every row: the combination of its grouping labels, coded consistently across chunks."""
        gmaps, key, size = [], np.zeros(n, dtype=np.int64), 1
        for v in self.plan.labels:
            local, uniques = codes[v]
            book = self.labels[v]
            gmaps.append(np.array([book.setdefault(u, len(book)) for u in uniques], dtype=np.int64))
            key = key * len(uniques) + local
            size *= max(len(uniques), 1)
        if size <= 4 * n + (1 << 20):
            present = np.flatnonzero(np.bincount(key, minlength=size))
            table = np.empty(size, dtype=np.int64)
            inverse = None
        else:
            present, inverse = np.unique(key, return_inverse=True)
        rem, parts = present.copy(), []
        for gm in reversed(gmaps):
            parts.append(gm[rem % len(gm)])
            rem //= len(gm)
        parts = parts[::-1]
        ids = np.array([self._cell(tuple(int(p[i]) for p in parts), where) for i in range(len(present))],
                       dtype=np.int64)
        if inverse is None:
            table[present] = ids
            return table[key]
        return ids[inverse.ravel()]

    def _accumulate(self, cell: np.ndarray, G: int, values: dict, cat: dict) -> None:
        plan, C, D = self.plan, self.C, self.D
        cols = [None] + [_product(values, p) for p in plan.products[1:]]
        m = len(cols)
        for a in range(m):
            for b in range(a, m):
                w = cols[b] if a == 0 else cols[a] * cols[b]
                s = np.bincount(cell, weights=w, minlength=G)
                C[:G, a, b] += s
                if a != b:
                    C[:G, b, a] += s
        names = list(cat)
        for i, v in enumerate(names):
            key = cell * D + cat[v]
            for a in range(m):
                s = np.bincount(key, weights=cols[a], minlength=G * D).reshape(G, D)[:, m:]
                C[:G, m:D, a] += s
                C[:G, a, m:D] += s
                if a == 0:  # an indicator squared is itself
                    idx = np.arange(m, D)
                    C[:G, idx, idx] += s
            for u in names[i + 1:]:
                s = np.bincount(key * D + cat[u], minlength=G * D * D).reshape(G, D, D)
                C[:G, :D, :D] += s + np.swapaxes(s, 1, 2)

    # ------------------------------------------------------------------ partitions
    def merge(self, other: "Sums") -> "Sums":
        """Add another source's sums (a Dask partition's) into these; labels and levels are matched by name."""
        gmaps = [np.array([self.labels[v].setdefault(u, len(self.labels[v])) for u in other.labels[v]],
                          dtype=np.int64) for v in self.plan.labels]
        colmap = np.arange(other.D)
        for v in self.plan.categorical:
            for level, col in other.levels[v].items():
                colmap[col] = self._level_column(v, level)
        idx = np.empty(len(other.cells), dtype=np.int64)
        for key, i in other.cells.items():
            idx[i] = self._cell(tuple(int(g[c]) for g, c in zip(gmaps, key)), other.where[i])
        self._reserve(len(self.cells), self.D)
        if len(idx):
            self.C[np.ix_(idx, colmap, colmap)] += other.C[:len(other.cells), :other.D, :other.D]
        self.rows += other.rows
        self.read += other.read
        self.chunks += other.chunks
        for c, k in other.dropped.items():
            self.dropped[c] = self.dropped.get(c, 0) + k
        self.y_range = (min(self.y_range[0], other.y_range[0]), max(self.y_range[1], other.y_range[1]))
        return self

    def trimmed(self) -> "Sums":
        """The same sums with the arrays cut to their used size (what a worker sends back)."""
        self.C = self.C[:len(self.cells), :self.D, :self.D].copy()
        return self

    # ------------------------------------------------------------------ the model
    def finalize(self, source: str) -> SummaryData:
        """Sort labels and levels, build the hierarchy (nesting checks), select the model's columns."""
        plan, spec = self.plan, self.plan.spec
        if self.rows == 0:
            raise DataError(f"{source}: no rows left to fit" + (f" ({self.read} read, every one with a missing value)"
                                                                 if self.read else " (it has no rows)"))
        if self.y_range[0] == self.y_range[1]:
            raise DataError(f"{source}: the response {spec.response!r} is constant; there is nothing to model")
        categories = {}
        for v in plan.categorical:
            levels = tuple(sorted(self.levels[v]))
            if len(levels) < 2:
                raise DataError(f"{source}: the categorical predictor {v!r} has a single level; drop it from the "
                                "formula")
            categories[v] = levels
        columns, xbase = _fixed_columns(spec, plan, categories, self.levels)
        ncell = len(self.cells)
        keys = np.array(list(self.cells), dtype=np.int64).reshape(ncell, len(plan.labels))
        names = {v: np.array(list(self.labels[v]), dtype=object) for v in plan.labels}
        frame = pd.DataFrame({v: names[v][keys[:, j]] for j, v in enumerate(plan.labels)})
        try:
            hierarchy = Hierarchy.build(spec, frame)
        except NestingError as exc:
            raise type(exc)(f"{source}: {exc}{self._nesting_places(frame)}") from None
        except DataError as exc:
            raise type(exc)(f"{source}: {exc}") from None
        num = {c: i for i, c in enumerate(plan.numeric)}
        zbase = [num["1"] if t == INTERCEPT else num[t] for lv in hierarchy.levels for t in lv.spec.terms]
        sel = np.array(zbase + xbase + [plan.response_index], dtype=np.int64)
        leaf = hierarchy.levels[-1]
        C = np.zeros((leaf.n_groups, len(sel), len(sel)))
        if ncell == leaf.n_groups:  # nested: one cell per leaf
            C[leaf.codes] = self.C[:ncell][:, sel][:, :, sel]
        else:
            np.add.at(C, leaf.codes, self.C[:ncell][:, sel][:, :, sel])
        leaf_rows = np.zeros(leaf.n_groups)
        np.add.at(leaf_rows, leaf.codes, self.C[:ncell][:, 0, 0])  # plan.numeric[0] is "1": each cell's rows
        p = len(columns)
        x = np.arange(len(zbase), len(zbase) + p)
        if p:
            # design.py takes the rank of X; here only X'X is known, whose rounding in a long sum hides an exact
            # collinearity at about 1e-13 of the largest eigenvalue: scale the columns to unit norm and count
            # eigenvalues above 1e-10 of the largest (condition number of the scaled X below 1e5)
            XtX = C[:, x][:, :, x].sum(axis=0)
            d = np.sqrt(np.clip(np.diag(XtX), np.finfo(float).tiny, None))
            ev = np.linalg.eigvalsh(XtX / d[:, None] / d[None, :])
            rank = int((ev > ev.max() * RANK_TOL).sum())
            if rank < p:
                raise DataError(f"{source}: the fixed-effect design is rank deficient (rank {rank} < {p} columns: "
                                f"{[c.name for c in columns]}); remove collinear predictors")
        notes = []
        dropped = self.read - self.rows
        if dropped:
            listing = ", ".join(f"{c} ({k} rows)" for c, k in self.dropped.items())
            notes.append(f"na_action='drop' removed {dropped} of {self.read} rows with missing values ({listing})")
        empty = np.empty(0, dtype=np.int64)
        hierarchy = Hierarchy(levels=tuple(replace(lv, codes=empty) for lv in hierarchy.levels), root=hierarchy.root)
        return SummaryData(
            spec=spec, data=pd.DataFrame(columns=list(spec.variables)), y=np.empty(0), X=np.empty((0, p)),
            columns=columns, Z={lv.group: np.empty((0, len(lv.spec.terms))) for lv in hierarchy.levels},
            hierarchy=hierarchy, categories=categories, notes=notes, dropped_rows=dropped, rows=self.rows,
            sums=C, leaf_rows=leaf_rows.round().astype(np.int64), source=source, stream={"source": source, "rows_read": self.read, "chunks": self.chunks,
                                           "cells": ncell},
        )

    def _nesting_places(self, frame: pd.DataFrame) -> str:
        """Where a label under two parents was seen (the first chunk or partition of each pairing)."""
        from .hierarchy import factorize

        spec = self.plan.spec
        coded = [(lv, *factorize(frame, lv.factor)) for lv in spec.levels]
        coded.sort(key=lambda t: (len(t[2]), len(t[0].factor)))
        order = {g.factor: i for i, g in reversed(list(enumerate(spec.groups)))}
        for coarse, fine in zip(coded, coded[1:]):
            if order[fine[0].factor] < order[coarse[0].factor]:  # reported the way the formula reads, as Hierarchy
                coarse, fine = fine, coarse
            (clv, ccode, clab), (_, fcode, flab) = coarse, fine
            pairs = pd.DataFrame({"f": fcode, "c": ccode, "cell": np.arange(len(frame))})
            first = pairs.drop_duplicates(["f", "c"])
            bad = first.groupby("f")["c"].nunique()
            bad = bad[bad > 1].index[:3]
            if len(bad):
                shown = []
                for code in bad:
                    rows = first[first["f"] == code].head(3)
                    shown.append(f"{flab[code]!r} " + ", ".join(
                        f"under {clv.group} {clab[c]!r} first in {self.where[i]}" for c, i in zip(rows["c"], rows["cell"])))
                return " Where: " + "; ".join(shown) + "."
        return ""


def _product(values: dict, variables: tuple[str, ...]) -> np.ndarray:
    out = values[variables[0]]
    for v in variables[1:]:
        out = out * values[v]
    return out


def _fixed_columns(spec: ModelSpec, plan: Plan, categories: dict, level_cols: dict):
    """The fixed design's columns (named as design.py names them) and the base column behind each."""
    meta: list[FixedColumn] = []
    base: list[int] = []
    num = {c: i for i, c in enumerate(plan.numeric)}
    if spec.intercept:
        meta.append(FixedColumn(INTERCEPT, INTERCEPT, FixedTerm((INTERCEPT,))))
        base.append(num["1"])
    for term in spec.fixed:
        v = term.variables[0]
        if term.categorical or (len(term.variables) == 1 and plan.kinds[v][0] != NUMERIC):
            start = 0 if not spec.intercept and not any(m.level is not None for m in meta) else 1
            for lev in categories[v][start:]:
                meta.append(FixedColumn.dummy(v, lev, term))
                base.append(level_cols[v][lev])
            continue
        meta.append(FixedColumn(term.name, term.name, term))
        base.append(num[term.name])
    return tuple(meta), base


__all__ = ["Chunk", "Plan", "make_plan", "Sums", "SummaryData", "NUMERIC", "TEXT"]
