"""The nested tree: root -> level 1 -> level 2 -> ..., built from a spec and the data.

The root is the population every group belongs to; its label is an option (``root=``), since nothing in a
user's data names it: ``"(all)"`` by default, the scenario's root (``"United_state"`` in the seed's tree) for
simulated data.

Labels of a factor written ``a:b`` are the strings ``"<a>:<b>"``, as lme4 prints them, so labels that repeat
across parents (``Sub0`` in every market) are distinct groups there. A bare factor whose labels repeat
across parents (``(1 | submarket)`` with ``Sub0`` under every market) is not nested and is an error that
names examples and the fix.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import CrossedFactorsError, DataError, NestingError
from .spec import GroupLevel, ModelSpec

ROOT = "(all)"  # the root's label when nothing names it (simulated trees carry their own)


@dataclass(frozen=True)
class Level:
    """One level of the tree (below the root)."""

    spec: GroupLevel
    labels: np.ndarray  # (G,) str, sorted
    codes: np.ndarray  # (n,) int, row -> index into labels
    parent: np.ndarray  # (G,) int, index into the parent level's labels (0 = root for the top level)
    depth: int  # 1 for the top level

    @property
    def group(self) -> str:
        return self.spec.group

    @property
    def n_groups(self) -> int:
        return len(self.labels)

    def counts(self) -> np.ndarray:
        return np.bincount(self.codes, minlength=self.n_groups)

    def codes_for(self, data: pd.DataFrame) -> np.ndarray:
        """Codes of ``data``'s rows; -1 where the label was not seen in fitting."""
        lab = factor_labels(data, self.spec.factor)
        index = pd.Index(self.labels)
        return index.get_indexer(lab)


@dataclass(frozen=True)
class Hierarchy:
    """Levels root -> leaf with labels, integer codes and parent maps."""

    levels: tuple[Level, ...]
    root: str = ROOT

    @classmethod
    def build(cls, spec: ModelSpec, data: pd.DataFrame, root: str = ROOT) -> "Hierarchy":
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
            levels.append(Level(spec=lv, labels=labels, codes=codes, parent=parent, depth=depth))
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
    """Row labels of a (possibly interaction) grouping factor, as strings ``a:b``."""
    cols = [data[c].astype(str).to_numpy(dtype=object) for c in factor]
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
