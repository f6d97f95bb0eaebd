"""run_with_cache and the residual toolkit against plain hooks, a hand-written GPT-2 and autograd.

Ground truth never goes through the library's sites: GPT-2's components come from
tests/gpt2_manual.py (the forward written out in torch); the other families' from plain forward
hooks on module paths written here. The read-out (final norm, unembedding, soft-capping) and the
frozen-norm attribution are recomputed by hand from the weights. Tolerances: 1e-5 for sums of a
few float32 tensors of size ~1-10, 1e-4 for logits (sums over a width of 32 of products).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest
import torch

from families import provided
import intervenable as pv
from intervenable.errors import ComponentError, ConfigError, InputError, LocationError
from gpt2_manual import manual_forward, tiny_gpt2
from test_fast_families import CLEAN, FAMILIES

torch.set_num_threads(1)
IDS = torch.cat([CLEAN, CLEAN.flip(1)])  # two rows


def _main(o: Any) -> torch.Tensor:
    return o[0] if isinstance(o, (tuple, list)) else o


def _randomise_biases(model: torch.nn.Module) -> None:
    """Non-zero biases everywhere, so that 'minus the bias' and the bias terms are exercised."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=g))


def gpt2_model():
    model = tiny_gpt2(n_layer=3)
    _randomise_biases(model)
    return model.eval()


# -- every cached site equals the hand-written forward (GPT-2: every abstract component) ---------------
GPT2_COMPONENTS = ["block_input", "block_output", "attention_input", "attention_output", "mlp_input", "mlp_activation",
                   "mlp_output", "query_output", "key_output", "value_output", "attention_value_output",
                   "head_query_output", "head_key_output", "head_value_output", "head_attention_value_output"]


def test_every_gpt2_component_equals_the_hand_written_forward() -> None:
    model = gpt2_model()
    seen: Dict[Tuple[str, int], torch.Tensor] = {}

    def edit(name, layer, t):
        seen[(name, layer)] = t.detach().clone()
        return t

    with torch.no_grad():
        logits = manual_forward(model, IDS, edit)
    out, cache = pv.run_with_cache(model, IDS, components=GPT2_COMPONENTS)
    assert torch.allclose(out.logits, logits, atol=1e-4)
    assert len(cache) == len(GPT2_COMPONENTS) * 3
    heads = model.config.n_head
    for name in GPT2_COMPONENTS:
        for layer in range(3):
            expect = seen[(name, layer)]
            if name.startswith("head_"):
                expect = expect.view(*expect.shape[:2], heads, -1)  # [batch, seq, heads, head_dim]
            assert cache[name, layer].shape == expect.shape, (name, layer)
            assert torch.allclose(cache[name, layer], expect, atol=1e-5), (name, layer)
    # TransformerLens aliases, negative layers, stack
    assert torch.equal(cache["resid_post", 2], cache["block_output", -1])
    assert torch.equal(cache["z", 1], cache["head_attention_value_output", 1])
    assert torch.allclose(cache.stack("block_output"), torch.stack([seen[("block_output", l)] for l in range(3)]), atol=1e-5)
    assert ("block_output", 1) in cache and ("block_output", 7) not in cache


# Plain hook paths per family: (block, attention writer, mlp writer, heads' value mix = output projection input).
PATHS = {
    "gpt2": ("transformer.h.{}", "transformer.h.{}.attn", "transformer.h.{}.mlp", "transformer.h.{}.attn.c_proj"),
    "llama": ("model.layers.{}", "model.layers.{}.self_attn", "model.layers.{}.mlp", "model.layers.{}.self_attn.o_proj"),
    "gemma2": ("model.layers.{}", "model.layers.{}.post_attention_layernorm", "model.layers.{}.post_feedforward_layernorm",
               "model.layers.{}.self_attn.o_proj"),
    "olmo2": ("model.layers.{}", "model.layers.{}.post_attention_layernorm", "model.layers.{}.post_feedforward_layernorm",
              "model.layers.{}.self_attn.o_proj"),
    "gpt_neox": ("gpt_neox.layers.{}", "gpt_neox.layers.{}.attention", "gpt_neox.layers.{}.mlp",
                 "gpt_neox.layers.{}.attention.dense"),
}
READOUT = {  # the final norm (the head is the model's output embeddings: lm_head, or embed_out on 4.x NeoX)
    "gpt2": "transformer.ln_f", "llama": "model.norm", "gemma2": "model.norm", "olmo2": "model.norm",
    "gpt_neox": "gpt_neox.final_layer_norm",
}


