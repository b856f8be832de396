"""Shared machinery for learners with genuine random effects (GPBoost / LMMNN style).

Binomial, poisson and negative binomial outcomes use :class:`GlmmRandomEffects` (:mod:`hiercompare.glmmcore`):
f(x) enters the linear predictor, eta = offset + f(x) + X beta + Z b, and the learner's gradient is the exact
gradient of glmer's Laplace-approximated marginal deviance with respect to f at the conditional modes
(:meth:`hiercompare.glmmcore.GlmmCore.offset_gradient`), with the Fisher weights as its curvature: the learner
fits the working response ``f - g / (2 w)`` with weights ``w``, a Newton step, as GPBoost does with its Laplace
approximation. beta and the modes follow f every round (their joint mode at fixed theta), and theta, beta (and
the negative binomial's size) are re-estimated by the Laplace likelihood every ``refit_every`` rounds and at the
end. Both kinds of random effects answer :meth:`newton_target` (Gaussian: the conditional residual, weight 1).

A learner supplies the population-level nonlinear part f(x) as an offset; :class:`RandomEffects` re-estimates
the fixed linear terms, the variance components and the BLUPs with :mod:`hiercompare.mixedcore` on that
offset. For the Gaussian marginal likelihood, profiled over beta, the gradient with respect to the offset is

    d logLik / d f = V^-1 (y - f - X beta_hat) = (y - f - X beta_hat - Z b_hat) / sigma^2,

the BLUP-conditional residual divided by sigma^2 (b_hat = G Z' V^-1 r). So a learner fits f to the
conditional residual ``y - X beta_hat - Z b_hat`` (its negative gradient, up to sigma^2), then the random
effects are re-estimated on the new offset, and so on. The varying-slope covariates keep their population
linear terms in X, so f need not (and trees cannot well) absorb them.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import numpy as np
import pandas as pd

from .. import glmmcore, mixedcore
from ..design import ModelData, prepare
from ..errors import DataError, SpecError
from .base import reml_or_ml

#: the families the random-effects learners fit
FAMILIES = ("gaussian", "binomial", "poisson", "negbinomial")

T = TypeVar("T")


class RandomEffects:
    """mixedcore for one ModelData, re-estimated as the offset changes (warm-started at the last theta)."""

    def __init__(self, md: ModelData, method: str = "REML"):
        method = reml_or_ml(method)
        if md.spec.family != "gaussian":
            raise SpecError("the random-effects learners fit the gaussian family only")
        self.md = md
        self.reml = method == "REML"
        self.core = mixedcore.from_model_data(md)
        self.theta = self.core.theta0
        self.result: mixedcore.CoreResult | None = None
        self.base = np.asarray(md.offset, dtype=float)

    def update(self, offset: np.ndarray, optimise: bool = True, final: bool = False) -> mixedcore.CoreResult:
        """Set f(x) = ``offset`` (the formula's offset is added) and re-estimate theta (``optimise``) or only beta
        and the BLUPs at the current theta. ``final`` is the GLMM learners' (there: lme4's Hessian-based
        covariance of the fixed effects); the Gaussian fit is the same either way."""
        self.core.set_response(self.md.y, np.asarray(offset, dtype=float) + self.base)
        if optimise:
            self.result = self.core.fit(reml=self.reml, theta0=self.theta)
            self.theta = self.result.theta
        else:
            self.result = self.core.solve(self.theta, reml=self.reml)
        return self.result

    def linear_part(self, res: mixedcore.CoreResult | None = None) -> np.ndarray:
        """X beta_hat + Z b_hat for the training rows."""
        res = res or self.result
        out = self.md.X @ res.beta
        for li, lv in enumerate(self.md.hierarchy.levels):
            out = out + np.einsum("nk,nk->n", self.md.Z[lv.group], res.blups[li][lv.codes])
        return out

    def newton_target(self, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(target, weight) such that 0.5 sum weight (target - f)^2 has f's gradient of the marginal NLL (times
        sigma^2): the conditional residual's target y - X beta_hat - Z b_hat (- offset), weight 1."""
        return self.md.y - self.base - self.linear_part(), np.ones(self.md.n)


class _Modes:
    """beta and the conditional modes b at fixed theta (what the learners read between theta refits)."""

    def __init__(self, beta, blups):
        self.beta, self.blups = beta, blups


