"""R users: the testthat file tests/r/test_reticulate.R, run in a fresh R process."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.r, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def test_reticulate_from_r():
    if shutil.which("Rscript") is None:
        pytest.fail("Rscript not found although R tests are enabled")
    env = dict(os.environ, HIERCOMPARE_VENV=str(Path(sys.prefix)),
               HIERCOMPARE_R_ENTRY=str(ROOT / "r_scripts" / "hiercompare.R"),
               RETICULATE_PYTHON=sys.executable)
    code = ("res <- as.data.frame(testthat::test_file('tests/r/test_reticulate.R', reporter = 'summary'));"
            "cat('\\nRESULT', sum(res$failed), sum(res$error), sum(res$skipped), sum(res$nb), '\\n');"
            "quit(status = as.integer(sum(res$failed) + sum(res$error) > 0))")
    out = subprocess.run(["Rscript", "-e", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    result = [line for line in text.splitlines() if line.startswith("RESULT")][-1].split()
    failed, errors, skipped, n = map(int, result[1:])
    assert (failed, errors, skipped) == (0, 0, 0) and n == 16, text[-3000:]
