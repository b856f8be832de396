"""The one place that talks to R (through rpy2).

* Availability is checked once and explained (no R, no rpy2, a missing R package), with the install hint.
* Data cross as R vectors and data.frames, labels as factors: nothing user-supplied is pasted into R code.
* The only text that reaches R's parser is a formula that :func:`r_formula` rebuilds from a parsed
  :class:`~hiercompare.spec.ModelSpec` and re-checks against a strict grammar.
* R functions live in the top-level ``r_scripts/*.R`` (shipped in the wheel as ``hiercompare/r_scripts``, see
  :func:`scripts_dir`); each returns one JSON string, parsed here.
* rpy2 runs R in this process: calls are serialised with a lock.
"""
from __future__ import annotations

import functools
import json
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BackendError, SpecError
from .spec import ModelSpec


def scripts_dir() -> Path:
    """The folder of the R sources that rpy2 sources.

    An installed wheel carries them inside the package (``hiercompare/r_scripts``: pyproject.toml maps the
    repository's top-level ``r_scripts/`` there); a checkout, or an editable install of it, has them beside the
    package, at the repository root. The first that holds ``common.R`` wins; if neither does, the installed
    location is returned and :func:`call` says what is missing.
    """
    here = Path(__file__).resolve().parent
    candidates = (here / "r_scripts", here.parent / "r_scripts")
    for folder in candidates:
        if (folder / "common.R").is_file():
            return folder
    return candidates[0]


SCRIPTS = scripts_dir()
INSTALL_HINT = (
    "run `make install` (on Debian as root it installs R and the R packages with apt); "
    "otherwise install R >= 4.2 with lme4 and jsonlite, then `pip install 'rpy2>=3.5.11,<3.6'`"
)
_RAW_LOCK = threading.RLock()
_SOURCED: set[str] = set()
_R_NAME = r"[A-Za-z][A-Za-z0-9_.]*"
_NAME = re.compile(rf"^{_R_NAME}$")
# The grammar of the formulas sent to R (as ModelSpec.to_formula writes them), the one check before R parses
# them: response ~ term + ... with the response a name or cbind(name, name) (both data columns), terms 0, 1,
# name(:name)*, offset(name) and (0|1 [+ name]* |/|| name(:name)*).
_R_TERM = (rf"(?:[01]|{_R_NAME}(?::{_R_NAME})*|offset\({_R_NAME}\)"
           rf"|\((?:[01])(?: \+ {_R_NAME})* \|\|? {_R_NAME}(?::{_R_NAME})*\))")
_R_RESPONSE = rf"(?:{_R_NAME}|cbind\({_R_NAME}, {_R_NAME}\)|{_R_NAME} \| trials\({_R_NAME}\))"
_FORMULA = re.compile(rf"^{_R_RESPONSE} ~ {_R_TERM}(?: \+ {_R_TERM})*$")


class _RSession:
    """The lock that serialises R calls, entered with rpy2's default converter made explicit.

    rpy2 keeps its active conversion rules in a ContextVar; threads that did not inherit it (Dask's worker
    threads, for one) fail with "Conversion rules for rpy2.robjects appear to be missing".
    """

    _local = threading.local()

    def __enter__(self):
        _RAW_LOCK.acquire()
        try:
            import rpy2.robjects as ro
            from rpy2.robjects.conversion import localconverter

            ctx = localconverter(ro.default_converter)
            ctx.__enter__()
            self._local.__dict__.setdefault("stack", []).append(ctx)
        except Exception:
            _RAW_LOCK.release()
            raise
        return self

    def __exit__(self, *exc):
        try:
            self._local.stack.pop().__exit__(*exc)
        finally:
            _RAW_LOCK.release()
        return False


_LOCK = _RSession()


@functools.lru_cache(maxsize=None)
def _base_availability() -> tuple[bool, str]:
    if "rpytools" in sys.modules:  # reticulate's helper module: this Python runs inside an R process
        return False, (
            "hiercompare is running inside R through reticulate, where rpy2 cannot start a second R "
            "(it would crash the session); fit the R backends from R itself (e.g. lme4::lmer) or run "
            "hiercompare from Python"
        )
    try:
        import rpy2  # noqa: F401
    except Exception as exc:
        return False, f"rpy2 is not installed ({exc}); {INSTALL_HINT}"
    saved = os.environ.get("LD_LIBRARY_PATH")
    try:
        with _LOCK:  # importing rpy2.robjects starts the embedded R
            import rpy2.robjects as ro

            _quiet_console()
            ro.r("invisible(TRUE)")
            # starting R prepends R's library folders (and the system's) to LD_LIBRARY_PATH; child processes
            # started later (study workers, Dask, subprocess tests) would then load the system libpython
            # instead of this interpreter's. This process has already loaded what it needs, so restore it.
            if saved is None:
                os.environ.pop("LD_LIBRARY_PATH", None)
            else:
                os.environ["LD_LIBRARY_PATH"] = saved
    except Exception as exc:
        return False, f"R cannot be started through rpy2 ({str(exc).splitlines()[0] if str(exc) else exc}); {INSTALL_HINT}"
    return True, ""


@functools.lru_cache(maxsize=None)
def availability(packages: tuple[str, ...] = ()) -> tuple[bool, str]:
    """(True, '') if R and every package in ``packages`` (plus jsonlite) can be used, else (False, why)."""
    ok, why = _base_availability()
    if not ok:
        return ok, why
    import rpy2.robjects as ro

    missing = []
    with _LOCK:
        for pkg in ("jsonlite",) + tuple(packages):
            if not _NAME.match(pkg):
                raise ValueError(f"bad R package name {pkg!r}")
            if not ro.r["requireNamespace"](pkg, quietly=True)[0]:
                missing.append(pkg)
    if missing:
        return False, f"R package(s) {missing} not installed; {INSTALL_HINT}"
    return True, ""