def family(name: str):
    if name == "gpt2":
        return gpt2_model()
    model, _ = FAMILIES[name]()
    _randomise_biases(model)
    return model


def plain_hooks(model, name: str, ids: torch.Tensor) -> Tuple[Any, Dict[Tuple[str, int], torch.Tensor]]:
    block, attn, mlp, proj = PATHS[name]
    seen: Dict[Tuple[str, int], torch.Tensor] = {}
    handles: List[Any] = []
    for l in range(model.config.num_hidden_layers):
        def keep(key):
            return lambda m, a, o: seen.__setitem__(key, _main(o).detach().clone())
        handles.append(model.get_submodule(block.format(l)).register_forward_pre_hook(
            lambda m, a, k=("in", l): seen.__setitem__(k, a[0].detach().clone()) if a else None))
        handles.append(model.get_submodule(block.format(l)).register_forward_hook(keep(("out", l))))
        handles.append(model.get_submodule(attn.format(l)).register_forward_hook(keep(("attn", l))))
        handles.append(model.get_submodule(mlp.format(l)).register_forward_hook(keep(("mlp", l))))
        handles.append(model.get_submodule(proj.format(l)).register_forward_pre_hook(
            lambda m, a, k=("z", l): seen.__setitem__(k, a[0].detach().clone())))
    try:
        with torch.no_grad():
            out = model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def hand_readout(model, name: str, resid: torch.Tensor, cap: bool = True) -> torch.Tensor:
    norm, head = model.get_submodule(READOUT[name]), model.get_output_embeddings()
    with torch.no_grad():
        logits = head(norm(resid))
    softcap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / softcap) * softcap if softcap and cap else logits


@pytest.mark.parametrize("name", provided(sorted(PATHS)))
def test_sites_lens_decomposition_and_attribution(name: str) -> None:
    model = family(name)
    ids = IDS if name != "gpt2" else IDS
    out, seen = plain_hooks(model, name, ids)
    comps = ["block_input", "block_output", "attention_residual", "mlp_residual", "head_attention_value_output"]
    logits, cache = pv.run_with_cache(model, ids, components=comps)
    L = model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    for l in range(L):
        assert torch.allclose(cache["block_input", l], seen[("in", l)], atol=1e-6)
        assert torch.allclose(cache["block_output", l], seen[("out", l)], atol=1e-6)
        assert torch.allclose(cache["attention_residual", l], seen[("attn", l)], atol=1e-6)
        assert torch.allclose(cache["mlp_residual", l], seen[("mlp", l)], atol=1e-6)
        z = seen[("z", l)]
        assert torch.allclose(cache["head_attention_value_output", l], z.view(*z.shape[:2], heads, -1), atol=1e-6)
    # logit lens: each layer's output through the final norm and head, by hand; the last is the logits
    lens = cache.logit_lens()
    for l in range(L):
        assert torch.allclose(lens[l], hand_readout(model, name, seen[("out", l)]), atol=1e-5)
    assert torch.allclose(lens[-1], out.logits, atol=1e-5)
    # the decomposition sums to the final residual
    parts, labels = cache.decompose_resid(return_labels=True)
    assert labels[:3] == ["embed", "0_attn_out", "0_mlp_out"] and parts.shape[0] == 1 + 2 * L
    assert (parts.sum(0) - seen[("out", L - 1)]).abs().max() <= 1e-5
    # direct logit attribution sums to the (pre-soft-capping) logit difference, at every position
    raw = hand_readout(model, name, seen[("out", L - 1)], cap=False)
    attrs = cache.logit_attrs(5, 7, position=None)
    assert attrs.shape == (parts.shape[0] + 1, 2, ids.shape[1])
    assert (attrs.sum(0) - (raw[..., 5] - raw[..., 7])).abs().max() <= 1e-4
    one = cache.logit_attrs(torch.tensor([3, 4]))  # per-row tokens at the last position
    assert (one.sum(0) - raw[torch.arange(2), -1, torch.tensor([3, 4])]).abs().max() <= 1e-4


