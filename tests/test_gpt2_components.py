"""Every GPT-2 component, patched by the library, equals the same patch in a hand-written forward."""
import pytest
import torch

import intervenable as pv
from gpt2_manual import (
    HEAD_COMPONENTS,
    cache,
    check_manual_matches_model,
    copy_units,
    heads_view,
    ids,
    patched_logits,
    tiny_gpt2,
)

NON_HEAD = (
    "block_input", "block_output", "mlp_activation", "mlp_output", "mlp_input",
    "attention_value_output", "attention_output", "attention_input",
    "query_output", "key_output", "value_output",
)
MODEL = tiny_gpt2()
N_HEAD = MODEL.config.n_head


@pytest.fixture(scope="module")
def data():
    base, source = ids(2, 7, seed=1), ids(2, 7, seed=2)
    return base, source, cache(MODEL, source)


def test_manual_forward_reproduces_the_model(data):
    check_manual_matches_model(MODEL, data[0])


@pytest.mark.parametrize("component", NON_HEAD)
@pytest.mark.parametrize("layer", [0, 2])
def test_position_patch_per_row(component, layer, data):
    base, source, clean = data
    src_pos, base_pos = [[1, 4], [0, 6]], [[2, 4], [5, 3]]  # different positions per row
    pv_model = pv.IntervenableModel(
        pv.RepresentationConfig(layer, component, "pos", 2, intervention_type=pv.VanillaIntervention), MODEL
    )
    _, out = pv_model({"input_ids": base}, [{"input_ids": source}],
                      unit_locations={"sources->base": ([src_pos], [base_pos])})
    expected = patched_logits(MODEL, base, component, layer,
                              lambda t: copy_units(t, clean[(component, layer)], src_pos, base_pos))
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("component", NON_HEAD)
def test_all_positions_patch_equals_source_run_from_there(component, data):
    base, source, clean = data
    pv_model = pv.IntervenableModel({"layer": 1, "component": component}, MODEL)
    _, out = pv_model({"input_ids": base}, [{"input_ids": source}])
    expected = patched_logits(MODEL, base, component, 1, lambda t: clean[(component, 1)])
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("component", HEAD_COMPONENTS)
@pytest.mark.parametrize("unit", ["h", "h.pos"])
def test_head_patch(component, unit, data):
    base, source, clean = data
    src_heads, base_heads = [[1], [3]], [[2], [3]]
    src_pos, base_pos = [[0, 5]], [[5, 6]]
    if unit == "h":
        locs = ([src_heads], [base_heads])
        pos_s = pos_b = None
    else:
        locs = ([[src_heads, src_pos * 2]], [[base_heads, base_pos * 2]])
        pos_s, pos_b = src_pos * 2, base_pos * 2
    pv_model = pv.IntervenableModel({"layer": 1, "component": component, "unit": unit}, MODEL)
    _, out = pv_model({"input_ids": base}, [{"input_ids": source}], unit_locations={"sources->base": locs})
    expected = patched_logits(
        MODEL, base, component, 1,
        lambda t: copy_units(t, clean[(component, 1)], pos_s, pos_b, N_HEAD, src_heads, base_heads),
    )
    assert torch.allclose(out.logits, expected, atol=1e-5)


@pytest.mark.parametrize("component", ["block_output", "mlp_activation", "value_output"])
def test_subspace_patch_per_row(component, data):
    base, source, clean = data
    dims = [[0, 3, 5], [1, 2, 30]]

    def patch(t):
        out = t.clone()
        for row, ds in enumerate(dims):
            out[row, 4, ds] = clean[(component, 0)][row, 2, ds]
        return out

    pv_model = pv.IntervenableModel({"layer": 0, "component": component}, MODEL)
    _, out = pv_model({"input_ids": base}, [{"input_ids": source}],
                      unit_locations={"sources->base": (2, 4)}, subspaces=[dims])
    assert torch.allclose(out.logits, patched_logits(MODEL, base, component, 0, patch), atol=1e-5)


@pytest.mark.parametrize("component", NON_HEAD + HEAD_COMPONENTS)
def test_collect_returns_the_real_activations(component, data):
    base, _, _ = data
    clean = cache(MODEL, base)[(component, 2)]
    positions = [[0, 6, 3], [2, 2, 5]]
    pv_model = pv.IntervenableModel(
        {"layer": 2, "component": component, "intervention": pv.CollectIntervention}, MODEL
    )
    (orig, collected), out = pv_model({"input_ids": base}, unit_locations={"base": [positions]})
    assert orig is None and len(collected) == 1
    index = torch.tensor(positions)
    if component in HEAD_COMPONENTS:
        full = heads_view(clean, N_HEAD)  # [b, h, s, d]
        expected = full[torch.arange(2)[:, None], :, index].transpose(1, 2)
    else:
        expected = clean[torch.arange(2)[:, None], index]
    assert collected[0].shape == expected.shape
    assert torch.allclose(collected[0], expected, atol=1e-6)
    # Collecting changes nothing.
    assert torch.allclose(out.logits, MODEL(base).logits, atol=1e-6)


@pytest.mark.parametrize("component", ["block_output", "head_attention_value_output"])
def test_collect_all_positions(component, data):
    base, _, _ = data
    clean = cache(MODEL, base)[(component, 0)]
    pv_model = pv.IntervenableModel({"layer": 0, "component": component, "intervention": pv.CollectIntervention}, MODEL)
    (_, collected), _ = pv_model({"input_ids": base})
    expected = heads_view(clean, N_HEAD) if component in HEAD_COMPONENTS else clean
    assert torch.allclose(collected[0], expected, atol=1e-6)


@pytest.mark.parametrize("model_cls", ["GPT2Model", "GPT2ForSequenceClassification"])
def test_other_gpt2_classes(model_cls, data):
    import transformers

    base, source, clean = data
    import copy

    torch.manual_seed(0)
    config = copy.deepcopy(MODEL.config)
    config.pad_token_id = 0
    other = getattr(transformers, model_cls)(config).eval()
    other.load_state_dict(MODEL.state_dict(), strict=False)
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention}, other)
    (_, collected), _ = pv_model({"input_ids": base})
    assert torch.allclose(collected[0], cache(MODEL, base)[("mlp_output", 1)], atol=1e-5)


def test_negative_positions_count_from_the_end(data):
    base, source, clean = data
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, MODEL)
    _, neg = pv_model({"input_ids": base}, [{"input_ids": source}], unit_locations={"sources->base": -1})
    _, pos = pv_model({"input_ids": base}, [{"input_ids": source}], unit_locations={"sources->base": 6})
    assert torch.equal(neg.logits, pos.logits)
