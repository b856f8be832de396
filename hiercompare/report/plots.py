"""Figures for reports: matplotlib (Agg), returned as base64 PNG so the HTML is self-contained.

Every figure is drawn from a tidy table that the report also shows or writes out.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def group_effects_plot(estimates: pd.DataFrame, truth: pd.DataFrame, group: str, term: str, title: str) -> str:
    """Point estimate and 95% interval of one varying term per group and backend, with the truth marked.

    ``estimates``: tidy ran_vals rows (with ``backend``); ``truth``: tidy ran_vals rows of the Truth.
    """
    plt = _pyplot()
    est = estimates[(estimates["group"] == group) & (estimates["term"] == term)]
    tru = truth[(truth["group"] == group) & (truth["term"] == term)].set_index("level")["estimate"]
    labels = sorted(tru.index, key=_natural)
    backends = list(dict.fromkeys(est["backend"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(labels) + 2), 4.2))
    x = np.arange(len(labels))
    width = 0.8 / max(len(backends), 1)
    for i, b in enumerate(backends):
        sub = est[est["backend"] == b].set_index("level").reindex(labels)
        xs = x - 0.4 + width * (i + 0.5)
        yerr = np.vstack([sub["estimate"] - sub["conf_low"], sub["conf_high"] - sub["estimate"]])
        ax.errorbar(xs, sub["estimate"], yerr=np.where(np.isfinite(yerr), yerr, 0), fmt="o", ms=4, capsize=2,
                    label=b)
    ax.scatter(x, tru.reindex(labels), marker="x", color="black", s=50, zorder=5, label="truth (drawn)")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=45, ha="right")
    ax.set_ylabel(f"{term} deviation")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=min(len(backends) + 1, 5), loc="best")
    return _png(fig)


def variance_plot(rows: pd.DataFrame) -> str:
    """Estimated SDs/correlations per backend against the generating and realised values."""
    plt = _pyplot()
    params = list(dict.fromkeys(zip(rows["group"], rows["term"])))
    backends = list(dict.fromkeys(rows["backend"]))
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(params) + 1.5))
    y = np.arange(len(params))
    for i, b in enumerate(backends):
        sub = rows[rows["backend"] == b].set_index(["group", "term"])
        vals = [sub["estimate"].get(p, np.nan) for p in params]
        ax.scatter(vals, y + 0.12 * (i - len(backends) / 2), s=20, label=b)
    first = rows.drop_duplicates(["group", "term"]).set_index(["group", "term"])
    ax.scatter([first["truth"].get(p, np.nan) for p in params], y, marker="x", color="black", s=60, label="truth")
    ax.scatter([first["realized"].get(p, np.nan) for p in params], y, marker="+", color="grey", s=60,
               label="realised in data")
    ax.set_yticks(y)
    ax.set_yticklabels([f"{g}: {t}" for g, t in params])
    ax.set_xlabel("estimate")
    ax.set_title("Variance components")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def _natural(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(s))]
