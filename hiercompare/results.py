"""The Fit schema: one tidy frame in broom.mixed's layout (snake_case), shared by every backend and by Truth.

Columns of ``Fit.tidy()``: ``effect`` (fixed | ran_pars | ran_vals), ``group``, ``level``, ``term``,
``estimate``, ``std_error``, ``conf_low``, ``conf_high``, ``df``, ``p_value``, ``interval``, ``backend``.

* fixed: ``term`` is the coefficient name; ``group`` and ``level`` are empty. ``df`` says what the interval and
  ``p_value`` (two-sided, of estimate = 0) are based on: a finite number is the t distribution's df
  (Satterthwaite or Kenward-Roger for the Gaussian mixed engines native, lme4 and mixedlm, see
  :mod:`hiercompare.inference`; the residual df for ols and r_lm), ``inf`` the normal (z: ``df="z"``, or a
  binomial / poisson lme4 fit; JSON, which has no infinity, writes it as null), NaN that the backend states
  none (its interval, if any, is its own: posterior intervals, the learners' intervals, which ``interval``
  labels).
* ran_pars: ``group`` is the grouping factor as written (``market``, ``market:submarket``), ``term`` is
  ``sd__(Intercept)``, ``sd__x1``, ``cor__(Intercept).x1``; the residual SD is group ``Residual``,
  term ``sd__Observation``.
* ran_vals: one row per group label and term: the group's deviation.

``df`` and ``p_value`` are NaN on ran_pars and ran_vals rows.

``interval`` (text, every row) says what the row's ``std_error``, ``conf_low`` and ``conf_high`` are conditional
on: empty for the backend's own inference (described by ``df`` and the backend's docs), ``"conditional_on_f"``
(:data:`~hiercompare.schema.INTERVAL_CONDITIONAL`) for the learners' intervals computed as if their learned
f(x) were known (too narrow: f's estimation is left out; never to be read or pooled as ordinary intervals),
``"cluster_bootstrap"`` (:data:`~hiercompare.schema.INTERVAL_BOOTSTRAP`) for the learners' bootstrap over the
top-level groups. A per-row column rather than a Fit attribute, because it has to travel with the rows into
recovery tables, study results and the performance / coverage tables, where rows of many fits are pooled.

``fixef``, ``varcorr`` and ``ranef`` are views of that one frame, never a second computation.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from .design import ModelData
from .errors import DataError
from .hierarchy import column_kind, factor_labels
from .schema import (DISPERSION, INTERVAL_BOOTSTRAP, INTERVAL_CONDITIONAL, INTERVAL_ORDINARY,  # noqa: F401
                     RESIDUAL, THETA, check_unseen, inverse_link)  # (re-exported)
from .spec import INTERCEPT, ModelSpec

TIDY_COLUMNS = ["effect", "group", "level", "term", "estimate", "std_error", "conf_low", "conf_high", "df",
                "p_value", "interval"]
NUMERIC_COLUMNS = ["estimate", "std_error", "conf_low", "conf_high", "df", "p_value"]
KEY = ["effect", "group", "level", "term"]
def _dtype_notes(lv, data: pd.DataFrame) -> list[str]:
    """``"school is float64 here, int64 when fitting"`` for each grouping column whose kind changed."""
    return [f"{c.name} is {data[c.name].dtype} here, {c.dtype} when fitting" for c in lv.columns
            if column_kind(data[c.name]) != c.kind]


def tidy_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with any subset of TIDY_COLUMNS) -> a frame with every column, in order."""
    df = pd.DataFrame(rows, columns=TIDY_COLUMNS)
    for c in ("group", "level", "interval"):
        col = df[c].astype(object)
        df[c] = col.where(col.notna(), "")
    for c in NUMERIC_COLUMNS:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    return df


@functools.lru_cache(maxsize=None)
def normal_quantile(level: float = 0.95) -> float:
    """The two-sided standard-normal quantile of a ``level`` interval (1.959963984540054 for 0.95)."""
    from scipy.stats import norm

    return float(norm.ppf((1 + level) / 2))


def wald_interval(estimate, std_error, level: float = 0.95) -> dict:
    """``conf_low`` and ``conf_high`` of the Wald interval ``estimate -+ z * std_error``.

    The one definition of the frequentist backends' intervals (lme4, mixedlm, native and the learners
    built on mixedcore); ``z`` is :func:`normal_quantile` of ``level``. Works on scalars and arrays.

    >>> wald_interval(1.0, 0.5)["conf_high"]
    1.979981992270027
    """
    z = normal_quantile(level)
    return {"conf_low": estimate - z * std_error, "conf_high": estimate + z * std_error}


