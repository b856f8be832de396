"""Shared fixtures. Tests marked ``r`` need R: they are skipped, with the reason, only where `make install`
recorded that R cannot be installed on this machine; if it recorded R as installed and R still cannot be
used, the R tests fail instead of silently skipping."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
FORMULA = "y ~ x1 + x2 + (1 + x1 | market) + (1 | market:submarket)"


def _r_state() -> tuple[bool, str]:
    from hiercompare import rbridge

    ok, why = rbridge.availability(("lme4",))
    if ok:
        return True, ""
    status_file = ROOT / ".venv" / "r-status"
    status = status_file.read_text().strip() if status_file.exists() else "unknown (make install not run)"
    return False, f"{why} [make install recorded: {status}]"


def pytest_collection_modifyitems(config, items):
    needs_r = [it for it in items if "r" in it.keywords]
    if not needs_r:
        return
    ok, why = _r_state()
    if ok:
        return
    if "make install recorded: ok" in why or os.environ.get("HIERCOMPARE_REQUIRE_R"):
        raise pytest.UsageError(f"R tests cannot run although R should be installed: {why}")
    for it in needs_r:
        it.add_marker(pytest.mark.skip(reason=f"R is not available here: {why}"))


@pytest.fixture(scope="session")
def seed_data():
    import hiercompare as hc

    return hc.simulate(hc.Scenario(), seed=123)


@pytest.fixture(scope="session")
def sleepstudy():
    return pd.read_csv(DATA / "sleepstudy.csv", dtype={"Subject": str})


@pytest.fixture(scope="session")
def pastes():
    return pd.read_csv(ROOT / "hiercompare" / "data" / "pastes.csv")  # the shipped copy (hiercompare/data/SOURCES.md)
