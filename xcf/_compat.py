"""Deprecated module paths of xcf 0.1, kept importable for one release.

xcf 0.2 gave every responsibility its own folder (``docs/architecture.md``).  ``import xcf.validate`` and
``from xcf.geometry import tangent_space`` still work: an import hook answers each old name with a
module that forwards every attribute to the new home and warns once (``DeprecationWarning``).  The old
module ``xcf.search`` is gone for good: ``xcf.search`` is the search function, and its module is
:mod:`xcf.engine`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from typing import Any, Optional, Sequence

__all__ = ["ALIASES", "install"]

#: old module path -> the modules its names now live in (searched in order)
ALIASES: dict[str, tuple[str, ...]] = {
    "xcf.validate": ("xcf.evaluate.validators", "xcf.evaluate.metrics"),
    "xcf.geometry": ("xcf.evaluate.geometry", "xcf.evaluate.manifold"),
    "xcf.quality": ("xcf.evaluate.quality",),
    "xcf.maps": ("xcf.evaluate.maps", "xcf.report.maps"),
    "xcf.cleverhans": ("xcf.evaluate.cleverhans", "xcf.datasets.watermark"),
    "xcf.regression": ("xcf.evaluate.regression",),
    "xcf.store": ("xcf.scale.store",),
    "xcf.stream": ("xcf.scale.stream", "xcf.scale.batches", "xcf.scale.summary", "xcf.scale.distributed", "xcf.scale.precision"),
    "xcf.cli": ("xcf.apps.cli",),
    "xcf.report.demo": ("xcf.apps.demo",),
    "xcf.report.audit": ("xcf.apps.audit",),
    "xcf.report.dataset_audit": ("xcf.apps.audit",),
    "xcf.report.extrapolation": ("xcf.apps.extrapolate",),
}


class _Forward(types.ModuleType):
    """A stand-in for an old module: attributes come from the new modules."""

    def __init__(self, name: str, targets: Sequence[str]):
        super().__init__(name, f"Deprecated: moved to {', '.join(targets)}.")
        self._targets = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self._targets:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} (moved to {', '.join(self._targets)}) has no attribute {attr!r}")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _Forward(spec.name, ALIASES[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} is deprecated: import from {', '.join(ALIASES[module.__name__])} "
                      "(removed in xcf 0.3)", DeprecationWarning, stacklevel=3)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname in ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _Loader())
        return None


def install() -> None:
    """Answer the old module paths (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.append(_Finder())
