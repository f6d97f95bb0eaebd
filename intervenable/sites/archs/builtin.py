"""The built-in MLP and GRU of ``intervenable.models`` (reference component names).

MLP: ``h[i]`` blocks; ``block_input`` / ``block_output`` / ``mlp_activation``.
GRU: ``cells[i]`` called once per time step with 2-D ``[batch, h_dim]``
tensors; ``cell_input`` (the step's input ``x_t``), ``cell_hidden_input``
(``h_{t-1}``), ``cell_output`` (= ``block_output``), the gates' inputs and
outputs, and ``x2h`` / ``h2h`` outputs, whole or split into reset / update /
new thirds.
"""
from __future__ import annotations

from ..registry import Architecture, attr, inp, out, register_architecture

h_dim = attr("h_dim")
triple = lambda c: 3 * h_dim(c)  # noqa: E731


def _third(i: int):
    return lambda c: (i * h_dim(c), (i + 1) * h_dim(c))


MLP = register_architecture(
    Architecture(
        name="mlp",
        model_types=("mlp",),
        num_layers=attr("n_layer"),
        components={
            "block_input": inp("h.{layer}", h_dim),
            "block_output": out("h.{layer}", h_dim),
            "mlp_activation": out("h.{layer}.act", h_dim),
        },
        base_paths=("mlp", ""),
        description="Built-in MLP (intervenable.models.MLPModel / MLPForClassification).",
    )
)

_C = "cells.{layer}"
_gru = {
    "block_input": inp(_C, h_dim),
    "block_output": out(_C, h_dim),
    "cell_input": inp(_C, h_dim),
    "cell_hidden_input": inp(_C, h_dim, output_index=1),
    "cell_output": out(_C, h_dim),
    "x2h_output": out(_C + ".x2h", triple),
    "h2h_output": out(_C + ".h2h", triple),
}
for _gate in ("reset", "update", "new"):
    _gru[f"{_gate}_gate_input"] = inp(f"{_C}.{_gate}_act", h_dim)
    _gru[f"{_gate}_gate_output"] = out(f"{_C}.{_gate}_act", h_dim)
for _i, _part in enumerate(("reset", "update", "new")):
    _gru[f"{_part}_x2h_output"] = out(_C + ".x2h", h_dim, slice=_third(_i))
    _gru[f"{_part}_h2h_output"] = out(_C + ".h2h", h_dim, slice=_third(_i))

GRU = register_architecture(
    Architecture(
        name="gru",
        model_types=("gru",),
        num_layers=attr("n_layer"),
        components=_gru,
        base_paths=("gru", ""),
        description="Built-in unrolled GRU (intervenable.models.GRUModel, GRULMHeadModel, GRUForClassification).",
    )
)
