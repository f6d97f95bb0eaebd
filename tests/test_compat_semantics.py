"""The reference's engine semantics (issue 15), each against hand-written torch or pyvene 0.1.8's numbers."""
import warnings

import pytest
import torch

import intervenable as pv
from gpt2_manual import cache, heads_view, ids, manual_forward, tiny_gpt2, unheads_view

MODEL = tiny_gpt2()
D, H = MODEL.config.n_embd, MODEL.config.n_head
BASE, S0 = ids(1, 6, seed=11), ids(1, 6, seed=12)
BASE2, SRC2 = ids(2, 6, seed=21), ids(2, 6, seed=22)


def _inp(x):
    return {"input_ids": x}


def _at(component, layer, fn):
    """An edit for ``manual_forward`` that applies ``fn`` to one component."""
    return lambda name, l, t: fn(t) if (name, l) == (component, layer) else t


def _zero(positions):
    def fn(t):
        t = t.clone()
        t[:, positions] = 0.0
        return t
    return fn


# -- 1. calls without sources ---------------------------------------------------------------
def test_no_sources_runs_without_the_sourced_interventions_and_warns_once_per_model():
    pv_model = pv.IntervenableModel([
        {"layer": 0, "component": "block_output"},  # needs a source
        {"layer": 1, "component": "mlp_output", "intervention": pv.ZeroIntervention},
    ], MODEL)
    vanilla_key = pv_model.sorted_keys[0]
    expected = manual_forward(MODEL, BASE, _at("mlp_output", 1, lambda t: t * 0.0))
    with pytest.warns(UserWarning, match="did not run") as record:
        _, out = pv_model(_inp(BASE))
    assert vanilla_key in str(record[0].message)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second call of the same model warns no more
        _, again = pv_model(_inp(BASE))
        assert torch.allclose(again.logits, expected, atol=1e-5)
        # A group given None among other sources is skipped without a warning.
        _, skipped = pv_model(_inp(BASE), [None, _inp(S0)])
        assert torch.allclose(skipped.logits, expected, atol=1e-5)


# -- 2. interventions called directly on tensors follow the reference -------------------------
B2 = torch.arange(12.0).view(3, 4)
S2 = -B2 - 1
B3 = torch.arange(24.0).view(2, 3, 4)
S3 = -B3 - 1

# Outputs of pyvene 0.1.8 for the same calls (run in /work/refvenv), flattened.
REFERENCE = {
    "rows": [-1.0, 1.0, 2.0, 3.0, 4.0, -6.0, 6.0, 7.0, 8.0, 9.0, -11.0, 11.0],
    "rows_along_dim_-2": [-1.0, 1.0, 2.0, 3.0, 4.0, -6.0, 6.0, 7.0, 8.0, 9.0, 10.0, -12.0, -13.0, 13.0, 14.0,
                          15.0, 16.0, -18.0, 18.0, 19.0, 20.0, 21.0, 22.0, -24.0],
    "ragged_rows_along_batch": [-1.0, 1.0, 2.0, 3.0, -5.0, 5.0, 6.0, 7.0, -9.0, 9.0, 10.0, 11.0, 12.0, -14.0,
                                -15.0, 15.0, 16.0, -18.0, -19.0, 19.0, 20.0, -22.0, -23.0, 23.0],
    "use_fast": [-1.0, 1.0, 2.0, 3.0, -5.0, 5.0, 6.0, 7.0, -9.0, 9.0, 10.0, 11.0],
    "partition": [0.0, 1.0, -3.0, -4.0, -5.0, -6.0, 6.0, 7.0, 8.0, 9.0, -11.0, -12.0],
    "embed_dim_narrows": [-1.0, -2.0, 2.0, 3.0, -5.0, -6.0, 6.0, 7.0, -9.0, -10.0, 10.0, 11.0],
    "interchange_dim_1": [-1.0, 1.0, 2.0, 3.0, -5.0, 5.0, 6.0, 7.0, -9.0, 9.0, 10.0, 11.0],
    "add": [-1.0, 1.0, 2.0, 3.0, 4.0, -1.0, 6.0, 7.0, 8.0, 9.0, 10.0, -1.0],
    "zero": [0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 6.0, 7.0, 8.0, 9.0, 10.0, 0.0],
    "collect_rows": [0.0, 1.0, 6.0, 7.0, 9.0, 11.0],
    "collect_rows_along_dim_-2": [0.0, 5.0, 11.0, 12.0, 17.0, 23.0],
    "collect_embed_dim": [0.0, 1.0, 4.0, 5.0, 8.0, 9.0],
}


