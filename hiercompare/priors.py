"""Default priors for the Bayesian backends, scaled to the data, shared by ``pymc`` and ``brms``.

Weakly informative, in the spirit of bambi's and brms's defaults, but written out explicitly so both backends
sample the SAME model (brms's own defaults are flat on slopes and scale by the MAD; bambi scales normal priors
by the SDs of y and x). With s_y the SD of the response (gaussian) or 1 (binomial / poisson, link scale) and
s_x the SD of a fixed-effect column:

================================  ==========================================================
parameter class                   default prior
================================  ==========================================================
``intercept``                     Normal(m_y, 2.5 s_y)  (m_y: mean of y; 0 for binomial/poisson)
``b`` (each other fixed column)   Normal(0, 2.5 s_y / s_x)
``sd`` (every group-level SD)     half-Student-t(3, 0, s_y)
``sigma`` (residual SD)           half-Student-t(3, 0, s_y)
``cor`` (each correlated block)   LKJ(eta = 2) on the correlation matrix
``shape`` (negbinomial's theta)   Gamma(0.01, 0.01) (shape, rate), brms's default for negbinomial
================================  ==========================================================

Every class can be overridden: ``Priors.default(md).replace(sd=("student_t", 3, 0, 1.0))``. Distribution
tuples are ``("normal", mu, sigma)``, ``("student_t", nu, mu, sigma)`` (half- for SDs), ``("lkj", eta)`` and
``("gamma", shape, rate)``. With an ``offset()``, m_y is the mean of ``y - offset`` (gaussian).
Both backends take their priors through :func:`resolve_priors`, which checks them against the design the same
way for either.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .design import ModelData
from .errors import SpecError
from .spec import INTERCEPT

KINDS = {"normal": 3, "student_t": 4, "lkj": 2, "gamma": 3}


def _check(dist, what):
    if not isinstance(dist, tuple) or not dist or dist[0] not in KINDS or len(dist) != KINDS[dist[0]]:
        raise SpecError(f"prior for {what} must be one of ('normal', mu, sigma), ('student_t', nu, mu, sigma), "
                        f"('lkj', eta), ('gamma', shape, rate); got {dist!r}")
    if any(not np.isfinite(float(v)) for v in dist[1:]):
        raise SpecError(f"prior for {what} has a non-finite parameter: {dist!r}")
    return tuple([dist[0]] + [float(v) for v in dist[1:]])


@dataclass(frozen=True)
class Priors:
    """Priors per parameter class; ``b`` maps fixed-effect column names to their prior."""

    intercept: tuple
    b: dict = field(default_factory=dict)
    sd: tuple = ("student_t", 3.0, 0.0, 1.0)
    sigma: tuple = ("student_t", 3.0, 0.0, 1.0)
    cor: tuple = ("lkj", 2.0)
    shape: tuple = ("gamma", 0.01, 0.01)  # the negative binomial's theta (brms's shape, PyMC's alpha)

    @classmethod
    def default(cls, md: ModelData) -> "Priors":
        y = md.y - md.offset
        gaussian = md.spec.family == "gaussian"
        s_y = float(np.std(y, ddof=1)) if gaussian else 1.0
        m_y = float(np.mean(y)) if gaussian else 0.0
        b = {}
        for j, name in enumerate(md.fixed_names):
            if name == INTERCEPT:
                continue
            s_x = float(np.std(md.X[:, j], ddof=1))
            b[name] = ("normal", 0.0, 2.5 * s_y / (s_x if s_x > 0 else 1.0))
        return cls(intercept=("normal", m_y, 2.5 * s_y), b=b, sd=("student_t", 3.0, 0.0, s_y),
                   sigma=("student_t", 3.0, 0.0, s_y), cor=("lkj", 2.0))

    def replace(self, **changes) -> "Priors":
        """A copy with some classes overridden (validated)."""
        unknown = set(changes) - {"intercept", "b", "sd", "sigma", "cor", "shape"}
        if unknown:
            raise SpecError(f"unknown prior classes {sorted(unknown)}; use intercept, b, sd, sigma, cor, shape")
        if "b" in changes and isinstance(changes["b"], tuple):  # one prior for every slope
            changes["b"] = {k: changes["b"] for k in self.b}
        out = replace(self, **changes)
        out.validate()
        return out

    def validate(self) -> None:
        _check(self.intercept, "intercept")
        for k, v in self.b.items():
            _check(v, f"b[{k}]")
        for name in ("sd", "sigma"):
            d = _check(getattr(self, name), name)
            if d[0] != "student_t" or d[2] != 0:
                raise SpecError(f"the {name} prior must be a half-Student-t ('student_t', nu, 0, scale)")
        if _check(self.cor, "cor")[0] != "lkj":
            raise SpecError("the cor prior must be ('lkj', eta)")
        if _check(self.shape, "shape")[0] != "gamma":
            raise SpecError("the shape prior (the negative binomial's theta) must be ('gamma', shape, rate)")

    def to_dict(self) -> dict:
        return {"intercept": list(self.intercept), "b": {k: list(v) for k, v in self.b.items()},
                "sd": list(self.sd), "sigma": list(self.sigma), "cor": list(self.cor), "shape": list(self.shape)}


def resolve_priors(md: ModelData, priors) -> Priors:
    """The priors a Bayesian backend samples with, checked against the design of ``md``.

    ``priors`` is None (``Priors.default(md)``), a :class:`Priors`, or a dict of per-class overrides of
    ``Priors.default(md)``. The ``b`` priors must name exactly the design's coefficients other than the
    intercept, and every scale, degrees of freedom and eta must be positive; anything else is a SpecError that
    says what is wrong, raised before a model is built.

    >>> # resolve_priors(md, {"b": {"x1": ("normal", 0, 1)}})  # x2 has none
    >>> # SpecError: the b priors must name exactly the design's coefficients ['x1', 'x2']; missing: ['x2'] ...
    """
    base = Priors.default(md)
    if priors is None:
        pri = base
    elif isinstance(priors, Priors):
        priors.validate()
        pri = priors
    elif isinstance(priors, dict):
        pri = base.replace(**priors)
    else:
        raise SpecError("priors must be a hiercompare.priors.Priors or a dict of overrides per class "
                        "(intercept, b, sd, sigma, cor)")
    slopes = [n for n in md.fixed_names if n != INTERCEPT]
    unknown = sorted(set(pri.b) - set(slopes))
    missing = [n for n in slopes if n not in pri.b]
    if unknown or missing:
        raise SpecError(f"the b priors must name exactly the design's coefficients {slopes}; "
                        + (f"unknown: {unknown}" if unknown else "") + ("; " if unknown and missing else "")
                        + (f"missing: {missing}" if missing else "")
                        + "; give one prior per coefficient, or one tuple for all of them, e.g. "
                          "b=('normal', 0, 1)")
    for what, dist in [("intercept", pri.intercept), ("sd", pri.sd), ("sigma", pri.sigma), ("cor", pri.cor),
                       ("shape", pri.shape)] + [
            (f"b[{k}]", v) for k, v in pri.b.items()]:
        _check_positive(what, dist)
    return pri


def _check_positive(what: str, dist: tuple) -> None:
    kind, pars = dist[0], [float(v) for v in dist[1:]]
    positive = {"normal": pars[1:2], "student_t": pars[0:1] + pars[2:3], "lkj": pars[0:1], "gamma": pars}[kind]
    if any(v <= 0 for v in positive):
        raise SpecError(f"the {what} prior {dist!r} needs positive scale, degrees of freedom and eta")