class GlmmRandomEffects:
    """glmmcore for one ModelData (binomial, poisson, negbinomial) with f(x) added to the formula's offset; theta,
    beta and the NB size re-estimated (warm-started) when asked, beta and the modes following f otherwise."""

    def __init__(self, md: ModelData, method: str = "ML"):
        reml_or_ml(method)  # accepted for the learners' common signature; a GLMM is fitted by ML (Laplace)
        if md.spec.family not in glmmcore.FAMILIES:
            raise SpecError(f"GlmmRandomEffects fits {glmmcore.FAMILIES}, not {md.spec.family!r}")
        self.md = md
        self.core = glmmcore.from_model_data(md)
        self.base = np.asarray(md.offset, dtype=float)
        self.theta = self.core.theta0.copy()
        self.beta: np.ndarray | None = None
        self.knb: float | None = None
        self.result: glmmcore.GlmmResult | None = None
        self.state: glmmcore.PirlsState | None = None
        self.modes: _Modes | None = None

    def update(self, offset: np.ndarray, optimise: bool = True, final: bool = False):
        """Set f(x) = ``offset``; re-estimate theta, beta (and k) with ``optimise``, else move beta and the modes
        to their joint mode at the current theta. Returns the GlmmResult (``optimise``) or the modes' view.
        Refits during training use the PWRSS covariance of beta; ``final`` computes lme4's Hessian-based one."""
        self.core.set_offset(self.base + np.asarray(offset, dtype=float))
        if optimise or self.result is None:
            # the first fit starts where glmmcore.fit starts by itself (theta0=None: its penalised quasi-likelihood
            # start); from theta = 1 the NB optimum was missed (a boundary, log-likelihood lower by 9-17 on the
            # seed tree). Later refits warm-start at the last theta.
            first = self.result is None
            self.result = self.core.fit(theta0=None if first else self.theta, beta0=None if first else self.beta,
                                        nb_theta0=None if first else self.knb,
                                        vcov="hessian" if final else "rx")
            self.theta, self.beta, self.knb = self.result.theta, self.result.beta, self.result.nb_theta
            self.state = self.core._warm
            self.modes = _Modes(self.result.beta, self.result.blups)
            return self.result
        knb = self.knb if self.knb is not None else 1.0
        self.state = self.core.modes(self.theta, self.beta, knb, joint=True)
        self.beta = self.state.beta
        lam = self.state.lam
        self.modes = _Modes(self.beta, [u @ lm.T for u, lm in zip(self.state.u, lam)])
        return self.modes

    def linear_part(self, res=None) -> np.ndarray:
        """X beta + Z b (no offset, no f) for the training rows."""
        res = res or self.modes
        out = self.md.X @ res.beta
        for li, lv in enumerate(self.md.hierarchy.levels):
            out = out + np.einsum("nk,nk->n", self.md.Z[lv.group], res.blups[li][lv.codes])
        return out

    def newton_target(self, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(f - g / (2 w), w): g the Laplace deviance's gradient in f at the current modes, w the Fisher weights;
        0.5 sum w (target - f)^2 then has f's gradient g / 2 (the approximate marginal NLL's) and curvature w.

        g is first cleared of its part along the fixed design (g - W X (X'WX)^-1 X'g, so X'g = 0): moving f along
        X c is undone by beta - c, so that part belongs to beta, which follows f at its joint mode, not at the
        Laplace optimum; left in, it is small but never zero, and Adam's normalised steps (and boosting rounds)
        would drift f and beta along that direction without end."""
        g, w = self.core.offset_gradient(self.state)
        w = np.maximum(w, 1e-12)
        X = self.md.X
        if X.shape[1]:
            g = g - w * (X @ np.linalg.solve(X.T @ (w[:, None] * X), X.T @ g))
        return np.asarray(offset, dtype=float) - g / (2 * w), w

    def held_out_loss(self, eta: np.ndarray, y: np.ndarray, trials: np.ndarray | None = None) -> float:
        """Mean deviance (-2 log p per row, constants of y left out) of held-out responses at linear predictors
        ``eta`` (their offsets included), given their groups' modes."""
        m = np.ones(len(y)) if trials is None else np.asarray(trials, dtype=float)
        knb = self.knb if self.knb is not None else 1.0
        nll = glmmcore._rows_numpy(self.core.fam, np.asarray(eta, dtype=float), np.asarray(y, dtype=float), m,
                                   knb)[5]
        return float(np.mean(nll))


def random_effects(md: ModelData, method: str = "REML"):
    """The learners' random effects for ``md``'s family: :class:`RandomEffects` (gaussian, REML or ML) or
    :class:`GlmmRandomEffects` (binomial, poisson, negbinomial; Laplace ML)."""
    if md.spec.family == "gaussian":
        return RandomEffects(md, method=method)
    return GlmmRandomEffects(md, method=method)


def group_aware_split(md: ModelData, fraction: float = 0.2, seed: int | None = 0) -> np.ndarray:
    """Validation mask: ``fraction`` of the rows of every leaf group (at least one row stays in training).

    Rounds / epochs are chosen on these rows, predicted with the training fit's BLUPs for their own groups,
    so validation measures what the model is used for (prediction within known groups), not in-sample fit.
    """
    rng = np.random.default_rng(seed)
    leaf = md.hierarchy.levels[-1].codes
    mask = np.zeros(md.n, dtype=bool)
    order = np.argsort(leaf, kind="stable")
    bounds = np.flatnonzero(np.diff(leaf[order])) + 1
    for rows in np.split(order, bounds):
        k = int(np.floor(fraction * len(rows)))
        k = min(k, len(rows) - 1)
        if k > 0:
            mask[rng.choice(rows, size=k, replace=False)] = True
    return mask


def validate_then_refit(md: ModelData, fraction: float, seed: int | None, maximum: int, unit: str,
                        validate: Callable[[np.ndarray], int], refit: Callable[[int], T]) -> tuple[T, int, str | None]:
    """The learners' one loop: choose the number of rounds / epochs on held-out rows, then refit on all rows.

    ``fraction`` of the rows of every leaf group are held out (:func:`group_aware_split`, seeded by ``seed``);
    ``validate(mask)`` trains on the other rows with early stopping judged on the held-out ones (``mask``
    True) and returns the count it chose; ``refit(count)`` then trains on every row. Without held-out rows
    (``fraction`` 0, or too few rows per leaf group), or when the training rows cannot be modelled alone
    (``validate`` raises DataError, e.g. a category only among the held-out rows), the count is ``maximum``.

    Returns
    -------
    (refit's result, the count used, a note saying why validation did not run, or None)
    """
    count, note = int(maximum), None
    mask = group_aware_split(md, fraction, seed) if fraction > 0 else np.zeros(md.n, dtype=bool)
    if fraction > 0 and not mask.any():
        note = f"every leaf group has too few rows for a validation split; trained the maximum {maximum} {unit}"
    elif mask.any():
        try:
            count = int(validate(mask))
        except DataError as exc:
            note = f"validation skipped ({exc}); trained the maximum {maximum} {unit}"
    return refit(count), count, note


def subset(md: ModelData, rows: np.ndarray) -> ModelData:
    """ModelData for a subset of the rows (same spec and category levels)."""
    return prepare(md.spec, md.data.loc[rows].reset_index(drop=True))


def feature_matrix(md: ModelData, data: pd.DataFrame, features: tuple[str, ...]) -> np.ndarray:
    """The learners' features: numeric predictor columns, checked for NaN with a clear error."""
    from ..design import check_columns
    from ..errors import DataError

    check_columns(data, features, what="newdata")
    F = data[list(features)].to_numpy(dtype=float)
    if not np.isfinite(F).all():
        bad = [c for c in features if not np.isfinite(data[c].to_numpy(dtype=float)).all()]
        raise DataError(f"features {bad} contain NaN or infinite values; clean them before predicting")
    return F


def default_features(md: ModelData) -> tuple[str, ...]:
    """Every numeric fixed or slope variable of the spec (categoricals are left to the linear part)."""
    feats = []
    for v in md.spec.fixed_variables + md.spec.slope_variables:
        if v not in md.categories and v not in feats:
            feats.append(v)
    if not feats:
        raise SpecError("the learners need at least one numeric predictor to learn f(x) from")
    return tuple(feats)


# ---------------------------------------------------------------------------------------------- intervals
#: The learners' ``intervals`` option (see :func:`finish_table` and docs/learners.md):
#: ``"conditional"`` -- Wald intervals for the fixed effects and BLUP intervals computed as if the learned f(x) were
#: known, every such row labelled ``interval = "conditional_on_f"``; ``"bootstrap"`` -- a cluster bootstrap over the
#: top-level groups (:func:`cluster_bootstrap`, intervals :data:`BOOTSTRAP_CIS`) for the fixed effects and the
#: variance parameters, the group
#: effects' rows staying conditional (labelled); ``"none"`` -- estimates only, every SE and interval empty.
INTERVALS = ("conditional", "bootstrap", "none")


#: The bootstrap's interval from the draws q (``bootstrap_ci``): ``"basic"`` (default: 2 estimate - the 97.5% and
#: 2.5% quantiles, Davison & Hinkley's basic interval, which corrects for a shift of the draws from the estimate),
#: ``"percentile"`` (the 2.5% and 97.5% quantiles), ``"normal"`` (estimate -+ 1.96 SD of the draws). SDs are
#: clipped at 0, correlations to [-1, 1].
BOOTSTRAP_CIS = ("basic", "percentile", "normal")


def check_intervals(intervals: str, draws: int, ci: str = "basic") -> str:
    """``intervals`` validated (one of :data:`INTERVALS`), ``draws`` and ``ci`` (the bootstrap's) checked."""
    if intervals not in INTERVALS:
        raise SpecError(f"intervals must be one of {list(INTERVALS)}, got {intervals!r}")
    if ci not in BOOTSTRAP_CIS:
        raise SpecError(f"bootstrap_ci must be one of {list(BOOTSTRAP_CIS)}, got {ci!r}")
    if intervals == "bootstrap" and int(draws) < 20:
        raise SpecError(f"bootstrap_draws must be >= 20 for percentile intervals, got {draws!r}")
    return intervals


def label_conditional(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with ``interval = "conditional_on_f"`` on every row that carries an SE or an interval (they were
    computed with the learned f(x) treated as known)."""
    from ..schema import INTERVAL_CONDITIONAL

    out = table.copy()
    has = out["std_error"].notna() | out["conf_low"].notna() | out["conf_high"].notna()
    out.loc[has, "interval"] = INTERVAL_CONDITIONAL
    return out


def strip_intervals(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with every SE, interval, df and p-value emptied (``intervals="none"``)."""
    out = table.copy()
    out[["std_error", "conf_low", "conf_high", "df", "p_value"]] = np.nan
    out["interval"] = ""
    return out


def relabel_top_groups(md: ModelData, picks: np.ndarray) -> pd.DataFrame:
    """The data of ``md`` with its top-level groups replaced by the groups ``picks`` (codes, with repeats): every
    copy's grouping columns get the suffix ``~k`` (k its position in ``picks``), so repeated groups (and their
    subgroups) are distinct groups, and nesting is kept whichever columns the levels use."""
    top = md.hierarchy.levels[0]
    cols = list(dict.fromkeys(c for lv in md.hierarchy.levels for c in lv.spec.factor))
    rows_of = {g: np.flatnonzero(top.codes == g) for g in np.unique(picks)}
    parts = []
    for k, g in enumerate(picks):
        part = md.data.iloc[rows_of[g]].copy()
        for c in cols:
            part[c] = part[c].astype(str) + f"~{k}"
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def cluster_bootstrap(md: ModelData, refit: Callable[[ModelData, int], pd.DataFrame], draws: int,
                      seed: int) -> tuple[pd.DataFrame, dict]:
    """Cluster (nonparametric) bootstrap over the top-level groups: ``draws`` times, resample the top-level
    groups with replacement (their rows and subgroups whole), refit the learner (``refit(md_b, seed_b)`` returns
    its tidy table) and keep the fixed effects and the variance parameters.

    f(x) is re-learned in every draw, so the spread of the estimates includes f's estimation error, which the
    conditional intervals leave out. The draws are seeded by ``numpy.random.SeedSequence([seed, 2024])``; each
    refit gets its own spawned seed (the learner's own randomness is part of the variance too).

    Returns
    -------
    (DataFrame, dict)
        One row per (draw, effect, group, term) with the estimate (fixed and ran_pars only; the group
        effects' labels differ between draws), and ``{"draws", "failed", "first_error"}``.
    """
    ss = np.random.SeedSequence([int(seed), 2024])
    rng = np.random.default_rng(ss)
    seeds = [int(s.generate_state(1)[0]) for s in ss.spawn(int(draws))]
    G = md.hierarchy.levels[0].n_groups
    frames, failed, first_error = [], 0, None
    for b in range(int(draws)):
        picks = rng.integers(0, G, size=G)
        try:
            md_b = prepare(md.spec, relabel_top_groups(md, picks))
            tab = refit(md_b, seeds[b])
        except Exception as exc:  # a draw the learner cannot fit (e.g. a category absent from it): counted
            failed += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            continue
        tab = tab[tab["effect"].isin(["fixed", "ran_pars"])][["effect", "group", "term", "estimate"]]
        frames.append(tab.assign(draw=b))
    boot = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["effect", "group", "term", "estimate", "draw"])
    return boot, {"draws": int(draws), "failed": failed, "first_error": first_error}


def _too_many_failed(info: dict) -> bool:
    """True when the bootstrap (``info`` from :func:`cluster_bootstrap`) gives no intervals: fewer than 20 draws
    fitted, or more than a fifth of them failed."""
    return info["draws"] - info["failed"] < 20 or info["failed"] > 0.2 * info["draws"]


def bootstrap_table(table: pd.DataFrame, boot: pd.DataFrame, info: dict, level: float = 0.95,
                    ci: str = "basic") -> pd.DataFrame:
    """``table`` (the learner's own fit) with the bootstrap's SEs (SD of the draws) and ``ci`` intervals
    (:data:`BOOTSTRAP_CIS`) on the fixed effects and the variance parameters (``interval = "cluster_bootstrap"``);
    the group effects' rows
    keep their conditional intervals, labelled ``"conditional_on_f"``. df and p-values are emptied (the bootstrap
    gives neither). A parameter with fewer than 20 successful draws (or more than a fifth of the draws failed)
    gets no interval."""
    from ..results import normal_quantile
    from ..schema import INTERVAL_BOOTSTRAP

    out = label_conditional(table)
    ok = out["effect"].isin(["fixed", "ran_pars"])
    out.loc[ok, ["std_error", "conf_low", "conf_high", "df", "p_value"]] = np.nan
    out.loc[ok, "interval"] = ""
    if _too_many_failed(info):
        return out
    a = (1 - level) / 2
    for i in np.flatnonzero(ok.to_numpy()):
        r = out.iloc[i]
        est = boot.loc[(boot["effect"] == r["effect"]) & (boot["group"] == r["group"]) & (boot["term"] == r["term"]),
                       "estimate"].to_numpy(dtype=float)
        est = est[np.isfinite(est)]
        if len(est) < 20:
            continue
        sd = float(np.std(est, ddof=1))
        q_lo, q_hi = (float(q) for q in np.quantile(est, [a, 1 - a]))
        theta = float(r["estimate"])
        if ci == "percentile":
            lo, hi = q_lo, q_hi
        elif ci == "basic":
            lo, hi = 2 * theta - q_hi, 2 * theta - q_lo
        else:
            z = normal_quantile(level)
            lo, hi = theta - z * sd, theta + z * sd
        if r["effect"] == "ran_pars" and str(r["term"]).startswith("cor__"):
            lo, hi = max(lo, -1.0), min(hi, 1.0)
        elif r["effect"] == "ran_pars":  # SDs and the NB size are positive
            lo, hi = max(lo, 0.0), max(hi, 0.0)
        out.iloc[i, out.columns.get_loc("std_error")] = sd
        out.iloc[i, out.columns.get_loc("conf_low")] = lo
        out.iloc[i, out.columns.get_loc("conf_high")] = hi
        out.iloc[i, out.columns.get_loc("interval")] = INTERVAL_BOOTSTRAP
    return out


def finish_table(table: pd.DataFrame, intervals: str, md: ModelData, refit: Callable[[ModelData, int], pd.DataFrame],
                 draws: int, seed: int, ci: str = "basic") -> tuple[pd.DataFrame, list[str], dict, dict]:
    """The learner's tidy table under its ``intervals`` option; returns (table, notes, diagnostics entries, Fit
    extras: ``bootstrap_draws``, the draws' estimates, for ``"bootstrap"``)."""
    if intervals == "none":
        return strip_intervals(table), ["intervals='none': no SEs or intervals are reported (the conditional ones "
                                        "would treat the learned f(x) as known)"], {"intervals": intervals}, {}
    if intervals == "conditional":
        return label_conditional(table), [CONDITIONAL_NOTE], {"intervals": intervals}, {}
    boot, info = cluster_bootstrap(md, refit, draws, seed)
    out = bootstrap_table(table, boot, info, ci=ci)
    G = md.hierarchy.levels[0].n_groups
    note = (f"intervals='bootstrap': fixed effects and variance parameters from a cluster bootstrap over the "
            f"{G} {md.hierarchy.levels[0].group} groups ({info['draws'] - info['failed']} of {info['draws']} draws "
            "fitted; f(x) re-learned in every draw with the rounds / epochs chosen on the data; SE = SD of the "
            f"draws, 95% {ci} intervals); the group effects' intervals stay conditional on f(x) (labelled)")
    if _too_many_failed(info):
        note += f"; too many draws failed ({info['failed']}, first: {info['first_error']}): no intervals"
    return out, [note], {"intervals": intervals, "bootstrap": {**info, "ci": ci}}, {"bootstrap_draws": boot}


CONDITIONAL_NOTE = ("intervals='conditional': the SEs and intervals (interval column 'conditional_on_f') treat the "
                    "learned f(x) as known; they leave its estimation error out and are too narrow (validation on "
                    "the nonlinear scenario: lightgbm's x2 SE 0.53 of the empirical SE, coverage 0.62; see "
                    "docs/learners.md). intervals='bootstrap' gives cluster-bootstrap intervals")
