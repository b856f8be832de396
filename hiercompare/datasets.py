"""Public data sets shipped with the package (see ``hiercompare/data/SOURCES.md`` for each one's origin).

Each is a small CSV copied from a Debian R package (mlmRev, nlme, lme4) or a PyPI wheel (statsmodels), with two or
more formulas that ``hiercompare compare`` fits on it. The CSVs are read as ``pandas.read_csv`` reads them, as a
user's own file would be: integer ids stay integers.

>>> from hiercompare import datasets
>>> datasets.load("exam").shape
(4059, 10)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import DataError

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    origin: str
    formulas: tuple[str, ...]

    @property
    def path(self) -> Path:
        return DATA_DIR / f"{self.name}.csv"


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("exam", "Exam scores of 4,059 London pupils in 65 schools", "R mlmRev::Exam (Debian r-cran-mlmrev)",
            ("normexam ~ standLRT + (1 | school)",
             "normexam ~ standLRT + schavg + (1 + standLRT | school)")),
    Dataset("egsingle", "Mathematics scores over grades 1-5: 7,230 tests of 1,721 children in 60 schools",
            "R mlmRev::egsingle (Debian r-cran-mlmrev)",
            ("math ~ year + (1 | schoolid) + (1 | schoolid:childid)",
             "math ~ year + (1 + year | schoolid) + (1 + year | schoolid:childid)")),
    Dataset("dietox", "Weights of 72 pigs in 21 litters over 12 weeks", "statsmodels 0.15.0 wheel "
            "(statsmodels/regression/tests/results/dietox.csv; R geepack::dietox)",
            ("Weight ~ Time + (1 | Litter) + (1 | Litter:Pig)",
             "Weight ~ Time + (1 | Litter) + (1 + Time | Litter:Pig)")),
    Dataset("oats", "Split-plot oats yields: 72 plots, 3 varieties in 6 blocks", "R nlme::Oats (Debian r-cran-nlme)",
            ("yield ~ nitro + (1 | Block) + (1 | Block:Variety)",
             "yield ~ nitro + Variety + (1 | Block) + (1 | Block:Variety)")),
    Dataset("pastes", "Paste strength: 60 assays of 30 casks in 10 batches", "R lme4::Pastes (Debian r-cran-lme4)",
            ("strength ~ 1 + (1 | batch) + (1 | batch:cask)",
             "strength ~ 1 + (1 | batch:cask)")),
)}


def names() -> list[str]:
    return list(DATASETS)


def info(name: str) -> Dataset:
    if name not in DATASETS:
        raise DataError(f"no data set {name!r}; the shipped ones are {names()}")
    return DATASETS[name]


def path(name: str) -> Path:
    """The CSV file of a shipped data set (what ``hiercompare compare`` takes as DATA)."""
    return info(name).path


def load(name: str) -> pd.DataFrame:
    """A shipped data set as a DataFrame, read as ``pandas.read_csv`` reads the file."""
    return pd.read_csv(path(name))


__all__ = ["DATASETS", "Dataset", "names", "info", "path", "load"]
