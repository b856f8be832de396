"""R users: the repository root is the R package hiercompare. `R CMD INSTALL .` puts it into a temporary library;
each test then runs a fresh R process that calls `library(hiercompare)`, which reaches the Python package (this
interpreter's environment, through HIERCOMPARE_VENV) with reticulate."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hiercompare

pytestmark = [pytest.mark.r]
ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
EXPORTS = ["hc_compare", "hc_compare_data", "hc_df", "hc_fit", "hc_module", "hc_report", "hc_simulate", "hc_study", "hc_tidy"]
POETRY = re.compile(r"poetry|pyproject", re.IGNORECASE)


@pytest.fixture(scope="module")
def r_lib(tmp_path_factory):
    if shutil.which("R") is None or shutil.which("Rscript") is None:
        pytest.fail("R / Rscript not found although R tests are enabled")
    lib = tmp_path_factory.mktemp("r_library")
    out = subprocess.run(["R", "CMD", "INSTALL", "-l", str(lib), str(ROOT)], capture_output=True, text=True,
                         timeout=300, cwd=lib)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert (lib / "hiercompare" / "DESCRIPTION").is_file()
    return lib


def rscript(code: str, lib: Path, cwd: Path = ROOT, **env_extra) -> subprocess.CompletedProcess:
    """Rscript -e code with the temporary library first; RETICULATE_PYTHON and HIERCOMPARE_VENV only as given."""
    env = {k: v for k, v in os.environ.items() if k not in ("RETICULATE_PYTHON", "HIERCOMPARE_VENV", "R_LIBS")}
    env.update(R_LIBS=str(lib), **env_extra)
    return subprocess.run(["Rscript", "-e", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _testthat(path: str, lib: Path, **env_extra) -> tuple[tuple[int, int, int, int], str]:
    """(failed, errors, skipped, expectations) of a testthat file or folder run against the installed package.

    testthat counts a warning (e.g. lme4's convergence message on the reference fit, which depends on the BLAS
    thread count) as an expectation; it is shown in the text, not counted.
    """
    runner = "test_dir(path, reporter = 'summary', package = 'hiercompare', load_package = 'installed')" \
        if (ROOT / path).is_dir() else "test_file(path, reporter = 'summary')"
    code = (f"library(testthat); path <- '{path}'; res <- as.data.frame({runner});"
            "cat('\\nRESULT', sum(res$failed), sum(res$error), sum(res$skipped), sum(res$nb) - sum(res$warning), '\\n');"
            "quit(status = as.integer(sum(res$failed) + sum(res$error) > 0))")
    out = rscript(code, lib, **env_extra)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    result = [line for line in text.splitlines() if line.startswith("RESULT")][-1].split()
    return tuple(map(int, result[1:])), text


def test_r_cmd_install_then_library_exposes_the_documented_hc_functions(r_lib):
    code = ("library(hiercompare); ex <- sort(getNamespaceExports('hiercompare'));"
            "cat('EXPORTS', ex, '\\n'); cat('FROM', find.package('hiercompare'), '\\n');"
            "cat('VERSION', as.character(packageVersion('hiercompare')), '\\n');"
            "cat('HELP', ex[vapply(ex, function(f) length(help(f, package = 'hiercompare')) == 1L, TRUE)], '\\n');"
            "cat('PYTHON', reticulate::py_available(initialize = FALSE), '\\n')")
    out = rscript(code, r_lib)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.stdout.splitlines() if ln.strip()}
    assert lines["EXPORTS"] == EXPORTS
    assert Path(lines["FROM"][0]) == r_lib / "hiercompare"  # the copy just installed, not another one
    assert lines["HELP"] == EXPORTS  # each has its Rd page
    assert lines["VERSION"] == [hiercompare.__version__]  # one version for both sides
    assert lines["PYTHON"] == ["FALSE"]  # library() alone does not start Python


def test_the_r_package_tests_pass_against_the_python_package(r_lib):
    # tests/testthat is what R CMD check runs (make r-check); here nothing may skip: the Python package is there.
    # Among them: hc_tidy's fixed-effect terms equal lme4::fixef's names (sexM, livch3+, regionwest, x1:x2).
    (failed, errors, skipped, n), text = _testthat("tests/testthat", r_lib, HIERCOMPARE_VENV=str(VENV))
    assert (failed, errors, skipped) == (0, 0, 0) and n == 44, text[-3000:]  # 27 + test-weights.R's 17


@pytest.mark.slow
def test_reticulate_from_r(r_lib):
    (failed, errors, skipped, n), text = _testthat("tests/r/test_reticulate.R", r_lib, HIERCOMPARE_VENV=str(VENV))
    assert (failed, errors, skipped) == (0, 0, 0) and n == 23, text[-3000:]


def test_no_poetry_warning_from_the_repository_root_with_hiercompare_venv(r_lib):
    load = "invisible(hc_module()); cat('PREFIX', reticulate::import('sys')$prefix, '\\n')"
    out = rscript(f"library(hiercompare); {load}", r_lib, HIERCOMPARE_VENV=str(VENV))
    assert out.returncode == 0, out.stderr[-3000:]
    assert not POETRY.search(out.stderr), out.stderr
    assert f"PREFIX {VENV}" in out.stdout
    # control: reticulate's own selection of the same environment, in the same folder, warns (reticulate 1.28
    # takes hiercompare's pyproject.toml for a Poetry project); if this stops, reticulate no longer needs the guard
    ctrl = rscript(f"reticulate::use_virtualenv('{VENV}', required = TRUE); invisible(reticulate::import('hiercompare'))",
                   r_lib)
    assert ctrl.returncode == 0, ctrl.stderr[-3000:]
    assert re.search(r"appears to use Poetry", ctrl.stderr), ctrl.stderr


def test_no_poetry_warning_from_a_checkout_folder_when_reticulate_discovers_python(r_lib):
    # neither HIERCOMPARE_VENV nor RETICULATE_PYTHON: reticulate discovers python3 on the PATH (this venv's)
    path = f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    out = rscript("library(hiercompare); invisible(hc_module()); cat('PREFIX', reticulate::import('sys')$prefix)",
                  r_lib, cwd=ROOT / "tests", PATH=path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not POETRY.search(out.stderr), out.stderr
    assert f"PREFIX {VENV}" in out.stdout
    ctrl = rscript("invisible(reticulate::import('hiercompare'))", r_lib, cwd=ROOT / "tests", PATH=path)
    assert ctrl.returncode == 0, ctrl.stderr[-3000:]
    assert re.search(r"appears to use Poetry", ctrl.stderr), ctrl.stderr


def test_a_python_without_the_package_is_an_r_error_that_says_how_to_install(r_lib, tmp_path):
    bare = tmp_path / "bare_venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    out = rscript("library(hiercompare); r <- tryCatch(hc_simulate(seed = 1), error = conditionMessage);"
                  "cat('MESSAGE', r, '\\n')", r_lib, HIERCOMPARE_VENV=str(bare))
    assert out.returncode == 0, out.stderr[-3000:]
    msg = out.stdout.split("MESSAGE", 1)[1]
    assert "the hiercompare Python package cannot be imported" in msg
    assert f"by {bare}/bin/python (ModuleNotFoundError: No module named" in msg  # numpy first, then hiercompare
    assert "make install" in msg and "HIERCOMPARE_VENV" in msg
    # Python already running from another interpreter: HIERCOMPARE_VENV cannot take effect, and says so
    out = rscript(f"reticulate::use_python('{bare}/bin/python', required = TRUE); invisible(reticulate::py_config());"
                  "library(hiercompare); r <- tryCatch(hc_module(), error = conditionMessage); cat('MESSAGE', r, '\\n')",
                  r_lib, HIERCOMPARE_VENV=str(VENV))
    assert out.returncode == 0, out.stderr[-3000:]
    msg = out.stdout.split("MESSAGE", 1)[1]
    assert f"Python is already running in this R session from {bare}" in msg and "restart R" in msg


def test_committed_rd_files_and_namespace_are_what_roxygen_writes_from_r_sources(tmp_path):
    # R CMD check reads man/*.Rd and NAMESPACE, not the roxygen comments in R/: they must not drift apart
    have = subprocess.run(["Rscript", "-e", "cat(requireNamespace('roxygen2', quietly = TRUE))"],
                          capture_output=True, text=True, timeout=120)
    if have.stdout.strip() != "TRUE":
        pytest.skip("roxygen2 is not installed (apt-get install r-cran-roxygen2; make install adds it with R)")
    pkg = tmp_path / "hiercompare"
    pkg.mkdir()
    for name in ("DESCRIPTION", "LICENSE", "NAMESPACE"):
        shutil.copy(ROOT / name, pkg / name)
    for name in ("R", "man"):
        shutil.copytree(ROOT / name, pkg / name)
    for rd in (pkg / "man").glob("*.Rd"):
        rd.unlink()
    out = subprocess.run(["Rscript", "-e", "roxygen2::roxygenise()"], cwd=pkg, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    written = {p.name: p.read_text() for p in (pkg / "man").glob("*.Rd")}
    committed = {p.name: p.read_text() for p in (ROOT / "man").glob("*.Rd")}
    assert written == committed, "man/ is stale: run `make r-docs` and commit man/ and NAMESPACE"
    assert (pkg / "NAMESPACE").read_text() == (ROOT / "NAMESPACE").read_text()
    assert (pkg / "DESCRIPTION").read_text() == (ROOT / "DESCRIPTION").read_text()  # RoxygenNote unchanged
