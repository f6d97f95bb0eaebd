"""Lazy public names of a package: each is imported from its defining module on first access.

``import intervenable`` must not pay for torch, transformers' modelling code or
matplotlib; the package and ``intervenable.models`` therefore define their names
through ``lazy_exports``, which builds the module-level ``__getattr__`` and
``__dir__`` (PEP 562).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any, Callable, Dict, List, Tuple


def lazy_exports(package: str, where: Dict[str, str]) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``where`` maps a public name to its module (relative to
    ``package``); any other name that is a submodule of ``package`` (``pv.sweeps``) is imported as such."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            if not name.startswith("_") and importlib.util.find_spec(f"{package}.{name}") is not None:
                return importlib.import_module(f"{package}.{name}")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value  # later accesses are plain attribute lookups
        return value

    def __dir__() -> List[str]:
        # Public names only: the exports and the package's submodules already imported (``pv.sweeps``),
        # not what the package's own module imported for itself (``Dict``, ``TYPE_CHECKING``, ``annotations``).
        submodules = {name for name, value in namespace.items() if not name.startswith("_")
                      and isinstance(value, types.ModuleType) and value.__name__ == f"{package}.{name}"}
        return sorted(set(namespace.get("__all__", ())) | submodules)

    return __getattr__, __dir__
