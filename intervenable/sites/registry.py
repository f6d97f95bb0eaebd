"""The architecture registry: abstract component names -> module paths, per model family.

A family is one file in ``sites/archs/`` that builds an ``Architecture`` and
calls ``register_architecture`` on it. The registry is keyed by the model's
``config.model_type`` and by class name, so every head class of a family
(``GPT2Model``, ``GPT2LMHeadModel``, ``GPT2ForSequenceClassification``) shares
one table: paths are relative to the family's base model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import nn

ConfigFn = Callable[[Any], Any]


@dataclass(frozen=True)
class Component:
    """One abstract component of a family.

    ``module``: path template relative to the base model, with ``{layer}``
    (and ``{moe_key}`` for mixture-of-experts) placeholders.
    ``width``: the activation's width from the model config.
    ``heads``: head count for head views; ``slice``: ``(start, end)`` of the last
    dimension for fused projections; ``output_index``: element of a tuple output.
    ``groups``: for fused projections laid out per group (GPT-NeoX, Falcon), the
    last dimension is ``groups`` equal chunks and ``slice`` is taken inside each.
    ``num_layers``: layer count of this component's stack when it differs from
    the family's (encoder / decoder, text / vision). ``hint``: appended to the
    error when the module is missing (e.g. a conversion step the user must run).
    """

    module: str
    hook: str = "output"
    width: Optional[ConfigFn] = None
    heads: Optional[ConfigFn] = None
    slice: Optional[ConfigFn] = None
    output_index: int = 0
    writable: bool = True
    head_layout: str = "split"
    groups: Optional[ConfigFn] = None
    num_layers: Optional[ConfigFn] = None
    hint: str = ""


@dataclass(frozen=True)
class Architecture:
    """A model family's table of components."""

    name: str
    model_types: Tuple[str, ...]
    num_layers: ConfigFn
    components: Mapping[str, Component]
    class_names: Tuple[str, ...] = ()
    # Candidate paths of the base model inside wrapper classes, tried in order;
    # empty means "use model.base_model".
    base_paths: Tuple[str, ...] = field(default=())
    description: str = ""


_BY_MODEL_TYPE: Dict[str, Architecture] = {}
_BY_CLASS: Dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Register a family (called once from its file in ``sites/archs``)."""
    for model_type in arch.model_types:
        _BY_MODEL_TYPE[model_type] = arch
    for class_name in arch.class_names:
        _BY_CLASS[class_name] = arch
    return arch


def registered_architectures() -> Tuple[Architecture, ...]:
    seen: Dict[str, Architecture] = {}
    for arch in list(_BY_MODEL_TYPE.values()) + list(_BY_CLASS.values()):
        seen.setdefault(arch.name, arch)
    return tuple(seen.values())


def find_architecture(model: nn.Module) -> Optional[Architecture]:
    """The registered family of ``model``, or None (raw module paths still work)."""
    arch = _BY_CLASS.get(type(model).__name__)
    if arch is not None:
        return arch
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str):
        return _BY_MODEL_TYPE.get(model_type)
    return None


# -- small builders used by the family files -----------------------------------
def attr(*names: str, default: Any = None) -> ConfigFn:
    """A config reader returning the first attribute that is set."""

    def read(config: Any) -> Any:
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        if default is not None:
            return default(config) if callable(default) else default
        raise AttributeError(f"config has none of {names}")

    return read


def sub(name: str, fn: ConfigFn) -> ConfigFn:
    """A config reader applied to a sub-config (``text_config``, ``vision_config``)."""

    def read(config: Any) -> Any:
        inner = getattr(config, name, None)
        if inner is None:
            raise AttributeError(f"config has no {name!r}")
        return fn(inner)

    return read


def out(module: str, width: ConfigFn, **kwargs: Any) -> Component:
    """A component read at a module's output."""
    return Component(module=module, hook="output", width=width, **kwargs)


def inp(module: str, width: ConfigFn, **kwargs: Any) -> Component:
    """A component read at a module's input."""
    return Component(module=module, hook="input", width=width, **kwargs)
