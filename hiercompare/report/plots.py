"""Figures for reports: matplotlib (Agg), returned as base64 PNG so the HTML is self-contained.

Every figure is drawn from a tidy table that the report also shows or writes out.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd

from ..errors import HierCompareError
from ..spec import INTERCEPT


# backends whose estimates annotate the hierarchy diagram, in order of preference (the first that ran)
TREE_BACKENDS = ("native", "lme4", "mixedlm", "pymc", "lightgbm", "torch")

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


# ---------------------------------------------------------------------------------------------- study report
def _grid(plt, n: int, ncols: int, width: float, height: float):
    """A figure with ``n`` panels in rows of ``ncols``; unused panels are hidden. Returns (fig, flat axes)."""
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def estimates_vs_truth_plot(rows: pd.DataFrame, title: str = "") -> str:
    """Every replication's estimate per backend, one panel per parameter, with the generating value marked.

    Parameters
    ----------
    rows : DataFrame
        Study result rows (one scenario; ``fixed`` and ``ran_pars``) with ``backend``, ``effect``, ``group``,
        ``term``, ``estimate`` and ``truth``.
    title : str
        Figure title.

    Returns
    -------
    str
        Base64 PNG.
    """
    plt = _pyplot()
    rows = rows[rows["estimate"].notna()]
    params = list(dict.fromkeys(zip(rows["effect"], rows["group"], rows["term"])))
    backends = list(dict.fromkeys(rows["backend"]))
    fig, axes = _grid(plt, max(len(params), 1), 4, 3.3, 2.7)
    rng = np.random.default_rng(0)  # horizontal jitter only
    for ax, (eff, grp, term) in zip(axes, params):
        sub = rows[(rows["effect"] == eff) & (rows["group"] == grp) & (rows["term"] == term)]
        for i, b in enumerate(backends):
            v = sub.loc[sub["backend"] == b, "estimate"].to_numpy(dtype=float)
            ax.scatter(i + rng.uniform(-0.18, 0.18, len(v)), v, s=9, alpha=0.6)
            if len(v):
                ax.plot([i - 0.3, i + 0.3], [v.mean()] * 2, color="black", lw=1.2)
        tv = sub["truth"].dropna()
        if len(tv):
            ax.axhline(float(tv.mean()), color="red", lw=1, ls="--", label="truth")
        ax.set_xticks(range(len(backends)))
        ax.set_xticklabels(backends, rotation=40, ha="right", fontsize=7)
        ax.set_title(f"{grp + ': ' if grp else ''}{term}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def zip_plot(rows: pd.DataFrame, title: str = "") -> str:
    """Zip plot of confidence intervals (Morris, White & Crowther 2019, Fig. 4), one panel per backend x parameter.

    Within a panel the replications' 95% intervals are drawn horizontally, ranked by
    ``|z| = |estimate - truth| / std_error`` (where a backend gives no SE, the interval's half-width on the truth's
    side / 1.96 stands in: profile, bootstrap and posterior intervals are often asymmetric);
    the vertical axis is the fractional centile of ``|z|``. Intervals that cover the truth are blue, those that
    miss it red; the panel title gives the coverage and its Monte Carlo SE (``CONDITIONAL on f(x): coverage``
    where the rows' ``interval`` column says ``conditional_on_f``: the learners' intervals that treat their learned
    f(x) as known), and a dotted line marks the 95th centile (above it, intervals should miss).

    Parameters
    ----------
    rows : DataFrame
        Study result rows with ``backend``, ``effect``, ``group``, ``term``, ``estimate``, ``std_error``,
        ``conf_low``, ``conf_high`` and ``truth``; rows without both interval ends are left out.
    title : str
        Figure title.

    Returns
    -------
    str
        Base64 PNG ("" when no row has an interval).
    """
    plt = _pyplot()
    ok = rows[np.isfinite(rows["conf_low"]) & np.isfinite(rows["conf_high"]) & rows["truth"].notna()]
    if ok.empty:
        return ""
    cells = list(dict.fromkeys(zip(ok["backend"], ok["effect"], ok["group"], ok["term"])))
    fig, axes = _grid(plt, len(cells), 4, 3.0, 2.8)
    for ax, (b, eff, grp, term) in zip(axes, cells):
        sub = ok[(ok["backend"] == b) & (ok["effect"] == eff) & (ok["group"] == grp) & (ok["term"] == term)]
        est, lo, hi, t = (sub[c].to_numpy(dtype=float) for c in ("estimate", "conf_low", "conf_high", "truth"))
        se = sub["std_error"].to_numpy(dtype=float)
        # no SE (profile, bootstrap, posterior intervals: often asymmetric): the half-width on the truth's side
        # over 1.96, so that an interval misses exactly when |z| > 1.96
        side = np.where(t < est, est - lo, hi - est) / 1.96
        se = np.where(np.isfinite(se) & (se > 0), se, side)
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.abs(est - t) / se
        z = np.where(np.isfinite(z), z, np.inf)
        order = np.argsort(z, kind="mergesort")
        n = len(order)
        centile = (np.arange(n) + 0.5) / n * 100
        cover = (lo <= t) & (t <= hi)
        for c, k in zip(centile, order):
            ax.plot([lo[k], hi[k]], [c, c], color="#1f77b4" if cover[k] else "#d62728", lw=1.4 if n < 60 else 0.8)
        ax.axvline(float(np.mean(t)), color="black", lw=0.8)
        ax.axhline(95, color="grey", lw=0.8, ls=":")
        p = cover.mean()
        mcse = np.sqrt(p * (1 - p) / n)
        ax.set_ylim(0, 100)
        cond = "interval" in sub and sub["interval"].astype(str).str.contains("conditional_on_f").any()
        what = "CONDITIONAL on f(x):\ncoverage" if cond else "coverage"  # its own line: fits the panel width
        ax.set_title(f"{b}\n{grp + ': ' if grp else ''}{term}\n{what} {p:.3f} (MCSE {mcse:.3f}), n={n}", fontsize=7)
        ax.set_ylabel("centile of |z|", fontsize=7)
        ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _mpl(s: object, limit: int = 0) -> str:
    """A label as matplotlib text: ``$`` escaped (a group called ``$5`` is not mathtext), cut to ``limit`` chars."""
    t = str(s)
    if limit and len(t) > limit:
        t = t[: limit - 1] + "\u2026"
    return t.replace("$", r"\$")


def _extremes(n: int, max_levels: int) -> np.ndarray:
    """Positions kept of ``n`` ranked items: all when ``n <= max_levels``, else the lowest and highest halves."""
    if n <= max_levels:
        return np.arange(n)
    lo = max(max_levels, 2) // 2
    hi = max(max_levels, 2) - lo
    return np.r_[np.arange(lo), np.arange(n - hi, n)]


def _ranked(levels: list[str], key: pd.Series) -> list[str]:
    """``levels`` sorted by ``key`` (ascending; missing keys last), ties by natural label order."""
    k = pd.to_numeric(key.reindex(levels), errors="coerce")

    def sort_key(lv):
        v = k.get(lv, np.nan)
        return (not np.isfinite(v), v if np.isfinite(v) else 0.0, _natural(lv))

    return sorted(levels, key=sort_key)


#: Columns of :func:`caterpillar_table`.
CATERPILLAR_COLUMNS = ["backend", "level", "estimate", "conf_low", "conf_high", "rank", "shown", "n_levels"]


def caterpillar_table(tidy: pd.DataFrame, group: str, term: str = INTERCEPT, backends: list[str] | None = None,
                      max_levels: int = 60, order_by: str | None = None) -> pd.DataFrame:
    """The groups' deviations of one grouping factor and term per backend, ranked, with which ones are drawn.

    Parameters
    ----------
    tidy : DataFrame
        Tidy rows of one or more fits (``Fit.tidy()`` concatenated; a ``backend`` column); only the
        ``ran_vals`` rows of ``group`` and ``term`` are used.
    group : str
        The grouping factor as the formula writes it (``"batch"``, ``"batch:cask"``).
    term : str
        The varying term (``"(Intercept)"`` or a slope's name).
    backends : list of str, optional
        Backends in panel order (default: every backend with rows, in order of appearance); a named backend
        without rows is left out.
    max_levels : int
        With more groups than this, only the lowest and highest ``max_levels / 2`` of the ranking are drawn
        (``shown``); the others stay in the table.
    order_by : str, optional
        The backend whose estimates rank the groups (default: the first backend); a group it lacks is ranked by
        the other backends' mean.

    Returns
    -------
    DataFrame
        :data:`CATERPILLAR_COLUMNS`: one row per backend and group with the estimate and its 95% interval
        (NaN where the backend gives none), ``rank`` (1 = lowest), ``shown`` and ``n_levels`` (groups in all);
        empty when no backend has rows.

    Examples
    --------
    >>> t = caterpillar_table(pd.concat([native.tidy(), ols.tidy()]), "batch")  # doctest: +SKIP
    >>> png = caterpillar_plot(t, title="batch deviations")  # doctest: +SKIP
    """
    rv = tidy[(tidy["effect"] == "ran_vals") & (tidy["group"] == group) & (tidy["term"] == term)]
    present = list(dict.fromkeys(rv["backend"]))
    use = [b for b in (backends if backends is not None else present) if b in present]
    if not use:
        return pd.DataFrame(columns=CATERPILLAR_COLUMNS)
    out = rv[rv["backend"].isin(use)][["backend", "level", "estimate", "conf_low", "conf_high"]].copy()
    out["level"] = out["level"].astype(str)
    for c in ("estimate", "conf_low", "conf_high"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype(float)
    ref = order_by if order_by in use else use[0]
    levels = list(dict.fromkeys(out["level"]))
    key = out[out["backend"] == ref].groupby("level")["estimate"].first().reindex(levels)
    key = key.fillna(out.groupby("level")["estimate"].mean().reindex(levels))
    order = _ranked(levels, key)
    rank = {lv: i + 1 for i, lv in enumerate(order)}
    keep = {order[i] for i in _extremes(len(order), max_levels)}
    out["rank"] = out["level"].map(rank).astype(int)
    out["shown"] = out["level"].isin(keep)
    out["n_levels"] = len(order)
    out["_b"] = out["backend"].map({b: i for i, b in enumerate(use)})
    return out.sort_values(["_b", "rank"]).drop(columns="_b").reset_index(drop=True)[CATERPILLAR_COLUMNS]


def caterpillar_plot(rows: pd.DataFrame, truth: pd.Series | None = None, title: str = "",
                     max_levels: int = 60) -> str:
    """Caterpillar plot: a grouping factor's deviations sorted, with 95% intervals, one panel per backend.

    Every panel ranks the groups the same way, so a group sits on the same row in each. With more than
    ``max_levels`` groups, the lowest and highest halves of the ranking are drawn and the gap between them
    says how many are hidden (the table keeps them all).

    Parameters
    ----------
    rows : DataFrame
        Either a :func:`caterpillar_table` (its ``rank`` and ``shown`` are used as they are), or ``ran_vals`` rows
        of one grouping factor and term with ``backend``, ``level``, ``estimate``, ``conf_low`` and
        ``conf_high`` (ranked here: by ``truth`` when given, else by the first backend's estimates).
    truth : Series, optional
        Simulated data only: the drawn effect per level (index: level label), marked with a cross.
    title : str
        Figure title.
    max_levels : int
        At most this many groups drawn (when ``rows`` is not already a table).

    Returns
    -------
    str
        Base64 PNG ("" when there is no row).
    """
    plt = _pyplot()
    if "rank" not in rows.columns or "shown" not in rows.columns:
        if truth is not None and len(truth):
            tr = pd.to_numeric(truth, errors="coerce")
            tr.index = tr.index.astype(str)
            levels = list(dict.fromkeys(list(tr.index) + list(rows["level"].astype(str))))
            order = _ranked(levels, tr.reindex(levels))
            keep = {order[i] for i in _extremes(len(order), max_levels)}
            rows = rows.assign(level=rows["level"].astype(str))
            rows = rows.assign(rank=rows["level"].map({lv: i + 1 for i, lv in enumerate(order)}),
                               shown=rows["level"].isin(keep), n_levels=len(order))
        else:
            g = rows.assign(effect="ran_vals", group="_", term="_")
            rows = caterpillar_table(g, "_", "_", max_levels=max_levels)
    if rows.empty:
        return ""
    n_levels = int(rows["n_levels"].max())
    shown = rows[rows["shown"].astype(bool)]
    order = list(shown.drop_duplicates("level").sort_values("rank")["level"])
    hidden = n_levels - len(order)
    # rows of the drawing: the low end, a gap row when groups are hidden, the high end
    ypos, y = {}, 0.0
    ranks = shown.drop_duplicates("level").set_index("level")["rank"]
    gap_at = None
    for i, lv in enumerate(order):
        if hidden and i > 0 and ranks[lv] - ranks[order[i - 1]] > 1:
            gap_at = y + 0.5
            y += 2.0
        ypos[lv] = y
        y += 1.0
    backends = list(dict.fromkeys(rows["backend"]))
    n = len(backends)
    ncols = min(n, 4)
    fig, axes = _grid(plt, n, ncols, 2.45 if ncols == 4 else 3.1, max(2.6, 0.16 * (y + 1) + 1.0))
    yy = np.array([ypos[lv] for lv in order])
    tr = None
    if truth is not None and len(truth):
        tr = pd.to_numeric(truth, errors="coerce")
        tr.index = tr.index.astype(str)
    for k, (ax, b) in enumerate(zip(axes, backends)):
        sub = shown[shown["backend"] == b].set_index("level").reindex(order)
        est = sub["estimate"].to_numpy(dtype=float)
        lo, hi = sub["conf_low"].to_numpy(dtype=float), sub["conf_high"].to_numpy(dtype=float)
        has = np.isfinite(lo) & np.isfinite(hi)
        ax.hlines(yy[has], lo[has], hi[has], color="#1f77b4", lw=1)
        ax.scatter(est, yy, s=12, color="#1f77b4", zorder=3, label="estimate (95% interval)")
        if tr is not None:
            ax.scatter(tr.reindex(order).to_numpy(dtype=float), yy, marker="x", s=16, color="red", zorder=4,
                       label="truth (drawn)")
        ax.axvline(0, color="grey", lw=0.6)
        if gap_at is not None:
            ax.axhspan(gap_at - 0.5, gap_at + 1.5, color="#f0f0f0", zorder=0)
            ax.text(0.5, gap_at + 0.5, f"\u22ee {hidden:,} groups hidden \u22ee", transform=ax.get_yaxis_transform(),
                    ha="center", va="center", fontsize=8, color="#555555")
        ax.set_title(_mpl(b), fontsize=9)
        ax.set_yticks(yy)
        ax.set_ylim(-0.8, y - 0.2)
        if k % ncols == 0:
            ax.set_yticklabels([_mpl(lv, 22) for lv in order], fontsize=8 if len(order) <= 40 else 7)
        else:
            ax.set_yticklabels([])
        ax.tick_params(axis="x", labelsize=8)
        if not np.isfinite(est).any():
            ax.text(0.5, 0.5, "no estimates", transform=ax.transAxes, ha="center", fontsize=9, color="#555555")
    if axes:
        axes[0].legend(fontsize=7, loc="lower right")
    if hidden:
        n_low = int(sum(ypos[lv] < gap_at for lv in order)) if gap_at is not None else len(order)
        title = (f"{title}\n" if title else "") + (
            f"{len(order)} of {n_levels:,} groups drawn (the {n_low} lowest and {len(order) - n_low} highest); "
            f"{hidden:,} hidden")
    fig.suptitle(_mpl(title), fontsize=10)
    lines = _mpl(title).count("\n") + 1 if title else 0
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.2 * lines + 0.05) / fig.get_figheight()))
    return _png(fig)


def bland_altman_plot(pairs: pd.DataFrame, a: str, b: str, title: str = "") -> str:
    """Bland-Altman plot of two backends' paired estimates: difference ``a - b`` against their mean.

    Parameters
    ----------
    pairs : DataFrame
        One row per paired parameter estimate with ``est_a``, ``est_b`` and ``effect`` (colour).
    a, b : str
        Backend names (axis labels).
    title : str
        Figure title.

    Returns
    -------
    str
        Base64 PNG with the mean difference and the 95% limits of agreement (mean +- 1.96 SD) drawn.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    diff = pairs["est_a"].to_numpy(dtype=float) - pairs["est_b"].to_numpy(dtype=float)
    mean = (pairs["est_a"].to_numpy(dtype=float) + pairs["est_b"].to_numpy(dtype=float)) / 2
    for eff in dict.fromkeys(pairs["effect"]):
        m = (pairs["effect"] == eff).to_numpy()
        ax.scatter(mean[m], diff[m], s=8, alpha=0.6, label=eff)
    if len(diff):
        md = float(np.mean(diff))
        sd = float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0
        ax.axhline(md, color="black", lw=1, label=f"mean difference {md:.3g}")
        for v in (md - 1.96 * sd, md + 1.96 * sd):
            ax.axhline(v, color="black", lw=0.8, ls="--")
        ax.set_title((title + "\n" if title else "") + f"limits of agreement [{md - 1.96 * sd:.3g}, {md + 1.96 * sd:.3g}]",
                     fontsize=9)
    ax.set_xlabel(f"mean of {a} and {b}")
    ax.set_ylabel(f"{a} - {b}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


#: Columns of :func:`hierarchy_table`.
HIERARCHY_COLUMNS = ["row", "depth", "group", "level", "name", "parent", "estimate", "n", "kind", "hidden",
                     "children", "children_shown", "n_groups"]


def hierarchy_inputs(fit, estimates: pd.DataFrame | None = None,
                     term: str = INTERCEPT) -> tuple[str, float | None, list[pd.DataFrame]]:
    """The tree of a fit with each group's offset: the arguments of :func:`hierarchy_table` / :func:`hierarchy_plot`.

    Parameters
    ----------
    fit : Fit
        A fit with its data (``fit.model``): the tree (labels, parents, rows per group) comes from it.
    estimates : DataFrame, optional
        Tidy rows whose ``ran_vals`` of ``term`` give the offsets, and whose fixed ``(Intercept)`` the root's
        value (default: ``fit.tidy()``; pass another backend's tidy frame fitted on the same data to annotate
        this tree with its estimates).
    term : str
        The varying term shown (a level without it gets no offset, NaN).

    Returns
    -------
    (str, float or None, list of DataFrame)
        The root's name, the national intercept (None without one) and one frame per level, top first, with
        ``group``, ``level`` (label), ``parent`` (the parent's label; the root's name at the top), ``n`` (rows)
        and ``estimate``.

    Examples
    --------
    >>> png = hierarchy_plot(*hierarchy_inputs(native_fit), title="native")  # doctest: +SKIP
    """
    if fit.model is None:
        raise HierCompareError(f"{fit.backend}: this Fit was loaded without its data, so its tree is unknown; refit it")
    h = fit.model.hierarchy
    est = fit.tidy() if estimates is None else estimates
    fx = est[(est["effect"] == "fixed") & (est["term"] == INTERCEPT)]["estimate"]
    root_value = float(fx.iloc[0]) if len(fx) and pd.notna(fx.iloc[0]) else None
    rv = est[(est["effect"] == "ran_vals") & (est["term"] == term)]
    levels, prev = [], None
    for lv in h.levels:
        labels = np.asarray(lv.labels).astype(str)
        parent = np.full(len(labels), str(h.root), dtype=object) if prev is None else prev[lv.parent]
        e = rv[rv["group"] == lv.group].assign(level=lambda d: d["level"].astype(str))
        e = pd.to_numeric(e.drop_duplicates("level").set_index("level")["estimate"], errors="coerce")
        levels.append(pd.DataFrame({"group": lv.group, "level": labels, "parent": parent, "n": lv.counts(),
                                    "estimate": e.reindex(labels).to_numpy(dtype=float)}))
        prev = labels
    return str(h.root), root_value, levels


def hierarchy_table(root: str, root_value: float | None, levels: list[pd.DataFrame], max_top: int = 15,
                    max_children: int = 5, expand: int = 3, order: str = "offset") -> pd.DataFrame:
    """The rows :func:`hierarchy_plot` draws: the root, the groups shown, and a row per set of hidden groups.

    A large tree cannot be drawn whole: the top level shows ``max_top`` groups, and the first ``expand`` shown
    groups of each level show their ``max_children`` first children; a row of kind ``"hidden"`` counts the
    siblings left out, and ``children`` / ``children_shown`` say how many children each group has and shows.

    Parameters
    ----------
    root : str
        Name of the root (the population every group belongs to).
    root_value : float or None
        The national intercept, written at the root.
    levels : list of DataFrame
        One frame per level, top first, with ``level`` (label) and ``estimate`` (the group's offset; NaN for
        none); optionally ``group`` (the grouping factor's name), ``parent`` (the parent's label; default: the
        label's part before its last ``:``, as in ``market:submarket`` labels) and ``n`` (rows in the group).
    max_top, max_children, expand : int
        How much is drawn (see above).
    order : str
        Which groups come first: ``"offset"`` (largest absolute offset), ``"size"`` (most rows; needs ``n``)
        or ``"label"``.

    Returns
    -------
    DataFrame
        :data:`HIERARCHY_COLUMNS` in drawing order: ``kind`` is ``"root"``, ``"group"`` or ``"hidden"``
        (``hidden``: how many siblings that row stands for; ``name`` then says so); ``n_groups`` is the number
        of groups at the row's level in the whole tree, drawn or not.
    """
    if order not in ("offset", "size", "label"):
        raise ValueError(f"order must be 'offset', 'size' or 'label', got {order!r}")
    nodes: dict = {}  # (depth, label) -> dict
    kids: dict = {(0, str(root)): []}
    names = []
    for d, lv in enumerate(levels, start=1):
        g = str(lv["group"].iloc[0]) if "group" in lv.columns and len(lv) else f"level {d}"
        names.append(g)
        labels = lv["level"].astype(str).to_numpy()
        est = pd.to_numeric(lv["estimate"], errors="coerce").to_numpy(dtype=float) if "estimate" in lv else \
            np.full(len(lv), np.nan)
        size = pd.to_numeric(lv["n"], errors="coerce").to_numpy(dtype=float) if "n" in lv else np.full(len(lv), np.nan)
        if d == 1:
            parents = [str(root)] * len(lv)
        elif "parent" in lv.columns:
            parents = [str(p) if pd.notna(p) else lab.rsplit(":", 1)[0] for p, lab in zip(lv["parent"], labels)]
        else:
            parents = [lab.rsplit(":", 1)[0] for lab in labels]
        for lab, e, n, p in zip(labels, est, size, parents):
            short = lab[len(p) + 1:] if d > 1 and lab.startswith(p + ":") else lab
            nodes[(d, lab)] = dict(depth=d, group=g, level=lab, name=short, parent=p, estimate=e, n=n)
            kids.setdefault((d - 1, p), []).append((d, lab))
            kids.setdefault((d, lab), [])

    def rank_key(key):
        r = nodes[key]
        if order == "offset":
            return (not np.isfinite(r["estimate"]), -abs(r["estimate"]) if np.isfinite(r["estimate"]) else 0.0,
                    _natural(r["level"]))
        if order == "size":
            return (not np.isfinite(r["n"]), -r["n"] if np.isfinite(r["n"]) else 0.0, _natural(r["level"]))
        return (_natural(r["level"]),)

    totals = {d: len(lv) for d, lv in enumerate(levels, start=1)}
    rows = [dict(depth=0, group="", level=str(root), name=str(root), parent="",
                 estimate=np.nan if root_value is None else float(root_value), n=np.nan, kind="root", hidden=0,
                 children=len(kids[(0, str(root))]), children_shown=0, n_groups=1)]
    expanded = {d: 0 for d in range(len(levels) + 1)}

    def visit(key, row_index):
        d = key[0]
        children = sorted(kids.get(key, []), key=rank_key)
        if d == 0:
            limit = max_top
        elif expanded[d] < expand:
            limit = max_children
        else:
            limit = 0
        if limit and children:
            expanded[d] += 1
        shown = children[:limit]
        rows[row_index]["children_shown"] = len(shown)
        for c in shown:
            rows.append({**nodes[c], "kind": "group", "hidden": 0, "children": len(kids.get(c, [])),
                         "children_shown": 0, "n_groups": totals[c[0]]})
            visit(c, len(rows) - 1)
        if shown and len(children) > len(shown):
            k = len(children) - len(shown)
            what = names[d] if d < len(names) else "groups"
            rows.append(dict(depth=d + 1, group=what, level="", name=f"\u2026 {k:,} more {what} groups not drawn",
                             parent=key[1], estimate=np.nan, n=np.nan, kind="hidden", hidden=k, children=0,
                             children_shown=0, n_groups=totals[d + 1]))

    visit((0, str(root)), 0)
    out = pd.DataFrame(rows)
    out.insert(0, "row", np.arange(len(out)))
    return out[HIERARCHY_COLUMNS]


def hierarchy_note(table: pd.DataFrame, levels: list[str] | None = None) -> str:
    """What a :func:`hierarchy_table` draws of each level, as one sentence for a caption.

    E.g. ``"school: 15 of 65 groups drawn (50 hidden), by largest offset"``; a level drawn whole says
    ``"all 10 groups drawn"``. ``levels`` names the levels (default: the table's ``group``).
    """
    parts = []
    body = table[table["kind"] != "root"]
    for d in sorted(set(body["depth"])):
        sub = body[body["depth"] == d]
        shown = int((sub["kind"] == "group").sum())
        total = int(sub["n_groups"].max())
        name = levels[d - 1] if levels and d <= len(levels) else str(sub["group"].iloc[0])
        parts.append(f"{name}: all {total:,} groups drawn" if shown >= total else
                     f"{name}: {shown:,} of {total:,} groups drawn ({total - shown:,} hidden)")
    return "; ".join(parts)


def _text_inches(text: str, size: float) -> float:
    """Width in inches of ``text`` rendered in matplotlib's default font at ``size`` points."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    w, _, _ = RendererAgg(10, 10, 72).get_text_width_height_descent(text, FontProperties(size=size), ismath=False)
    return w / 72.0


def hierarchy_plot(root: str, root_value: float | None, levels: list[pd.DataFrame], title: str = "",
                   max_top: int = 15, max_children: int = 5, expand: int = 3, order: str = "offset") -> str:
    """The tree root -> level 1 -> level 2 ... as an indented diagram, each group annotated with its offset.

    Each drawn group (:func:`hierarchy_table`) is a row: its label, its estimated offset (and rows, when
    known) beside it, and a bar of the offset on a common scale on the right; the root carries the national
    intercept. Rows of hidden groups say how many siblings are not drawn, and the caption
    (:func:`hierarchy_note`) counts them per level. The figure is at most 10 inches wide at 110 dpi, so a
    report 1,150 px wide shows it unscaled and its text is at least 8 pt (12 px).

    Parameters
    ----------
    root, root_value, levels, max_top, max_children, expand, order
        As :func:`hierarchy_table` (see :func:`hierarchy_inputs` to build them from a Fit).
    title : str
        Figure title (should say which backend).

    Returns
    -------
    str
        Base64 PNG.
    """
    plt = _pyplot()
    t = hierarchy_table(root, root_value, levels, max_top=max_top, max_children=max_children, expand=expand,
                        order=order)
    n_rows = len(t)
    depth = int(t["depth"].max()) if n_rows else 0
    colours = ["#444444", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
    y = -t["row"].to_numpy(dtype=float)
    ypos = {}
    for r, yy in zip(t.itertuples(), y):
        if r.kind != "hidden":
            ypos[(r.depth, r.level)] = yy
    texts = []
    for r in t.itertuples():
        if r.kind == "hidden":
            txt = r.name
        elif r.kind == "root":
            txt = _mpl(r.name, 40) + ("" if not np.isfinite(r.estimate) else f"   national intercept {r.estimate:.4g}")
        else:
            txt = _mpl(r.name, 30)
            if np.isfinite(r.estimate):
                txt += f"   {r.estimate:+.3g}"
            extra = []
            if np.isfinite(r.n):
                extra.append(f"n={int(r.n):,}")
            if r.children and not r.children_shown:
                extra.append(f"{r.children:,} below, not drawn")
            if extra:
                txt += "   (" + ", ".join(extra) + ")"
        texts.append(txt)
    # the tree's x axis is in inches: an indent of 0.38 in per level, then the text as wide as it renders
    dx = 0.38
    text_in = max(r.depth * dx + 0.1 + _text_inches(txt, 9) for r, txt in zip(t.itertuples(), texts)) + 0.25
    text_in = min(max(text_in, 3.0), 7.2)
    bars_in = 2.8
    fig, (ax, axb) = plt.subplots(1, 2, figsize=((text_in + bars_in) * 1.08, 0.27 * n_rows + 1.4), sharey=True,
                                  gridspec_kw=dict(width_ratios=[text_in, bars_in], wspace=0.03))
    fig.subplots_adjust(left=0.01, right=0.99)
    ax_in = ax.get_position().width * fig.get_figwidth()  # the tree axes' width: its x unit is one inch
    for r, yy, txt in zip(t.itertuples(), y, texts):
        x = r.depth * dx
        if r.depth > 0:
            py = ypos.get((r.depth - 1, r.parent), yy)
            px = (r.depth - 1) * dx
            ax.plot([px, px, x - 0.06], [py, yy, yy], color="#bbbbbb", lw=0.8, zorder=1)
        if r.kind == "hidden":
            ax.text(x, yy, _mpl(txt), ha="left", va="center", fontsize=8.5, style="italic", color="#777777")
            continue
        colour = colours[min(r.depth, len(colours) - 1)]
        ax.scatter([x], [yy], s=22, color=colour, zorder=3)
        ax.text(x + 0.1, yy, txt, ha="left", va="center", fontsize=9 if r.depth < 2 else 8.5, color="#222222")
        if r.kind == "group" and np.isfinite(r.estimate):
            axb.barh([yy], [r.estimate], height=0.6, color=colour, alpha=0.8)
    ax.set_xlim(-0.1, ax_in - 0.1)
    ax.set_ylim(-n_rows + 0.4, 0.7)
    ax.axis("off")
    axb.axvline(0, color="#555555", lw=0.8)
    axb.set_xlabel("estimated offset", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    axb.xaxis.set_major_locator(MaxNLocator(5))
    axb.tick_params(axis="x", labelsize=8)
    axb.tick_params(axis="y", left=False, labelleft=False)
    for side in ("left", "right", "top"):
        axb.spines[side].set_visible(False)
    for d in range(1, depth + 1):
        axb.scatter([], [], color=colours[min(d, len(colours) - 1)], s=22,
                    label=_mpl(t.loc[(t["depth"] == d) & (t["kind"] == "group"), "group"].iloc[0])
                    if ((t["depth"] == d) & (t["kind"] == "group")).any() else f"level {d}")
    if depth:
        axb.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.06 * 20 / max(n_rows, 20) - 0.04),
                   frameon=False, ncol=1)
    first = {"offset": "by |offset|, largest first", "size": "by rows, largest first", "label": "by label"}[order]
    note = hierarchy_note(t).replace("; ", "\n") + f"\n(groups ordered {first})"
    ax.set_title(_mpl((title + "\n" if title else "") + note), fontsize=9.5, loc="left")
    return _png(fig)


# ---------------------------------------------------------------------------------------------- the user's data
#: Backends whose group deviations stand for partial pooling, in order of preference (:func:`shrinkage_table`).
PARTIAL_POOLING = ("native", "lme4", "mixedlm", "pymc", "brms", "lightgbm", "torch")
#: Columns of :func:`shrinkage_table`.
SHRINKAGE_COLUMNS = ["level", "n", "no_pooling", "partial_pooling", "shrinkage", "no_pooling_backend",
                     "partial_pooling_backend"]


def group_sizes(data: pd.DataFrame, group: str) -> pd.Series:
    """Rows per group of a grouping factor as the formula writes it (``"batch"``, ``"batch:cask"``).

    The labels are the fits' own (``hiercompare.hierarchy.factor_labels``: ``"A:a"`` for ``batch:cask``), so
    the result joins a tidy frame's ``level``. Returns a Series indexed by label, named ``n``.
    """
    from ..hierarchy import factor_labels

    factor = tuple(group.split(":"))
    missing = [c for c in factor if c not in data.columns]
    if missing:
        raise KeyError(f"group {group!r} needs the columns {missing}, which the data does not have; columns are "
                       f"{list(data.columns)}")
    counts = pd.Series(factor_labels(data, factor)).value_counts(sort=False)
    counts.index = counts.index.astype(str)
    counts.index.name = "level"
    return counts.rename("n")


def shrinkage_table(tidy: pd.DataFrame, sizes: pd.Series | None, group: str, term: str = INTERCEPT,
                    no_pooling: str = "ols", partial_pooling: str | None = None) -> pd.DataFrame:
    """Each group's deviation without pooling (ols's dummy coefficients) and with partial pooling (BLUPs).

    Parameters
    ----------
    tidy : DataFrame
        Tidy rows of the fits (``Fit.tidy()`` concatenated, with ``backend``).
    sizes : Series or None
        Rows per group, indexed by label (:func:`group_sizes`); None leaves ``n`` missing.
    group : str
        Grouping factor as the formula writes it.
    term : str
        Varying term (``"(Intercept)"`` or a slope).
    no_pooling : str
        The backend whose deviations are the no-pooling ones (``"ols"``; ``"r_lm"`` is the same in R).
    partial_pooling : str, optional
        The backend whose deviations are the partial-pooling ones (default: the first of
        :data:`PARTIAL_POOLING` with rows for this group and term).

    Returns
    -------
    DataFrame
        :data:`SHRINKAGE_COLUMNS`, one row per group both backends estimated, sorted by ``n`` then label;
        ``shrinkage = partial_pooling - no_pooling``. Empty when either backend has no rows for this group and
        term (a backend that did not run, or a term it does not vary).

    Examples
    --------
    >>> tidy = pd.concat([native.tidy(), ols.tidy()])  # doctest: +SKIP
    >>> t = shrinkage_table(tidy, group_sizes(data, "batch"), "batch")  # doctest: +SKIP
    >>> png = shrinkage_plot(t, title="batch")  # doctest: +SKIP
    """
    rv = tidy[(tidy["effect"] == "ran_vals") & (tidy["group"] == group) & (tidy["term"] == term)]
    present = set(rv["backend"])
    if partial_pooling is None:
        partial_pooling = next((b for b in PARTIAL_POOLING if b in present), None)
    if no_pooling not in present or partial_pooling not in present:
        return pd.DataFrame(columns=SHRINKAGE_COLUMNS)

    def values(b):
        s = rv[rv["backend"] == b].assign(level=lambda d: d["level"].astype(str)).drop_duplicates("level")
        return pd.to_numeric(s.set_index("level")["estimate"], errors="coerce").astype(float)

    out = pd.concat([values(no_pooling).rename("no_pooling"), values(partial_pooling).rename("partial_pooling")],
                    axis=1, join="inner")
    out.index.name = "level"
    out = out.reset_index()
    if sizes is not None:
        sz = pd.Series(sizes)
        sz.index = sz.index.astype(str)
        out["n"] = pd.to_numeric(out["level"].map(sz), errors="coerce").astype(float)
    else:
        out["n"] = np.nan
    out["shrinkage"] = out["partial_pooling"] - out["no_pooling"]
    out["no_pooling_backend"], out["partial_pooling_backend"] = no_pooling, partial_pooling
    out["_k"] = [tuple(_natural(x)) for x in out["level"]]
    out = out.sort_values(["n", "_k"], kind="mergesort").drop(columns="_k").reset_index(drop=True)
    return out[SHRINKAGE_COLUMNS]


def shrinkage_plot(table: pd.DataFrame, title: str = "", max_labels: int = 12) -> str:
    """Shrinkage plot: each group's no-pooling deviation, an arrow to its partial-pooling one, against group size.

    Small groups carry little information, so partial pooling pulls their deviation towards 0 (the national
    level) more than it pulls large groups'. Groups of the same size are spread a little sideways so their
    arrows do not overlap; the ``max_labels`` groups that moved most are labelled.

    Parameters
    ----------
    table : DataFrame
        A :func:`shrinkage_table`.
    title : str
        Figure title (should name the level and term).
    max_labels : int
        How many groups are labelled.

    Returns
    -------
    str
        Base64 PNG ("" when the table is empty).
    """
    if table.empty:
        return ""
    plt = _pyplot()
    t = table.reset_index(drop=True)
    nop = t["no_pooling"].to_numpy(dtype=float)
    pp = t["partial_pooling"].to_numpy(dtype=float)
    has_n = t["n"].notna().all()
    n = t["n"].to_numpy(dtype=float) if has_n else np.asarray(
        pd.Series(nop).rank(method="first").to_numpy(dtype=float))
    sizes = np.unique(n)
    log = has_n and sizes.min() > 0 and sizes.max() / sizes.min() > 8
    gap = np.min(np.diff(sizes)) if len(sizes) > 1 else 1.0
    x = n.copy()
    for s in sizes:  # spread ties evenly, ordered by the no-pooling value
        idx = np.where(n == s)[0]
        if len(idx) > 1:
            idx = idx[np.argsort(nop[idx], kind="mergesort")]
            off = np.linspace(-1, 1, len(idx))
            x[idx] = s * np.exp(0.12 * off) if log else s + 0.3 * gap * off
    fig, ax = plt.subplots(figsize=(9.5, 5.2))
    nb, pb = t["no_pooling_backend"].iloc[0], t["partial_pooling_backend"].iloc[0]
    if len(t) <= 400:
        for xi, a, b in zip(x, nop, pp):
            if np.isfinite(a) and np.isfinite(b) and a != b:
                ax.annotate("", xy=(xi, b), xytext=(xi, a),
                            arrowprops=dict(arrowstyle="-|>", lw=0.8, color="#888888", shrinkA=2, shrinkB=2,
                                            mutation_scale=8))
    else:
        ax.vlines(x, nop, pp, color="#999999", lw=0.5)
    ms = 26 if len(t) <= 100 else 12 if len(t) <= 500 else 5
    ax.scatter(x, nop, s=ms, facecolors="white", edgecolors="#d62728", lw=1.2 if ms > 10 else 0.7, zorder=3,
               label=f"no pooling ({_mpl(nb)})")
    ax.scatter(x, pp, s=ms * 0.85, color="#1f77b4", zorder=4, label=f"partial pooling ({_mpl(pb)})")
    ax.axhline(0, color="black", lw=0.8, ls="--", label="national level (no deviation)")
    moved = np.argsort(-np.abs(np.nan_to_num(pp - nop)), kind="mergesort")[:max_labels]
    for i in moved:
        if np.isfinite(nop[i]):
            ax.annotate(_mpl(t["level"].iloc[i], 18), (x[i], nop[i]), xytext=(4, 0), textcoords="offset points",
                        fontsize=8, va="center", color="#444444")
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    elif has_n and len(sizes) <= 12:  # few distinct sizes: tick exactly those
        ax.set_xticks(sizes)
        ax.set_xticklabels([f"{s:g}" for s in sizes])
    if has_n and len(sizes) == 1:
        title = (title or "shrinkage: no pooling \u2192 partial pooling") + (
            f"\nevery group has {sizes[0]:g} rows (spread sideways to be seen)")
    ax.set_xlabel("rows in the group (group size)" if has_n else
                  "groups ranked by the no-pooling value (sizes unknown)", fontsize=9)
    ax.set_ylabel("deviation from the national level", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(_mpl(title or "shrinkage: no pooling \u2192 partial pooling"), fontsize=10)
    fig.tight_layout()
    return _png(fig)


#: Columns of :func:`decomposition_table`.
DECOMPOSITION_COLUMNS = ["example", "row", "part", "value", "start", "end"]


def decomposition_table(parts: pd.DataFrame, labels: pd.Series | None = None, rows: list | None = None,
                        n: int = 6) -> pd.DataFrame:
    """A few rows' predictions split into national part + each level's deviation (``Fit.decompose()``).

    Parameters
    ----------
    parts : DataFrame
        ``Fit.decompose()``: ``national``, optionally ``nonlinear``, ``"<group>|<term>"`` per varying term and
        ``prediction`` (their sum).
    labels : Series, optional
        A name per row of ``parts`` (aligned on its index), e.g. the deepest group's label
        (``hiercompare.hierarchy.factor_labels(data, ("batch", "cask"))``); default ``"row <index>"``.
    rows : list, optional
        Index values of the rows to show (each once); default ``n`` rows (one per distinct label when
        ``labels`` is given) spread evenly from the lowest prediction to the highest.
    n : int
        How many rows when ``rows`` is not given.

    Returns
    -------
    DataFrame
        :data:`DECOMPOSITION_COLUMNS`, one row per example and part in ``parts``' order, then ``part =
        "prediction"``: ``start``/``end`` are the running sum before and after the part (a waterfall), so the
        last part's ``end`` is the prediction (to rounding).
    """
    if "prediction" not in parts.columns:
        raise ValueError("parts must be Fit.decompose()'s frame, with a 'prediction' column; got "
                         f"{list(parts.columns)}")
    comp = [c for c in parts.columns if c != "prediction"]
    lab = None
    if labels is not None:
        lab = (labels if isinstance(labels, pd.Series) else pd.Series(np.asarray(labels), index=parts.index))
        lab = lab.reindex(parts.index).astype(str)
    if rows is None:
        cand = parts.index if lab is None else lab.index[~lab.duplicated().to_numpy()]
        pred = parts.loc[cand, "prediction"].astype(float).sort_values(kind="mergesort")
        if len(pred) == 0:
            return pd.DataFrame(columns=DECOMPOSITION_COLUMNS)
        pick = np.unique(np.linspace(0, len(pred) - 1, max(1, min(n, len(pred)))).round().astype(int))
        rows = list(pred.index[pick])
    rows = list(dict.fromkeys(rows))  # a row asked for twice is shown once
    missing = [r for r in rows if r not in parts.index]
    if missing:
        raise KeyError(f"rows {missing} are not in the decomposition's index")
    names = [f"row {r}" if lab is None else str(lab[r]) for r in rows]
    dup = {nm for nm in names if names.count(nm) > 1}
    names = [f"{nm} (row {r})" if nm in dup else nm for nm, r in zip(names, rows)]
    out = []
    for r, name in zip(rows, names):
        start = 0.0
        for c in comp:
            v = float(parts.at[r, c])
            out.append(dict(example=name, row=r, part=c, value=v, start=start, end=start + v))
            start += v
        p = float(parts.at[r, "prediction"])
        out.append(dict(example=name, row=r, part="prediction", value=p, start=0.0, end=p))
    return pd.DataFrame(out, columns=DECOMPOSITION_COLUMNS)


def _part_label(part: str) -> str:
    if part == "national":
        return "national (fixed effects)"
    if part == "nonlinear":
        return "learned f(x)"
    if "|" in part:
        g, term = part.split("|", 1)
        return f"{g} deviation" if term == INTERCEPT else f"{g}: {term} slope deviation \u00d7 {term}"
    return part


def decomposition_plot(table: pd.DataFrame, title: str = "") -> str:
    """Waterfall bars of :func:`decomposition_table`: national part, then each level's deviation, then the prediction.

    Per example, the national part is a grey bar (cut at the axis: its value is written on it), each level's
    deviation a coloured bar from the running sum, and the prediction a black bar; deviations are labelled
    with their values.

    Returns
    -------
    str
        Base64 PNG ("" when the table is empty).
    """
    if table.empty:
        return ""
    plt = _pyplot()
    examples = list(dict.fromkeys(table["example"]))
    comp = [p for p in dict.fromkeys(table["part"]) if p != "prediction"]
    k = len(comp) + 1
    w = 0.84 / k
    palette = ["#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"]
    colour, j = {}, 0
    for p in comp:
        if p == "national":
            colour[p] = "#aaaaaa"
        else:
            colour[p] = palette[j % len(palette)]
            j += 1
    body = table[table["part"] != "national"]
    ends = np.r_[body["start"].to_numpy(dtype=float)[body["part"].to_numpy() != "prediction"],
                 body["end"].to_numpy(dtype=float), table.loc[table["part"] == "national", "end"].to_numpy(dtype=float)]
    ends = ends[np.isfinite(ends)]
    lo, hi = (float(ends.min()), float(ends.max())) if len(ends) else (0.0, 1.0)
    pad = 0.12 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    ylo, yhi = lo - pad, hi + pad
    width = max(6.5, min(10.0, 1.3 * len(examples) + 2.5))
    fig, ax = plt.subplots(figsize=(width, 5.0))
    # a bar narrower than about half an inch gets its value written upwards
    upright = w * 0.85 * width / (len(examples) + 0.2) < 0.5
    nat = table.loc[table["part"] == "national", "value"].to_numpy(dtype=float)
    one_national = len(nat) > 0 and np.allclose(nat, nat[0], rtol=0, atol=1e-12 * max(1.0, abs(nat[0])))
    for i, ex in enumerate(examples):
        sub = table[table["example"] == ex].set_index("part")
        for jj, p in enumerate(comp + ["prediction"]):
            if p not in sub.index:
                continue
            r = sub.loc[p]
            xc = i - 0.42 + w * (jj + 0.5)
            if p in ("national", "prediction"):
                c = colour.get(p, "black") if p == "national" else "#222222"
                ax.bar(xc, r["end"] - ylo, bottom=ylo, width=w * 0.9, color=c, label=None)
                if p == "prediction" or not one_national:
                    ax.text(xc, r["end"], f" {r['end']:.4g}", ha="center", va="bottom", fontsize=8,
                            rotation=90 if upright else 0)
            else:
                ax.bar(xc, r["value"], bottom=r["start"], width=w * 0.9, color=colour[p])
                ax.text(xc, max(r["start"], r["end"]), f" {r['value']:+.3g}", ha="center", va="bottom",
                        fontsize=8, rotation=90 if upright else 0)
            if jj < len(comp):  # connector to the next step
                ax.plot([xc + w * 0.45, xc + w * 0.55], [r["end"], r["end"]], color="#555555", lw=0.6)
    from matplotlib.patches import Patch

    handles = [Patch(color=colour[p], label=_mpl(_part_label(p) + (f" = {nat[0]:.4g}" if p == "national" and
                                                                    one_national else ""))) for p in comp]
    handles.append(Patch(color="#222222", label="prediction (the sum)"))
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(3, len(handles)),
              frameon=False)
    ax.set_ylim(ylo, yhi + pad)
    ax.set_xlim(-0.6, len(examples) - 0.4)
    ax.set_xticks(range(len(examples)))
    ax.set_xticklabels([_mpl(e, 24) for e in examples], fontsize=8.5, rotation=15 if len(examples) > 5 else 0)
    ax.set_ylabel("prediction (link scale)", fontsize=9)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title(_mpl(title or "national \u2192 each level's deviation \u2192 prediction"), fontsize=10)
    fig.tight_layout()
    return _png(fig)


def tree_nodes(booster, tree_index: int = 0, feature_names: list[str] | None = None,
               feature_kinds: dict[str, str] | None = None) -> pd.DataFrame:
    """The nodes of one LightGBM tree with their feature name and kind (what :func:`lightgbm_tree_plot` colours).

    Parameters
    ----------
    booster : lightgbm.Booster
        A trained booster.
    tree_index : int
        Which tree.
    feature_names : list of str, optional
        Names for LightGBM's ``Column_<i>`` features.
    feature_kinds : dict, optional
        Feature name -> one of :data:`SPLIT_KINDS`: ``"top group"`` (codes of the top grouping level),
        ``"nested group"`` (codes of a deeper level), ``"slope"`` (a covariate with a varying slope),
        ``"fixed"`` (another fixed-effect predictor) or ``"other"`` (the default).

    Returns
    -------
    DataFrame
        ``booster.trees_to_dataframe()`` rows of that tree indexed by ``node_index``, plus ``feature`` (the
        split feature's name; empty for leaves) and ``kind`` (``"leaf"`` for leaves).

    Raises
    ------
    ValueError
        If the booster has no tree ``tree_index`` or a kind is not one of the known kinds.
    """
    df = booster.trees_to_dataframe()
    n_trees = int(df["tree_index"].max()) + 1 if len(df) else 0
    if not 0 <= tree_index < n_trees:
        raise ValueError(f"tree_index {tree_index} is out of range: the booster has {n_trees} trees")
    kinds = dict(feature_kinds or {})
    bad = {k: v for k, v in kinds.items() if v not in SPLIT_KINDS}
    if bad:
        raise ValueError(f"feature kinds must be one of {', '.join(SPLIT_KINDS)}; got {bad}")
    rename = {f"Column_{i}": n for i, n in enumerate(feature_names or [])}
    t = df[df["tree_index"] == tree_index].set_index("node_index").copy()
    is_split = t["split_feature"].notna() & t["left_child"].notna()
    t["feature"] = [rename.get(str(f), str(f)) if s else "" for f, s in zip(t["split_feature"], is_split)]
    t["kind"] = [kinds.get(f, "other") if s else "leaf" for f, s in zip(t["feature"], is_split)]
    return t


#: Fill colour of a tree node by kind: the kinds of split feature (:data:`SPLIT_KINDS`) and ``"leaf"``.
TREE_KIND_COLOURS = {"fixed": "#dadaeb", "slope": "#fdae6b", "top group": "#9ecae1", "nested group": "#a1d99b",
                     "other": "#e0e0e0", "leaf": "#ffffff"}
#: The kinds a split feature can have (a grouping factor's codes at the top or a deeper level, a covariate with a
#: varying slope, another fixed-effect predictor, anything else).
SPLIT_KINDS = ("top group", "nested group", "slope", "fixed", "other")
_KIND_LEGEND = {"top group": "split on top-level group codes", "nested group": "split on deeper-level group codes",
                "slope": "split on a varying-slope covariate", "fixed": "split on a fixed-effect predictor",
                "other": "split on another feature", "leaf": "leaf (this tree's output)"}


class GraphvizMissing(HierCompareError):
    """LightGBM's tree drawing needs Graphviz (the ``graphviz`` Python package and the ``dot`` program)."""


def graphviz_missing() -> str | None:
    """Why :func:`lightgbm_tree_plot` cannot draw here, or None when it can.

    ``lightgbm.create_tree_digraph`` builds the graph with the ``graphviz`` Python package, whose rendering runs
    Graphviz's ``dot`` program. ``make install`` installs both (``hiercompare[ml]``; Debian package
    ``graphviz``).
    """
    import importlib.util
    import shutil

    if importlib.util.find_spec("graphviz") is None:
        return "the Python package graphviz is not installed (pip install 'hiercompare[ml]' or pip install graphviz)"
    if shutil.which("dot") is None:
        return "Graphviz's dot program is not on PATH (Debian: apt-get install graphviz)"
    return None


def _named_booster(booster, feature_names: list[str] | None):
    """``booster`` with its ``Column_<i>`` features named (through LightGBM's text model format), for the drawing."""
    if not feature_names:
        return booster
    import lightgbm as lgb

    text = booster.model_to_string()
    current = booster.feature_name()
    if len(feature_names) != len(current):
        raise ValueError(f"{len(feature_names)} feature names for a booster with {len(current)} features")
    old = "feature_names=" + " ".join(current) + "\n"
    if old not in text:
        raise ValueError("the booster's model text has no feature_names line to rename")
    return lgb.Booster(model_str=text.replace(old, "feature_names=" + " ".join(feature_names) + "\n", 1))


def lightgbm_tree_digraph(booster, tree_index: int = 0, feature_names: list[str] | None = None,
                          feature_kinds: dict[str, str] | None = None, title: str = "",
                          kind_labels: dict[str, str] | None = None, orientation: str = "auto"):
    """One tree of a LightGBM Booster as a Graphviz graph: ``lightgbm.create_tree_digraph``, coloured by kind.

    LightGBM draws the tree (split nodes as boxes with the feature, the threshold or category set and the rows
    reaching them, ``yes``/``no`` edges, leaves as ellipses with their value and rows); this function only fills
    each node with the colour of its kind (:data:`TREE_KIND_COLOURS`, from :func:`tree_nodes`), puts a title
    and a legend of the kinds present above the tree, and picks the orientation. Every text added here is
    escaped (HTML-like labels).

    Parameters
    ----------
    booster : lightgbm.Booster
        A trained booster.
    tree_index : int
        Which tree (0 = the first boosting round).
    feature_names : list of str, optional
        Names for LightGBM's ``Column_<i>`` features (a booster trained on a NumPy array).
    feature_kinds : dict, optional
        Feature name -> one of :data:`SPLIT_KINDS` (default ``"other"``); leaves are their own kind.
    title : str
        Graph title (should name the model).
    kind_labels : dict, optional
        Legend text per kind, e.g. which grouping factor a ``"top group"`` feature holds; defaults describe the
        kind alone.
    orientation : str
        ``"horizontal"`` (root on the left), ``"vertical"`` (root on top) or ``"auto"``: the narrower of the
        two as Graphviz lays them out, since a report shows figures at most a page wide and scales wider ones
        down (a deep, chain-like tree is narrow vertically, a bushy one horizontally).

    Returns
    -------
    graphviz.Digraph

    Raises
    ------
    ValueError
        If the booster has no tree ``tree_index`` or the orientation is unknown.
    GraphvizMissing
        If the ``graphviz`` package or the ``dot`` program is missing (:func:`graphviz_missing`).
    """
    if orientation not in ("auto", "horizontal", "vertical"):
        raise ValueError(f"orientation must be 'auto', 'horizontal' or 'vertical', got {orientation!r}")
    missing = graphviz_missing()
    if missing:
        raise GraphvizMissing(f"cannot draw the LightGBM tree: {missing}")
    import html

    import graphviz
    import lightgbm as lgb

    t = tree_nodes(booster, tree_index, feature_names, feature_kinds)
    named = _named_booster(booster, feature_names)
    labels = {**_KIND_LEGEND, **(kind_labels or {})}
    present = [k for k in TREE_KIND_COLOURS if k in set(t["kind"])]
    # title and legend as the graph's label (above the tree), so the legend adds height, not width
    cells = "".join(f'<TD BGCOLOR="{TREE_KIND_COLOURS[k]}" BORDER="1" WIDTH="22"> </TD>'
                    f'<TD ALIGN="LEFT">{html.escape(labels[k])}   </TD>' for k in present)
    heading = html.escape(title or f"tree {tree_index}")
    legend = (f'<<TABLE BORDER="0" CELLSPACING="2" CELLPADDING="2"><TR><TD COLSPAN="{2 * len(present)}">'
              f'<B>{heading}</B></TD></TR><TR>{cells}</TR></TABLE>>')

    def build(direction: str):
        if (t["kind"] == "leaf").all():  # a tree without a split (a constant): create_tree_digraph refuses it
            g = graphviz.Digraph()
            g.node("leaf0", label=f"leaf 0: {float(t['value'].iloc[0]):.3f} (the tree has no split)", shape="ellipse")
        else:
            g = lgb.create_tree_digraph(named, tree_index, show_info=["internal_count", "leaf_count"], precision=3,
                                        orientation=direction)
        # DOT merges the attributes of a node stated twice: the fill colour is added to LightGBM's own node
        for node, r in t.iterrows():
            kind, number = r["kind"], str(node).rsplit("-", 1)[-1]
            g.node(("split" if kind != "leaf" else "leaf") + number[1:], style="filled",
                   fillcolor=TREE_KIND_COLOURS[kind])
        g.attr(label=legend, labelloc="t")
        return g

    if orientation != "auto":
        return build(orientation)
    graphs = [build(d) for d in ("horizontal", "vertical")]
    # Graphviz's "plain" output starts with "graph <scale> <width> <height>" (inches)
    widths = [float(g.pipe(format="plain").decode().split(None, 4)[2]) for g in graphs]
    return graphs[int(np.argmin(widths))]


def lightgbm_tree_plot(booster, tree_index: int = 0, feature_names: list[str] | None = None,
                       feature_kinds: dict[str, str] | None = None, title: str = "",
                       kind_labels: dict[str, str] | None = None, orientation: str = "auto") -> str:
    """Draw one tree of a LightGBM Booster (:func:`lightgbm_tree_digraph`, rendered by Graphviz) as base64 PNG.

    The drawing is LightGBM's own (``lightgbm.create_tree_digraph``). It replaced a matplotlib layout written by
    hand, measured on tree 0 of both LightGBM backends for five data sets of the default scenario: shown at the
    report's width (1250 px) the hand-drawn text was 6.6 px high (too small to read), Graphviz's is 10.5-16 px,
    and it says more (yes/no edges, rows per node, category sets up to 10 values).

    Parameters
    ----------
    booster, tree_index, feature_names, feature_kinds, title, kind_labels, orientation
        As :func:`lightgbm_tree_digraph`.

    Returns
    -------
    str
        Base64 PNG.

    Raises
    ------
    ValueError
        If the booster has no tree ``tree_index``.
    GraphvizMissing
        If Graphviz is not installed (the study report then says so in place of the figure).
    """
    g = lightgbm_tree_digraph(booster, tree_index, feature_names, feature_kinds, title, kind_labels, orientation)
    return base64.b64encode(g.pipe(format="png")).decode("ascii")


#: Backends whose ``Fit.raw`` is a LightGBM Booster (:func:`lightgbm_tree_inputs`).
LIGHTGBM_BACKENDS = ("lightgbm", "lightgbm-cat")


def lightgbm_tree_inputs(fit) -> dict:
    """Feature names, kinds and legend texts for drawing a LightGBM backend's tree, from its Fit.

    The kinds come from the fit's model: a feature with a varying slope is ``"slope"``, another fixed-effect
    predictor ``"fixed"``, ``lightgbm-cat``'s group codes ``group_level_<depth>`` are ``"top group"`` (depth 1)
    or ``"nested group"``; leaves are their own kind. The legend names the predictors and grouping factors.

    Parameters
    ----------
    fit : Fit
        A fit of a backend in :data:`LIGHTGBM_BACKENDS` (with its data: ``fit.model``).

    Returns
    -------
    dict
        ``feature_names`` (for a booster trained on a NumPy array, else None), ``feature_kinds`` and
        ``kind_labels``: keyword arguments of :func:`lightgbm_tree_plot`.
    """
    if fit.backend not in LIGHTGBM_BACKENDS or fit.raw is None:
        raise ValueError(f"{fit.backend} has no LightGBM booster to draw; LightGBM backends are {LIGHTGBM_BACKENDS}")
    if fit.model is None:
        raise HierCompareError(f"{fit.backend}: this Fit was loaded without its data; refit it to draw its tree")
    spec, levels = fit.model.spec, fit.model.hierarchy.levels
    current = list(fit.raw.feature_name())
    feats = list(fit.diagnostics.get("features", []))
    names = feats if feats and len(feats) == len(current) and all(c.startswith("Column_") for c in current) else None
    slopes = set(spec.slope_variables)
    fixed = set(spec.fixed_variables)
    kinds: dict[str, str] = {}
    codes = {f"group_level_{lv.depth}": lv.group for lv in levels}
    for f in names or current:
        if f in slopes:
            kinds[f] = "slope"
        elif f in fixed:
            kinds[f] = "fixed"
        elif f in codes:
            kinds[f] = "top group" if f == "group_level_1" else "nested group"
    used = lambda k: sorted(f for f, v in kinds.items() if v == k)  # noqa: E731
    labels = {}
    if used("slope"):
        labels["slope"] = "split on a predictor with a varying slope (" + ", ".join(used("slope")) + ")"
    if used("fixed"):
        labels["fixed"] = "split on a fixed-effect predictor (" + ", ".join(used("fixed")) + ")"
    if "group_level_1" in kinds:
        labels["top group"] = f"split on group_level_1 = {codes['group_level_1']} codes"
    nested = [c for c in used("nested group")]
    if nested:
        labels["nested group"] = "split on " + ", ".join(f"{c} = {codes[c]}" for c in nested) + " codes"
    return dict(feature_names=names, feature_kinds=kinds, kind_labels=labels)


def lightgbm_tree_record(fit, tree_index: int = 0) -> dict:
    """One tree of a LightGBM fit as plain JSON-able data, so a report can draw it from ``results.json`` alone.

    Returns
    -------
    dict
        ``backend``, ``tree_index``, ``n_trees``, ``model`` (LightGBM's model text of that one tree, features
        named), ``feature_kinds``, ``kind_labels`` and ``title``; :func:`lightgbm_tree_from_record` draws it.
    """
    inputs = lightgbm_tree_inputs(fit)
    n_trees = int(fit.raw.num_trees())
    if not 0 <= tree_index < n_trees:
        raise ValueError(f"tree_index {tree_index} is out of range: the booster has {n_trees} trees")
    named = _named_booster(fit.raw, inputs["feature_names"])
    text = named.model_to_string(num_iteration=1, start_iteration=tree_index)
    return dict(backend=fit.backend, tree_index=tree_index, n_trees=n_trees, model=text,
                feature_kinds=inputs["feature_kinds"], kind_labels=inputs["kind_labels"],
                title=f"{fit.backend}: tree {tree_index} of {n_trees}")


def lightgbm_tree_from_record(record: dict, orientation: str = "auto") -> str:
    """Draw a :func:`lightgbm_tree_record` (:func:`lightgbm_tree_plot`) as base64 PNG.

    Raises
    ------
    GraphvizMissing
        If Graphviz is not installed (:func:`graphviz_missing`); ImportError without lightgbm.
    """
    missing = graphviz_missing()
    if missing:
        raise GraphvizMissing(f"cannot draw the LightGBM tree: {missing}")
    import lightgbm as lgb

    booster = lgb.Booster(model_str=record["model"])
    return lightgbm_tree_plot(booster, 0, feature_kinds=record.get("feature_kinds") or {},
                              title=record.get("title", ""), kind_labels=record.get("kind_labels") or {},
                              orientation=orientation)


def lightgbm_tree_records(fits: list, tree_index: int = 0) -> list[dict]:
    """:func:`lightgbm_tree_record` of every LightGBM fit in ``fits`` (others are skipped).

    A fit whose tree cannot be recorded gives ``{"backend": ..., "error": "<why>"}`` instead, so a report says
    why the tree is missing rather than failing.
    """
    out = []
    for f in fits:
        if getattr(f, "backend", None) not in LIGHTGBM_BACKENDS:
            continue
        try:
            out.append(lightgbm_tree_record(f, tree_index))
        except (HierCompareError, ValueError, ImportError) as exc:
            out.append(dict(backend=f.backend, error=str(exc)))
    return out
