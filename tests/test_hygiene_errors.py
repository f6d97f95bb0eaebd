"""Hooks never leak and never disappear; bad input gets a clear error that names the fix."""
import pytest
import torch

import intervenable as pv
from gpt2_manual import ids, tiny_gpt2

def _main(output):
    """A block's hidden states: transformers 5 returns the tensor, 4.x a tuple starting with it."""
    return output[0] if isinstance(output, tuple) else output


MODEL = tiny_gpt2(n_layer=2)
BASE, SOURCE = {"input_ids": ids(2, 5, seed=3)}, {"input_ids": ids(2, 5, seed=4)}


def hook_counts(model):
    return {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in model.named_modules()}


def test_user_hooks_fire_during_and_survive_our_calls():
    model = tiny_gpt2(n_layer=2)
    seen = []
    handle = model.transformer.h[1].register_forward_hook(lambda m, a, out: seen.append(_main(out).detach().clone()))
    pre = model.transformer.h[0].mlp.register_forward_pre_hook(lambda m, a: seen.append("pre"))
    before = hook_counts(model)
    pv_model = pv.IntervenableModel([
        {"layer": 1, "component": "block_output"},
        {"layer": 0, "component": "mlp_input", "intervention": pv.CollectIntervention},
    ], model)
    pv_model(BASE, [SOURCE, None], unit_locations={"sources->base": 2})
    # The user's hooks fired in the source run and the base run (2 block outputs, 2 pre-hook calls... at least).
    assert "pre" in seen and sum(isinstance(s, torch.Tensor) for s in seen) == 2
    assert hook_counts(model) == before
    seen.clear()
    model(**BASE)
    assert len(seen) == 2  # still registered after our call
    handle.remove()
    pre.remove()


def test_hooks_are_removed_after_an_exception_inside_a_hook():
    model = tiny_gpt2(n_layer=2)
    before = hook_counts(model)
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model)
    with pytest.raises(pv.LocationError):
        pv_model(BASE, [SOURCE], unit_locations={"sources->base": 9})
    assert hook_counts(model) == before

    def boom(base, source):
        raise RuntimeError("user intervention failed")

    pv_model = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention": boom}, model)
    with pytest.raises(RuntimeError, match="user intervention failed"):
        pv_model(BASE)
    assert hook_counts(model) == before


def test_serial_mode_cleans_up_after_an_error():
    model = tiny_gpt2(n_layer=2)
    before = hook_counts(model)
    config = pv.IntervenableConfig(
        [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], mode="serial"
    )
    pv_model = pv.IntervenableModel(config, model)
    with pytest.raises(pv.LocationError):
        pv_model(BASE, [SOURCE, SOURCE], unit_locations={"source_0->source_1": 1, "source_1->base": 50})
    assert hook_counts(model) == before


def test_unknown_component_lists_valid_ones_and_suggests_the_closest():
    with pytest.raises(pv.ComponentError) as err:
        pv.IntervenableModel({"layer": 0, "component": "mlp_outptu"}, MODEL)
    message = str(err.value)
    assert "'mlp_output'" in message and "block_output" in message and "raw module path" in message


def test_layer_out_of_range():
    with pytest.raises(pv.ConfigError, match=r"Layer 5 is out of range .* 2 layers: use a layer in 0\.\.1"):
        pv.IntervenableModel({"layer": 5, "component": "block_output"}, MODEL)


def test_module_path_that_does_not_exist():
    with pytest.raises(pv.ComponentError, match=r"No module 'transformer\.h\.0\.mlpp'.*Did you mean 'transformer\.h\.0\.mlp'"):
        pv.IntervenableModel({"component": "transformer.h[0].mlpp.output"}, MODEL)


def test_position_past_the_sequence():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    with pytest.raises(pv.LocationError, match=r"Position 7 is out of range .*sequence length 5"):
        pv_model(BASE, [SOURCE], unit_locations={"sources->base": ([[[7]]], [[[1]]])})


def test_head_past_the_head_count():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h.pos"}, MODEL)
    with pytest.raises(pv.LocationError, match=r"Head 4 is out of range .*4 heads"):
        pv_model(BASE, [SOURCE], unit_locations={"sources->base": ([[[[4]], [[0]]]], [[[[1]], [[0]]]])})


def test_wrong_number_of_sources():
    pv_model = pv.IntervenableModel([{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], MODEL)
    with pytest.raises(pv.InputError, match=r"Got 3 sources for 2 intervention groups"):
        pv_model(BASE, [SOURCE, SOURCE, SOURCE])


def test_shape_mismatch_between_source_and_base_units():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "max_number_of_units": 2}, MODEL)
    with pytest.raises(pv.ShapeError, match=r"Select the same number of units"):
        pv_model(BASE, [SOURCE], unit_locations={"sources->base": ([[[0, 1, 2]]], [[[0, 1]]])})


def test_unknown_mode_and_unit():
    with pytest.raises(pv.ConfigError, match="Unknown mode 'paralel'"):
        pv.IntervenableConfig({"layer": 0}, mode="paralel")
    with pytest.raises(pv.ConfigError, match="Unknown unit 'poss'.*'pos'"):
        pv.IntervenableConfig({"layer": 0, "unit": "poss"})
    with pytest.raises(pv.ConfigError, match="Unit 'h' selects attention heads"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "unit": "h"}, MODEL)


def test_missing_source_is_named_in_a_warning_not_a_silent_no_op():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    with pytest.warns(UserWarning, match="did not run"):
        _, out = pv_model(BASE)  # as in the reference: a run without it
    assert torch.allclose(out.logits, MODEL(**BASE).logits)


def test_ragged_rows_and_batch_mismatch():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    with pytest.raises(pv.LocationError, match="rows select different numbers of units"):
        pv_model(BASE, [SOURCE], unit_locations={"base": [[[0], [1, 2]]]})
    with pytest.raises(pv.LocationError, match="given for 3 rows but the batch has 2"):
        pv_model(BASE, [SOURCE], unit_locations={"base": [[[0], [1], [2]]]})


def test_unknown_representation_field():
    with pytest.raises(pv.ConfigError, match=r"Unknown representation field 'componnet'.*'component'"):
        pv.IntervenableModel({"layer": 0, "componnet": "block_output"}, MODEL)


def test_writing_a_read_only_component_is_refused():
    with pytest.raises(pv.ConfigError, match="use CollectIntervention"):
        pv.IntervenableModel({"layer": 0, "component": "attention_weight"}, MODEL)
