"""Subtraction, noise, skip and custom constant-source interventions, against the manual forward."""
import torch

import intervenable as pv
from gpt2_manual import cache, ids, manual_forward, tiny_gpt2

MODEL = tiny_gpt2()
BASE, SOURCE = ids(2, 6, seed=21), ids(2, 6, seed=22)


def edit_at(component, layer, fn):
    return lambda name, l, t: fn(t) if (name, l) == (component, layer) else t


def test_subtraction_at_positions():
    clean = cache(MODEL, SOURCE)[("mlp_output", 1)]
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.SubtractionIntervention}, MODEL)
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations={"sources->base": (0, 4)})

    def fn(t):
        t = t.clone()
        t[:, 4] = t[:, 4] - clean[:, 0]
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, edit_at("mlp_output", 1, fn)), atol=1e-5)


def test_skip_replaces_a_block_output_by_its_input():
    base_cache = {}

    def fn(t):  # block 1's output at positions 2 and 5 becomes its input there
        t = t.clone()
        t[:, [2, 5]] = base_cache["in"][:, [2, 5]]
        return t

    def edit(name, layer, t):
        if (name, layer) == ("block_input", 1):
            base_cache["in"] = t
        if (name, layer) == ("block_output", 1):
            return fn(t)
        return t

    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": pv.SkipIntervention,
                                     "max_number_of_units": 2}, MODEL)
    _, out = pv_model({"input_ids": BASE}, unit_locations={"base": [[[2, 5]]]})
    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, edit), atol=1e-5)


def test_noise_is_seeded_gaussian_of_the_given_scale():
    level = 0.5
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_input", "intervention": pv.NoiseIntervention(noise_level=level, seed=3)}, MODEL)
    _, out = pv_model({"input_ids": BASE}, unit_locations={"base": [[[0, 1]]]})
    noise = torch.randn((2, 2, MODEL.config.n_embd), generator=torch.Generator().manual_seed(3))

    def fn(t):
        t = t.clone()
        t[:, [0, 1]] = t[:, [0, 1]] + level * noise
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, edit_at("block_input", 0, fn)), atol=1e-5)
    _, again = pv_model({"input_ids": BASE}, unit_locations={"base": [[[0, 1]]]})
    assert torch.equal(out.logits, again.logits)


def test_custom_constant_source_intervention_needs_no_source():
    class Double(pv.ConstantSourceIntervention):
        def forward(self, base, source=None, subspaces=None):
            return base * 2

    pv_model = pv.IntervenableModel({"layer": 2, "component": "attention_output", "intervention_type": Double}, MODEL)
    _, out = pv_model({"input_ids": BASE})
    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, edit_at("attention_output", 2, lambda t: 2 * t)), atol=1e-5)


def test_subspace_partition_ids():
    clean = cache(MODEL, SOURCE)[("block_output", 0)]
    partition = [[0, 8], [8, 16], [16, 32]]
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "subspace_partition": partition}, MODEL)
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations={"sources->base": 3},
                      subspaces=[[[1], [0, 2]]])

    def fn(t):
        t = t.clone()
        t[0, 3, 8:16] = clean[0, 3, 8:16]
        t[1, 3, 0:8] = clean[1, 3, 0:8]
        t[1, 3, 16:32] = clean[1, 3, 16:32]
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, edit_at("block_output", 0, fn)), atol=1e-5)


def test_registry_lists_the_basic_types():
    names = set(pv.registered_interventions())
    assert {"VanillaIntervention", "AdditionIntervention", "SubtractionIntervention", "ZeroIntervention",
            "CollectIntervention", "NoiseIntervention", "SkipIntervention"} <= names
    assert pv.get_intervention_class("ZeroIntervention") is pv.ZeroIntervention
