"""Patterns from the reference's tutorials (pyvene_101, basic and advanced notebooks) that failed here
while running under pyvene 0.1.8: minimal reproductions, each against hand-written torch."""
import torch

import intervenable as pv
from gpt2_manual import ids, manual_forward, tiny_gpt2

MODEL = tiny_gpt2()
BASE = ids(1, 5, seed=7)


def _logits(out):
    return out[1].logits


# -- pyvene_101: "indices are specified in the intervention" -----------------------------------
def test_callable_requiring_subspaces_gets_the_call_subspaces():
    """f(b, s, sp) with three required arguments is accepted; sp is [[3]] for subspaces=3, as in
    pyvene 0.1.8 (its run of this reproduction passes [[[3]]] over the batch: sp[0][0] == 3)."""
    seen = []

    def patcher(b, s, sp):
        seen.append(sp)
        mask = torch.ones_like(b)
        mask[:, sp[0][0], :] = 0.0
        return b * mask

    pv_model = pv.IntervenableModel({"component": "transformer.h[0].mlp.output", "intervention": patcher}, MODEL)
    out = pv_model(base={"input_ids": BASE}, subspaces=3)

    def zero_pos3(name, layer, t):
        if (name, layer) != ("mlp_output", 0):
            return t
        t = t.clone()
        t[:, 3] = 0.0
        return t

    torch.testing.assert_close(_logits(out), manual_forward(MODEL, BASE, zero_pos3), atol=1e-5, rtol=1e-5)
    assert seen[0][0][0] == 3


# -- Boundless_DAS: the loss reads intervenable.model_config.vocab_size --------------------------
def test_model_config_is_the_wrapped_models_config():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    assert pv_model.model_config is MODEL.config
    assert pv_model.model_config.vocab_size == MODEL.transformer.wte.weight.shape[0]
