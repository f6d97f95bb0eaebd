"""Parallel and serial modes, groups, links, source forms and config forms, against the manual forward."""
import pytest
import torch

import intervenable as pv
from gpt2_manual import cache, ids, manual_forward, tiny_gpt2

def _main(output):
    """A block's hidden states: transformers 5 returns the tensor, 4.x a tuple starting with it."""
    return output[0] if isinstance(output, tuple) else output


MODEL = tiny_gpt2()
BASE, S0, S1 = ids(1, 6, seed=11), ids(1, 6, seed=12), ids(1, 6, seed=13)


def _inp(x):
    return {"input_ids": x}


def _edits(table):
    """An edit function applying {(component, layer): fn(full) -> full}."""
    return lambda name, layer, t: table[(name, layer)](t) if (name, layer) in table else t


def _set(pos, value):
    def fn(t):
        t = t.clone()
        t[:, pos] = value
        return t
    return fn


def test_parallel_groups_read_their_own_sources():
    c0, c1 = cache(MODEL, S0), cache(MODEL, S1)
    config = pv.IntervenableConfig([
        {"layer": 0, "component": "block_output", "group_key": 0},
        {"layer": 2, "component": "mlp_output", "group_key": 1},
    ])
    pv_model = pv.IntervenableModel(config, MODEL)
    _, out = pv_model(_inp(BASE), [_inp(S0), _inp(S1)],
                      unit_locations={"sources->base": ([[[1]], [[4]]], [[[2]], [[5]]])})
    expected = manual_forward(MODEL, BASE, _edits({
        ("block_output", 0): _set(2, c0[("block_output", 0)][:, 1]),
        ("mlp_output", 2): _set(5, c1[("mlp_output", 2)][:, 4]),
    }))
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_one_source_for_several_groups_is_an_error_that_is_also_an_index_error():
    pv_model = pv.IntervenableModel([{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], MODEL)
    for sources in ([_inp(S0)], _inp(S0), [_inp(S0), _inp(S1), _inp(S0)]):
        with pytest.raises(pv.SourceCountError, match=r"for 2 intervention groups.*pv\.SharedSource\(source\)"):
            pv_model(_inp(BASE), sources, unit_locations={"sources->base": 3})
    try:  # the reference's test_with_subspace_negative catches IndexError
        pv_model(_inp(BASE), [_inp(S0)], unit_locations={"sources->base": 3})
    except IndexError as exc:
        assert isinstance(exc, pv.InputError) and isinstance(exc, ValueError)
    else:
        raise AssertionError("IndexError was not raised")


def test_shared_source_runs_every_group_on_one_source():
    c0 = cache(MODEL, S0)
    pv_model = pv.IntervenableModel([{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], MODEL)
    assert len(pv_model.groups) == 2
    runs = []
    handle = MODEL.register_forward_pre_hook(lambda m, a, k: runs.append(1), with_kwargs=True)
    try:
        _, out = pv_model(_inp(BASE), pv.SharedSource(_inp(S0)), unit_locations={"sources->base": 3})
    finally:
        handle.remove()
    assert len(runs) == 2  # the shared source once, then the base
    _, same = pv_model(_inp(BASE), [_inp(S0), _inp(S0)], unit_locations={"sources->base": 3})
    # Layer 1's patch takes S0's clean layer-1 value at position 3, on top of layer 0's patch.
    expected = manual_forward(MODEL, BASE, _edits({
        ("block_output", 0): _set(3, c0[("block_output", 0)][:, 3]),
        ("block_output", 1): _set(3, c0[("block_output", 1)][:, 3]),
    }))
    assert torch.allclose(out.logits, expected, atol=1e-5)
    assert torch.allclose(same.logits, expected, atol=1e-5)


def test_serial_mode_chains_sources():
    c0 = cache(MODEL, S0)
    # source_1 run with layer-0 position 2 taken from source_0 ...
    store = {}

    def edit_s1(name, layer, t):
        if (name, layer) == ("block_output", 0):
            t = _set(4, c0[("block_output", 0)][:, 2])(t)
        if (name, layer) == ("block_output", 1):
            store["v"] = t.clone()
        return t

    manual_forward(MODEL, S1, edit_s1)
    # ... then its layer-1 position 4 goes into the base at position 5.
    expected = manual_forward(MODEL, BASE, _edits({("block_output", 1): _set(5, store["v"][:, 4])}))
    config = pv.IntervenableConfig(
        [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], mode="serial"
    )
    pv_model = pv.IntervenableModel(config, MODEL)
    _, out = pv_model(_inp(BASE), [_inp(S0), _inp(S1)], unit_locations={
        "source_0->source_1": ([[[2]]], [[[4]]]),
        "source_1->base": ([[[4]]], [[[5]]]),
    })
    assert torch.allclose(out.logits, expected, atol=1e-5)


class Scale(pv.SourcelessIntervention, pv.TrainableIntervention):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.weight = torch.nn.Parameter(torch.full((self.embed_dim,), 2.0))

    def forward(self, base, source=None, subspaces=None):
        return base * self.weight


def test_linked_interventions_share_one_module():
    config = pv.IntervenableConfig([
        {"layer": 0, "component": "block_output", "intervention_type": Scale, "intervention_link_key": "s"},
        {"layer": 2, "component": "block_output", "intervention_type": Scale, "intervention_link_key": "s"},
    ])
    pv_model = pv.IntervenableModel(config, MODEL)
    k0, k1 = pv_model.sorted_keys
    assert pv_model.interventions[k0] is pv_model.interventions[k1]
    assert pv_model.count_parameters() == MODEL.config.n_embd
    assert len(pv_model.get_trainable_parameters()) == 1
    _, out = pv_model(_inp(BASE), unit_locations={"base": 1})
    expected = manual_forward(MODEL, BASE, _edits({
        ("block_output", 0): lambda t: _set(1, t[:, 1] * 2)(t),
        ("block_output", 2): lambda t: _set(1, t[:, 1] * 2)(t),
    }))
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_base_only_zero_at_positions():
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.ZeroIntervention}, MODEL)
    _, out = pv_model(_inp(BASE), unit_locations={"base": [[[0, 3]]]})
    expected = manual_forward(MODEL, BASE, _edits({("mlp_output", 1): lambda t: _set([0, 3], 0.0)(t)}))
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_constant_source_representation_steering_all_positions():
    vector = torch.randn(MODEL.config.n_embd)
    pv_model = pv.IntervenableModel({
        "layer": 1, "component": "block_output",
        "intervention": pv.AdditionIntervention, "source_representation": vector,
    }, MODEL)
    _, out = pv_model(_inp(BASE))
    expected = manual_forward(MODEL, BASE, _edits({("block_output", 1): lambda t: t + vector}))
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_source_representations_at_call_time():
    value = torch.randn(1, 1, MODEL.config.n_embd)
    pv_model = pv.IntervenableModel({"layer": 2, "component": "attention_output"}, MODEL)
    for given in (value, [value], {pv_model.sorted_keys[0]: value}):
        _, out = pv_model(_inp(BASE), unit_locations={"base": 4}, source_representations=given)
        expected = manual_forward(MODEL, BASE, _edits({("attention_output", 2): _set(4, value[:, 0])}))
        assert torch.allclose(out.logits, expected, atol=1e-5)


