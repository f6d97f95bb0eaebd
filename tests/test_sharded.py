"""Models dispatched by accelerate (device_map with CPU and disk offload) intervene like unsharded ones."""
import pytest
import torch

import intervenable as pv
from gpt2_manual import ids, tiny_gpt2


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import GPT2LMHeadModel

    model = tiny_gpt2(n_layer=3)
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    device_map = {
        "transformer.wte": "cpu", "transformer.wpe": "cpu", "transformer.drop": "cpu",
        "transformer.h.0": "cpu", "transformer.h.1": "disk", "transformer.h.2": "cpu",
        "transformer.ln_f": "cpu", "lm_head": "cpu",
    }
    sharded = GPT2LMHeadModel.from_pretrained(
        folder, device_map=device_map, offload_folder=str(tmp_path_factory.mktemp("offload")),
        attn_implementation="eager",
    ).eval()
    assert getattr(sharded, "hf_device_map", None), "the model should be dispatched by accelerate"
    # the disk-offloaded layer keeps its weights on the meta device until it runs
    assert sharded.transformer.h[1].mlp.c_fc.weight.device.type == "meta"
    return model, sharded


@pytest.mark.parametrize("component,layer", [("block_output", 1), ("mlp_activation", 1), ("head_attention_value_output", 1), ("block_input", 2)])
def test_patching_on_offloaded_layers_equals_unsharded(models, component, layer):
    model, sharded = models
    base, source = {"input_ids": ids(2, 6, seed=5)}, {"input_ids": ids(2, 6, seed=6)}
    unit = "h.pos" if component.startswith("head_") else "pos"
    locations = ([[[[0, 2]], [[1, 4]]]], [[[[1, 3]], [[4, 5]]]]) if unit == "h.pos" else ([[[1, 4]]], [[[4, 5]]])
    outputs = []
    for m in (model, sharded):
        pv_model = pv.IntervenableModel({"layer": layer, "component": component, "unit": unit, "max_number_of_units": 2}, m)
        _, out = pv_model(base, [source], unit_locations={"sources->base": locations})
        outputs.append(out.logits)
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)
    assert not torch.allclose(outputs[1], model(**base).logits, atol=1e-3)


def test_collect_and_generate_on_offloaded_model(models):
    model, sharded = models
    base = {"input_ids": ids(1, 5, seed=7)}
    vector = torch.randn(model.config.n_embd)
    results = []
    for m in (model, sharded):
        pv_model = pv.IntervenableModel([
            {"layer": 1, "component": "block_output", "intervention": pv.CollectIntervention},
            {"layer": 1, "component": "mlp_output", "intervention": pv.AdditionIntervention, "source_representation": vector},
        ], m)
        (_, collected), out = pv_model(base)
        _, generated = pv_model.generate(base, max_new_tokens=4, do_sample=False, pad_token_id=0)
        results.append((collected[0], out.logits, generated))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-5)
    assert torch.equal(results[0][2], results[1][2])


def test_hooks_do_not_leak_on_dispatched_model(models):
    _, sharded = models
    before = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in sharded.named_modules()}
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, sharded)
    with pytest.raises(pv.LocationError):
        pv_model({"input_ids": ids(1, 4)}, [{"input_ids": ids(1, 4)}], unit_locations={"sources->base": 10})
    after = {n: (len(m._forward_hooks), len(m._forward_pre_hooks)) for n, m in sharded.named_modules()}
    assert before == after
