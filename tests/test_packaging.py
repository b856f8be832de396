"""The Python package's layout: the R sources live in r_scripts/ at the repository root (the design card's place)
and travel inside the wheel as hiercompare/r_scripts; rbridge finds them in either place."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _r_sources() -> set[str]:
    return {p.name for p in (ROOT / "r_scripts").iterdir() if p.suffix in (".R", ".mk")}


def test_pyproject_lists_every_package_folder():
    # pyproject.toml lists the packages (find cannot map r_scripts/ into the package); a new subpackage that is
    # not listed would silently be missing from the wheel.
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    pkg_root = ROOT / "hiercompare"
    on_disk = {".".join(("hiercompare",) + p.parent.relative_to(pkg_root).parts) for p in pkg_root.rglob("__init__.py")}
    assert set(cfg["packages"]) == on_disk | {"hiercompare.r_scripts"}
    assert cfg["package-dir"] == {"hiercompare.r_scripts": "r_scripts"}
    assert not (pkg_root / "r_scripts").exists()


def test_checkout_finds_the_top_level_r_scripts():
    from hiercompare import rbridge

    assert {"common.R", "fit_lme4.R", "fit_lm.R", "fit_brms.R", "stan_makevars.mk"} <= _r_sources()
    assert rbridge.SCRIPTS == ROOT / "r_scripts"
    assert rbridge.scripts_dir() == ROOT / "r_scripts"


@pytest.mark.slow
def test_wheel_carries_the_r_scripts_and_rbridge_finds_them_installed(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("hiercompare", "r_scripts"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    out = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "whl"), str(src)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = (tmp_path / "whl").glob("hiercompare-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"hiercompare/r_scripts/{n}" for n in _r_sources()} <= names
    assert not any(n.startswith("r_scripts/") for n in names)  # nothing lands at the top of site-packages
    site = tmp_path / "site"
    out = subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    probe = "import hiercompare.rbridge as rb; print(rb.__file__); print(rb.SCRIPTS)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    module, scripts = out.stdout.split()
    assert Path(module).parent == site / "hiercompare"  # the installed copy, not the checkout
    assert Path(scripts) == site / "hiercompare" / "r_scripts"
    assert {p.name for p in Path(scripts).iterdir()} >= _r_sources()
