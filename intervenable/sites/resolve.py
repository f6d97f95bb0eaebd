"""Turn a representation's ``component`` into a ``Site``.

An abstract name (``block_output``) is looked up in the model family's table
and placed at ``layer``; anything else is read as a raw module path.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from torch import nn

from ..errors import ComponentError, ConfigError, closest
from . import archs  # noqa: F401  (registers the families)
from .paths import get_module, infer_width, parse_module_path
from .registry import Architecture, Component, find_architecture
from .site import Site

ABSTRACT_COMPONENTS = (
    "block_input",
    "block_output",
    "mlp_activation",
    "mlp_output",
    "mlp_input",
    "attention_value_output",
    "head_attention_value_output",
    "attention_output",
    "attention_input",
    "attention_weight",
    "query_output",
    "key_output",
    "value_output",
    "head_query_output",
    "head_key_output",
    "head_value_output",
)


def base_prefix(model: nn.Module, arch: Architecture) -> str:
    """Dotted path (with trailing '.') of the family's base model inside ``model``."""
    for path in arch.base_paths:
        if get_module(model, path) is not None:
            return f"{path}." if path else ""
    base = getattr(model, "base_model", model)
    if base is model or not isinstance(base, nn.Module):
        return ""
    for name, module in model.named_modules():
        if module is base:
            return f"{name}." if name else ""
    return ""


def _layer_count(model: nn.Module, arch: Architecture) -> Optional[int]:
    try:
        return int(arch.num_layers(model.config))
    except (AttributeError, TypeError):
        return None


def _abstract_site(model: nn.Module, arch: Architecture, name: str, comp: Component, layer: Any, moe_key: Any) -> Site:
    config = getattr(model, "config", None)
    n_layers = _layer_count(model, arch)
    if "{layer}" in comp.module:
        if layer is None or isinstance(layer, bool) or not isinstance(layer, int):
            raise ConfigError(f"Component {name!r} needs an int 'layer'; got {layer!r}.")
        if n_layers is not None and not 0 <= layer < n_layers:
            raise ConfigError(
                f"Layer {layer} is out of range for {type(model).__name__}, which has {n_layers} layers: "
                f"use a layer in 0..{n_layers - 1}."
            )
    if "{moe_key}" in comp.module and moe_key is None:
        raise ConfigError(f"Component {name!r} of {arch.name} needs 'moe_key' (the expert index).")
    relative = comp.module.format(layer=layer, moe_key=moe_key)
    path = base_prefix(model, arch) + relative
    path = path.rstrip(".")
    module = get_module(model, path)
    if module is None:
        raise ComponentError(
            f"Component {name!r} of the {arch.name} table maps to module {path!r}, which "
            f"{type(model).__name__} does not have. Use a raw module path instead "
            f"(pv.list_components(model) lists the modules)."
        )
    width = comp.width(config) if comp.width is not None and config is not None else None
    n_heads = comp.heads(config) if comp.heads is not None and config is not None else None
    span = tuple(comp.slice(config)) if comp.slice is not None else None
    return Site(
        module=module,
        module_path=path,
        hook=comp.hook,
        component=name,
        layer=layer,
        width=width,
        n_heads=n_heads,
        slice=span,
        output_index=comp.output_index,
        writable=comp.writable,
        head_layout=comp.head_layout,
    )


def resolve_component(model: nn.Module, component: str, layer: Any = None, moe_key: Any = None) -> Site:
    """The ``Site`` of ``component`` at ``layer`` in ``model``.

    Raises ``ComponentError`` listing the valid names (and the closest one)
    when the component is neither a known abstract name nor a module path.
    """
    arch = find_architecture(model)
    if arch is not None and component in arch.components:
        return _abstract_site(model, arch, component, arch.components[component], layer, moe_key)
    try:
        path, hook, module = parse_module_path(model, component)
    except ComponentError as exc:
        if "." in component or "[" in component:
            raise
        valid = sorted(arch.components) if arch is not None else []
        if component in ABSTRACT_COMPONENTS and arch is not None:
            raise ComponentError(
                f"Component {component!r} is not available for the {arch.name} family. "
                f"Available: {', '.join(valid)}; or use a raw module path."
            ) from None
        if arch is None:
            family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
            raise ComponentError(
                f"{family!r} has no entry in the architecture registry, so abstract component "
                f"{component!r} cannot be placed. Use a raw module path such as "
                f"'layers[0].mlp.output' (pv.list_components(model) prints the modules)."
            ) from None
        hint = closest(component, valid)
        raise ComponentError(
            f"Unknown component {component!r} for {type(model).__name__}.{hint} "
            f"Valid components: {', '.join(valid)}; or a raw module path such as "
            f"'{base_prefix(model, arch)}...output'."
        ) from exc
    return Site(
        module=module,
        module_path=path,
        hook=hook,
        component=component,
        layer=None,
        width=infer_width(module, hook),
    )


def list_components(model: nn.Module, layer: int = 0, print_table: bool = True) -> Dict[str, str]:
    """The abstract components available for ``model`` and where each lands (at ``layer``).

    Returns ``{component: "module.path.output [view]"}`` and prints it as a
    table unless ``print_table=False``. Models without a registry entry list
    their module paths instead, which work as raw components.
    """
    arch = find_architecture(model)
    table: Dict[str, str] = {}
    if arch is not None:
        for name, comp in arch.components.items():
            try:
                site = _abstract_site(model, arch, name, comp, layer, 0)
            except (ComponentError, ConfigError) as exc:
                table[name] = f"unavailable: {exc}"
                continue
            width = f" width={site.width}" if site.width is not None else ""
            table[name] = site.describe() + width
    else:
        for name, module in model.named_modules():
            if name:
                table[name] = f"{name}.output ({type(module).__name__})"
    if print_table:
        title = arch.name if arch is not None else f"{type(model).__name__} (no registry entry: raw module paths)"
        print(f"Components of {title}" + (f" at layer {layer}:" if arch is not None else ":"))
        width = max((len(k) for k in table), default=0)
        for name, where in table.items():
            print(f"  {name.ljust(width)}  {where}")
    return table


def component_names(model: nn.Module) -> List[str]:
    arch = find_architecture(model)
    return sorted(arch.components) if arch is not None else []
