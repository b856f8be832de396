"""LightGBM backends.

``lightgbm`` -- boosting with genuine random effects, in the manner of GPBoost (Sigrist 2022, JMLR 23(1)):
the population part is ``X beta + F(x)`` with F a LightGBM ensemble and X the spec's linear fixed terms
(intercept and, in particular, the varying-slope covariates, so the trees need not absorb their population
slopes); the group effects are the spec's random effects, handled exactly by :mod:`hiercompare.mixedcore`.
Each boosting round takes the gradient of the Gaussian marginal negative log-likelihood with respect to F,
which is minus the BLUP-conditional residual ``y - F - X beta_hat - Z b_hat`` over sigma^2 (see
:mod:`hiercompare.backends.learners`); the tree is fitted with unit Hessian (L2 boosting on that residual).
beta and the BLUPs follow F after every round at fixed variance parameters, and the variance parameters are
re-estimated (REML or ML, warm-started) every ``refit_every`` rounds and at the end. The number of rounds is
chosen by early stopping on a group-aware validation split (a fraction of the rows of every leaf group,
predicted with the training fit's BLUPs), then the model is refitted on all rows with that many rounds.
After boosting, F is projected off the fixed design on the fitting rows (``orthogonalize=True``, as ``torch``
does; :class:`BoostedF`), so beta is the best linear population term and both learners report the same
estimand. Intervals (``intervals=``): ``"conditional"`` (default: Wald / BLUP intervals treating F as known, every
such row labelled ``interval = "conditional_on_f"``), ``"bootstrap"`` (cluster bootstrap over the top-level
groups, F re-learned per draw), ``"none"``; see :func:`hiercompare.backends.learners.finish_table` and
docs/learners.md.

``lightgbm-cat`` -- the seed conversation's approach, kept as a LABELLED BASELINE: market and submarket (every
grouping factor of the spec) as categorical features beside the numeric ones, squared-error loss, no
variance components, no shrinkage. Its group "effects" are read off by a documented decomposition: for a
level-1 group, the mean prediction over its training rows minus the mean prediction over all training rows;
for a deeper group, its mean prediction minus its parent's mean prediction. ``decompose()`` then returns
these deviations plus the remainder f(x) = prediction - sum of the row's group deviations, so the parts add
up to ``predict()`` exactly; these are descriptive contrasts, not estimated random effects.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..design import ModelData
from ..results import RESIDUAL, Fit, sd_term, tidy_frame
from ..spec import INTERCEPT
from . import learners
from .base import Backend
from .native import tidy_rows

GLMM_NOTE = ("binomial / poisson / negbinomial: F(x) is part of the linear predictor; each round's gradient is the exact "
             "gradient of glmer's Laplace-approximated marginal deviance in F at the conditional modes (glmmcore), "
             "its curvature the Fisher weights (a Newton step, as GPBoost); theta, beta and the NB size are "
             "re-estimated by the Laplace likelihood every refit_every rounds and at the end")

BASELINE_CONVERGENCE_NOTE = ("converged: not assessed (a baseline: boosting rounds chosen by early stopping, no "
                             "optimiser with a convergence criterion)")

DEFAULT_PARAMS = dict(learning_rate=0.05, num_leaves=15, min_data_in_leaf=20, lambda_l2=1.0,
                      feature_fraction=1.0, bagging_fraction=1.0, verbose=-1, num_threads=1, deterministic=True,
                      force_row_wise=True)


def _versions():
    import lightgbm

    return {"lightgbm": lightgbm.__version__}


class LightGBMBackend(Backend):
    name = "lightgbm"
    families = learners.FAMILIES
    features = frozenset({"offset", "trials"})
    description = ("LightGBM f(x) + random effects with estimated variances (GPBoost-style: mixedcore, or glmmcore's "
                   "Laplace approximation for binomial, poisson and negbinomial)")
    requires = ("lightgbm",)
    install_hint = "pip install 'hiercompare[ml]' (or run `make install`)"
    takes_seed = True


    def fit(self, md: ModelData, method: str = "REML", max_rounds: int = 1000, early_stopping: int = 50,
            refit_every: int = 10, validation_fraction: float = 0.2, features: tuple[str, ...] | None = None,
            seed: int | None = None, params: dict | None = None, orthogonalize: bool = True,
            intervals: str = "conditional", bootstrap_draws: int = 200, bootstrap_ci: str = "basic",
            **options) -> Fit:
        """Options: ``max_rounds``, ``early_stopping``, ``refit_every``, ``validation_fraction`` (0: boost
        ``max_rounds`` rounds), ``features``, ``seed``, ``params`` (LightGBM's); ``orthogonalize`` (project the
        learned F off the fixed design on the fitting rows, as ``torch`` does, so beta is the best linear population
        term and f the nonlinear remainder; False: only centre F); ``intervals``: ``"conditional"`` (Wald / BLUP
        intervals treating F as known, labelled ``conditional_on_f``), ``"bootstrap"`` (cluster bootstrap over the
        top-level groups, ``bootstrap_draws`` refits, ``bootstrap_ci`` basic / percentile / normal intervals),
        ``"none"`` (no SEs or intervals); see
        :func:`hiercompare.backends.learners.finish_table`."""
        if options:
            raise TypeError(f"unknown lightgbm options {sorted(options)}")
        intervals = learners.check_intervals(intervals, bootstrap_draws, bootstrap_ci)
        seed = 0 if seed is None else int(seed)
        feats = tuple(features) if features else learners.default_features(md)
        lgb_params = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
        curve: list[float] = []

        def validate(valid):
            booster, _, curve[:] = _boost(learners.subset(md, ~valid), feats, lgb_params, max_rounds, method,
                                          refit_every, valid_data=md.data.loc[valid], valid_y=md.y[valid],
                                          early_stopping=early_stopping, valid_rows=valid, full=md)
            return booster.best_iteration or booster.current_iteration()

        (booster, re, _), rounds, skipped = learners.validate_then_refit(
            md, validation_fraction, seed, max_rounds, "rounds", validate,
            lambda n: _boost(md, feats, lgb_params, n, method, refit_every))
        nonlinear = BoostedF(md, booster, feats, rounds)
        projection = nonlinear.center(bool(orthogonalize))
        res = re.update(nonlinear(md.data), optimise=True, final=True)
        gaussian = md.spec.family == "gaussian"
        metric = "validation_rmse_best" if gaussian else "validation_deviance_best"

        def refit(md_b, seed_b):  # the bootstrap's refit: same options, the rounds chosen here, no validation
            return self.fit(md_b, method=method, max_rounds=rounds, early_stopping=early_stopping,
                            refit_every=refit_every, validation_fraction=0.0, features=feats, seed=seed_b,
                            params=params, orthogonalize=orthogonalize, intervals="none").table

        table, interval_notes, interval_diag, extras = learners.finish_table(tidy_rows(md, res), intervals, md, refit,
                                                                     bootstrap_draws, seed, bootstrap_ci)
        return Fit(
            backend=self.name, spec=md.spec, table=table, model=md, loglik=res.loglik,
            method=method.upper() if gaussian else "ML (Laplace)", nobs=md.n, nonlinear=nonlinear, raw=booster,
            extras=extras,
            diagnostics={
                "converged": res.converged, "singular": res.singular, "warnings": [],
                "rounds": int(rounds), metric: min(curve) if curve else None,
                "validation_curve_every_10": curve[::10], "features": list(feats), **interval_diag,
                "notes": interval_notes + [projection,
                                           "logLik is the marginal likelihood conditional on the learned f(x)"
                          + ("" if gaussian else " (Laplace approximation, as glmer's)"),
                          "converged: the variance components' optimiser at the learned f(x) (boosting has no "
                          "convergence criterion: its rounds are chosen by early stopping)",
                          skipped or f"rounds chosen by early stopping on {validation_fraction:.0%} of every leaf "
                                     "group's rows"] + ([] if gaussian else [GLMM_NOTE]),
            },
        )

    def versions(self):
        return _versions()


def _boost(md: ModelData, feats, params, rounds, method, refit_every, valid_data=None, valid_y=None,
           early_stopping=50, valid_rows=None, full=None):
    """Boost ``rounds`` rounds on ``md`` (``valid_*``: held-out rows of ``full``, the ModelData they come from,
    scored every round for early stopping). Returns (booster, random effects, validation curve)."""
    import lightgbm as lgb

    re = learners.random_effects(md, method=method)
    re.update(np.zeros(md.n), optimise=True)
    state = {"round": 0}

    def objective(preds, _data):
        state["round"] += 1
        re.update(preds, optimise=state["round"] % refit_every == 0)
        target, weight = re.newton_target(preds)
        return weight * (preds - target), weight

    train = lgb.Dataset(learners.feature_matrix(md, md.data, feats), label=md.y, free_raw_data=False)
    curve: list[float] = []
    callbacks = []
    valid_sets = []
    if valid_data is None:
        feval = None
    else:
        # validation rows belong to known groups: predict them with the current fit's beta and BLUPs
        Xv = md.fixed_matrix(valid_data)
        Zv, codes = [], []
        for li, lv in enumerate(md.hierarchy.levels):
            Zv.append(md.z_matrix(lv.group, valid_data))
            codes.append(lv.codes_for(valid_data))
        vset = lgb.Dataset(learners.feature_matrix(md, valid_data, feats), label=valid_y, reference=train)
        valid_sets = [vset]
        v_off = full.offset[valid_rows] if full is not None else md.offset_for(valid_data)
        v_trials = (full.trials[valid_rows] if full is not None and full.trials is not None
                    else md.trials_for(valid_data))
        gaussian = md.spec.family == "gaussian"

        def feval(preds, _data):
            res = re.result if gaussian else re.modes
            lin = Xv @ res.beta + v_off
            for li in range(len(Zv)):
                b = np.where((codes[li] >= 0)[:, None], res.blups[li][np.maximum(codes[li], 0)], 0.0)
                lin = lin + np.einsum("nk,nk->n", Zv[li], b)
            if gaussian:
                value = float(np.sqrt(np.mean((valid_y - preds - lin) ** 2)))
            else:
                value = re.held_out_loss(preds + lin, valid_y, trials=v_trials)
            curve.append(value)
            return ("conditional_rmse" if gaussian else "conditional_deviance"), value, False

        callbacks = [lgb.early_stopping(early_stopping, verbose=False)]
    booster = lgb.train({**params, "objective": objective, "metric": "None"}, train, num_boost_round=rounds,
                        valid_sets=valid_sets, feval=feval, callbacks=callbacks)
    return booster, re, curve


class LightGBMCatBackend(Backend):
    name = "lightgbm-cat"
    description = "BASELINE: LightGBM with the grouping factors as categorical features (the seed's approach)"
    requires = ("lightgbm",)
    install_hint = "pip install 'hiercompare[ml]' (or run `make install`)"
    takes_seed = True

    def fit(self, md: ModelData, max_rounds: int = 1000, early_stopping: int = 50,
            validation_fraction: float = 0.2, features: tuple[str, ...] | None = None, seed: int | None = None,
            params: dict | None = None, **options) -> Fit:
        import lightgbm as lgb

        if options:
            raise TypeError(f"unknown lightgbm-cat options {sorted(options)}")
        seed = 0 if seed is None else int(seed)
        feats = tuple(features) if features else learners.default_features(md)
        levels = md.hierarchy.levels
        lgb_params = {**DEFAULT_PARAMS, **(params or {}), "seed": seed, "objective": "regression",
                      "metric": "rmse", "cat_smooth": 10.0}

        D = _cat_design(md, feats, md.data)

        def validate(valid):
            tr = lgb.Dataset(D[~valid], label=md.y[~valid])
            va = lgb.Dataset(D[valid], label=md.y[valid], reference=tr)
            b0 = lgb.train(lgb_params, tr, num_boost_round=max_rounds, valid_sets=[va],
                           callbacks=[lgb.early_stopping(early_stopping, verbose=False)])
            return b0.best_iteration or b0.current_iteration()

        booster, rounds, skipped = learners.validate_then_refit(
            md, validation_fraction, seed, max_rounds, "rounds", validate,
            lambda n: lgb.train(lgb_params, lgb.Dataset(D, label=md.y), num_boost_round=n))
        pred = booster.predict(D, num_iteration=rounds)
        # documented decomposition: mean prediction per group minus its parent's (national for level 1)
        devs = []
        parent_mean = np.full(1, pred.mean())
        for lv in levels:
            counts = lv.counts()
            mean_g = np.bincount(lv.codes, weights=pred, minlength=lv.n_groups) / np.maximum(counts, 1)
            devs.append(mean_g - parent_mean[lv.parent])
            parent_mean = mean_g
        rows = []
        for lv, dev in zip(levels, devs):
            for g, lab in enumerate(lv.labels):
                rows.append(dict(effect="ran_vals", group=lv.group, level=lab, term="(Intercept)", estimate=dev[g]))
        resid_sd = float(np.sqrt(np.mean((md.y - pred) ** 2)))
        rows.append(dict(effect="ran_pars", group=RESIDUAL, term=sd_term("Observation"), estimate=resid_sd))

        nonlinear = CatRemainder(md, booster, feats, rounds, devs)
        spread = {lv.group: float(np.std(d, ddof=1)) for lv, d in zip(levels, devs)}
        return Fit(
            backend=self.name, spec=md.spec, table=tidy_frame(rows), model=md, loglik=None, method="L2 boosting",
            nobs=md.n, nonlinear=nonlinear, raw=booster,
            diagnostics={
                "converged": None, "singular": False, "warnings": [], "baseline": True, "rounds": int(rounds),
                "empirical_sd_of_group_contrasts": spread,
                "notes": ["BASELINE (the seed's approach): grouping factors as categorical features; no variance "
                          "components are estimated and nothing is shrunk",
                          "group effects are descriptive contrasts: mean prediction of a group minus its parent's",
                          "varying slopes are not represented as group effects; they stay inside f(x)",
                          "the residual SD is the training RMSE", BASELINE_CONVERGENCE_NOTE]
                         + ([skipped] if skipped else []),
            },
        )

    def versions(self):
        return _versions()


class BoostedF:
    """``Fit.nonlinear`` of ``lightgbm``: the boosted F(x) minus its projection on the fixed design.

    ``f(data) = F(data) - X(data) @ coef``, ``coef`` the least-squares coefficients of F on the fixed design X of
    the fitting rows (``center(True)``, the default: f is orthogonal to every column of X there, as ``torch``'s
    :class:`~hiercompare.backends.torch.NeuralF`, so beta is the best linear population term and both learners
    report the same estimand), or only F's mean in the intercept's place (``center(False)``). The marginal
    likelihood, the variance parameters and the group effects are invariant to the projection (beta_hat shifts
    by ``coef``).

    A plain object (the booster, its round count, the features and ``coef``), so the Fit pickles; the LightGBM
    Booster pickles through its model text (``model_to_string``), which predicts identically.
    """

    def __init__(self, md: ModelData, booster, features: tuple[str, ...], rounds: int):
        self.md, self.booster, self.features = md, booster, tuple(features)
        self.rounds = int(rounds)
        self.coef = np.zeros(md.X.shape[1])

    def raw(self, data: pd.DataFrame) -> np.ndarray:
        """The booster's F(x), before the projection."""
        F = learners.feature_matrix(self.md, data, self.features)
        return self.booster.predict(F, num_iteration=self.rounds)

    def center(self, orthogonalize: bool) -> str:
        """Set ``coef`` on the fitting rows; returns the note saying what was done."""
        g = self.raw(self.md.data)
        X = self.md.X
        self.coef = np.zeros(X.shape[1])
        if orthogonalize and X.shape[1]:
            self.coef = np.linalg.lstsq(X, g, rcond=None)[0]
            return "f is projected off the fixed design on the fitting rows (includes centring), as torch's"
        names = self.md.fixed_names
        if INTERCEPT in names:
            self.coef[names.index(INTERCEPT)] = g.mean()
            return "f is centred on the fitting rows (the intercept absorbs its mean)"
        self.coef = np.zeros(X.shape[1])
        self.centre_only = float(g.mean())
        return "f is centred on the fitting rows (the formula has no intercept: its mean is dropped)"

    def __call__(self, data: pd.DataFrame) -> np.ndarray:
        g = self.raw(data)
        if "centre" in self.__dict__:  # a Fit pickled before the projection: F minus its mean
            return g - self.centre
        g = g - getattr(self, "centre_only", 0.0)
        if not self.coef.any():
            return g
        X = self.md.X if data is self.md.data else self.md.fixed_matrix(data)
        return g - X @ self.coef


