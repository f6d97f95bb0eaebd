"""The reference documents' code, with only the import changed, on a tiny GPT-2 (hub names replaced)."""
import torch

import intervenable as pv
from gpt2_manual import cache, ids, manual_forward, tiny_gpt2

MODEL = tiny_gpt2(n_layer=3)
CLEAN, CORRUPTED = {"input_ids": ids(1, 6, seed=31)}, {"input_ids": ids(1, 6, seed=32)}
TARGET = 17


def test_front_page_zero_intervention_with_a_class_under_intervention():
    pv_model = pv.IntervenableModel({
        "component": "transformer.h[1].mlp.output",   # the front page uses "model.layers[15].mlp.output"
        "intervention": pv.ZeroIntervention,
    }, model=MODEL)
    orig_outputs, intervened_outputs = pv_model(CLEAN, output_original_output=True)
    expected = manual_forward(MODEL, CLEAN["input_ids"], lambda n, l, t: t * 0 if (n, l) == ("mlp_output", 1) else t)
    assert torch.allclose(intervened_outputs.logits, expected, atol=1e-5)
    assert torch.allclose(orig_outputs.logits, MODEL(**CLEAN).logits)


def test_skill_causal_tracing_loop_equals_hand_patches_and_the_fast_sweep():
    def run_causal_trace(layer, position):
        config = pv.IntervenableConfig(representations=[pv.RepresentationConfig(
            layer=layer, component="block_output", intervention_type=pv.VanillaIntervention,
            unit="pos", max_number_of_units=1)])
        intervenable = pv.IntervenableModel(config, MODEL)
        _, patched_outputs = intervenable(base=CORRUPTED, sources=[CLEAN],
                                          unit_locations={"sources->base": ([[[position]]], [[[position]]])},
                                          output_original_output=True)
        return torch.softmax(patched_outputs.logits[0, -1], dim=-1)[TARGET].item()

    results = torch.zeros(3, 6)
    for layer in range(3):
        for pos in range(6):
            results[layer, pos] = run_causal_trace(layer, pos)
    clean = cache(MODEL, CLEAN["input_ids"])
    by_hand = torch.zeros(3, 6)
    for layer in range(3):
        for pos in range(6):
            def edit(n, l, t, layer=layer, pos=pos):
                if (n, l) == ("block_output", layer):
                    t = t.clone()
                    t[:, pos] = clean[("block_output", layer)][:, pos]
                return t
            by_hand[layer, pos] = manual_forward(MODEL, CORRUPTED["input_ids"], edit)[0, -1].softmax(-1)[TARGET]
    assert torch.allclose(results, by_hand, atol=1e-5)
    fast = pv.causal_trace(MODEL, CLEAN["input_ids"], CORRUPTED["input_ids"], TARGET, progress=False)
    assert torch.allclose(fast.values[0], results, atol=1e-5)


def test_skill_iit_loop_and_rotation_access():
    config = pv.IntervenableConfig(representations=[pv.RepresentationConfig(
        layer=1, component="block_output", intervention_type=pv.LowRankRotatedSpaceIntervention, low_rank_dimension=1)])
    intervenable = pv.IntervenableModel(config, MODEL)
    optimizer = torch.optim.Adam(intervenable.get_trainable_parameters(), lr=1e-2)
    before = [p.detach().clone() for p in MODEL.parameters()]
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        _, outputs = intervenable(base=CORRUPTED, sources=[CLEAN], unit_locations={"sources->base": 5})
        loss = torch.nn.functional.cross_entropy(outputs.logits[:, -1], torch.tensor([TARGET]))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    rotation = intervenable.interventions["layer.1.block_output"][0].rotate_layer
    weight = rotation.weight
    assert torch.allclose(weight.T @ weight, torch.eye(weight.shape[1]), atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(before, MODEL.parameters()))


def test_path_patching_config_helper():
    def path_patching_config(layer, last_layer, component="head_attention_value_output", unit="h.pos"):
        intervening_component = [{"layer": layer, "component": component, "unit": unit, "group_key": 0}]
        restoring_components = [{"layer": layer, "component": "mlp_output", "group_key": 1}]
        for i in range(layer + 1, last_layer):
            restoring_components += [{"layer": i, "component": "attention_output", "group_key": 1},
                                     {"layer": i, "component": "mlp_output", "group_key": 1}]
        return pv.IntervenableConfig(intervening_component + restoring_components)

    pv_model = pv.IntervenableModel(path_patching_config(1, MODEL.config.n_layer), MODEL)
    assert [len(g) for g in pv_model.groups] == [1, 3]
    heads, positions = [[[0, 2]]], [[[5]]]
    _, out = pv_model(CORRUPTED, [CLEAN, CORRUPTED], unit_locations={"sources->base": (
        [[heads[0], positions[0]], None, None, None], [[heads[0], positions[0]], None, None, None])})
    clean, corrupt = cache(MODEL, CLEAN["input_ids"]), cache(MODEL, CORRUPTED["input_ids"])

    def edit(n, l, t):
        if (n, l) == ("head_attention_value_output", 1):
            t = t.clone().view(1, 6, 4, 8)
            t[:, 5, [0, 2]] = clean[(n, l)].view(1, 6, 4, 8)[:, 5, [0, 2]]
            return t.view(1, 6, 32)
        if (n, l) in (("mlp_output", 1), ("attention_output", 2), ("mlp_output", 2)):
            return corrupt[(n, l)]  # restored to the base run's own values (the corrupted prompt)
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, CORRUPTED["input_ids"], edit), atol=1e-5)