NOT_ASSESSED = "not assessed"
CLOSED_FORM_NOTE = ("converged: not assessed (closed-form least squares: no iterative optimisation whose convergence "
                    "could fail)")


def convergence_text(converged) -> str:
    """``converged`` as a reader sees it: ``"yes"``, ``"no"`` or ``"not assessed"`` (None: the backend does not
    assess convergence).

    >>> [convergence_text(v) for v in (True, False, None)]
    ['yes', 'no', 'not assessed']
    """
    if converged is None or (isinstance(converged, float) and np.isnan(converged)) or converged is pd.NA:
        return NOT_ASSESSED
    return "yes" if bool(converged) else "no"


def sd_term(term: str) -> str:
    return f"sd__{term}"


def cor_term(a: str, b: str) -> str:
    return f"cor__{a}.{b}"


@dataclass
class Fit:
    """What every backend returns.

    Attributes
    ----------
    backend : str
        Registered backend name.
    table : DataFrame
        The tidy rows (without the ``backend`` column; ``tidy()`` adds it).
    loglik : float or None
        Maximised log-likelihood (REML criterion for REML fits) as the backend reports it.
    diagnostics : dict
        ``converged`` (True / False where the backend assesses convergence: an optimiser's own criterion, or
        the samplers' R-hat / ESS / divergence rule; None, "not assessed", where it does not: closed-form least
        squares, the naive baselines' fixed training runs), ``singular``, ``warnings`` (every warning and
        message the backend emitted), ``notes``.
    timing : dict
        ``fit_seconds`` (backend call) and ``total_seconds`` (validation + design + fit).
    provenance : dict
        backend, library versions, seed, spec, options.
    """

    backend: str
    spec: ModelSpec
    table: pd.DataFrame
    model: ModelData | None = field(default=None, repr=False)
    loglik: float | None = None
    method: str | None = None
    nobs: int = 0
    diagnostics: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    raw: Any = field(default=None, repr=False)
    nonlinear: Callable[[pd.DataFrame], np.ndarray] | None = field(default=None, repr=False)
    """The learned population-level f(x) of the machine-learning backends (added to X beta), if any."""
    extras: dict = field(default_factory=dict, repr=False)
    """Backend-specific extras by name (e.g. the Bayesian backends' posterior predictive draws and LOO)."""

    # ------------------------------------------------------------------ views
    def tidy(self, effects: str | list[str] | None = None, names: str = "python") -> pd.DataFrame:
        """The tidy frame, optionally only some ``effects`` (``fixed``, ``ran_pars``, ``ran_vals``).

        ``names="r"`` names the fixed-effect terms as R does (lme4's ``fixef``, broom.mixed): a treatment dummy
        is the column name followed by its level, ``sexM`` or ``livch3+`` where the default says ``sex[T.M]``;
        a ``C(x)`` term reads as for a factor column ``x`` (``x2``); numeric terms and interactions (``x1:x2``)
        read the same either way. The names come from the fit's design (``FixedColumn.r_name``, the mapping
        the lme4 backend reads R's names back with), not from the text. Groups and the ``sd__`` / ``cor__``
        terms are broom.mixed's already.
        """
        if names not in ("python", "r"):
            raise ValueError(f"names must be 'python' or 'r', got {names!r}")
        df = self.table.copy()
        if "interval" not in df:  # a table built without tidy_frame (or loaded from before the column existed)
            df["interval"] = INTERVAL_ORDINARY
        if effects is not None:
            effects = [effects] if isinstance(effects, str) else list(effects)
            df = df[df["effect"].isin(effects)]
        if names == "r":
            df["term"] = self._r_terms(df)
        df["backend"] = self.backend
        return df.reset_index(drop=True)

    def _r_terms(self, df: pd.DataFrame) -> pd.Series:
        fixed = df["effect"] == "fixed"
        if not fixed.any():
            return df["term"]
        if self.model is None:
            raise DataError("R's term names come from the fit's design, and this Fit was loaded without its data; "
                            "refit it, or use names='python'")
        to_r = {c.name: c.r_name for c in self.model.columns}
        unknown = sorted(set(df.loc[fixed, "term"]) - set(to_r))
        if unknown:
            raise ValueError(f"fixed-effect terms {unknown} are not columns of the design {list(to_r)}")
        return df["term"].where(~fixed, df["term"].map(to_r))

    @property
    def fixef(self) -> pd.Series:
        f = self.table[self.table["effect"] == "fixed"]
        return pd.Series(f["estimate"].to_numpy(), index=f["term"].to_numpy(), name=self.backend)

    @property
    def varcorr(self) -> pd.DataFrame:
        return self.tidy("ran_pars").drop(columns=["effect", "level"])

    def ranef(self, group: str | None = None, what: str = "estimate"):
        """Group deviations as a frame (rows: labels, columns: terms), one per grouping factor."""
        rv = self.table[self.table["effect"] == "ran_vals"]
        out = {}
        for g, sub in rv.groupby("group", sort=False):
            out[g] = sub.pivot(index="level", columns="term", values=what)
        if group is not None:
            if group not in out:
                raise KeyError(f"no ran_vals for {group!r}; groups are {list(out)}")
            return out[group]
        return out

    def posterior_predictive(self, **kwargs) -> np.ndarray:
        """Posterior predictive draws for the fitted rows, shape (draws, rows) (Bayesian backends)."""
        return self._extra("posterior_predictive", **kwargs)

    def loo(self, **kwargs):
        """PSIS leave-one-out cross-validation (arviz's ELPDData) (Bayesian backends)."""
        return self._extra("loo", **kwargs)

    def _extra(self, name, **kwargs):
        if name not in self.extras:
            from .errors import HierCompareError

            raise HierCompareError(f"the {self.backend} backend provides no {name}; use a Bayesian backend (pymc)")
        return self.extras[name](**kwargs)

    @property
    def converged(self) -> bool | None:
        """True or False as the backend assessed convergence; None where it does not assess it."""
        value = self.diagnostics.get("converged")
        return None if value is None else bool(value)

    # ------------------------------------------------------------------ prediction
    def decompose(self, newdata: pd.DataFrame | None = None, allow_new_levels: bool | None = None) -> pd.DataFrame:
        """Split each row's linear predictor into national + level parts.

        Columns: ``national`` (the fixed part X beta), ``nonlinear`` (the learned f(x) of the machine-learning
        backends, absent otherwise), ``offset`` (the formula's ``offset()`` columns, absent without one; read
        from ``newdata``), then ``"<group>|<term>"`` for every varying term of
        every level (intercept deviations, and slope deviations times the covariate), then ``prediction``,
        their sum, which is what :meth:`predict` returns on the link scale.

        Group labels in ``newdata`` are matched to the fitted groups by value, whatever the column's dtype now
        (integer ids read back as floats or text still name their groups; see :mod:`hiercompare.hierarchy`).
        A label not seen in fitting contributes 0 (the population level) at that level, and below it only
        where its own label is unseen. ``result.attrs['unseen']`` counts such rows per level and
        ``result.attrs['unseen_groups']`` the distinct unseen labels per level.

        allow_new_levels : bool, optional
            None (default): unseen labels are predicted at the population level with an
            :class:`~hiercompare.errors.UnseenLevelsWarning` that counts them; True: the same, silently (new
            groups asked for, as in grouped cross-validation); False: refuse them, as brms's
            ``allow_new_levels = FALSE``: a :class:`~hiercompare.errors.DataError` naming the level, the rows
            and example labels.
        """
        out, seen = self._decompose(newdata)
        check_unseen(out.attrs["unseen"], out.attrs["unseen_groups"], seen, allow_new_levels, "decompose",
                     rows=len(out), stacklevel=2)
        return out

    def _decompose(self, newdata: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
        """decompose() without the unseen-label check; also returns ``{"examples": the distinct unseen labels
        per level, "notes": per level, the grouping columns whose kind changed since fitting}``."""
        md = self._require_model()
        data = md.data if newdata is None else newdata
        X = md.X if newdata is None else md.fixed_matrix(newdata)
        if self.fixef.empty and self.nonlinear is not None:
            # a pure learner (the naive baselines): no linear fixed part, f(x) carries the population level
            fe = pd.Series(0.0, index=md.fixed_names)
        else:
            fe = self.fixef.reindex(md.fixed_names)
        if fe.isna().any():
            raise DataError(f"{self.backend}: fixed effects missing for {list(fe[fe.isna()].index)}")
        parts = {"national": X @ fe.to_numpy()}
        if self.nonlinear is not None:
            parts["nonlinear"] = np.asarray(self.nonlinear(data), dtype=float)
        if self.spec.offsets:
            parts["offset"] = md.offset if newdata is None else md.offset_for(newdata)
        unseen, groups, examples, notes = {}, {}, {}, {}
        ran = self.ranef() if md.hierarchy.levels else {}
        for lv in md.hierarchy.levels:
            codes = lv.codes if newdata is None else lv.codes_for(newdata)
            new = codes < 0
            unseen[lv.group] = int(new.sum())
            groups[lv.group] = 0
            if new.any():
                labels = pd.unique(factor_labels(data.iloc[np.flatnonzero(new)], lv.spec.factor))
                groups[lv.group] = len(labels)
                examples[lv.group] = [str(x) for x in labels]
                if newdata is not None:
                    notes[lv.group] = _dtype_notes(lv, newdata)
            Z = md.Z[lv.group] if newdata is None else md.z_matrix(lv.group, newdata)
            table = ran.get(lv.group)
            for j, term in enumerate(lv.spec.terms):
                if table is None or term not in table.columns:
                    vals = np.zeros(lv.n_groups)
                else:
                    vals = table[term].reindex(lv.labels).to_numpy(dtype=float)
                    vals = np.nan_to_num(vals, nan=0.0)
                dev = np.where(codes >= 0, vals[np.maximum(codes, 0)], 0.0)
                parts[f"{lv.group}|{term}"] = dev * Z[:, j]
        out = pd.DataFrame(parts, index=data.index)
        out["prediction"] = out.sum(axis=1)
        out.attrs["unseen"] = unseen
        out.attrs["unseen_groups"] = groups
        return out, {"examples": examples, "notes": notes}

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "link",
                allow_new_levels: bool | None = None, kind: str = "conditional") -> np.ndarray:
        """Predictions: by default conditional ones, the fixed part (+ offset) plus every level's deviation (0 for
        labels unseen in fitting), i.e. given the group effects.

        ``type``: ``'link'`` the linear predictor (with the formula's offsets, as lme4's predict);
        ``'response'`` the inverse link of it, as lme4/glm: the mean for gaussian, the probability per trial
        for binomial, the expected count (offset, i.e. exposure, included) for poisson and negbinomial;
        ``'count'`` the expected count of the response column: ``trials * p`` for binomial (trials read from
        ``newdata``'s cbind columns; 1 for a 0/1 response), as ``'response'`` otherwise.
        ``kind``: ``'conditional'`` (default, as above; for a new group the response at b = 0, which for a log
        link is low by exp(v / 2)), ``'marginal'`` (the expected response, integrating the inverse link over the
        effects of every level at which the row's group is new, b ~ N(0, Sigma) of the fit; seen groups keep
        their estimates) or ``'population'`` (integrating over every level: a new group everywhere). See
        :mod:`hiercompare.predictions`; :meth:`predict_interval` gives prediction intervals by simulation.
        ``allow_new_levels`` as in :meth:`decompose`: None warns about unseen group labels (counted per level),
        True accepts them silently, False refuses them with a DataError.

        Examples
        --------
        >>> fit.predict(newdata, allow_new_levels=False)  # doctest: +SKIP
        DataError: predict(): 12 of 40 rows have a school not seen in fitting (3 labels, e.g. '31', '32', '33') ...
        """
        if type not in ("link", "response", "count"):
            raise ValueError("type must be 'link', 'response' or 'count'")
        if kind != "conditional":
            from . import predictions

            return predictions.predict(self, newdata, type=type, kind=predictions.check_kind(kind),
                                       allow_new_levels=allow_new_levels)
        parts, seen = self._decompose(newdata)
        check_unseen(parts.attrs["unseen"], parts.attrs["unseen_groups"], seen, allow_new_levels, "predict",
                     rows=len(parts), stacklevel=2)
        eta = parts["prediction"].to_numpy()
        if type == "link":
            return eta
        mu = inverse_link(self.spec.family, eta)
        if type == "count" and self.spec.family == "binomial":
            md = self._require_model()
            return mu * (md.trials if newdata is None else md.trials_for(newdata))
        return mu

    def predict_interval(self, newdata: pd.DataFrame | None = None, type: str = "response",
                         kind: str = "conditional", level: float = 0.95, nsim: int = 2000, seed: int | None = 0,
                         allow_new_levels: bool | None = None, weights=None) -> pd.DataFrame:
        """Prediction intervals by simulation, one row per row of ``newdata`` (or of the fitted data): columns
        ``estimate`` (:meth:`predict` of this ``kind``), ``mean``, ``sd``, ``lower``, ``upper``. Each draw takes
        the integrated levels' effects from the fitted covariance (``kind`` as in :meth:`predict`), the seen
        groups' deviations from N(estimate, SE^2) where the fit reports SEs, and the response from the family
        (residual SD, over sqrt(w) for prior weights w; binomial trials, NB size); fixed effects at their
        estimates (:func:`hiercompare.predictions.prediction_interval`; its ``weights`` for newdata).

        Examples
        --------
        >>> fit.predict_interval(newdata, kind="marginal", level=0.9)  # doctest: +SKIP
        """
        from . import predictions

        return predictions.prediction_interval(self, newdata, type=type, kind=kind, level=level, nsim=nsim, seed=seed,
                                               allow_new_levels=allow_new_levels, weights=weights)

    def _require_model(self) -> ModelData:
        if self.model is None:
            raise DataError("this Fit was loaded without its data; refit to predict or decompose")
        return self.model

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "formula": self.spec.formula,
            "family": self.spec.family,
            "method": self.method,
            "nobs": self.nobs,
            "loglik": self.loglik,
            "diagnostics": self.diagnostics,
            "timing": self.timing,
            "provenance": self.provenance,
            "tidy": json.loads(self.tidy().to_json(orient="records", double_precision=15)),
        }

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    def __repr__(self) -> str:
        fe = ", ".join(f"{k}={v:.4g}" for k, v in self.fixef.items())
        return f"<Fit {self.backend}: {self.spec.formula}; {fe}; converged={convergence_text(self.converged)}>"


