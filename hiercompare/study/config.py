"""Study configs: a TOML file (or a parsed mapping) -> the keyword arguments of :class:`~hiercompare.study.Study`.

Layout::

    [study]
    name = "seed_small"            # optional (default: the file name)
    replications = 20
    seed = 20240501
    backends = ["ols", "mixedlm", "lme4"]
    formula = "y ~ x1 + ..."       # optional (default: each scenario's own formula)

    [[scenario]]                   # any number; keys as in Scenario.from_dict
    name = "seed"                  # a scenario with no other keys is the default tree

    [options.lme4]                 # keyword options for one backend
    method = "ML"

A backend entry may be a variant of a registered backend, ``"<backend>:<label>"``, with its own options, so that
one backend runs under several option sets on the same data sets; the results' ``backend`` column carries the
entry::

    backends = ["native:z", "native:kr"]
    [options."native:z"]
    df = "z"
    [options."native:kr"]
    df = "kenward-roger"

Every key is checked: an unknown table or key is an error that lists the valid ones.
"""
from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Mapping

from ..errors import HierCompareError, StudyError
from ..simulate import Scenario

STUDY_KEYS = {"name", "replications", "seed", "backends", "formula"}


def study_arguments(cfg: Mapping[str, Any], source: str = "config") -> dict:
    """The :class:`Study` keyword arguments a parsed config describes (checked; errors name ``source``)."""
    extra = sorted(set(cfg) - {"study", "scenario", "options"})
    if extra:
        raise StudyError(f"{source}: unknown top-level table(s) {extra}; use [study], [[scenario]] and "
                         "[options.<backend>]")
    st = dict(cfg.get("study") or {})
    unknown = sorted(set(st) - STUDY_KEYS)
    if unknown:
        raise StudyError(f"{source}: unknown key(s) {unknown} in [study]; valid keys are {sorted(STUDY_KEYS)}")
    missing = [k for k in ("replications", "seed", "backends") if k not in st]
    if missing:
        raise StudyError(f"{source}: [study] needs {missing} (e.g. replications = 20, seed = 1, "
                         'backends = ["ols", "mixedlm"])')
    raw = cfg.get("scenario", [])
    if isinstance(raw, Mapping):
        raise StudyError(f"{source}: write scenarios as [[scenario]] (an array of tables), not [scenario]")
    scenarios = []
    for k, d in enumerate(raw or [{}]):
        try:
            scenarios.append(Scenario.from_dict(d))
        except TypeError as exc:
            fields_ = sorted(Scenario.__dataclass_fields__)
            raise StudyError(f"{source}: scenario #{k + 1} ({d.get('name', 'unnamed')}): {exc}. Scenario keys "
                             f"are {fields_}; [[scenario.levels]] keys are name, size, sd, corr, label, "
                             "correlated") from exc
        except HierCompareError as exc:
            raise StudyError(f"{source}: scenario #{k + 1} ({d.get('name', 'unnamed')}): {exc}") from exc
    return dict(scenarios=scenarios, replications=st["replications"], backends=st["backends"],
                options=cfg.get("options") or {}, seed=st["seed"], formula=st.get("formula"),
                name=st.get("name", Path(source).stem if source != "config" else "study"))


def read_toml(path: str | Path) -> dict:
    """Parse a study config file; a missing file or bad TOML is a :class:`StudyError` naming the file."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError as exc:
        raise StudyError(f"study config {p} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise StudyError(f"study config {p} is not valid TOML: {exc}") from exc


__all__ = ["STUDY_KEYS", "study_arguments", "read_toml"]
