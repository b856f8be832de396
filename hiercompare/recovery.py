"""One fit against the truth that generated its data (the study layer aggregates these over replications).

``recovery(fit, truth)`` joins the two tidy frames on (effect, group, level, term) and gives, per parameter:
the estimate, its interval, the generating value (``truth``), the value realised in this data set
(``realized``: the SD or correlation of the group effects actually drawn, or the drawn effect itself),
``error = estimate - truth``, ``rel_error`` and ``covers`` (whether the 95% interval contains the truth;
missing where the backend gives no interval). ``df`` is the fit's (:data:`hiercompare.results.TIDY_COLUMNS`):
the t interval's df of a fixed effect, ``inf`` for a z interval; ``interval`` too (``"conditional_on_f"``: the
learners' intervals that treat the learned f(x) as known; ``covers`` is computed for them all the same, and must be
read with that label).

Note on ``ols``: its group deviations are sum-to-zero contrasts, so they estimate each group's effect minus
the mean of its siblings' drawn effects, and its intercept absorbs the mean of the drawn market effects.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .results import KEY, Fit, Truth

COLUMNS = KEY + ["backend", "estimate", "std_error", "conf_low", "conf_high", "df", "interval", "truth", "realized", "error",
                 "rel_error", "covers"]


def recovery(fit: Fit, truth: Truth) -> pd.DataFrame:
    est = fit.tidy()
    tru = truth.tidy()[KEY + ["estimate", "realized"]].rename(columns={"estimate": "truth"})
    out = est.merge(tru, on=KEY, how="inner")
    out["error"] = out["estimate"] - out["truth"]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["rel_error"] = np.where(out["truth"] != 0, out["error"] / out["truth"].abs(), np.nan)
    has_ci = out["conf_low"].notna() & out["conf_high"].notna()
    covers = (out["conf_low"] <= out["truth"]) & (out["truth"] <= out["conf_high"])
    out["covers"] = pd.array(np.where(has_ci, covers, pd.NA), dtype="boolean")
    return out[COLUMNS].reset_index(drop=True)
