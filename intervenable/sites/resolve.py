"""Turn a representation's ``component`` into a ``Site``.

An abstract name (``block_output``) is looked up in the model family's table
and placed at ``layer``; anything else is read as a raw module path.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ComponentError, ConfigError, ShapeError, closest
from . import archs  # noqa: F401  (registers the families)
from .paths import get_module, infer_width, parse_module_path
from .registry import Architecture, Component, find_architecture
from .site import Site


def replace_site(site: Site, **changes: Any) -> Site:
    """A plain ``Site`` with the fields of ``site`` (minus subclass fields), updated by ``changes``."""
    fields = {k: getattr(site, k) for k in Site.__dataclass_fields__}
    fields.update({k: v for k, v in changes.items() if k in fields})
    return Site(**fields)

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


#: What the attention / the MLP adds to the residual stream (TransformerLens's hook_attn_out / hook_mlp_out):
#: the family's ``Residual`` writer when its stack describes one (Gemma2 and OLMo2 norm the sublayers'
#: outputs first), else the module's own output.
RESIDUAL_CONTRIBUTIONS = {"attention_residual": "attention_output", "mlp_residual": "mlp_output"}


def _residual_writer(arch: Architecture, component: str) -> Optional[Component]:
    res = arch.stack.residual if arch.stack is not None else None
    if res is None:
        return None
    return res.attention if component == "attention_residual" else res.mlp


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


def _layer_count(model: nn.Module, arch: Architecture, comp: Optional[Component] = None) -> Optional[int]:
    counter = comp.num_layers if comp is not None and comp.num_layers is not None else arch.num_layers
    try:
        return int(counter(model.config))
    except (AttributeError, TypeError):
        return None


@dataclass(frozen=True)
class GroupedSliceSite(Site):
    """A site on a fused projection laid out per group: ``[..., groups * chunk]``.

    The view keeps dims ``group_slice[0]:group_slice[1]`` of every chunk and
    concatenates them (GPT-NeoX's per-head ``[q k v]``, Falcon's per-KV-group
    ``[q.. k v]``); then the usual head split applies.
    """

    groups: int = 1
    group_slice: Tuple[int, int] = (0, 0)

    def describe(self) -> str:
        a, b = self.group_slice
        heads = f", {self.n_heads} heads" if self.n_heads is not None else ""
        idx = f"[{self.output_index}]" if self.output_index else ""
        return f"{self.module_path}.{self.hook}{idx} [dims {a}:{b} of each of {self.groups} groups{heads}]"

    def _grouped(self, full: torch.Tensor) -> torch.Tensor:
        if full.shape[-1] % self.groups:
            raise ShapeError(f"Site {self.describe()}: width {full.shape[-1]} is not divisible by {self.groups} groups.")
        return full.reshape(*full.shape[:-1], self.groups, full.shape[-1] // self.groups)

    def to_view(self, full: torch.Tensor) -> torch.Tensor:
        a, b = self.group_slice
        x = self._grouped(full)[..., a:b].reshape(*full.shape[:-1], -1)
        return replace_site(self, slice=None, groups=1).to_view(x) if self.n_heads is not None else x

    def from_view(self, full: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        a, b = self.group_slice
        flat = replace_site(self, slice=None, groups=1).from_view(full, view) if self.n_heads is not None else view
        out = self._grouped(full).clone()
        out[..., a:b] = flat.reshape(*full.shape[:-1], self.groups, b - a).to(full.dtype)
        return out.reshape(full.shape)


def component_module(model: nn.Module, arch: Architecture, comp: Component, layer: Any = None,
                     moe_key: Any = None) -> Tuple[str, Optional[nn.Module]]:
    """The full path of ``comp`` at ``layer`` in ``model`` and its module, in the first layout the model
    has (``Component.alternatives``); ``(newest layout's path, None)`` when it has none of them."""
    prefix = base_prefix(model, arch)
    paths = [(prefix + p.format(layer=layer, moe_key=moe_key)).rstrip(".") for p in comp.paths()]
    for path in paths:
        module = get_module(model, path)
        if module is not None:
            return path, module
    return paths[0], None


def _abstract_site(model: nn.Module, arch: Architecture, name: str, comp: Component, layer: Any, moe_key: Any) -> Site:
    config = getattr(model, "config", None)
    n_layers = _layer_count(model, arch, comp)
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
    path, module = component_module(model, arch, comp, layer, moe_key)
    if module is None:
        raise ComponentError(
            f"Component {name!r} of the {arch.name} table maps to module {path!r}, which "
            f"{type(model).__name__} does not have. "
            + (f"{comp.hint} " if comp.hint else "")
            + "Or use a raw module path instead (pv.list_components(model) lists the modules)."
        )
    width = comp.width(config) if comp.width is not None and config is not None else None
    n_heads = comp.heads(config) if comp.heads is not None and config is not None else None
    span = tuple(comp.slice(config)) if comp.slice is not None else None
    groups = int(comp.groups(config)) if comp.groups is not None and config is not None else 1
    if groups > 1 and span is not None:
        return GroupedSliceSite(
            module=module, module_path=path, hook=comp.hook, component=name, layer=layer, width=width,
            n_heads=n_heads, slice=None, output_index=comp.output_index, writable=comp.writable,
            head_layout=comp.head_layout, groups=groups, group_slice=(int(span[0]), int(span[1])),
        )
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
    same = RESIDUAL_CONTRIBUTIONS.get(component)
    if arch is not None and same is not None:
        writer = _residual_writer(arch, component)
        if writer is not None:
            return _abstract_site(model, arch, component, writer, layer, moe_key)
        if same in arch.components:
            return _abstract_site(model, arch, same, arch.components[same], layer, moe_key)
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


class ComponentTable(dict):
    """``{component: "module.path.output [view] width=..."}`` whose repr is the printed table.

    A dict, so ``table["block_output"]`` and ``"mlp_output" in table`` work; in a notebook or the
    shell the last expression shows the table once (nothing is printed by ``list_components``).
    """

    def __init__(self, title: str, rows: Dict[str, str]) -> None:
        super().__init__(rows)
        self.title = title

    def __repr__(self) -> str:
        width = max((len(k) for k in self), default=0)
        return "\n".join([self.title] + [f"  {name.ljust(width)}  {where}" for name, where in self.items()])

    __str__ = __repr__


def list_components(model: nn.Module, layer: int = 0, print_table: bool = False) -> ComponentTable:
    """The abstract components available for ``model`` and where each lands (at ``layer``).

    Returns a ``ComponentTable``: a dict ``{component: "module.path.output [view]"}`` whose repr is a
    readable table (so a notebook shows it once). Models without a registry entry list their module
    paths instead, which work as raw components. ``print_table=True`` also prints it.
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
        title = f"Components of {arch.name} at layer {layer}:"
    else:
        for name, module in model.named_modules():
            if name:
                table[name] = f"{name}.output ({type(module).__name__})"
        title = f"Components of {type(model).__name__} (no registry entry: raw module paths):"
    result = ComponentTable(title, table)
    if print_table:
        print(result)
    return result
