"""Errors before any forward, from the call site; callables get their source; one broadcast rule.

Expectations are computed by hand: the plain-torch GPT-2 forward of gpt2_manual
(patched by explicit indexing), counts of forward calls seen by a pre-hook on
the model, and the frames of the raised exception's traceback.
"""
import os

import pytest
import torch
from torch import nn

import intervenable as pv
from gpt2_manual import cache, ids, manual_forward, tiny_gpt2

MODEL = tiny_gpt2(n_layer=2)
BASE, SOURCE = ids(2, 5, seed=3), ids(2, 5, seed=4)
ONE_ROW = ids(1, 5, seed=5)
TORCH_DIR = os.path.dirname(torch.__file__)


class CountForwards:
    """Counts calls of the wrapped model (a forward pre-hook of the user's, not ours)."""

    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self.hook)

    def hook(self, module, args):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def frames(exc):
    out, tb = [], exc.__traceback__
    while tb is not None:
        out.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return out


def assert_raised_at_call_site(exc):
    """No frame of transformers' model code or of torch beyond nn.Module's call wrapper."""
    files = frames(exc)
    assert not any("transformers" in f for f in files), files
    assert sum(f.startswith(TORCH_DIR) for f in files) <= 2, files  # Module._wrapped_call_impl, _call_impl
    assert len(files) <= 5, files


def raises_before_forward(error, match, call):
    with CountForwards(MODEL) as counter:
        with pytest.raises(error, match=match) as info:
            call()
    assert counter.calls == 0
    assert_raised_at_call_site(info.value)
    return info.value


def patch(base_ids, edits):
    """Manual logits with {(component, layer): fn(full) -> full} applied."""
    return manual_forward(MODEL, base_ids, lambda name, layer, t: edits[(name, layer)](t) if (name, layer) in edits else t)


def copy_positions(source_full, pairs):
    """fn(full): row r at base position b gets source_full[src_row][s] for (r, src_row, s, b) in pairs."""
    def fn(t):
        t = t.clone()
        for r, src_row, s, b in pairs:
            t[r, b] = source_full[src_row, s]
        return t
    return fn


# -- 1. a plain callable receives the source ------------------------------------
def test_callable_receives_the_source_and_patches_like_vanilla():
    rep = {"layer": 0, "component": "block_output"}
    locations = {"sources->base": ([[[1], [3]]], [[[2], [4]]])}
    lam = pv.IntervenableModel({**rep, "intervention": lambda b, s: s}, MODEL)
    van = pv.IntervenableModel({**rep, "intervention": pv.VanillaIntervention()}, MODEL)
    with CountForwards(MODEL) as counter:
        _, out = lam({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations=locations)
    assert counter.calls == 2  # the source run happened
    caps = lam._slots[0].caps
    assert caps.reads_source and not caps.needs_source  # read when given, not required
    _, vanilla = van({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations=locations)
    src = cache(MODEL, SOURCE)[("block_output", 0)]
    expected = patch(BASE, {("block_output", 0): copy_positions(src, [(0, 0, 1, 2), (1, 1, 3, 4)])})
    assert torch.equal(out.logits, vanilla.logits)
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_callable_with_a_constant_source_or_no_source():
    vector = torch.linspace(-1, 1, 32)
    steer = pv.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention": lambda b, s: b + s, "source_representation": vector},
        MODEL,
    )
    with CountForwards(MODEL) as counter:
        _, out = steer({"input_ids": BASE}, unit_locations={"base": 3})
    assert counter.calls == 1  # a constant source needs no source run

    def add_at_3(t):
        t = t.clone()
        t[:, 3] += vector
        return t

    assert torch.allclose(out.logits, patch(BASE, {("block_output", 1): add_at_3}), atol=1e-5)

    seen = []

    def halve(b, s):  # as in the reference: without sources the callable gets source=None
        seen.append(s)
        return b * 0.5

    _, out = pv.IntervenableModel({"layer": 0, "component": "mlp_output", "intervention": halve}, MODEL)({"input_ids": BASE})
    assert seen == [None]
    assert torch.allclose(out.logits, patch(BASE, {("mlp_output", 0): lambda t: t * 0.5}), atol=1e-5)


def test_a_module_with_forward_base_source_is_accepted_and_others_are_refused():
    class Mix(nn.Module):
        def __init__(self):
            super().__init__()
            self.alpha = nn.Parameter(torch.tensor(0.25))

        def forward(self, base, source):
            return base + self.alpha * (source - base)

    mix = Mix()
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": mix}, MODEL)
    assert any(p is mix.alpha for p in pv_model.parameters())
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations={"sources->base": 2})
    src = cache(MODEL, SOURCE)[("block_output", 0)]

    def mixed(t):
        t = t.clone()
        t[:, 2] = t[:, 2] + 0.25 * (src[:, 2] - t[:, 2])
        return t

    assert torch.allclose(out.logits, patch(BASE, {("block_output", 0): mixed}), atol=1e-5)

    with pytest.raises(pv.ConfigError, match=r"Linear is not an intervention: its forward takes only 1 positional "
                                             r"argument.*f\(base, source\).*Subclass pv\.Intervention"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": nn.Linear(32, 32)}, MODEL)
    with pytest.raises(pv.ConfigError, match=r"takes only 1 positional argument, so it cannot be called as f\(base, source\)"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": lambda b: b}, MODEL)
    with pytest.raises(pv.ConfigError, match="4 required positional arguments"):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": lambda b, s, sub, x: b}, MODEL)


def test_a_mistyped_intervention_name_gets_a_suggestion_and_no_talk_of_loading():
    with pytest.raises(pv.ConfigError, match=r"Unknown intervention type 'vanilla'\. Did you mean 'VanillaIntervention'\?") as info:
        pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": "vanilla"}, MODEL)
    assert "load" not in str(info.value)
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": "ZeroIntervention"}, MODEL)
    assert isinstance(pv_model.interventions[pv_model.sorted_keys[0]], pv.ZeroIntervention)


# -- 2. locations, heads, subspaces and partitions before any forward ------------
def test_position_and_head_out_of_range_are_raised_before_any_forward():
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, MODEL)
    raises_before_forward(pv.LocationError, r"Position 9 is out of range .*sequence length 5",
                          lambda: pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations={"sources->base": 9}))
    # a longer source: source positions are checked against the source's own length
    long_source = {"input_ids": ids(2, 8, seed=6)}
    raises_before_forward(pv.LocationError, r"Position 8 is out of range .*sequence length 8",
                          lambda: pv_model({"input_ids": BASE}, [long_source], unit_locations={"sources->base": (8, 1)}))
    _, out = pv_model({"input_ids": BASE}, [long_source], unit_locations={"sources->base": (7, 1)})  # in range: runs
    raises_before_forward(pv.LocationError, r"Position -6 is out of range",
                          lambda: pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations={"base": -6},
                                           output_original_output=True))
    heads = pv.IntervenableModel({"layer": 0, "component": "head_attention_value_output", "unit": "h.pos"}, MODEL)
    raises_before_forward(pv.LocationError, r"Head 4 is out of range .*4 heads",
                          lambda: heads({"input_ids": BASE}, [{"input_ids": SOURCE}],
                                        unit_locations={"sources->base": ([[[[4]], [[0]]]], [[[[1]], [[0]]]])}))


