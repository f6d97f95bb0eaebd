"""From a representation to what a slot holds: its key, its intervention module, its device.

``IntervenableModel.__init__`` calls these once per representation;
``InterventionDict`` is the model's ``interventions`` (keys and short aliases).
"""
from __future__ import annotations

from typing import Any, Dict

from torch import nn

from .config import RepresentationConfig
from .errors import ConfigError
from .interventions.base import Capabilities, Intervention
from .interventions.basic import LambdaIntervention, VanillaIntervention, positional_arity
from .preflight import check_callable, intervention_class_named, unit_width
from .sites.site import Site


def representation_key(rep: RepresentationConfig, counter: Dict[str, int]) -> str:
    """Stable, readable key: ``layer_6_comp_block_output_unit_pos_nunit_1#0``.

    Raw module paths give ``comp_transformer_h[6]_mlp_output_unit_pos_nunit_1#0``.
    ``#i`` counts repeats of the same site.
    """
    unit = rep.unit.replace(".", "_")
    comp = rep.component.replace(".", "_")
    if "." in rep.component or "[" in rep.component:
        proposal = f"comp_{comp}_unit_{unit}_nunit_{rep.max_number_of_units}"
    else:
        proposal = f"layer_{rep.layer}_comp_{comp}_unit_{unit}_nunit_{rep.max_number_of_units}"
    if rep.moe_key is not None:
        proposal += f"_moe_{rep.moe_key}"
    index = counter.get(proposal, -1) + 1
    counter[proposal] = index
    return f"{proposal}#{index}"


def build_intervention(spec: Any, rep: RepresentationConfig, site: Site) -> nn.Module:
    """An intervention module from a class, instance, registered name or plain callable."""
    if isinstance(spec, str):
        spec = intervention_class_named(spec)
    if spec is None:
        spec = VanillaIntervention
    if isinstance(spec, nn.Module):
        check_callable(spec)
        arity = None if isinstance(spec, Intervention) else positional_arity(spec)
        if arity is not None and arity[1] < 3:  # a plain module with forward(base, source)
            return LambdaIntervention(spec, source_representation=rep.source_representation)
        if rep.source_representation is not None and hasattr(spec, "set_source_representation"):
            spec.set_source_representation(rep.source_representation)
        return spec
    if isinstance(spec, type):
        if not issubclass(spec, nn.Module):
            raise ConfigError(f"Intervention class {spec.__name__} must be an nn.Module subclass.")
        kwargs = rep._asdict()
        width = unit_width(site)  # per head on head sites, as in the reference
        if width is not None and Capabilities.of_class(spec).flatten_units:
            width = width * int(rep.max_number_of_units)
        kwargs["embed_dim"] = width
        if issubclass(spec, Intervention):
            return spec(**kwargs)
        try:
            instance = spec(**kwargs)
        except TypeError:
            instance = spec()
        return build_intervention(instance, rep, site)
    if callable(spec):
        check_callable(spec)
        return LambdaIntervention(spec, source_representation=rep.source_representation)
    raise ConfigError(
        f"Cannot use {spec!r} as an intervention: give an intervention class, an instance, a registered "
        "name, or a callable f(base, source)."
    )


def place_on_site_device(intervention: nn.Module, site: Site) -> None:
    """Move an intervention to the device its site computes on (sharded models), if that is known."""
    for tensor in list(site.module.parameters()) + list(site.module.buffers()):
        if tensor.device.type != "meta":
            device = tensor.device
            break
    else:
        return  # no weights, or offloaded to disk: leave the intervention where it is
    current = next(iter(list(intervention.parameters()) + list(intervention.buffers())), None)
    if current is not None and current.device != device:
        intervention.to(device)


class InterventionDict(nn.ModuleDict):
    """The interventions by key. Also accepts short aliases: ``"layer.6.block_output"`` or
    ``"layer_6_comp_block_output"`` find the one key that starts with them."""

    def __getitem__(self, key: str) -> nn.Module:
        if key in self._modules:
            return self._modules[key]
        return self._modules[self.resolve_key(key)]

    def resolve_key(self, key: str) -> str:
        """The full key matching an exact key or a unique alias."""
        if key in self._modules:
            return key
        wanted = key.replace(".", "_")
        parts = wanted.split("_")
        if len(parts) >= 3 and parts[0] == "layer" and parts[2] != "comp":
            wanted = "_".join(parts[:2] + ["comp"] + parts[2:])  # layer_6_block_output -> layer_6_comp_block_output
        matches = [k for k in self._modules if k.startswith(wanted + "_") or k.startswith(wanted + "#") or k == wanted]
        if len(matches) == 1:
            return matches[0]
        detail = f"it matches {matches}" if matches else "no key matches it"
        raise KeyError(f"No intervention {key!r}: {detail}. Keys: {list(self._modules)}.")