def _cat_design(md: ModelData, feats: tuple[str, ...], df: pd.DataFrame) -> pd.DataFrame:
    """lightgbm-cat's features: the numeric columns and every level's group code as a category (-1: unseen)."""
    X = pd.DataFrame(learners.feature_matrix(md, df, feats), columns=list(feats))
    for lv in md.hierarchy.levels:
        codes = lv.codes_for(df)
        X[f"group_level_{lv.depth}"] = pd.Categorical(np.where(codes >= 0, codes, -1),
                                                      categories=np.arange(-1, lv.n_groups))
    return X


class CatRemainder:
    """``Fit.nonlinear`` of ``lightgbm-cat``: the booster's prediction minus the row's group contrasts.

    A plain object (booster, round count, features and the per-level contrasts), so the Fit pickles.
    """

    def __init__(self, md: ModelData, booster, features: tuple[str, ...], rounds: int, devs: list[np.ndarray]):
        self.md, self.booster, self.features = md, booster, tuple(features)
        self.rounds, self.devs = int(rounds), [np.asarray(d, dtype=float) for d in devs]

    def __call__(self, data: pd.DataFrame) -> np.ndarray:
        out = self.booster.predict(_cat_design(self.md, self.features, data), num_iteration=self.rounds)
        for lv, dev in zip(self.md.hierarchy.levels, self.devs):
            codes = lv.codes_for(data)
            out = out - np.where(codes >= 0, dev[np.maximum(codes, 0)], 0.0)
        return out
