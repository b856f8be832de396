"""The parametric bootstrap on a user's own design: how each engine does on data like this.

A reference fit (native REML by default; for a binomial, Poisson or negative binomial outcome native's Laplace
ML fit) gives the parameters; :class:`~hiercompare.simulate.DesignScenario` keeps the user's rows, predictors,
tree, group sizes, offsets (exposure), binomial trials and prior weights and redraws the response N times from
the family (Gaussian with variance sigma^2 / w, successes out of each row's trials, Poisson with the exposure
in the mean, NB2 with the fitted size); every backend is
refitted on each draw by a :class:`~hiercompare.study.Study` (resumable, local processes or Dask), and
:func:`~hiercompare.performance.performance` gives bias, RMSE and the coverage of each backend's intervals with
Monte Carlo SEs against the reference values.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd

from .fitting import fit
from .performance import performance
from .simulate import DesignScenario
from .spec import ModelSpec

# the learners' default intervals are conditional on f(x): performance() leaves their coverage/modse empty and
# reports them as conditional_*, shown here beside the interval kind (issue 13 item 3)
SHOWN = ["backend", "effect", "group", "term", "interval", "truth", "n_rep", "n_used", "mean_estimate", "bias",
         "bias_mcse", "rmse", "rmse_mcse", "empse", "modse", "coverage", "coverage_mcse", "conditional_modse",
         "conditional_coverage", "conditional_coverage_mcse", "convergence"]


def bootstrap_design(data: pd.DataFrame, spec: ModelSpec, backends: list[str], replications: int, seed: int = 0,
                     workers: int = 1, scheduler=None, out: str | Path | None = None,
                     options: dict[str, dict] | None = None, reference: str = "native", method: str = "REML",
                     progress: Callable[[str], None] | None = None, weights=None) -> dict[str, pd.DataFrame]:
    """Simulate ``replications`` data sets from a reference fit on ``data``'s design and refit every backend.

    ``spec``'s family decides the draws (see :class:`~hiercompare.simulate.DesignScenario`); ``method`` (REML or
    ML) applies to the Gaussian reference fit only (a GLMM is fitted by maximum likelihood). ``weights``:
    Gaussian prior weights as :func:`~hiercompare.fit` takes them (a column of ``data`` or one number per row);
    the reference fit and every refit use them.

    Returns the tables ``bootstrap_summary`` (one row per backend and parameter: bias, RMSE, empirical and model
    SEs, coverage, each with its Monte Carlo SE, over the replications) and ``bootstrap_reference`` (the reference
    fit's values, the bootstrap's truth). ``out`` keeps the study's part files (a killed run resumes); without it
    they go to a temporary folder.
    """
    from .study import Study

    say = progress or (lambda msg: None)
    if replications < 1:
        raise ValueError(f"replications must be >= 1, got {replications}")
    ref = fit(data, spec, backend=reference, weights=weights,
              **({"method": method} if spec.family == "gaussian" else {}))
    sc = DesignScenario.from_fit(ref, data, name="bootstrap")  # keeps the weights; each refit gets them
    opts = {b: dict((options or {}).get(b, {})) for b in backends}
    opts = {b: o for b, o in opts.items() if o}
    st = Study([sc], replications=int(replications), backends=list(backends), options=opts, seed=int(seed),
               formula=spec.formula, name="bootstrap")
    ref_label = f"{reference} {method if spec.family == 'gaussian' else ref.method}"
    say(f"parametric bootstrap: {replications} data sets from the {ref_label} {spec.family} fit, "
        f"{len(backends)} backend(s) each")
    if out is None:
        with tempfile.TemporaryDirectory(prefix="hiercompare-bootstrap-") as tmp:
            table = st.run(tmp, workers=workers, scheduler=scheduler, progress=progress is not None)
    else:
        table = st.run(out, workers=workers, scheduler=scheduler, progress=progress is not None)
    perf = performance(table)
    perf = perf[perf["effect"].isin(["fixed", "ran_pars", ""])]
    summary = perf[[c for c in SHOWN if c in perf.columns]].reset_index(drop=True)
    refrows = ref.tidy(["fixed", "ran_pars"])[["effect", "group", "term", "estimate"]].rename(
        columns={"estimate": "reference_value"})
    refrows.insert(0, "reference", ref_label)
    return {"bootstrap_summary": summary, "bootstrap_reference": refrows}


__all__ = ["bootstrap_design"]
