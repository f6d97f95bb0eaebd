"""Mamba (``MambaModel``, ``MambaForCausalLM``): ``backbone.layers[i]`` = RMSNorm + mixer (selective SSM).

There is no attention or MLP. Components: ``block_input`` / ``block_output``
(the residual stream), ``mixer_input`` / ``mixer_output``,
``mixer_in_proj_output`` (``[x | z]``, width ``2 * intermediate_size``),
``mixer_x_proj_output`` (``[dt | B | C]``) and ``mixer_out_proj_input`` (the gated SSM output ``y * act(z)``, width
``intermediate_size``). All are ``[batch, positions, width]``; the
convolution runs channels-first and ``dt_proj`` is applied through its weight, so
neither is exposed. In training mode without a cache the fused
``mamba_inner_fn`` path skips ``x_proj`` / ``out_proj`` (their hooks do not fire);
use ``model.eval()`` for those two.
"""
from __future__ import annotations

import math
from typing import Any

from ..registry import Architecture, attr, inp, out, register_architecture
from ._common import block_components, hidden_size

_L = "layers.{layer}"
_M = _L + ".mixer"
inner = attr("intermediate_size")


def _dt_rank(c: Any) -> int:
    rank = getattr(c, "time_step_rank", "auto")
    return math.ceil(hidden_size(c) / 16) if rank == "auto" else int(rank)


_components = block_components(_L, hidden_size)
_components.update(
    {
        "mixer_input": inp(_M, hidden_size),
        "mixer_output": out(_M, hidden_size),
        "mixer_in_proj_output": out(_M + ".in_proj", lambda c: 2 * inner(c)),
        "mixer_x_proj_output": out(_M + ".x_proj", lambda c: _dt_rank(c) + 2 * int(c.state_size)),
        "mixer_out_proj_input": inp(_M + ".out_proj", inner),
    }
)

MAMBA = register_architecture(
    Architecture(
        name="mamba",
        model_types=("mamba",),
        num_layers=attr("num_hidden_layers"),
        components=_components,
        base_paths=("backbone", ""),
        description="Mamba: residual stream and selective-SSM mixer projections.",
    )
)
