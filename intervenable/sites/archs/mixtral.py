"""Mixtral (sparse mixture of experts) and the expert split it needs for ``moe_key``.

transformers >= 5 stores Mixtral's experts fused in 3-D weights
(``mlp.experts.gate_up_proj[e]``), so no module holds one expert's
activations. ``split_experts(model)`` swaps each fused experts module for an
equivalent ``ExpertList`` whose children ``mlp.experts[e]`` are per-expert
modules sharing the same parameters (same state_dict keys, same outputs).
After it, ``moe_key=e`` selects expert ``e``: ``mlp_input`` / ``mlp_output`` /
``mlp_activation`` with a ``moe_key`` see ``[tokens_routed_to_e, width]``
(2-D; the expert's output before the routing weight), as in the reference.
``moe_output`` / ``moe_input`` are the whole sparse-MoE block (no ``moe_key``). ``mlp_gate_output`` is
the router's logits ``[tokens, num_local_experts]`` (read-only: routing uses
the router's other outputs). transformers 4.x lays the block out as ``block_sparse_moe`` with one
module per expert: the same names resolve there, without ``split_experts`` (a no-op on it).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dataclasses import replace

from ..registry import Architecture, attr, inp, out, register_architecture
from ._common import hidden_size, masked_window
from .llama import LLAMA_STACK, llama_components, num_layers

_HINT = "Mixtral's experts are fused in transformers>=5: call intervenable.sites.archs.mixtral.split_experts(model) first."


class ExpertMLP(nn.Module):
    """One expert of a fused experts module: ``down(act(gate(x)) * up(x))`` with expert ``index``'s weights."""

    def __init__(self, index: int, act_fn: nn.Module) -> None:
        super().__init__()
        self.index = index
        self.act_fn = act_fn

    def forward(self, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        gate, up = nn.functional.linear(x, gate_up).chunk(2, dim=-1)
        return nn.functional.linear(self.act_fn(gate) * up, down)


class ExpertList(nn.Module):
    """Drop-in replacement of a fused ``MixtralExperts`` with one child module per expert."""

    def __init__(self, fused: nn.Module) -> None:
        super().__init__()
        self.num_experts = int(fused.num_experts)
        self.gate_up_proj = fused.gate_up_proj  # same Parameter objects: same state_dict
        self.down_proj = fused.down_proj
        for e in range(self.num_experts):
            self.add_module(str(e), ExpertMLP(e, fused.act_fn))

    def __getitem__(self, e: int) -> ExpertMLP:
        return getattr(self, str(int(e)))

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        final = torch.zeros_like(hidden_states)
        for e in range(self.num_experts):
            token_idx, top_k_pos = torch.where(top_k_index == e)  # rows sorted by token
            if token_idx.numel() == 0:
                continue
            y = self[e](hidden_states[token_idx], self.gate_up_proj[e], self.down_proj[e])
            y = y * top_k_weights[token_idx, top_k_pos, None]
            final.index_add_(0, token_idx, y.to(final.dtype))
        return final


def split_experts(model: nn.Module) -> nn.Module:
    """Replace every fused experts module (3-D ``gate_up_proj``/``down_proj``) by an ``ExpertList``, in place."""
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(getattr(module, "gate_up_proj", None), nn.Parameter)
        and module.gate_up_proj.dim() == 3
        and hasattr(module, "act_fn")
        and not isinstance(module, ExpertList)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, ExpertList(module))
    return model


def _moe(path: str) -> dict:
    """``layers.{layer}.mlp<path>`` and, as the transformers 4.x layout, ``layers.{layer}.block_sparse_moe<path>``
    (its experts are a ModuleList already, ``w1``/``w3``/``w2``, so no split is needed there)."""
    return {"alternatives": ("layers.{layer}.block_sparse_moe" + path,)}


_E = ".experts.{moe_key}"
_components: Any = llama_components()
_components.update(
    {
        "mlp_activation": out("layers.{layer}.mlp" + _E + ".act_fn", attr("intermediate_size"), hint=_HINT,
                              **_moe(_E + ".act_fn")),
        "mlp_output": out("layers.{layer}.mlp" + _E, hidden_size, hint=_HINT, **_moe(_E)),
        "mlp_input": inp("layers.{layer}.mlp" + _E, hidden_size, hint=_HINT, **_moe(_E)),
        "moe_output": out("layers.{layer}.mlp", hidden_size, **_moe("")),
        "moe_input": inp("layers.{layer}.mlp", hidden_size, **_moe("")),
        "mlp_gate_output": out("layers.{layer}.mlp.gate", attr("num_local_experts"), writable=False,
                               **_moe(".gate")),
    }
)

MIXTRAL = register_architecture(
    Architecture(
        name="mixtral",
        model_types=("mixtral",),
        num_layers=num_layers,
        components=_components,
        description="Mixtral: LLaMA attention + sparse MoE; expert components need split_experts(model) and moe_key.",
        # Routing is per token, inside the layer: nothing more to describe for the fast path; the whole
        # sparse-MoE block is what the MLP adds to the residual stream.
        stack=replace(LLAMA_STACK, window=masked_window,
                      residual=replace(LLAMA_STACK.residual, mlp=_components["moe_output"])),
    )
)