def test_frozen_attribution_by_hand_on_gpt2() -> None:
    """GPT-2's DLA per component: centred, times the final residual's LayerNorm scale and weight, dotted with W_U."""
    model = gpt2_model()
    with torch.no_grad():
        model.transformer.ln_f.weight.copy_(1 + 0.3 * torch.randn(32, generator=torch.Generator().manual_seed(5)))
    _, seen = plain_hooks(model, "gpt2", IDS)
    _, cache = pv.run_with_cache(model, IDS)
    ln = model.transformer.ln_f
    x = seen[("out", 2)][:, -1]
    scale = 1 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
    d = (model.lm_head.weight[5] - model.lm_head.weight[7]).detach()
    parts = [seen[("in", 0)][:, -1]] + [seen[(k, l)][:, -1] for l in range(3) for k in ("attn", "mlp")]
    expect = [((p - p.mean(-1, keepdim=True)) * scale * ln.weight.detach()) @ d for p in parts]
    expect.append(ln.bias.detach() @ d * torch.ones(2))
    attrs, labels = cache.logit_attrs(5, 7, return_labels=True)
    assert labels[-1] == "bias"
    assert torch.allclose(attrs, torch.stack(expect), atol=1e-5)
    # apply_ln_to_stack: frozen = the same linear map; recompute = ln_f of each element
    stack = cache.decompose_resid()
    frozen = cache.apply_ln_to_stack(stack, scale="frozen")
    assert torch.allclose(frozen[1, :, -1], (parts[1] - parts[1].mean(-1, keepdim=True)) * scale * ln.weight, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(cache.apply_ln_to_stack(stack, scale="recompute"), ln(stack), atol=1e-5)
    acc, acc_labels = cache.accumulated_resid(apply_ln="recompute", return_labels=True)
    assert acc_labels == ["embed", "0_post", "1_post", "2_post"]
    with torch.no_grad():
        assert torch.allclose(acc[2], ln(seen[("out", 1)]), atol=1e-5)
    with pytest.raises(ConfigError, match="recompute"):
        cache.accumulated_resid(apply_ln=True)
    with pytest.raises(ConfigError, match="'recompute' or 'frozen'"):
        cache.apply_ln_to_stack(stack, scale="yes")


@pytest.mark.parametrize("name", ["gpt2", "llama", "gpt_neox"])
def test_head_results_sum_to_the_attention_output_minus_its_bias(name: str) -> None:
    model = family(name)
    _, seen = plain_hooks(model, name, IDS)
    _, cache = pv.run_with_cache(model, IDS, components=["head_attention_value_output", "block_input",
                                                         "block_output", "attention_residual", "mlp_residual"])
    proj = model.get_submodule(PATHS[name][3].format(1))
    bias = proj.bias.detach() if getattr(proj, "bias", None) is not None else torch.zeros(())
    assert torch.allclose(cache.head_results(1).sum(2), seen[("attn", 1)] - bias, atol=1e-5)
    if name == "gpt2":  # one head by hand: its slice of the value mix times its rows of c_proj's weight
        z = seen[("z", 1)].view(2, -1, 4, 8)
        assert torch.allclose(cache.head_results(1)[:, :, 2], z[:, :, 2] @ proj.weight.detach()[16:24], atol=1e-5)
    raw = hand_readout(model, name, seen[("out", 2)], cap=False)[:, -1]
    attrs, labels = cache.logit_attrs(5, 7, heads=True, return_labels=True)
    assert "L1H3" in labels and "1_attn_bias" in labels
    assert (attrs.sum(0) - (raw[:, 5] - raw[:, 7])).abs().max() <= 1e-4


def test_grouped_query_heads_split_by_their_own_count() -> None:
    """LLaMA with 4 query heads and 2 key/value heads: keys and values split into 2 heads of head_dim."""
    model = family("llama")
    seen = {}
    handles = [model.model.layers[1].self_attn.k_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("k", o)),
               model.model.layers[1].self_attn.q_proj.register_forward_hook(lambda m, a, o: seen.__setitem__("q", o))]
    try:
        with torch.no_grad():
            model(input_ids=IDS)
    finally:
        for h in handles:
            h.remove()
    _, cache = pv.run_with_cache(model, IDS, components=["k", "q"], layers=[1], heads=[1])
    assert torch.equal(cache["head_key_output", 1], seen["k"].view(2, 9, 2, 8)[:, :, [1]])
    assert torch.equal(cache["head_query_output", 1], seen["q"].view(2, 9, 4, 8)[:, :, [1]])
    with pytest.raises(LocationError, match="2 heads"):
        pv.run_with_cache(model, IDS, components=["head_key_output"], heads=[3])