def _quiet_console() -> None:
    """Keep R's console chatter out of stdout; our R scripts capture warnings and messages themselves."""
    from rpy2.rinterface_lib import callbacks

    callbacks.consolewrite_warnerror = lambda s: None
    callbacks.consolewrite_print = lambda s: None


def _source(script: str) -> None:
    import rpy2.robjects as ro

    for name in ("common.R", script):
        if name not in _SOURCED:
            path = SCRIPTS / name
            if not path.is_file():
                raise BackendError(
                    f"hiercompare's R script {name} is missing (looked in {SCRIPTS}, and in r_scripts/ at the "
                    "repository root); reinstall the package (`pip install .`, or `make install` in a checkout)"
                )
            ro.r["source"](str(path))
            _SOURCED.add(name)


def call(script: str, function: str, *args, **kwargs) -> dict:
    """Source ``<SCRIPTS>/<script>`` once and call ``function``; it returns JSON, parsed here.

    An R error becomes :class:`BackendError` carrying R's message.
    """
    import rpy2.robjects as ro
    from rpy2.rinterface_lib.embedded import RRuntimeError

    with _LOCK:
        _source(script)
        try:
            res = ro.globalenv[function](*args, **kwargs)
        except RRuntimeError as exc:
            raise BackendError(f"R error in {function}: {exc}") from exc
    out = json.loads(res[0])
    if isinstance(out, dict) and "error" in out:
        raise BackendError(f"R error in {function}: {out['error']}")
    return out


def floats(x) -> object:
    import rpy2.robjects as ro

    with _LOCK:
        return ro.FloatVector(np.asarray(x, dtype=float))


def null() -> object:
    """R's NULL (an absent optional argument)."""
    import rpy2.robjects as ro

    return ro.NULL


def matrix(X: np.ndarray) -> object:
    import rpy2.robjects as ro

    X = np.asarray(X, dtype=float)
    with _LOCK:
        return ro.r["matrix"](ro.FloatVector(X.ravel(order="F")), nrow=X.shape[0], ncol=X.shape[1])


def dataframe(frame: pd.DataFrame, factors: dict[str, tuple[str, ...] | None]) -> object:
    """An R data.frame; columns in ``factors`` become factors (with the given level order, else sorted)."""
    import rpy2.robjects as ro

    with _LOCK:
        return _dataframe(ro, frame, factors)


def _dataframe(ro, frame, factors):
    cols = {}
    for name in frame.columns:
        if not _NAME.match(str(name)):
            raise SpecError(f"column name {name!r} cannot be passed to R; use letters, digits, '_' and '.'")
        s = frame[name]
        if name in factors:
            values = s.astype(str).to_numpy(dtype=object)
            levels = factors[name] or tuple(sorted(pd.unique(values)))
            cols[name] = ro.r["factor"](ro.StrVector(list(values)), levels=ro.StrVector(list(levels)))
        else:
            cols[name] = ro.FloatVector(s.to_numpy(dtype=float))
    return ro.DataFrame(cols)


def r_formula(spec: ModelSpec, fixed: list[str] | None = None, response: str | None = None) -> str:
    """Formula text for R, rendered by :meth:`ModelSpec.to_formula` (lme4 dialect: categorical terms bare,
    they are factors in the data) and checked against the formula grammar; ``fixed`` replaces the fixed part
    (brms names its coefficients its own way), ``response`` the left of ``~`` (brms: ``k | trials(n)``). Nothing
    outside that grammar reaches R's parser.
    """
    names = spec.variables + ((spec.failures_column,) if spec.has_trials else ())
    for n in names:
        if not _NAME.match(n):
            raise SpecError(f"{n!r} is not a valid R name")
    text = spec.to_formula("lme4", fixed=fixed, response=response)
    if not _FORMULA.match(text):  # defence in depth: the text must be exactly of the grammar's shape
        raise SpecError(f"refusing to send {text!r} to R: it is outside the formula grammar "
                        "(response ~ 0/1 + names + offset(name) + (1 + names | group))")
    return text


def model_frame(md, factors: dict[str, tuple[str, ...] | None] | None = None) -> object:
    """The R data.frame of every column an R formula of ``md.spec`` reads (:func:`r_formula`): the model's
    columns and, for ``cbind(s, n - s)``, the failures column hiercompare computed (``spec.failures_column``).
    Grouping columns are factors; so are the categorical fixed terms (with the fit's level order), and any
    other column in ``factors``."""
    spec = md.spec
    cols = list(spec.variables) + ([spec.failures_column] if spec.trials is not None else [])
    fac: dict[str, tuple[str, ...] | None] = {v: None for v in spec.grouping_variables}
    for t in spec.fixed:
        v = t.variables[0]
        if v in md.categories:
            fac[v] = md.categories[v]
    fac.update(factors or {})
    return dataframe(md.data[list(dict.fromkeys(cols))], fac)


@functools.lru_cache(maxsize=None)
def versions(packages: tuple[str, ...] = ()) -> dict[str, str]:
    ok, _ = _base_availability()
    if not ok:
        return {}
    import rpy2
    import rpy2.robjects as ro

    with _LOCK:
        _source("common.R")
        out = json.loads(ro.globalenv["hc_versions"](ro.StrVector(list(packages)))[0])
    out["rpy2"] = rpy2.__version__
    return out
