"""Fit one backend in a second Python process while this one goes on.

The demo fits brms this way: brms's two chains run in forked R processes for about a minute, and the other
backends fit meanwhile in the demo's own process instead of waiting their turn. The second process is a new
Python (``python -m hiercompare.aside IN.pkl OUT.pkl``) with one thread, so brms can fork its chains; it gets
the data, formula, family, seed and options in IN.pkl and writes its answer to OUT.pkl: the Fit, or why
there is none (backend unavailable, family not applicable, fit failed). Its console output goes to a log file
beside them, quoted in the reason when the process dies without an answer.
"""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd


class AsideFit:
    """A fit running in a second process. ``result()`` waits for it and returns its answer.

    Parameters
    ----------
    backend : str
        Registered backend name.
    data, formula, family, seed, options
        What :func:`hiercompare.fit` gets.
    workdir : path
        Folder for the hand-over files (removed by ``result()``).
    """

    def __init__(self, backend: str, data: pd.DataFrame, formula: str, family: str, seed: int | None,
                 options: dict, workdir: str | Path):
        from .runenv import child_environment

        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self._in = work / f".aside_{backend}_in.pkl"
        self._out = work / f".aside_{backend}_out.pkl"
        self._log = work / f".aside_{backend}.log"
        self._out.unlink(missing_ok=True)
        with open(self._in, "wb") as fh:
            pickle.dump({"backend": backend, "data": data, "formula": formula, "family": family, "seed": seed,
                         "options": dict(options)}, fh)
        self.waited = 0.0
        self.seconds = None
        self._ended = False
        self._t0 = time.perf_counter()
        with open(self._log, "wb") as log:
            # its own process group, so that cancel() also stops the processes it forks (brms's chains)
            self.proc = subprocess.Popen([sys.executable, "-m", "hiercompare.aside", str(self._in), str(self._out)],
                                         stdout=log, stderr=subprocess.STDOUT, env=child_environment(),
                                         start_new_session=True)

    def result(self, timeout: float = 3600.0) -> dict:
        """Wait for the process. Returns ``{"status": "ok", "fit": Fit}`` or ``{"status": s, "reason": why}``
        with s one of "unavailable", "not applicable", "failed"."""
        t = time.perf_counter()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            return {"status": "failed", "reason": f"no answer from the second process within {timeout:.0f} s"}
        finally:
            self.waited = time.perf_counter() - t
            self.seconds = time.perf_counter() - self._t0
        try:
            if self.proc.returncode == 0 and self._out.exists():
                self._ended = True  # a clean exit: mclapply waited for its forks, nobody is left in the group
                with open(self._out, "rb") as fh:
                    return pickle.load(fh)
            log = self._log.read_text(errors="replace").strip() if self._log.exists() else ""
            return {"status": "failed", "reason": f"the second process exited with code {self.proc.returncode} "
                                                  f"without an answer; its last output: {log[-600:]!r}"}
        finally:
            self._cleanup()

    def cancel(self) -> None:
        """Stop the process (and the forked chains it started) and remove the hand-over files."""
        if not self._ended:  # after a clean exit the group is gone and its number may be reused: leave it alone
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the process and whatever it forked
            except (ProcessLookupError, PermissionError):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        for path in (self._in, self._out, self._log):
            path.unlink(missing_ok=True)


def _answer(job: dict) -> dict:
    from .backends import backends
    from .errors import HierCompareError
    from .fitting import fit

    name = job["backend"]
    info = backends([name])[name]  # the demo's own check, here where the backend runs
    if not info["available"]:
        return {"status": "unavailable", "reason": info["reason"]}
    if job["family"] not in info["families"]:
        return {"status": "not applicable", "reason": f"fits families {info['families']}, not {job['family']}"}
    try:
        f = fit(job["data"], job["formula"], backend=name, family=job["family"], seed=job["seed"], **job["options"])
    except HierCompareError as exc:
        return {"status": "failed", "reason": str(exc)}
    return {"status": "ok", "fit": f}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m hiercompare.aside IN.pkl OUT.pkl", file=sys.stderr)
        return 2
    with open(args[0], "rb") as fh:
        job = pickle.load(fh)
    answer = _answer(job)
    tmp = Path(f"{args[1]}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        pickle.dump(answer, fh)
    os.replace(tmp, args[1])  # whole or absent: the caller never reads half an answer
    return 0


if __name__ == "__main__":
    sys.exit(main())
