"""Padded batches: a left-padded row computes what its prompt alone computes, and "last" is each row's
last real token. Ground truth: the unpadded prompt alone through the plain model, read with a plain hook."""
import pytest
import torch

import intervenable as pv
from gpt2_manual import tiny_gpt2

MODEL = tiny_gpt2(n_layer=2)
PROMPTS = [[5, 9, 14], [7, 3, 11, 20, 2]]  # lengths 3 and 5
PAD = 0


def padded(prompts, side):
    """input_ids and attention_mask of ``prompts``, padded on ``side`` to the longest."""
    width = max(map(len, prompts))
    ids, mask = [], []
    for p in prompts:
        pad = [PAD] * (width - len(p))
        ids.append(pad + p if side == "left" else p + pad)
        mask.append([0] * len(pad) + [1] * len(p) if side == "left" else [1] * len(p) + [0] * len(pad))
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}


def alone(prompt, layer=1, patch=None):
    """(block_output of ``layer`` [seq, width], last-token logits) of ``prompt`` alone; ``patch(h)`` edits it."""
    seen = {}

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        seen["h"] = h[0].detach().clone()
        if patch is not None:
            h = patch(h)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

    handle = MODEL.transformer.h[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = MODEL(torch.tensor([prompt])).logits[0, -1]
    finally:
        handle.remove()
    return seen["h"], logits


def test_the_plain_model_reads_shifted_positions_in_a_left_padded_row():
    """The trap being fixed: GPT-2 numbers the pads, so a left-padded row differs from its prompt alone."""
    batch = padded(PROMPTS, "left")
    with torch.no_grad():
        logits = MODEL(**batch).logits[0, -1]
    assert (logits - alone(PROMPTS[0])[1]).abs().max() > 1e-3


@pytest.mark.parametrize("mask_dtype", [torch.long, torch.bool])
def test_left_padded_collect_at_minus_one_reads_the_prompt_alone(mask_dtype):
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": pv.CollectIntervention},
                                    MODEL)
    batch = padded(PROMPTS, "left")
    batch["attention_mask"] = batch["attention_mask"].to(mask_dtype)
    (_, collected), out = pv_model(batch, unit_locations={"base": -1})
    for row, prompt in enumerate(PROMPTS):
        h, logits = alone(prompt)
        assert torch.allclose(collected[0][row, 0], h[-1], atol=1e-5)
        assert torch.allclose(out.logits[row, -1], logits, atol=1e-5)


def last_token_set_to(value: torch.Tensor):
    """A ``patch`` for ``alone``: the block output's last token replaced by ``value``."""
    def put(h):
        h = h.clone()
        h[0, -1] = value
        return h
    return put


def test_left_padded_source_and_base_patch_matches_the_prompts_alone():
    """Row i: the last token of source i's block output copied into base i's last token."""
    sources = [[4, 4, 8, 1, 30], [6, 2]]
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, MODEL)
    _, out = pv_model(padded(PROMPTS, "left"), [padded(sources, "left")], unit_locations={"sources->base": -1})
    for row, (prompt, source) in enumerate(zip(PROMPTS, sources)):
        put = last_token_set_to(alone(source)[0][-1])
        assert torch.allclose(out.logits[row, -1], alone(prompt, patch=put)[1], atol=1e-5)


def test_positions_the_caller_passes_are_kept():
    batch = dict(padded(PROMPTS, "left"))
    batch["position_ids"] = torch.arange(5).expand(2, -1)  # the model's own numbering, on purpose
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": pv.CollectIntervention},
                                    MODEL)
    (_, collected), _ = pv_model(batch, unit_locations={"base": -1})
    seen = []
    handle = MODEL.transformer.h[1].register_forward_hook(lambda m, a, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            MODEL(**batch)
    finally:
        handle.remove()
    assert torch.allclose(collected[0][:, 0], seen[0][:, -1], atol=1e-5)


def test_a_family_that_numbers_positions_from_the_padding_itself_is_left_alone():
    """RoBERTa derives positions from the padding: mask-derived position_ids would be wrong there."""
    from transformers import RobertaConfig, RobertaModel

    torch.manual_seed(0)
    model = RobertaModel(RobertaConfig(num_hidden_layers=1, hidden_size=16, intermediate_size=32,
                                       num_attention_heads=2, vocab_size=40, pad_token_id=1)).eval()
    batch = {"input_ids": torch.tensor([[1, 1, 5, 6, 7]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]])}
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": pv.CollectIntervention},
                                    model)
    (_, collected), _ = pv_model(batch, unit_locations={"base": -1})
    with torch.no_grad():
        alone_last = model(input_ids=torch.tensor([[5, 6, 7]])).last_hidden_state[0, -1]
    assert torch.allclose(collected[0][0, 0], alone_last, atol=1e-5)


def test_last_is_each_rows_last_real_token_with_right_padding():
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": pv.CollectIntervention},
                                    MODEL)
    (_, collected), _ = pv_model(padded(PROMPTS, "right"), unit_locations={"base": "last"})
    for row, prompt in enumerate(PROMPTS):
        assert torch.allclose(collected[0][row, 0], alone(prompt)[0][len(prompt) - 1], atol=1e-5)


def test_last_on_both_sides_reads_each_inputs_own_mask():
    """Right-padded base, left-padded source: each side's last real token, row by row."""
    sources = [[4, 4, 8, 1, 30], [6, 2]]
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, MODEL)
    base = padded(PROMPTS, "right")
    _, out = pv_model(base, [padded(sources, "left")], unit_locations={"sources->base": "last"})
    _, pair = pv_model(base, [padded(sources, "left")], unit_locations={"sources->base": (-1, "last")})
    assert torch.equal(out.logits, pair.logits)
    for row, (prompt, source) in enumerate(zip(PROMPTS, sources)):
        put = last_token_set_to(alone(source)[0][-1])
        last = len(prompt) - 1
        assert torch.allclose(out.logits[row, last], alone(prompt, patch=put)[1], atol=1e-5)


def test_last_is_refused_for_head_units_and_serial_keys():
    heads = pv.IntervenableModel({"layer": 1, "component": "head_attention_value_output", "unit": "h.pos"}, MODEL)
    with pytest.raises(pv.LocationError, match="'last' is a position"):
        heads(padded(PROMPTS, "left"), [padded(PROMPTS, "left")], unit_locations={"sources->base": "last"})
    serial = pv.IntervenableModel(pv.IntervenableConfig([{"layer": 0, "component": "block_output", "group_key": 0},
                                                         {"layer": 1, "component": "block_output", "group_key": 1}],
                                                        mode="serial"), MODEL)
    batch = padded(PROMPTS, "left")
    with pytest.raises(pv.LocationError, match="parallel mode"):
        serial(batch, [batch, batch], unit_locations={"source_0->source_1": "last", "source_1->base": "last"})
