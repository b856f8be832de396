"""A study's folder: the long results table, one Parquet part per unit, the manifest; all written atomically.

Layout under ``out_dir``::

    manifest.json        what was run (scenarios, formulas, backends, options, seed), package versions,
                         git commit, runs, status
    parts/s00000-r0000000.parquet   one file per completed unit, written atomically (tmp file + os.replace)
    results.parquet      every unit's rows, sorted by (scenario, replication, backend, effect, group,
                         level, term)
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import StudyError
from ..provenance import git_commit, now, package_versions

RESULT_COLUMNS = ["scenario", "replication", "backend", "effect", "group", "level", "term", "estimate",
                  "std_error", "conf_low", "conf_high", "df", "p_value", "interval", "truth", "realized", "converged",
                  "warnings",
                  "seconds", "seed", "error"]
SORT = ["scenario", "replication", "backend", "effect", "group", "level", "term"]
_STRING = ["scenario", "backend", "effect", "group", "level", "term", "interval", "warnings", "error"]
_FLOAT = ["estimate", "std_error", "conf_low", "conf_high", "df", "p_value", "truth", "realized", "seconds"]
_INT = ["replication", "seed"]
PART = re.compile(r"^s(\d{5})-r(\d{7})\.parquet$")


def empty_rows(n: int = 0) -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in RESULT_COLUMNS}).reindex(range(n))


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in :data:`RESULT_COLUMNS` order with fixed dtypes (strings, float64, int64; ``converged`` as
    pandas' nullable boolean: missing where the backend does not assess convergence). A column missing from
    ``df`` (``df`` and ``p_value`` in a study written before they existed) is added, empty (NaN; ``interval``:
    empty text, the backend's own intervals, which is what every study before that column held except the
    learners', whose intervals were conditional on f(x): :func:`hiercompare.performance.performance` labels
    those by backend)."""
    out = df.reindex(columns=RESULT_COLUMNS).copy()
    for c in _STRING:
        col = out[c].astype(object)  # object first: fillna("") on an all-missing float column warns in pandas 3
        out[c] = col.where(col.notna(), "").astype(str).astype(object)
    for c in _FLOAT:
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    for c in _INT:
        out[c] = out[c].astype("int64")
    out["converged"] = out["converged"].astype("boolean")
    return out.reset_index(drop=True)


def _schema():
    import pyarrow as pa

    types = {c: pa.string() for c in _STRING}
    types.update({c: pa.float64() for c in _FLOAT})
    types.update({c: pa.int64() for c in _INT})
    types["converged"] = pa.bool_()
    return pa.schema([(c, types[c]) for c in RESULT_COLUMNS])


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write the rows (normalised) to ``path`` whole or not at all: a tmp file, fsync, then os.replace."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(normalize(df), schema=_schema(), preserve_index=False)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def read_results(path: str | Path) -> pd.DataFrame:
    """Read a study's long table: ``results.parquet``, a study folder, or a part file.

    Examples
    --------
    >>> res = read_results("study_out")  # doctest: +SKIP
    """
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        p = p / "results.parquet"
    if not p.exists():
        raise StudyError(f"no study results at {p}; run the study first (hiercompare study CONFIG.toml --out DIR)")
    return normalize(pq.read_table(p).to_pandas())


def concat_sorted(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return normalize(empty_rows())
    out = normalize(pd.concat(frames, ignore_index=True))
    return out.sort_values(SORT, kind="mergesort").reset_index(drop=True)


def part_path(out_dir: str | Path, scenario_index: int, replication: int) -> Path:
    """Where the unit's checkpoint file lives."""
    return Path(out_dir) / "parts" / f"s{scenario_index:05d}-r{replication:07d}.parquet"


def completed_units(out_dir: str | Path, n_scenarios: int, replications: int) -> set[tuple[int, int]]:
    """Units (scenario index < n_scenarios, replication < replications) whose part file exists."""
    parts = Path(out_dir) / "parts"
    done = set()
    if parts.is_dir():
        for p in parts.iterdir():
            m = PART.match(p.name)
            if m:
                i, r = int(m.group(1)), int(m.group(2))
                if i < n_scenarios and r < replications:
                    done.add((i, r))
    return done


def read_parts(out_dir: str | Path, units: Iterable[tuple[int, int]]) -> pd.DataFrame:
    """The sorted long table of these units' part files."""
    import pyarrow.parquet as pq

    return concat_sorted([pq.read_table(part_path(out_dir, *u)).to_pandas() for u in sorted(units)])


def count_failures(path: Path) -> int:
    """Failed fits (rows with an error) in one part file."""
    import pyarrow.parquet as pq

    err = pq.read_table(path, columns=["error"]).column("error").to_pylist()
    return sum(1 for e in err if e)


def prepare_folder(out: Path, definition: dict, backend_report: dict, executor: dict) -> dict:
    """Check that ``out`` holds this study (or nothing yet), drop half-written files, and write the manifest.

    Only ``replications`` may differ from the manifest's study (seeds do not depend on it, so a study can be
    extended). Returns the manifest as written, with this run appended to its ``runs``.
    """
    parts = out / "parts"
    man_path = out / "manifest.json"
    if man_path.exists():
        old = json.loads(man_path.read_text())
        a = {k: v for k, v in old.get("study", {}).items() if k != "replications"}
        b = {k: v for k, v in definition.items() if k != "replications"}
        if a != b:
            diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            raise StudyError(f"{out} holds a different study (differs in {diff}); use another output folder "
                             f"or delete {out} to start over")
        manifest = old
    elif parts.is_dir() and any(PART.match(p.name) for p in parts.iterdir()):
        raise StudyError(f"{parts} holds part files but {man_path} is missing, so they cannot be checked "
                         f"against this study; delete {out} or use another output folder")
    else:
        manifest = {"created": now(), "runs": []}
    parts.mkdir(parents=True, exist_ok=True)
    for p in parts.glob("*.tmp"):  # half-written files of a killed run
        p.unlink()
    manifest.update({
        "hiercompare_study": 1,
        "study": definition,
        "versions": package_versions(),
        "backend_report": backend_report,
        "git_commit": git_commit(),
        "status": "running",
        "results": "results.parquet",
        "parts": "parts/",
        "columns": RESULT_COLUMNS,
    })
    manifest["runs"] = list(manifest.get("runs", [])) + [{"started": now(), **executor}]
    write_json_atomic(manifest, man_path)
    return manifest


__all__ = ["RESULT_COLUMNS", "SORT", "normalize", "read_results", "write_parquet_atomic", "write_json_atomic",
           "part_path", "completed_units", "read_parts", "count_failures", "prepare_folder"]