def _rms_by_hand(norm, x: torch.Tensor, name: str) -> torch.Tensor:
    """``x``'s RMS scale and the norm's weight: Gemma 2 scales by ``1 + weight`` (``eps``), OLMo 2 by ``weight``."""
    if name == "gemma2":
        return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps), 1 + norm.weight.detach()
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon), norm.weight.detach()


@pytest.mark.parametrize("name", provided(["gemma2", "olmo2"]))
def test_heads_share_the_normed_attention_write_and_sum_to_the_logit(name: str) -> None:
    """Gemma 2 and OLMo 2 norm the attention output before adding it: a head's share is its output-projection
    term through post_attention_layernorm at the whole output's scale (by hand below); the shares sum to what
    the attention writes, and the per-head attributions to the logit difference."""
    model = family(name)
    with torch.no_grad():  # non-trivial post-norm weights
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight.normal_(generator=torch.Generator().manual_seed(4))
    _, seen = plain_hooks(model, name, IDS)
    _, cache = pv.run_with_cache(model, IDS, components=["block_input", "block_output", "attention_residual",
                                                         "mlp_residual", "head_attention_value_output"])
    attrs, labels = cache.logit_attrs(5, 7, heads=True, return_labels=True)
    raw = hand_readout(model, name, seen[("out", 2)], cap=False)[:, -1]
    assert (attrs.sum(0) - (raw[:, 5] - raw[:, 7])).abs().max() <= 1e-4
    layer = model.model.layers[1]
    W = layer.self_attn.o_proj.weight.detach()
    z = seen[("z", 1)]
    hd = z.shape[-1] // model.config.num_attention_heads
    scale, weight = _rms_by_hand(layer.post_attention_layernorm, z @ W.T, name)
    share = (z[..., 2 * hd:3 * hd] @ W[:, 2 * hd:3 * hd].T) * scale * weight
    fscale, fweight = _rms_by_hand(model.model.norm, seen[("out", 2)][:, -1], name)
    U = model.get_output_embeddings().weight.detach()
    want = ((share[:, -1] * fscale * fweight) * (U[5] - U[7])).sum(-1)
    assert torch.allclose(attrs[labels.index("L1H2")], want, atol=1e-5)
    whole_attrs, whole_labels = cache.logit_attrs(5, 7, return_labels=True)  # each attention write as one part
    shares = sum(attrs[labels.index(f"L1H{h}")] for h in range(model.config.num_attention_heads))
    assert torch.allclose(shares + attrs[labels.index("1_attn_bias")], whole_attrs[whole_labels.index("1_attn_out")],
                          atol=1e-5)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_grads_equal_autograd(name: str) -> None:
    model = family(name)
    block, attn, mlp, proj = PATHS[name]
    kept: Dict[Tuple[str, int], torch.Tensor] = {}
    handles = []
    for l in range(3):
        handles.append(model.get_submodule(block.format(l)).register_forward_hook(
            lambda m, a, o, k=("out", l): kept.__setitem__(k, _main(o))))
        handles.append(model.get_submodule(attn.format(l)).register_forward_hook(
            lambda m, a, o, k=("attn", l): kept.__setitem__(k, _main(o))))
        handles.append(model.get_submodule(proj.format(l)).register_forward_pre_hook(
            lambda m, a, k=("z", l): kept.__setitem__(k, a[0])))
        handles.append(model.get_submodule(block.format(l)).register_forward_pre_hook(
            lambda m, a, k=("in", l): kept.__setitem__(k, a[0])))

    def metric(o):
        return (o.logits[:, -1, 5] - o.logits[:, -1, 7]).sum()

    try:
        value = metric(model(input_ids=IDS))  # parameters require grad, so every activation is in the graph
    finally:
        for h in handles:
            h.remove()
    keys = sorted(kept)
    expected = dict(zip(keys, torch.autograd.grad(value, [kept[k] for k in keys])))
    flags = [p.requires_grad for p in model.parameters()]
    out, cache = pv.run_with_cache(model, IDS, components=["block_output", "attention_output", "block_input",
                                                           "head_attention_value_output"], grads=True, metric=metric)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert out.logits.grad_fn is None
    heads = model.config.num_attention_heads
    for l in range(3):
        assert torch.allclose(cache.grads["block_output", l], expected[("out", l)], atol=1e-5)
        assert torch.allclose(cache.grads["attention_output", l], expected[("attn", l)], atol=1e-5)
        assert torch.allclose(cache.grads["block_input", l], expected[("in", l)], atol=1e-5)
        z = expected[("z", l)]
        assert torch.allclose(cache.grads["head_attention_value_output", l], z.view(*z.shape[:2], heads, -1), atol=1e-5)
        assert torch.allclose(cache["block_output", l], kept[("out", l)].detach(), atol=1e-5)