def _direct(cls, base, source, subspaces, **kwargs):
    interchange_dim = kwargs.pop("interchange_dim", None)
    intervention = cls(**kwargs)
    if interchange_dim is not None:
        intervention.set_interchange_dim(interchange_dim)
    out = intervention(base.clone(), None if source is None else source.clone(), subspaces)
    return out.flatten().tolist()


def test_direct_calls_follow_the_reference_subspace_rules():
    assert _direct(pv.VanillaIntervention, B2, S2, [[0], [1], [2]], embed_dim=4) == REFERENCE["rows"]
    assert _direct(pv.VanillaIntervention, B3, S3, [[0], [1], [3]], embed_dim=4) == REFERENCE["rows_along_dim_-2"]
    assert _direct(pv.VanillaIntervention, B3, S3, [[0], [1, 2]], embed_dim=4) == REFERENCE["ragged_rows_along_batch"]
    assert _direct(pv.VanillaIntervention, B2, S2, [[0], [1], [2]], embed_dim=4, use_fast=True) == REFERENCE["use_fast"]
    assert _direct(pv.VanillaIntervention, B2, S2, [[1], [0], [1]], embed_dim=4,
                   subspace_partition=[[0, 2], [2, 4]]) == REFERENCE["partition"]
    assert _direct(pv.VanillaIntervention, B2, S2, None, embed_dim=2) == REFERENCE["embed_dim_narrows"]
    assert _direct(pv.VanillaIntervention, B2, S2, None, embed_dim=4, interchange_dim=1) == REFERENCE["interchange_dim_1"]
    assert _direct(pv.AdditionIntervention, B2, S2, [[0], [1], [3]], embed_dim=4) == REFERENCE["add"]
    assert _direct(pv.ZeroIntervention, B2, None, [[0], [1], [3]], embed_dim=4) == REFERENCE["zero"]
    assert _direct(pv.CollectIntervention, B2, None, [[0, 1], [2, 3], [1, 3]], embed_dim=4) == REFERENCE["collect_rows"]
    assert _direct(pv.CollectIntervention, B3, None, [[0], [1], [3]], embed_dim=4) == REFERENCE["collect_rows_along_dim_-2"]
    assert _direct(pv.CollectIntervention, B2, None, None, embed_dim=2) == REFERENCE["collect_embed_dim"]


def test_the_engine_sets_the_width_itself():
    # A collect built for one unit (embed_dim = width) returns every position it is given, every dim.
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention}, MODEL)
    assert pv_model.interventions[pv_model.sorted_keys[0]].embed_dim == D
    (_, collected), _ = pv_model(_inp(BASE), unit_locations={"base": [[[0, 2, 5]]]})
    assert torch.allclose(collected[0], cache(MODEL, BASE)[("mlp_output", 1)][:, [0, 2, 5]], atol=1e-6)
    # An interchange_dim set by the user narrows the swap inside the engine, as in the reference.
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    pv_model.interventions[pv_model.sorted_keys[0]].set_interchange_dim(5)
    _, out = pv_model(_inp(BASE), [_inp(S0)], unit_locations={"sources->base": 3})
    src = cache(MODEL, S0)[("block_output", 0)]

    def swap_first_five(t):
        t = t.clone()
        t[:, 3, :5] = src[:, 3, :5]
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, _at("block_output", 0, swap_first_five)), atol=1e-5)


# -- 3. out-of-range subspaces raise IndexError -------------------------------------------------
def test_out_of_range_subspace_is_an_index_error():
    assert issubclass(pv.SubspaceError, IndexError)
    with pytest.raises(pv.SubspaceError, match="out of range for width 4"):
        pv.VanillaIntervention(embed_dim=4)(B2.clone(), S2.clone(), [[0], [1], [4]])
    with pytest.raises(IndexError, match="partition"):
        pv.VanillaIntervention(embed_dim=4, subspace_partition=[[0, 2], [2, 4]])(B2.clone(), S2.clone(), [[2]] * 3)
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output"}, MODEL)
    with pytest.raises(IndexError, match=f"dimension {D}"):
        pv_model(_inp(BASE), [_inp(S0)], unit_locations={"sources->base": 1}, subspaces=[[[D]]])


