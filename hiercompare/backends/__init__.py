"""Backend registry: a name maps to a class; heavy libraries are imported inside each backend module.

Adding a backend is one entry in ``REGISTRY`` and one module with a :class:`~hiercompare.backends.base.Backend`
subclass.
"""
from __future__ import annotations

import importlib

from ..errors import BackendUnavailable, SpecError
from .base import Backend

REGISTRY: dict[str, str] = {
    "ols": "hiercompare.backends.ols:OLSBackend",
    "r_lm": "hiercompare.backends.r_lm:RLmBackend",
    "glm": "hiercompare.backends.glm:GLMBackend",
    "r_glm": "hiercompare.backends.r_glm:RGlmBackend",
    "mixedlm": "hiercompare.backends.mixedlm:MixedLMBackend",
    "lme4": "hiercompare.backends.lme4:Lme4Backend",
    "native": "hiercompare.backends.native:NativeBackend",
    "torch": "hiercompare.backends.torch:TorchBackend",
    "torch-embed": "hiercompare.backends.torch:TorchEmbedBackend",
    "lightgbm": "hiercompare.backends.lightgbm:LightGBMBackend",
    "lightgbm-cat": "hiercompare.backends.lightgbm:LightGBMCatBackend",
    "pymc": "hiercompare.backends.pymc:PyMCBackend",
    "brms": "hiercompare.backends.brms:BrmsBackend",
}


def get_backend(name: str) -> Backend:
    """The backend instance for ``name``; raises BackendUnavailable if it cannot run here."""
    if name not in REGISTRY:
        raise SpecError(f"unknown backend {name!r}; registered backends are {sorted(REGISTRY)}")
    module, cls = REGISTRY[name].split(":")
    backend = getattr(importlib.import_module(module), cls)()
    ok, reason = backend.availability()
    if not ok:
        raise BackendUnavailable(f"{name}: {reason}")
    return backend


def backends(names: list[str] | None = None) -> dict[str, dict]:
    """Every registered backend (or those in ``names``) with whether it can run here and, if not, why."""
    out = {}
    for name, target in REGISTRY.items():
        if names is not None and name not in names:
            continue
        module, cls = target.split(":")
        backend = getattr(importlib.import_module(module), cls)()
        ok, reason = backend.availability()
        out[name] = {"available": ok, "reason": reason, "description": backend.description,
                     "families": list(backend.families), "features": sorted(backend.features)}
    return out


def feature_backends(feature: str) -> list[str]:
    """The registered backends whose class lists ``feature`` (``"offset"``, ``"trials"``, ``"weights"``) in
    :attr:`Backend.features`; the backends' heavy libraries are not imported (they load inside ``fit``)."""
    out = []
    for name, target in REGISTRY.items():
        module, cls = target.split(":")
        try:
            if feature in getattr(importlib.import_module(module), cls).features:
                out.append(name)
        except Exception:  # pragma: no cover - a backend module that fails to import is not offered
            continue
    return out


Backend.feature_backends = staticmethod(feature_backends)  # what Backend.check names in its refusals


def available_backends() -> list[str]:
    return [n for n, info in backends().items() if info["available"]]


__all__ = ["Backend", "REGISTRY", "get_backend", "backends", "available_backends", "feature_backends"]
