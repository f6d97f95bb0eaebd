"""The reference's deep import paths, under the ``pyvene`` alias.

Libraries built on pyvene run on us with ``sys.modules["pyvene"] = intervenable``,
and some of their code imports deep paths: ``pyvene.models.intervenable_base``
and ``pyvene.models.layers`` (pyreft), ``pyvene.models.basic_utils`` and
``pyvene.models.mlp.modelings_mlp`` (the reference's tutorials). Left alone,
Python would load our files a second time under those names: duplicate
modules, duplicate classes, families registered twice. The finder installed
here answers every ``pyvene.*`` import, while the alias is in place, with the
module of ours that holds those names: the same module objects, never a copy.
It does nothing when ``pyvene`` is not aliased to us (the real pyvene, or none).
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import re
import sys
from types import ModuleType
from typing import Optional, Sequence

# reference module (after "pyvene.") -> ours (after "intervenable.")
_TABLE = {
    "models.basic_utils": "basic_utils",
    "models.intervenable_base": "model",
    "models.configuration_intervenable_model": "config",
    "models.interventions": "interventions",
    "models.intervention_utils": "interventions.base",
    "models.layers": "interventions.rotations",
    "models.intervenable_modelcard": "type_mappings",
    "models.mlp": "models.mlp",
    "models.mlp.modelings_mlp": "models.mlp",
    "models.mlp.modelings_intervenable_mlp": "models.mlp",
    "models.gru": "models.gru",
    "models.gru.modelings_gru": "models.gru",
    "models.gru.modelings_intervenable_gru": "models.gru",
}
# "models.gpt2", "models.gpt2.modelings_intervenable_gpt2", ...: the create_* loaders live in our models package
_FAMILY = re.compile(r"models\.[a-z0-9_]+(\.modelings_[a-z0-9_]+)?")
# names whose reference module is a package with submodules we map
_PACKAGES = {"models.mlp", "models.gru"}
# the reference's internals: no counterpart
_PRIVATE = ("models.modeling_utils",)


def ours(reference_name: str) -> Optional[str]:
    """Our module for the reference's ``pyvene.<rest>``, or None when we have no counterpart."""
    rest = reference_name[len("pyvene."):]
    if rest in _TABLE:
        return f"intervenable.{_TABLE[rest]}"
    if any(rest == p or rest.startswith(p + ".") for p in _PRIVATE):
        return None
    try:
        if importlib.util.find_spec(f"intervenable.{rest}") is not None:
            return f"intervenable.{rest}"
    except ModuleNotFoundError:  # a parent of it is not ours: maybe a family's package
        pass
    if _FAMILY.fullmatch(rest):
        return "intervenable.models"
    return None


class ReferencePathFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve ``pyvene.*`` to our modules while ``sys.modules["pyvene"]`` is intervenable."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None) -> Optional[importlib.machinery.ModuleSpec]:
        if not fullname.startswith("pyvene.") or sys.modules.get("pyvene") is not sys.modules.get("intervenable"):
            return None
        name = ours(fullname)
        if name is None:
            raise ModuleNotFoundError(
                f"intervenable has no counterpart of the reference's module {fullname!r}: import its public "
                "names from the top level (pyvene.NAME); docs/compatibility.md lists them.", name=fullname)
        is_package = fullname[len("pyvene."):] in _PACKAGES or name == "intervenable.models"
        return importlib.machinery.ModuleSpec(fullname, self, is_package=is_package)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(ours(spec.name) or "intervenable")

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module is already ours and loaded."""


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, ReferencePathFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ReferencePathFinder())