def test_serial_mode_locations_are_checked_before_any_forward():
    config = pv.IntervenableConfig(
        [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], mode="serial"
    )
    pv_model = pv.IntervenableModel(config, MODEL)
    raises_before_forward(pv.LocationError, r"Position 50 is out of range",
                          lambda: pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}, {"input_ids": SOURCE}],
                                           unit_locations={"source_0->source_1": 1, "source_1->base": 50}))


def test_subspaces_and_partitions_outside_the_width():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    error = raises_before_forward(pv.LocationError, r"Subspace dimension 32 is outside the width 32",
                                  lambda: pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], subspaces=[[[0, 32]] * 2]))
    assert isinstance(error, IndexError)
    heads = pv.IntervenableModel({"layer": 0, "component": "head_value_output", "unit": "h"}, MODEL)
    raises_before_forward(pv.LocationError, r"Subspace dimension 8 is outside the width 8",  # head_dim = 32 / 4
                          lambda: heads({"input_ids": BASE}, [{"input_ids": SOURCE}], subspaces=8))
    parted = pv.IntervenableModel({"layer": 0, "component": "block_output", "subspace_partition": [[0, 16], [16, 32]]}, MODEL)
    raises_before_forward(pv.LocationError, r"Subspace id 2 is outside the partition of 2 subspaces",
                          lambda: parted({"input_ids": BASE}, [{"input_ids": SOURCE}], subspaces=2))
    with CountForwards(MODEL) as counter, pytest.raises(
        pv.ConfigError, match=r"subspace_partition of .* names dimension 39, but the units there have width 32"
    ):
        pv.IntervenableModel({"layer": 0, "component": "block_output", "subspace_partition": [[0, 16], [16, 40]]}, MODEL)
    assert counter.calls == 0


def test_errors_found_inside_hooks_are_raised_from_the_call_site():
    # A raw module path is not checked up front (its positions need not be the input's): the hook finds it.
    pv_model = pv.IntervenableModel({"component": "transformer.h[0].mlp.output"}, MODEL)
    with pytest.raises(pv.LocationError, match=r"Position 7 is out of range .*sequence length 5") as info:
        pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], unit_locations={"sources->base": 7})
    assert_raised_at_call_site(info.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in MODEL.modules())  # none left behind


