"""The nested tree: root -> level 1 -> level 2 -> ..., built from a spec and the data.

The root is the population every group belongs to; its label is an option (``root=``), since nothing in a
user's data names it: ``"(all)"`` by default, the scenario's root (``"United_state"`` in the seed's tree) for
simulated data.

Labels of a factor written ``a:b`` are the strings ``"<a>:<b>"``, as lme4 prints them, so labels that repeat
across parents (``Sub0`` in every market) are distinct groups there. A bare factor whose labels repeat
across parents (``(1 | submarket)`` with ``Sub0`` under every market) is not nested and is an error that
names examples and the fix.

Each level keeps its grouping columns as they were at fit time (:class:`LabelColumn`: dtype, values, the
label strings), so new data is matched to the fitted groups by value (:meth:`Level.codes_for`): a column of
the same kind (integer, float, bool, text, datetime) as when fitting is matched on the labels exactly as
before; a column of another kind is matched value by value, where that is unambiguous: ``1``, ``1.0`` and the
text ``"1"`` (or ``"1.0"``) are the same school; ``"01"`` or ``1.5`` are not ``1``. A value that would match
more than one fitted label (text ``"1"`` and ``"1.0"`` both fitted as groups, newdata holding the number 1)
is a :class:`~hiercompare.errors.DataError` that names them. A value that matches no label is a group not
seen in fitting (code -1), which :meth:`hiercompare.results.Fit.predict` counts and warns about.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import CrossedFactorsError, DataError, NestingError
from .spec import GroupLevel, ModelSpec

ROOT = "(all)"  # the root's label when nothing names it (simulated trees carry their own)


_INTEGER_TEXT = re.compile(r"-?[0-9]+")


def column_kind(values: pd.Series) -> str:
    """``integer``, ``float``, ``bool``, ``text``, ``datetime`` or ``other``: the kind of a grouping column
    (a categorical column: the kind of its categories)."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = dtype.categories.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        return "float"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype):
        return "text"
    return "other"


def value_key(value, text: str):
    """What a label value is, across types: ``("num", 1)`` for 1, 1.0, ``"1"`` and ``"1.0"``; ``("bool", True)``;
    ``("str", text)`` for any other text (``"01"``, ``"A"``); None for a missing value (matches nothing)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return ("bool", bool(value))
    if isinstance(value, (int, np.integer)):
        return ("num", int(value))
    if isinstance(value, (float, np.floating)):
        if np.isnan(value):
            return None
        if not np.isfinite(value):
            return ("str", text)
        return ("num", int(value)) if float(value).is_integer() else ("num", float(value))
    if isinstance(value, str):
        if _INTEGER_TEXT.fullmatch(value) and str(int(value)) == value:
            return ("num", int(value))  # "7", "-3"; not "07" (a code with a leading zero is text)
        try:
            number = float(value)
        except ValueError:
            return ("str", value)
        if np.isfinite(number) and (repr(number) == value or str(number) == value):
            return ("num", int(number)) if number.is_integer() else ("num", number)
        return ("str", value)
    return ("str", text)


@dataclass(frozen=True, eq=False)
class LabelColumn:
    """A grouping column as it was at fit time: its name, dtype and kind, and its distinct values with the label
    strings the fitted groups are named by (``labels[i]`` is ``str`` of ``values[i]`` as pandas writes it)."""

    name: str
    dtype: str
    kind: str
    labels: np.ndarray  # (U,) object: the label strings
    values: np.ndarray  # (U,) object: the fit-time values they come from

    @classmethod
    def from_series(cls, values: pd.Series) -> "LabelColumn":
        uniques = pd.Series(pd.factorize(values, sort=False)[1])
        text = uniques.astype(str).to_numpy(dtype=object)
        raw = uniques.astype(object).to_numpy(dtype=object)
        return cls(name=str(values.name), dtype=str(values.dtype), kind=column_kind(values), labels=text, values=raw)

    @functools.cached_property
    def _by_key(self) -> dict:
        out: dict = {}
        for v, t in zip(self.values, self.labels):
            k = value_key(v, t)
            if k is not None and t not in out.setdefault(k, []):
                out[k].append(t)
        return out

    def match(self, values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, labels)``: each row's index into ``labels``, the fit-time label string of each distinct new
        value (None where it matches no fitted label); codes are -1 for missing values."""
        codes, uniques = pd.factorize(values, sort=False)
        uniques = pd.Series(uniques)
        text = uniques.astype(str).to_numpy(dtype=object)
        fitted = set(self.labels)
        if column_kind(values) == self.kind:  # the same kind: the labels as text, exactly as when fitting
            return codes, np.array([t if t in fitted else None for t in text], dtype=object)
        out = np.empty(len(text), dtype=object)
        for i, (v, t) in enumerate(zip(uniques.astype(object).to_numpy(dtype=object), text)):
            hits = self._by_key.get(value_key(v, t), [])
            if len(hits) > 1:
                raise DataError(
                    f"the grouping column {self.name!r} is {values.dtype} here but was {self.dtype} when fitting, and "
                    f"its value {v!r} matches {len(hits)} fitted labels ({', '.join(repr(h) for h in hits[:5])}); "
                    f"convert the column to {self.dtype} as it was when fitting so that each value names one group")
            out[i] = hits[0] if hits else None
        return codes, out