def test_positions_heads_dtype_select_from_the_full_cache() -> None:
    model = gpt2_model()
    # Attention weights come back when asked (transformers 4.x; 5.x's eager attention always returns them).
    _, full = pv.run_with_cache(model, IDS, components=["block_output", "head_query_output", "attention_weight"],
                                output_attentions=True)
    _, part = pv.run_with_cache(model, IDS, components=["block_output", "head_query_output"], layers=[0, -1],
                                positions=[1, -1], heads=[0, 3], dtype=torch.float64)
    assert part.layers("block_output") == [0, 2] and part.positions.tolist() == [1, 8]
    assert torch.equal(part["block_output", 2], full["block_output", 2][:, [1, 8]].double())
    assert torch.equal(part["head_query_output", 0], full["head_query_output", 0][:, [1, 8]][:, :, [0, 3]].double())
    assert full["attention_weight", 1].shape == (2, 4, 9, 9)  # [batch, heads, query, key]
    _, sl = pv.run_with_cache(model, IDS, components=["transformer.h[1].mlp.output"], positions=slice(2, 5))
    assert list(sl) == [("transformer.h.1.mlp.output", None)]
    assert torch.allclose(sl["transformer.h.1.mlp.output"], full_mlp(model)[:, 2:5], atol=1e-6)
    assert torch.equal(sl["transformer.h[1].mlp.output"], sl["transformer.h.1.mlp.output"])


def full_mlp(model) -> torch.Tensor:
    seen = {}
    h = model.transformer.h[1].mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("m", o.detach()))
    try:
        with torch.no_grad():
            model(IDS)
    finally:
        h.remove()
    return seen["m"]


