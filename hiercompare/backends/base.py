"""What a backend is: availability, what it can fit, and fit(ModelData) -> Fit."""
from __future__ import annotations

import importlib

from ..design import ModelData
from ..errors import SpecError
from ..results import Fit
from ..spec import ModelSpec


class Backend:
    """Base class. Subclasses set ``name``, ``families``, ``description`` and implement ``fit``."""

    name: str = ""
    families: tuple[str, ...] = ("gaussian",)
    description: str = ""
    requires: tuple[str, ...] = ()  # python modules needed
    install_hint: str = "run `make install`"
    takes_seed: bool = False  # True for backends that draw random numbers (samplers, learners): fit() passes seed
    requires_groups: bool = True  # every mixed-model backend; ols / r_lm fit a model without group terms too
    # what of ModelData.offset / trials / weights the backend uses: "offset" (offset() terms), "trials"
    # (binomial cbind(s, f)), "weights" (Gaussian prior weights); a spec or data that needs one it lacks is refused
    features: frozenset[str] = frozenset()

    def availability(self) -> tuple[bool, str]:
        for mod in self.requires:
            try:
                importlib.import_module(mod)
            except Exception as exc:  # ImportError or a broken install
                return False, f"python module {mod!r} cannot be imported ({exc}); {self.install_hint}"
        return True, ""

    def check(self, spec: ModelSpec) -> None:
        """Raise SpecError if this backend cannot fit ``spec`` exactly as written."""
        if self.requires_groups and not spec.groups:
            raise SpecError(f"{self.name} needs at least one group term such as (1 | market); "
                            "use ols for a model without one")
        if spec.family not in self.families:
            raise SpecError(
                f"backend {self.name!r} fits families {list(self.families)}, not {spec.family!r}; "
                "use lme4 for binomial, poisson or negbinomial outcomes"
            )
        if spec.offsets and "offset" not in self.features:
            raise SpecError(f"backend {self.name!r} cannot use offset({', '.join(spec.offsets)}); fit this formula "
                            f"with one of {self.feature_backends('offset')}")
        if spec.has_trials and "trials" not in self.features:
            raise SpecError(f"backend {self.name!r} cannot fit the binomial response with trials "
                            f"{spec.response_text()}; fit it with one of {self.feature_backends('trials')}")

    def check_data(self, md: ModelData) -> None:
        """Raise SpecError if this backend cannot use what ``md`` carries beyond the spec (prior weights)."""
        self.check(md.spec)
        if md.weights is not None and "weights" not in self.features:
            raise SpecError(f"backend {self.name!r} cannot use prior weights (weights=); fit with one of "
                            f"{self.feature_backends('weights')}")

    @staticmethod
    def feature_backends(feature: str) -> list[str]:
        """The registered backends that list ``feature``; the registry (``backends/__init__.py``, which knows every
        backend) puts its own function here, so this module imports none of them."""
        return []

    def fit(self, md: ModelData, **options) -> Fit:  # pragma: no cover - interface
        raise NotImplementedError

    def versions(self) -> dict[str, str]:
        return {}


def reml_or_ml(method) -> str:
    """The fit method in capitals, ``"REML"`` or ``"ML"`` (any case accepted); anything else is a SpecError."""
    out = str(method).upper()
    if out not in ("REML", "ML"):
        raise SpecError(f"method must be 'REML' or 'ML', got {out!r}")
    return out