def test_intervention_forms_class_instance_callable_and_raw_path():
    expected = manual_forward(MODEL, BASE, _edits({("mlp_output", 1): lambda t: t * 0.0}))
    for spec in (pv.ZeroIntervention, pv.ZeroIntervention(), lambda b, s: b * 0.0, "ZeroIntervention"):
        pv_model = pv.IntervenableModel({"component": "transformer.h[1].mlp.output", "intervention": spec}, MODEL)
        _, out = pv_model(_inp(BASE))
        assert torch.allclose(out.logits, expected, atol=1e-5)
    config = pv.IntervenableConfig([{"layer": 1, "component": "mlp_output"}], intervention_types=pv.ZeroIntervention)
    _, out = pv.IntervenableModel(config, MODEL)(_inp(BASE))
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_representation_forms_are_equivalent():
    forms = [
        pv.RepresentationConfig(1, "block_output", "pos", 1),
        pv.RepresentationConfig(layer=1, component="block_output"),
        {"layer": 1, "component": "block_output"},
        [1, "block_output", "pos", 1],
    ]
    configs = [pv.IntervenableConfig(f).representations[0] for f in forms]
    assert all(c == configs[0] for c in configs)
    assert pv.RepresentationConfig()._asdict() == {
        "layer": 0, "component": "block_output", "unit": "pos", "max_number_of_units": 1,
        "low_rank_dimension": None, "intervention_type": None, "intervention": None,
        "subspace_partition": None, "group_key": None, "intervention_link_key": None, "moe_key": None,
        "source_representation": None, "hidden_source_representation": None, "latent_dim": None,
    }