# -- 3. one broadcast rule for a 1-row source; other batch mismatches ------------
def test_a_one_row_source_broadcasts_with_and_without_locations():
    src = cache(MODEL, ONE_ROW)[("block_output", 0)]
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": ONE_ROW}],
                      unit_locations={"sources->base": ([[[1], [3]]], [[[2], [4]]])})
    expected = patch(BASE, {("block_output", 0): copy_positions(src, [(0, 0, 1, 2), (1, 0, 3, 4)])})
    assert torch.allclose(out.logits, expected, atol=1e-5)
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": ONE_ROW}], unit_locations={"sources->base": 2})
    expected = patch(BASE, {("block_output", 0): copy_positions(src, [(0, 0, 2, 2), (1, 0, 2, 2)])})
    assert torch.allclose(out.logits, expected, atol=1e-5)
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": ONE_ROW}])
    expected = patch(BASE, {("block_output", 0): lambda t: src.expand_as(t).clone()})
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_a_one_row_source_broadcasts_in_serial_mode():
    s0, s1 = ids(1, 5, seed=7), ids(1, 5, seed=8)
    config = pv.IntervenableConfig(
        [{"layer": 0, "component": "block_output"}, {"layer": 1, "component": "block_output"}], mode="serial"
    )
    _, out = pv.IntervenableModel(config, MODEL)({"input_ids": BASE}, [{"input_ids": s0}, {"input_ids": s1}],
                                                  unit_locations={"source_0->source_1": (1, 2), "source_1->base": (2, 3)})
    c0 = cache(MODEL, s0)[("block_output", 0)]
    store = {}

    def edit_s1(name, layer, t):
        if (name, layer) == ("block_output", 0):
            t = copy_positions(c0, [(0, 0, 1, 2)])(t)
        if (name, layer) == ("block_output", 1):
            store["v"] = t.clone()
        return t

    manual_forward(MODEL, s1, edit_s1)
    expected = patch(BASE, {("block_output", 1): copy_positions(store["v"], [(0, 0, 2, 3), (1, 0, 2, 3)])})
    assert torch.allclose(out.logits, expected, atol=1e-5)


def test_other_batch_mismatches_say_the_batches_differ():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    three = {"input_ids": ids(3, 5, seed=9)}
    for locations in (None, {"sources->base": 2}):
        error = raises_before_forward(pv.InputError, r"source of group 0 has batch size 3 but the base has 2: the batches differ",
                                      lambda: pv_model({"input_ids": BASE}, [three], unit_locations=locations))
        assert "MoE" not in str(error) and "flattened" not in str(error)
    with pytest.raises(pv.InputError, match="the batches differ"):
        pv_model.generate({"input_ids": BASE}, [three], max_new_tokens=1)


# -- 4. inputs without a batch dimension -----------------------------------------
def test_a_one_dimensional_input_asks_for_a_batch_dimension():
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    one_d = BASE[0]
    raises_before_forward(pv.InputError, r"input_ids of the base has shape \(5,\).*add a batch dimension",
                          lambda: pv_model({"input_ids": one_d}, [{"input_ids": SOURCE[:1]}], output_original_output=True))
    raises_before_forward(pv.InputError, r"input tensor of the source of group 0 .*add a batch dimension",
                          lambda: pv_model(BASE[:1], [one_d]))
    with pytest.raises(pv.InputError, match="add a batch dimension"):
        pv_model.generate({"input_ids": one_d}, max_new_tokens=1)


def test_positions_are_not_bounded_by_the_sequence_where_they_index_something_else():
    # On the built-in GRU's 2-D cells, unit "pos" indexes neurons: neuron 10 of 16 with a 5-token input is valid.
    from intervenable.models import GRUConfig, create_gru_lm

    torch.manual_seed(0)
    _, _, gru = create_gru_lm(GRUConfig(h_dim=16, n_layer=2, include_emb=True, vocab_size=20))
    gru.eval()
    tokens = torch.randint(0, 20, (2, 5))

    def zero_neuron_10(module, args, output):
        output = output.clone()
        output[:, 10] = 0
        return output

    handle = gru.gru.cells[0].register_forward_hook(zero_neuron_10)
    try:
        with torch.no_grad():
            expected = gru(input_ids=tokens)[0]  # the built-in GRU returns a tuple, as the reference's
    finally:
        handle.remove()
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": pv.ZeroIntervention}, gru)
    _, out = pv_model({"input_ids": tokens}, unit_locations={"base": 10})
    assert torch.allclose(out[0], expected, atol=1e-6)


def test_widths_guessed_for_raw_module_paths_refuse_nothing_up_front():
    # A conv's guessed width is its 2 channels, but the last axis (what subspaces index) is 6 pixels wide.
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
    x = torch.randn(2, 1, 6, 6)
    with torch.no_grad():
        hidden = conv[0](x)
        hidden[..., 4:6] = 0
        expected = conv[1](hidden)
    rep = {"component": "0.output", "intervention": pv.ZeroIntervention, "subspace_partition": [[0, 4], [4, 6]]}
    pv_model = pv.IntervenableModel(rep, conv)
    _, out = pv_model(x, subspaces=1)
    assert torch.allclose(out, expected)