@dataclass(frozen=True)
class Level:
    """One level of the tree (below the root)."""

    spec: GroupLevel
    labels: np.ndarray  # (G,) str, sorted
    codes: np.ndarray  # (n,) int, row -> index into labels
    parent: np.ndarray  # (G,) int, index into the parent level's labels (0 = root for the top level)
    depth: int  # 1 for the top level
    columns: tuple[LabelColumn, ...] = ()  # the factor's columns as at fit time (empty: match labels as text)

    @property
    def group(self) -> str:
        return self.spec.group

    @property
    def n_groups(self) -> int:
        return len(self.labels)

    def counts(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_groups)

    def codes_for(self, data: pd.DataFrame) -> np.ndarray:
        """Codes of ``data``'s rows; -1 where the label was not seen in fitting.

        Values are matched to the fit-time labels by value where the column's kind differs from fit time
        (integer ids read back as floats, or as text): see the module's docstring. A value that would match two
        fitted labels is a DataError.
        """
        index = pd.Index(self.labels)
        if not self.columns:  # a level built without its columns (an older pickle): labels as text
            return index.get_indexer(factor_labels(data, self.spec.factor))
        n = len(data)
        key = np.zeros(n, dtype=np.int64)
        missing = np.zeros(n, dtype=bool)
        parts = []
        for col in self.columns:
            codes, mapped = col.match(data[col.name])
            missing |= codes < 0
            parts.append(mapped)
            key = key * max(len(mapped), 1) + np.maximum(codes, 0)
        uniq, inverse = np.unique(key, return_inverse=True)
        combos = np.empty(len(uniq), dtype=object)
        rem = uniq.copy()
        pieces = []
        for mapped in reversed(parts):
            size = max(len(mapped), 1)
            pieces.append(mapped[rem % size] if len(mapped) else np.full(len(uniq), None, dtype=object))
            rem = rem // size
        pieces = pieces[::-1]
        for i in range(len(uniq)):
            bits = [p[i] for p in pieces]
            combos[i] = None if any(b is None for b in bits) else ":".join(bits)
        out = index.get_indexer(combos)[inverse.ravel()]
        out[missing] = -1
        return out.astype(np.int64)


@dataclass(frozen=True)
class Hierarchy:
    """Levels root -> leaf with labels, integer codes and parent maps."""

    levels: tuple[Level, ...]
    root: str = ROOT

    @classmethod
    def build(cls, spec: ModelSpec, data: pd.DataFrame, root: str = ROOT) -> "Hierarchy":
        kept: dict[str, LabelColumn] = {}
        prepared = []
        for lv in spec.levels:
            codes, labels = factorize(data, lv.factor)
            if len(labels) < 2:
                raise DataError(
                    f"the grouping factor {lv.group} has a single level ({labels[0]!r} if any): a variance "
                    f"cannot be estimated from one group. Drop the term with '| {lv.group})' or add data "
                    "from more groups"
                )
            prepared.append((lv, labels, codes.astype(np.int64)))
        # root-to-leaf: fewer groups first, then fewer columns
        prepared.sort(key=lambda t: (len(t[1]), len(t[0].factor)))
        order = {g.factor: i for i, g in reversed(list(enumerate(spec.groups)))}
        levels: list[Level] = []
        for depth, (lv, labels, codes) in enumerate(prepared, start=1):
            if not levels:
                parent = np.zeros(len(labels), dtype=np.int64)
            else:
                prev = levels[-1]
                try:
                    parent = _parent_map(prev, lv, labels, codes)
                except NestingError:
                    if order[lv.factor] < order[prev.spec.factor]:
                        # report it the way the formula reads: the factor written first is the coarser one
                        coarse = Level(spec=lv, labels=labels, codes=codes, parent=np.zeros(len(labels), dtype=np.int64), depth=depth)
                        _parent_map(coarse, prev.spec, prev.labels, prev.codes)
                    raise
            for c in lv.factor:
                if c not in kept:
                    kept[c] = LabelColumn.from_series(data[c])
            levels.append(Level(spec=lv, labels=labels, codes=codes, parent=parent, depth=depth,
                                columns=tuple(kept[c] for c in lv.factor)))
        return cls(levels=tuple(levels), root=root)

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(lv.group for lv in self.levels)

    def level(self, group: str) -> Level:
        for lv in self.levels:
            if lv.group == group:
                return lv
        raise KeyError(f"no level {group!r}; levels are {list(self.groups)}")

    def ancestors(self, depth_index: int) -> list[np.ndarray]:
        """For level ``depth_index`` (0-based), maps group -> index at each coarser level."""
        maps = []
        cur = np.arange(self.levels[depth_index].n_groups)
        for i in range(depth_index, 0, -1):
            cur = self.levels[i].parent[cur]
            maps.append(cur)
        return maps[::-1]

    def describe(self) -> dict:
        return {
            "root": self.root,
            "levels": [{"group": lv.group, "n_groups": lv.n_groups, "terms": list(lv.spec.terms)} for lv in self.levels],
        }


