"""BERT-style encoders: BERT, RoBERTa, ESM (and look-alikes: XLM-RoBERTa, ELECTRA).

``encoder.layer[i]`` with ``attention.self.{query,key,value}``,
``attention.output`` (dense + residual + LayerNorm for BERT), ``intermediate``
(dense + activation) and ``output``. ``mlp_activation`` is the intermediate's
output (after the activation); ``mlp_output`` is the ``output`` module (BERT:
after its residual and LayerNorm), as in the reference library.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from ..registry import Architecture, Component, ConfigFn, LayerStack, attr, inp, out, register_architecture
from ._common import attention_components, block_components, hidden_size, on

intermediate = attr("intermediate_size")


def bert_components(root: str = "encoder.layer.{layer}", cfg: Optional[ConfigFn] = None, cross: bool = False, **extra: Any) -> Dict[str, Component]:
    """The BERT table with layers at ``root``; ``cross`` adds the cross-attention of BERT decoders."""
    hid = on(hidden_size, cfg)
    table = block_components(root, hid, **extra)
    table.update(
        {
            "mlp_activation": out(root + ".intermediate", on(intermediate, cfg), **extra),
            "mlp_output": out(root + ".output", hid, **extra),
            "mlp_input": inp(root + ".intermediate", hid, **extra),
        }
    )
    s = root + ".attention.self"
    table.update(attention_components(s, s + ".query", s + ".key", s + ".value", root + ".attention.output.dense", cfg=cfg, **extra))
    table["attention_output"] = out(root + ".attention.output", hid, **extra)
    table["attention_input"] = inp(root + ".attention", hid, **extra)
    if cross:
        table.update(
            {
                "cross_attention_value_output": inp(root + ".crossattention.output.dense", hid, **extra),
                "cross_attention_output": out(root + ".crossattention.output", hid, **extra),
                "cross_attention_input": inp(root + ".crossattention", hid, **extra),
            }
        )
    return table


# Fast sweep path for masked LMs: bidirectional, so a patched row skips the layers below its first
# patch but recomputes every position (no key/value prefix); the MLM head runs on the last position.
_STACKS = {
    "bert": LayerStack(bidirectional=True, head=("cls",)),
    "roberta": LayerStack(bidirectional=True, head=("lm_head", "generator_predictions", "generator_lm_head")),  # ELECTRA: last two
    "esm": LayerStack(bidirectional=True, final=("encoder.emb_layer_norm_after",), head=("lm_head",)),
}

for _name, _types, _desc in (
    ("bert", ("bert",), "BERT: post-LayerNorm encoder."),
    ("roberta", ("roberta", "xlm-roberta", "electra"), "RoBERTa / XLM-RoBERTa / ELECTRA: BERT layout."),
    ("esm", ("esm",), "ESM protein LMs: pre-LayerNorm BERT layout (attention.LayerNorm before attention.self)."),
):
    register_architecture(
        Architecture(
            name=_name,
            model_types=_types,
            num_layers=attr("num_hidden_layers"),
            components=bert_components(),
            description=_desc,
            stack=_STACKS[_name],
            positions_from_mask=_name == "bert",  # RoBERTa / ESM number positions from the padding themselves
        )
    )