# -- 4. generate(intervene_on_prompt=True) without locations: every position of every call ---------
@pytest.mark.parametrize("use_cache", [True, False])
def test_generate_on_prompt_without_locations_steers_every_call(use_cache):
    model = tiny_gpt2(n_layer=2)
    vector = 4.0 * torch.randn(D, generator=torch.Generator().manual_seed(7))
    prompt = {"input_ids": torch.tensor([[5, 9, 13, 7, 21]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    kwargs = dict(max_new_tokens=8, do_sample=False, use_cache=use_cache, pad_token_id=0)

    def add_everywhere(module, args, output):
        if isinstance(output, tuple):
            return (output[0] + vector,) + tuple(output[1:])
        return output + vector

    handle = model.transformer.h[1].register_forward_hook(add_everywhere)
    try:
        expected = model.generate(**prompt, **kwargs)
    finally:
        handle.remove()
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": pv.AdditionIntervention,
                                     "source_representation": vector}, model)
    original, got = pv_model.generate(prompt, intervene_on_prompt=True, output_original_output=True, **kwargs)
    assert torch.equal(got, expected)
    assert not torch.equal(got, original)


# -- 5. trainable interventions on heads are built per head ------------------------------------------
def test_das_on_a_head_is_built_with_the_head_dimension_and_trains():
    torch.manual_seed(0)
    pv_model = pv.IntervenableModel({"layer": 1, "component": "head_attention_value_output", "unit": "h",
                                     "intervention_type": pv.RotatedSpaceIntervention}, MODEL)
    das = pv_model.interventions[pv_model.sorted_keys[0]]
    assert das.embed_dim == D // H
    low_rank = pv.IntervenableModel({"layer": 0, "component": "head_key_output", "unit": "h", "low_rank_dimension": 2,
                                     "intervention_type": pv.LowRankRotatedSpaceIntervention}, MODEL)
    assert low_rank.interventions[low_rank.sorted_keys[0]].rotate_layer.weight.shape == (D // H, 2)

    das.set_interchange_dim(3)
    locations = {"sources->base": 2}  # head 2, every position
    with torch.no_grad():
        _, out = pv_model(_inp(BASE), [_inp(S0)], unit_locations=locations)
    R = das.rotate_layer.weight.detach()
    src = heads_view(cache(MODEL, S0)[("head_attention_value_output", 1)], H)

    def das_on_head_2(t):
        view = heads_view(t, H).clone()
        rb, rs = view[:, 2] @ R, src[:, 2] @ R
        view[:, 2] = torch.cat([rs[..., :3], rb[..., 3:]], -1) @ R.T
        return unheads_view(view)

    expected = manual_forward(MODEL, BASE, _at("head_attention_value_output", 1, das_on_head_2))
    assert torch.allclose(out.logits, expected, atol=1e-4)

    # Training: pull the output towards the source run's last-position logits.
    target = MODEL(S0).logits[:, -1].detach()
    optimizer = torch.optim.Adam(pv_model.get_trainable_parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        _, out = pv_model(_inp(BASE), [_inp(S0)], unit_locations=locations)
        loss = torch.nn.functional.mse_loss(out.logits[:, -1], target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    W = das.rotate_layer.weight.detach()
    assert not torch.allclose(W, R) and torch.allclose(W @ W.T, torch.eye(D // H), atol=1e-4)


# -- 6. as_adaptor passes the module's input ----------------------------------------------------
class GhostLoRA(pv.ConstantSourceIntervention):
    """The reference tutorial's adaptor: ``h + x A B`` with ``x`` the module's input."""

    def __init__(self, **kwargs):
        super().__init__(keep_last_dim=True)
        g = torch.Generator().manual_seed(3)
        self.A, self.B = torch.randn(D, 2, generator=g), torch.randn(2, D, generator=g)
        self.seen_kwargs = None

    def forward(self, base, source=None, subspaces=None, **kwargs):
        self.seen_kwargs = kwargs["kwargs"]
        return base + kwargs["args"] @ self.A @ self.B


@pytest.mark.parametrize("positions", [None, [2, 4]])
def test_as_adaptor_passes_the_module_input_at_the_units(positions):
    ghost = GhostLoRA()
    pv_model = pv.IntervenableModel({"component": "transformer.h[1].attn.c_proj.output", "intervention": ghost},
                                    MODEL, as_adaptor=True)
    locations = None if positions is None else {"base": [[positions]]}
    _, out = pv_model(_inp(BASE2), unit_locations=locations)
    assert isinstance(ghost.seen_kwargs, dict)
    seen = {}

    def edit(name, layer, t):
        if (name, layer) == ("attention_value_output", 1):
            seen["x"] = t  # the input of c_proj
        if (name, layer) == ("attention_output", 1):
            t = t.clone()
            where = slice(None) if positions is None else positions
            t[:, where] = t[:, where] + seen["x"][:, where] @ ghost.A @ ghost.B
        return t

    assert torch.allclose(out.logits, manual_forward(MODEL, BASE2, edit), atol=1e-4)


# -- 7. collect with per-row subspaces ------------------------------------------------------------
def test_collect_with_per_row_subspaces_reads_each_rows_dims():
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.CollectIntervention}, MODEL)
    (_, collected), _ = pv_model(_inp(BASE2), unit_locations={"base": [[[1, 4]]]}, subspaces=[[[0, 1], [2, 3]]])
    full = cache(MODEL, BASE2)[("mlp_output", 1)]
    expected = torch.stack([full[0, [1, 4]][:, [0, 1]], full[1, [1, 4]][:, [2, 3]]])
    assert collected[0].shape == (2, 2, 2) and torch.allclose(collected[0], expected, atol=1e-6)


# -- 8. {"base": [s, b]} is a (source, base) pair, with a warning ---------------------------------------
def test_base_pair_reads_as_the_reference_with_a_warning():
    pv_model = pv.IntervenableModel({"layer": 1, "component": "mlp_output", "intervention": pv.ZeroIntervention}, MODEL)
    with pytest.warns(UserWarning, match=r"\(source, base\) pair"):
        _, out = pv_model(_inp(BASE), unit_locations={"base": [1, 3]})
    assert torch.allclose(out.logits, manual_forward(MODEL, BASE, _at("mlp_output", 1, _zero([3]))), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the unambiguous forms do not warn
        _, both = pv_model(_inp(BASE), unit_locations={"base": [[[1, 3]]]})
        _, three = pv_model(_inp(BASE), unit_locations={"base": [1, 3, 5]})
    assert torch.allclose(both.logits, manual_forward(MODEL, BASE, _at("mlp_output", 1, _zero([1, 3]))), atol=1e-5)
    assert torch.allclose(three.logits, manual_forward(MODEL, BASE, _at("mlp_output", 1, _zero([1, 3, 5]))), atol=1e-5)


# -- 9. serial mode with base-only interventions ---------------------------------------------------
def test_serial_mode_runs_base_only_interventions_on_the_base():
    # pyvene 0.1.8 accepts this call but skips every group without a source, so its output is the
    # clean run; we apply what was asked (docs/unit_locations.md records the difference).
    config = pv.IntervenableConfig([
        {"layer": 0, "component": "block_output", "intervention": pv.ZeroIntervention},
        {"layer": 2, "component": "mlp_output", "intervention": pv.ZeroIntervention},
    ], mode="serial")
    pv_model = pv.IntervenableModel(config, MODEL)
    _, out = pv_model(_inp(BASE), unit_locations={"base": [[[1]], [[4]]]})
    expected = manual_forward(MODEL, BASE, lambda name, layer, t: _zero([1])(t) if (name, layer) == ("block_output", 0)
                              else _zero([4])(t) if (name, layer) == ("mlp_output", 2) else t)
    assert torch.allclose(out.logits, expected, atol=1e-5)
    _, everywhere = pv_model(_inp(BASE), unit_locations={"base": 2})
    expected = manual_forward(MODEL, BASE, lambda name, layer, t: _zero([2])(t)
                              if (name, layer) in (("block_output", 0), ("mlp_output", 2)) else t)
    assert torch.allclose(everywhere.logits, expected, atol=1e-5)