def factor_labels(data: pd.DataFrame, factor: tuple[str, ...]) -> np.ndarray:
    """Row labels of a (possibly interaction) grouping factor, as strings ``a:b`` (a missing value: ``nan``)."""
    cols = [data[c].astype(str).to_numpy(dtype=object, na_value="nan") for c in factor]
    if len(cols) == 1:
        return cols[0]
    out = cols[0]
    for c in cols[1:]:
        out = out + ":" + c
    return out


def factorize(data: pd.DataFrame, factor: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes and sorted labels of a (possibly interaction) grouping factor.

    Each column is factorised on its own and the codes combined as integers, so strings are built only for
    the distinct combinations, not for every row.
    """
    key = np.zeros(len(data), dtype=np.int64)
    parts = []
    for c in factor:
        codes, uniques = pd.factorize(data[c].astype(str), sort=False)
        parts.append(np.asarray(uniques, dtype=object))
        key = key * len(uniques) + codes
    uniq_key, inverse = np.unique(key, return_inverse=True)
    labels = np.empty(len(uniq_key), dtype=object)
    rem = uniq_key.copy()
    pieces = []
    for uniques in reversed(parts):
        pieces.append(uniques[rem % len(uniques)])
        rem = rem // len(uniques)
    pieces = pieces[::-1]
    labels = pieces[0].astype(object)
    for p in pieces[1:]:
        labels = labels + ":" + p
    order = np.argsort(labels.astype(str), kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse].astype(np.int64), labels[order]


def _parent_map(coarse: Level, fine_spec: GroupLevel, fine_labels: np.ndarray, fine_codes: np.ndarray) -> np.ndarray:
    pairs = pd.DataFrame({"fine": fine_codes, "coarse": coarse.codes}).drop_duplicates()
    n_parents = pairs.groupby("fine")["coarse"].nunique()
    bad = n_parents[n_parents > 1]
    if len(bad):
        examples = []
        for code in bad.index[:3]:
            parents = coarse.labels[np.sort(pairs.loc[pairs["fine"] == code, "coarse"].to_numpy())]
            shown = ", ".join(repr(p) for p in parents[:3]) + (" ..." if len(parents) > 3 else "")
            examples.append(f"{fine_labels[code]!r} appears under {coarse.group} {shown}")
        share = len(bad) / len(fine_labels)
        crossed = (
            f" Every {fine_spec.group} label is shared, so as data these factors are crossed, not nested;"
            " hiercompare fits nested trees only."
            if share == 1.0
            else ""
        )
        fix = ":".join(dict.fromkeys(coarse.spec.factor + fine_spec.factor))
        raise (CrossedFactorsError if crossed else NestingError)(
            f"{fine_spec.group} is not nested in {coarse.group}: {len(bad)} of {len(fine_labels)} "
            f"{fine_spec.group} labels appear under more than one {coarse.group} ("
            + "; ".join(examples)
            + f").{crossed} If labels are reused across {coarse.group}s for different groups (the same "
            f"{fine_spec.group} label under several {coarse.group}s), write the finer factor as (1 | {fix}) or (1 | {coarse.group}/{fine_spec.group}); "
            "otherwise make the labels unique per parent."
        )
    parent = np.empty(len(fine_labels), dtype=np.int64)
    parent[pairs["fine"].to_numpy()] = pairs["coarse"].to_numpy()
    return parent
