"""A model's residual stream and read-out, resolved from its family's description.

The descriptions live in the family files (``LayerStack.final`` / ``head`` / ``logit_softcap`` and
``LayerStack.residual``; the contract is in ``sites/registry.py``). This module is their one reader:
it turns them into modules and ``Site``s for the sweeps' fast path (the read-out), the cache toolkit
(logit lens, residual decomposition, direct logit attribution) and circuits (the stream's writers
and readers). Nothing here knows a family by name.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch
from torch import nn

from ..errors import ComponentError
from .paths import get_module
from .registry import Architecture, LayerStack, Norm, Residual, find_architecture
from .resolve import base_prefix, resolve_component
from .site import Site


@dataclass(frozen=True)
class Readout:
    """What turns the last residual state into logits: the final modules (norm, OPT's ``project_out``),
    the output head, and Gemma2's soft-capping."""

    final: Tuple[nn.Module, ...]
    head: Tuple[nn.Module, ...]
    softcap: Optional[float] = None

    def normed(self, resid: torch.Tensor) -> torch.Tensor:
        """``resid`` through the final modules (the final norm), ``[..., width]``."""
        for module in self.final:
            resid = module(resid)
        return resid

    def unembed(self, normed: torch.Tensor) -> torch.Tensor:
        """Normed states through the head and the soft-capping -> ``[..., vocab]``."""
        h = normed
        for module in self.head:
            h = module(h)
        if self.softcap:
            h = torch.tanh(h / self.softcap) * self.softcap
        return h

    def logits(self, resid: torch.Tensor) -> torch.Tensor:
        return self.unembed(self.normed(resid))


@dataclass(frozen=True)
class LayerResidual:
    """One layer's place in the stream: what it reads, what its sublayers add, where its heads mix."""

    layer: int
    stream: Site  # block_input: the stream entering the layer
    output: Site  # block_output: the stream leaving it
    attention: Site  # what the attention adds to the stream
    mlp: Site  # what the MLP adds to the stream
    heads: Site  # head_attention_value_output: the output projection's input, split per head
    out_proj: nn.Module  # the attention output projection (heads' value mixes -> width)
    attention_norm: Optional[nn.Module]  # the norm between the stream and the attention (None: none)
    mlp_norm: Optional[nn.Module]  # the norm between the stream and the MLP (None: none)
    #: (attention module, attribute) holding the query heads per key/value head (grouped-query
    #: attention, from ``Residual.kv_groups``); None when the family describes none
    kv_groups: Optional[Tuple[nn.Module, str]] = None
    #: the MLP module's own input (what the MLP norm feeds it); ``mlp`` with hook "input" unless the
    #: family norms the MLP's output (then ``mlp`` is that norm's output)
    mlp_input: Optional[Site] = None
    #: the norms on the attention's / MLP's output before they are added (Gemma2, OLMo2; modules of
    #: ``attention`` / ``mlp``), as arithmetic; None: added as they are
    attention_post: Optional["NormArithmetic"] = None
    mlp_post: Optional["NormArithmetic"] = None


@dataclass(frozen=True)
class ResidualStream:
    """Every layer's ``LayerResidual``, whether attention and MLP read the same input, and the read-out."""

    family: str
    layers: Tuple[LayerResidual, ...]
    parallel: bool
    readout: Readout


@dataclass(frozen=True)
class NormArithmetic:
    """A norm as arithmetic (its family's ``Norm`` with the module's parameters), in float32.

    ``normed(x) = frozen(x, scale(x)) + bias``: ``scale(x)`` is the per-position factor
    ``1 / sqrt(mean(P(x)^2) + eps)`` and ``frozen(c, s) = weight * P(c) * s`` is linear in ``c``, so a
    sum of components read through one frozen scale gives the normed sum minus the bias. The final
    norm (direct logit attribution) and Gemma2's sublayer norms (a head's share of the attention's
    write) are read this way.
    """

    centred: bool
    eps: float
    weight: Optional[torch.Tensor]  # offset + the module's weight, float32 (None: no scale parameter)
    bias: Optional[torch.Tensor]  # float32 (None: no shift)

    def center(self, c: torch.Tensor) -> torch.Tensor:
        c = c.float()
        return c - c.mean(-1, keepdim=True) if self.centred else c

    def scale(self, resid: torch.Tensor) -> torch.Tensor:
        """``[..., 1]``: the factor the norm divides ``resid`` by, inverted."""
        return torch.rsqrt(self.center(resid).pow(2).mean(-1, keepdim=True) + self.eps)

    def frozen(self, c: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """``c`` through the norm with its scale fixed at ``scale`` (no bias): linear in ``c``."""
        out = self.center(c) * scale.to(device=c.device, dtype=torch.float32)
        return out * self.weight.to(out.device) if self.weight is not None else out

    def __call__(self, resid: torch.Tensor) -> torch.Tensor:
        out = self.frozen(resid, self.scale(resid))
        return out + self.bias.to(out.device) if self.bias is not None else out


def norm_arithmetic(family: str, module: nn.Module, spec: Norm, what: str) -> NormArithmetic:
    """``module`` read as ``spec`` says (``ComponentError`` naming ``what`` when a parameter is missing)."""

    def param(name: str) -> Optional[torch.Tensor]:
        value = getattr(module, name, None) if name else None
        if name and value is not None and not isinstance(value, torch.Tensor):
            raise ComponentError(f"The {family!r} {what}'s {name!r} is not a tensor.")
        return None if value is None else value.detach().float()

    eps = spec.eps if isinstance(spec.eps, (int, float)) else getattr(module, spec.eps, None)
    if not isinstance(eps, (int, float)):
        raise ComponentError(f"The {family!r} {what} ({type(module).__name__}) has no epsilon attribute "
                             f"{spec.eps!r}: fix its Norm(eps=...) in the family file.")
    weight = param(spec.weight)
    if spec.offset:
        weight = spec.offset + (weight if weight is not None else 0.0)
    return NormArithmetic(spec.centred, float(eps), weight, param(spec.bias))


def _describe(model: nn.Module) -> Tuple[Architecture, LayerStack]:
    arch = find_architecture(model)
    if arch is None or getattr(model, "config", None) is None:
        name = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
        raise ComponentError(
            f"{name!r} has no entry in the architecture registry, so its final norm and unembedding are unknown. "
            "Register its family (docs/architecture.md, 'Adding a model family') with a LayerStack description."
        )
    if arch.stack is None:
        raise ComponentError(
            f"The {arch.name!r} family has no stack description (final norm, unembedding). Add "
            f"stack=LayerStack(...) to its file under intervenable/sites/archs/."
        )
    return arch, arch.stack


def readout(model: nn.Module) -> Readout:
    """The model's read-out from its family's ``LayerStack`` (``ComponentError`` when it has none or no head)."""
    arch, desc = _describe(model)
    prefix = base_prefix(model, arch).rstrip(".")
    base = get_module(model, prefix) if prefix else model
    final = tuple(m for m in (get_module(base, p) for p in desc.final) if isinstance(m, nn.Module))
    head: Tuple[nn.Module, ...] = tuple(m for m in (get_module(model, p) for p in desc.head) if isinstance(m, nn.Module))
    if not head:
        out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not isinstance(out, nn.Module):
            raise ComponentError(
                f"{type(model).__name__} has no output head: load a language-model class "
                "(e.g. AutoModelForCausalLM) to read logits from the residual stream."
            )
        head = (out,)
    softcap = desc.logit_softcap(model.config) if desc.logit_softcap is not None else None
    return Readout(final, head, softcap)


def residual_stream(model: nn.Module) -> ResidualStream:
    """The model's residual stream, every layer resolved (``ComponentError`` naming what is missing)."""
    arch, desc = _describe(model)
    config = model.config
    res = desc.residual
    why = res.unsupported(config) if res is not None and res.unsupported is not None else ""
    if res is None or why:
        reason = why or "its file describes no Residual"
        raise ComponentError(
            f"The {arch.name!r} family's residual stream is not described ({reason}), so it cannot be "
            "decomposed into its writers. Add residual=Residual(...) to its LayerStack "
            "(contract in intervenable/sites/registry.py)."
        )
    prefix = base_prefix(model, arch)
    layers: List[LayerResidual] = []
    for layer in range(int(arch.num_layers(config))):
        def site(name: str) -> Site:
            return resolve_component(model, name, layer)

        def norm(template: str) -> Optional[nn.Module]:
            if not template:
                return None
            path = prefix + template.format(layer=layer)
            module = get_module(model, path)
            if not isinstance(module, nn.Module):
                raise ComponentError(f"The {arch.name!r} residual description names norm {path!r}, "
                                     f"which {type(model).__name__} does not have.")
            return module

        def attribute(template: str) -> Optional[Tuple[nn.Module, str]]:
            if not template:
                return None
            owner, _, name = (prefix + template.format(layer=layer)).rpartition(".")
            module = get_module(model, owner)
            if not isinstance(module, nn.Module) or not hasattr(module, name):
                raise ComponentError(f"The {arch.name!r} residual description names attribute {owner}.{name}, "
                                     f"which {type(model).__name__} does not have.")
            return module, name

        heads = site("head_attention_value_output")
        attention, mlp = site("attention_residual"), site("mlp_residual")
        post = res.sublayer_norm

        def post_norm(written: Site, what: str) -> Optional[NormArithmetic]:
            return None if post is None else norm_arithmetic(arch.name, written.module, post, what)

        layers.append(LayerResidual(
            layer=layer, stream=site("block_input"), output=site("block_output"),
            attention=attention, mlp=mlp, heads=heads, out_proj=heads.module,
            attention_norm=norm(res.attention_norm), mlp_norm=norm(res.mlp_norm),
            kv_groups=attribute(res.kv_groups),
            mlp_input=_mlp_input(model, layer, res, mlp),
            attention_post=post_norm(attention, f"layer {layer} attention output norm"),
            mlp_post=post_norm(mlp, f"layer {layer} MLP output norm"),
        ))
    return ResidualStream(arch.name, tuple(layers), bool(res.parallel(config)), readout(model))


def _mlp_input(model: nn.Module, layer: int, res: Optional[Residual], written: Site) -> Site:
    if res is None or res.sublayer_norm is not None or written.hook != "output":
        return resolve_component(model, "mlp_input", layer)
    return replace(written, hook="input", component="mlp_input")  # the module that writes also reads


def mlp_input(model: nn.Module, layer: int) -> Site:
    """The MLP's own input at ``layer`` (what it reads, after its norm): the input of the module whose output is
    what the MLP adds to the stream, or, where that output is normed first (Gemma2, OLMo2) or the family has no
    residual description, the family's ``mlp_input``. A transcoder reads it."""
    arch = find_architecture(model)
    res = arch.stack.residual if arch is not None and arch.stack is not None else None
    if res is not None and res.unsupported is not None and res.unsupported(model.config):
        res = None
    return _mlp_input(model, layer, res, resolve_component(model, "mlp_residual", layer))


def final_norm(model: nn.Module) -> NormArithmetic:
    """The final norm's arithmetic from its family's ``Residual.final_norm`` (``ComponentError`` when undescribed)."""
    arch, desc = _describe(model)
    spec: Optional[Norm] = desc.residual.final_norm if desc.residual is not None else None
    modules = readout(model).final
    if spec is None or len(modules) != 1:
        raise ComponentError(
            f"The {arch.name!r} family's final norm is not described as arithmetic, so its scale cannot be "
            "frozen. Add final_norm=Norm(...) to its Residual (contract in intervenable/sites/registry.py).")
    return norm_arithmetic(arch.name, modules[0], spec, "final norm")