def test_return_dict_and_original_output():
    pv_model = pv.IntervenableModel([
        {"layer": 0, "component": "block_output", "intervention": pv.CollectIntervention},
        {"layer": 1, "component": "block_output"},
    ], MODEL)
    result = pv_model(_inp(BASE), [None, _inp(S0)], unit_locations={"sources->base": 2},
                      output_original_output=True, return_dict=True)
    assert torch.allclose(result.original_outputs.logits, MODEL(BASE).logits)
    assert torch.allclose(result.collected_activations[0], cache(MODEL, BASE)[("block_output", 0)][:, [2]])
    expected = manual_forward(MODEL, BASE, _edits({("block_output", 1): _set(2, cache(MODEL, S0)[("block_output", 1)][:, 2])}))
    assert torch.allclose(result.intervened_outputs.logits, expected, atol=1e-5)


def test_collect_at_chosen_positions_of_the_base():
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention}, MODEL)
    (_, collected), _ = pv_model(_inp(BASE), unit_locations={"base": [[[1, 5]]]})
    assert torch.allclose(collected[0], cache(MODEL, BASE)[("mlp_output", 1)][:, [1, 5]])


def test_model_is_frozen_and_in_eval_mode():
    model = tiny_gpt2(n_layer=1)
    model.train()
    pv.IntervenableModel({"layer": 0, "component": "block_output"}, model)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())


def test_intervention_keys_and_aliases():
    pv_model = pv.IntervenableModel([
        {"layer": 1, "component": "block_output"},
        {"layer": 1, "component": "block_output"},
        {"component": "transformer.h[0].mlp.output", "intervention": pv.ZeroIntervention},
    ], MODEL)
    assert pv_model.sorted_keys == [
        "layer_1_comp_block_output_unit_pos_nunit_1#0",
        "layer_1_comp_block_output_unit_pos_nunit_1#1",
        "comp_transformer_h[0]_mlp_output_unit_pos_nunit_1#0",
    ]
    zero = pv_model.interventions["comp_transformer_h[0]_mlp_output_unit_pos_nunit_1#0"]
    assert isinstance(zero, pv.ZeroIntervention)
    assert pv_model.interventions["comp_transformer_h[0]_mlp_output"] is zero
    assert pv_model.interventions["comp_transformer_h[0]_mlp_output"][0] is zero  # the old (module, hook) style
    import pytest

    with pytest.raises(KeyError, match="matches"):
        pv_model.interventions["layer.1.block_output"]  # two interventions there: ambiguous
    single = pv.IntervenableModel({"layer": 6 % 3, "component": "mlp_output"}, MODEL)
    assert single.interventions["layer.0.mlp_output"] is single.interventions[single.sorted_keys[0]]


def test_output_hidden_states_and_user_hooks_see_the_intervened_value():
    vector = torch.randn(MODEL.config.n_embd)
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": pv.AdditionIntervention,
                                     "source_representation": vector}, MODEL)
    seen = []
    handle = MODEL.transformer.h[0].register_forward_hook(lambda m, a, out: seen.append(_main(out).detach().clone()))
    try:
        _, out = pv_model({"input_ids": BASE, "output_hidden_states": True})
    finally:
        handle.remove()
    expected = cache(MODEL, BASE)[("block_output", 0)] + vector
    assert torch.allclose(out.hidden_states[1], expected, atol=1e-5)
    assert torch.allclose(seen[0], expected, atol=1e-5)
