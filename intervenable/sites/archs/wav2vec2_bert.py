"""Wav2Vec2-BERT (Conformer encoder): ``encoder.layers[i]`` = ffn1 (half step), self-attention, conv module, ffn2.

Names follow the reference library: ``ffn1_*`` / ``ffn2_*`` replace the
``mlp_*`` names (there are two feed-forward modules per layer);
``conv_input`` / ``conv_output`` are the convolution module's
``[batch, time, hidden]`` input and output (its inner convolutions are
channels-first and not exposed).
"""
from __future__ import annotations

from ..registry import Architecture, attr, inp, out, register_architecture
from ._common import attention_components, block_components, hidden_size

_L = "encoder.layers.{layer}"
_A = _L + ".self_attn"
inner = attr("intermediate_size")
_components = block_components(_L, hidden_size)
for _ffn in ("ffn1", "ffn2"):
    _components.update(
        {
            f"{_ffn}_activation": out(f"{_L}.{_ffn}.intermediate_act_fn", inner),
            f"{_ffn}_output": out(f"{_L}.{_ffn}", hidden_size),
            f"{_ffn}_input": inp(f"{_L}.{_ffn}", hidden_size),
        }
    )
_components.update(attention_components(_A, _A + ".linear_q", _A + ".linear_k", _A + ".linear_v", _A + ".linear_out"))
_components.update({"conv_output": out(_L + ".conv_module", hidden_size), "conv_input": inp(_L + ".conv_module", hidden_size)})

WAV2VEC2_BERT = register_architecture(
    Architecture(
        name="wav2vec2-bert",
        model_types=("wav2vec2-bert",),
        num_layers=attr("num_hidden_layers"),
        components=_components,
        description="Wav2Vec2-BERT: Conformer layers with ffn1/ffn2, self-attention and a convolution module.",
    )
)