def test_bad_requests_fail_before_the_forward_and_leave_no_hooks() -> None:
    model = gpt2_model()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))  # a user's hook: must survive
    with pytest.raises(LocationError, match="out of range"):
        pv.run_with_cache(model, IDS, positions=[12])
    with pytest.raises(ComponentError, match="Did you mean"):
        pv.run_with_cache(model, IDS, components=["block_outptu"])
    with pytest.raises(ConfigError, match="out of range"):
        pv.run_with_cache(model, IDS, layers=[5])
    with pytest.raises(LocationError, match="4 heads"):
        pv.run_with_cache(model, IDS, components=["head_query_output"], heads=[4])
    with pytest.raises(ConfigError, match="metric"):
        pv.run_with_cache(model, IDS, grads=True)
    with pytest.raises(InputError, match="scalar"):
        pv.run_with_cache(model, IDS, grads=True, metric=lambda o: o.logits[:, -1, 0])
    with pytest.raises(InputError, match="does not depend"):
        pv.run_with_cache(model, IDS, grads=True, metric=lambda o: torch.tensor(1.0))
    assert calls == [1, 1]  # only the two metric runs reached the forward
    assert len(model._forward_pre_hooks) == 1
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.transformer.modules())
    _, cache = pv.run_with_cache(model, IDS, components=["block_output"])
    with pytest.raises(ComponentError, match="components=\\['mlp_output'"):
        cache["mlp_output", 0]
    with pytest.raises(ComponentError, match="decompose_resid needs 'block_input'"):
        cache.decompose_resid()
    with pytest.raises(ConfigError, match="pv_model.model"):
        pv.run_with_cache(pv.IntervenableModel({"layer": 0, "component": "block_output"}, model), IDS)


# -- generation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,use_cache", [("gpt2", True), ("gpt2", False), ("llama", True)])
def test_generation_cache_equals_a_teacher_forced_pass(name: str, use_cache: bool) -> None:
    model = family(name)
    prompt = IDS[:, :5]
    comps = ["block_output", "attention_residual", "head_attention_value_output", "block_input"]
    kwargs = dict(max_new_tokens=4, do_sample=False, use_cache=use_cache, pad_token_id=0)
    sequences, cache = pv.generate_with_cache(model, {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)},
                                              components=comps, **kwargs)
    with torch.no_grad():
        assert torch.equal(sequences, model.generate(prompt, attention_mask=torch.ones_like(prompt), **kwargs))
    assert sequences.shape == (2, 9) and cache.prompt_length == 5 and cache.step_lengths == [5, 1, 1, 1]
    _, forced = plain_hooks(model, name, sequences[:, :-1])
    heads = model.config.num_attention_heads
    for l in range(3):
        assert torch.allclose(cache["block_output", l], forced[("out", l)], atol=1e-5)
        assert torch.allclose(cache["block_input", l], forced[("in", l)], atol=1e-5)
        assert torch.allclose(cache["attention_residual", l], forced[("attn", l)], atol=1e-5)
        z = forced[("z", l)]
        assert torch.allclose(cache["z", l], z.view(*z.shape[:2], heads, -1), atol=1e-5)
    step = cache.step(2)  # generated token 1, at position 6
    assert step.positions.tolist() == [6]
    assert torch.allclose(step["block_output", 1], forced[("out", 1)][:, 6:7], atol=1e-5)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_generation_refuses_beams_and_attention_weights() -> None:
    model = gpt2_model()
    with pytest.raises(ConfigError, match="beams"):
        pv.generate_with_cache(model, IDS[:, :3], num_beams=2, max_new_tokens=2)
    with pytest.raises(ConfigError, match="attention weights"):
        pv.generate_with_cache(model, IDS[:, :3], components=["attention_weight"], max_new_tokens=2)


def test_an_error_inside_the_forward_leaves_no_hooks() -> None:
    """Attention weights under sdpa attention are None: the hook raises, and every hook is gone after."""
    model, _ = FAMILIES["llama_sdpa"]()
    with pytest.raises(pv.ShapeError, match="attn_implementation='eager'"):
        pv.run_with_cache(model, IDS, components=["block_output", "attention_weight"])
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
