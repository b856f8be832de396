"""Provenance: where a number came from (package versions, the git commit, the time, the machine).

Used by studies (their manifest), the demo (its report), the compare reports and the benchmarks (every
``bench_out/*.json`` records :func:`machine`), so that each of them states the same facts the same way.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from pathlib import Path

from ._version import __version__

#: Packages whose versions a study's numbers depend on (recorded when installed).
VERSION_PACKAGES = ("numpy", "pandas", "scipy", "statsmodels", "pyarrow", "dask", "distributed", "rpy2")


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def git_commit() -> str | None:
    """The commit of the checkout hiercompare runs from (None for an installed copy or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except Exception:
        return None


def package_versions(packages: tuple[str, ...] = VERSION_PACKAGES) -> dict[str, str]:
    """Versions of Python, hiercompare and ``packages`` (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"hiercompare": __version__, "python": platform.python_version()}
    for name in packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a benchmark figure was measured on: CPU model, cores, memory, load average, OS, date, git commit.

    Examples
    --------
    >>> sorted(machine())[:3]
    ['cores', 'cpu_model', 'date']
    """
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    mem = None
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        mem = round(pages * size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "memory_gib": mem, "load_average_1_5_15": load,
            "platform": platform.platform(), "python": platform.python_version(), "date": now(),
            "git_commit": git_commit()}


__all__ = ["VERSION_PACKAGES", "now", "git_commit", "package_versions", "cpu_model", "machine"]