@dataclass
class Truth:
    """The generating values of a simulation, in the Fit schema.

    ``table`` has the tidy columns; ``estimate`` holds the generating value. For ran_pars rows the column
    ``realized`` holds the same quantity computed from the effects actually drawn (SD or correlation of the
    drawn group effects), which is what an estimator can at best recover from one data set.
    """

    table: pd.DataFrame
    scenario: dict
    seed: Any

    def tidy(self, effects=None) -> pd.DataFrame:
        df = self.table.copy()
        if effects is not None:
            effects = [effects] if isinstance(effects, str) else list(effects)
            df = df[df["effect"].isin(effects)]
        return df.reset_index(drop=True)

    @property
    def fixef(self) -> pd.Series:
        f = self.table[self.table["effect"] == "fixed"]
        return pd.Series(f["estimate"].to_numpy(), index=f["term"].to_numpy(), name="truth")

    def ranef(self, group: str) -> pd.DataFrame:
        rv = self.table[(self.table["effect"] == "ran_vals") & (self.table["group"] == group)]
        return rv.pivot(index="level", columns="term", values="estimate")

    def to_dict(self) -> dict:
        return {
            "scenario": self.scenario,
            "seed": self.seed,
            "tidy": json.loads(self.table.to_json(orient="records", double_precision=15)),
        }

    def to_json(self, path=None) -> str:
        text = json.dumps(self.to_dict(), indent=2, default=_json_default)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text

    @classmethod
    def from_json(cls, path) -> "Truth":
        with open(path) as fh:
            d = json.load(fh)
        table = pd.DataFrame(d["tidy"])
        for c in ("group", "level", "interval"):  # files written before the interval column existed lack it
            col = table[c].astype(object) if c in table else pd.Series("", index=table.index, dtype=object)
            table[c] = col.where(col.notna(), "")
        for c in (*NUMERIC_COLUMNS, "realized"):  # files written before df / p_value existed lack them
            table[c] = pd.to_numeric(table[c], errors="coerce").astype(float) if c in table else np.nan
        return cls(table=table, scenario=d["scenario"], seed=d["seed"])


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


__all__ = ["Fit", "Truth", "TIDY_COLUMNS", "NUMERIC_COLUMNS", "KEY", "RESIDUAL", "INTERCEPT", "tidy_frame", "sd_term", "cor_term",
           "wald_interval", "normal_quantile", "convergence_text", "NOT_ASSESSED", "check_unseen", "inverse_link", "DISPERSION", "THETA",
           "INTERVAL_ORDINARY", "INTERVAL_CONDITIONAL", "INTERVAL_BOOTSTRAP"]
