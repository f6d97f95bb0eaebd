"""Intervention classes by name: the registry, and module-qualified names of loaded classes.

Saved files name an intervention class; loading must find the class without
importing or unpickling anything the file names. A name resolves to

1. a class registered under it (``register_intervention``; our own classes use
   their short names, e.g. ``"LoreftIntervention"``), else
2. for a module-qualified name (``"pyreft.interventions.LoreftIntervention"``),
   the subclass of our ``Intervention`` base with that ``__module__`` and
   ``__qualname__`` that is already imported in this process (found by walking
   subclasses; no module attribute is read, so no lazy import can run). Plain
   ``nn.Module`` classes are never found this way (a file could otherwise name
   any loaded module class): register them.

Anything else is a clear error naming the missing import.
"""
from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional, Type

from torch import nn

from ..errors import ConfigError, closest

_REGISTRY: Dict[str, Type[nn.Module]] = {}
#: the base whose loaded subclasses module-qualified names resolve to (base.py sets ``Intervention``)
_RESOLVABLE: List[type] = []


def resolve_subclasses_of(base: type) -> None:
    """Let module-qualified names resolve to the loaded subclasses of ``base``."""
    if base not in _RESOLVABLE:
        _RESOLVABLE.append(base)


def qualified_name(cls: type) -> str:
    """``"module.QualName"`` of a class."""
    return f"{cls.__module__}.{cls.__qualname__}"


def importable(cls: type) -> bool:
    """True when the class has a stable module-qualified name (not defined inside a function)."""
    return "<locals>" not in cls.__qualname__ and cls.__module__ not in (None, "builtins")


def register_intervention(name: Any = None, cls: Optional[Type[nn.Module]] = None):
    """Register an intervention class under a name (saved files refer to names).

    ``register_intervention("MyIntervention", MyIntervention)``, or as a decorator:
    ``@register_intervention`` / ``@register_intervention("MyName")``. A name
    taken by another class is refused; a module-qualified name such as
    ``"pkg.mod.MyIntervention"`` never clashes with ours.
    """
    if isinstance(name, type) and cls is None:  # bare decorator
        return register_intervention(name.__name__, name)
    if cls is None:
        return lambda c: register_intervention(name or c.__name__, c)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"An intervention name must be a non-empty string; got {name!r}.")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"Only nn.Module subclasses can be registered as interventions; got {cls!r}.")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise ConfigError(
            f"An intervention named {name!r} is already registered ({qualified_name(existing)}); pick another "
            f"name, e.g. the class's module-qualified name: pv.register_intervention({qualified_name(cls)!r}, "
            f"{cls.__name__})."
        )
    _REGISTRY[name] = cls
    return cls


def _loaded_subclasses(root: type) -> List[type]:
    seen, stack, out = set(), [root], []
    while stack:
        cls = stack.pop()
        for sub in type.__subclasses__(cls):
            if id(sub) not in seen:
                seen.add(id(sub))
                out.append(sub)
                stack.append(sub)
    return out


def loaded_class(name: str) -> Optional[Type[nn.Module]]:
    """The already-imported ``Intervention`` subclass whose module-qualified name is ``name``, or None."""
    matches = list({id(c): c for root in _RESOLVABLE for c in _loaded_subclasses(root) if qualified_name(c) == name}.values())
    if len(matches) > 1:  # e.g. a module imported twice: keep the one its module currently defines
        current = []
        for cls in matches:
            namespace = vars(sys.modules[cls.__module__]) if cls.__module__ in sys.modules else {}
            if namespace.get(cls.__qualname__) is cls:
                current.append(cls)
        matches = current
    if len(matches) != 1:
        return None
    return matches[0]


def closest_type(name: str) -> str:
    """'Did you mean' over the registered names, ignoring case and the 'Intervention' suffix
    (``"vanilla"`` finds ``"VanillaIntervention"``)."""
    return closest(name, _REGISTRY, normalise=lambda n: n.lower().removesuffix("intervention"))


#: our own intervention classes defined above this layer (imported on first use by name; a fixed
#: table of this package's modules, never a module a file names)
_OWN_ELSEWHERE = {"SAEIntervention": "intervenable.saes.intervention"}


def get_intervention_class(name: str) -> Type[nn.Module]:
    """The class registered under ``name``, or the loaded class with that module-qualified name."""
    if name not in _REGISTRY and name in _OWN_ELSEWHERE:
        import importlib

        importlib.import_module(_OWN_ELSEWHERE[name])  # registers it
    if name in _REGISTRY:
        return _REGISTRY[name]
    if "." in name:
        cls = loaded_class(name)
        if cls is not None:
            return cls
        package = name.split(".", 1)[0]
        module = name.rsplit(".", 1)[0]
        raise ConfigError(
            f"No intervention class {name!r} is imported in this process (only pv.Intervention subclasses already "
            f"imported are found; nothing is imported from a saved file). Import it first (e.g. `import {package}` "
            f"or `import {module}`) and load again, or register it: pv.register_intervention({name!r}, cls)."
        )
    hint = closest_type(name)
    raise ConfigError(
        f"No intervention type named {name!r} is registered.{hint} If it is your own class, "
        f"register it before loading: pv.register_intervention({name!r}, {name})."
    )


def intervention_name(obj: Any) -> Optional[str]:
    """The registered name of an intervention class or instance, or None."""
    cls = obj if isinstance(obj, type) else type(obj)
    for name, registered in _REGISTRY.items():
        if registered is cls:
            return name
    return None


def saved_type_name(obj: Any) -> Optional[str]:
    """The name a saved file uses for a class or instance: its registered name, else (an
    ``Intervention`` subclass) its module-qualified name when that resolves back to it, else None."""
    cls = obj if isinstance(obj, type) else type(obj)
    name = intervention_name(cls)
    if name is not None:
        return name
    if isinstance(cls, type) and importable(cls) and loaded_class(qualified_name(cls)) is cls:
        return qualified_name(cls)
    return None


def registered_interventions() -> Dict[str, Type[nn.Module]]:
    return dict(_REGISTRY)
