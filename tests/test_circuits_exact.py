"""Exact edge scores equal hand-written edge patches; EAP equals the hand-written first-order estimate.

Ground truth (tests/circuit_hand.py): plain torch hooks on the transformers modules. For edge
``u->v`` the receiver ``v``'s input gets ``u_source - u_base`` (node outputs read by hand) and
nothing else changes; the score is the metric's change. EAP's estimate is ``(u_source - u_base) .
dmetric/d(input of v)`` with the gradient taken by autograd through the same hand-written patch
(``delta`` a zero leaf). Every edge of 2-layer GPT-2, LLaMA (grouped-query attention: 4 query heads,
2 key/value heads, so a key edge changes one query head's keys only), Gemma2 (the same, with its
post-sublayer norms) and GPT-NeoX (parallel residual) models is checked, q / k / v receivers separately (``qkv=True``) and together.
"""
from __future__ import annotations

import pytest
import torch
import transformers as T

from circuit_hand import Gemma2Hand, Gpt2Hand, LlamaHand
from intervenable.circuits import edge_attribution_patching
from intervenable.hooks import HookSet

torch.set_num_threads(1)
BASE = torch.tensor([[5, 17, 42, 8, 23, 9]])
SOURCE = torch.tensor([[5, 30, 40, 8, 11, 9]])
TARGET, FOIL = 3, 4


def _gpt2():
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=50, initializer_range=0.2,
                       bos_token_id=1, eos_token_id=2)
    return T.GPT2LMHeadModel(cfg).eval(), Gpt2Hand


def _llama(kv: int = 2):
    torch.manual_seed(0)
    cfg = T.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=kv, num_hidden_layers=2,
                        intermediate_size=64, vocab_size=50, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2)
    cfg._attn_implementation = "eager"
    return T.LlamaForCausalLM(cfg).eval(), LlamaHand


def _gemma2():
    torch.manual_seed(0)
    cfg = T.Gemma2Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_hidden_layers=2,
                         intermediate_size=64, vocab_size=50, initializer_range=0.2, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2, query_pre_attn_scalar=16, attn_logit_softcapping=5.0)
    cfg._attn_implementation = "eager"
    model = T.Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norm weights, so that the post-sublayer norms' scales matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.5)
    return model, Gemma2Hand


def _metric(logits: torch.Tensor) -> float:
    return float(logits[0, TARGET] - logits[0, FOIL])


def _hand_exact(model, hand, edges):
    base_out, src_out = hand.outputs(BASE), hand.outputs(SOURCE)
    with torch.no_grad():
        base = _metric(model(input_ids=BASE).logits[:, -1])
        out = {}
        for name in edges:
            u, _, v = name.partition("->")
            delta = (src_out[u] - base_out[u]).unsqueeze(0)
            out[name] = _metric(hand.patched(BASE, v, delta)) - base
    return out


@pytest.mark.parametrize("build", [_gpt2, _llama, _gemma2], ids=["gpt2", "llama_gqa", "gemma2_gqa"])
@pytest.mark.parametrize("qkv", [True, False])
def test_exact_edge_scores_equal_hand_written_patches(build, qkv):
    model, Hand = build()
    circuit = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="exact", qkv=qkv)
    scores = circuit.scores
    into = {"mlp": 0, "logits": 0, "q": 0, "k": 0, "v": 0, "head": 0}
    for name in scores:
        child = name.split("->")[1]
        key = "logits" if child == "logits" else "mlp" if child.startswith("m") else child[-2] if "<" in child else "head"
        into[key] += 1
    assert into["logits"] == 1 + 2 * 5 and into["mlp"] == (1 + 4) + (1 + 5 + 4)  # every node before each reader
    hand = _hand_exact(model, Hand(model), scores)
    got = torch.tensor([scores[n] for n in hand])
    want = torch.tensor(list(hand.values()))
    assert want.abs().max() > 1e-2  # the edges do something
    # float32 recomputation of the patched runs on different shapes: ~1e-6 relative to the logits' size
    assert torch.allclose(got, want, atol=2e-5, rtol=1e-4), (got - want).abs().max()
    assert not any(len(h) for h in [model._forward_hooks, model._forward_pre_hooks])


@pytest.mark.parametrize("build", [_llama, _gemma2], ids=["llama_gqa", "gemma2_gqa"])
def test_hand_written_heads_match_the_model(build):
    """The hand-written attention of one query head (rotary, causal softmax; Gemma2's scaling and
    soft-capping) is the model's own."""
    model, Hand = build()
    hand = Hand(model)
    check = []
    with torch.no_grad():
        hand.patched(BASE, "a1.h3<k>", torch.zeros(1, BASE.shape[1], 32), check=check)
    mine, theirs = check[0]
    assert torch.allclose(mine, theirs, atol=1e-6)


def test_parallel_residual_mlp_reads_only_earlier_layers():
    """GPT-NeoX (parallel residual): an MLP reads no head of its own layer; exact == a plain hook patch."""
    torch.manual_seed(0)
    cfg = T.GPTNeoXConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64,
                          vocab_size=50, initializer_range=0.2, use_parallel_residual=True)
    model = T.GPTNeoXForCausalLM(cfg).eval()
    circuit = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="exact")
    scores = circuit.scores
    assert "a1.h0->m1" not in scores and "a0.h0->m1" in scores and "m0->m1" in scores
    # m0 -> m1 by hand: the MLP of layer 1 reads post_attention_layernorm(x + delta) where x is layer 1's input
    seen = {}
    lay = model.gpt_neox.layers
    hooks = [lay[0].mlp.register_forward_hook(lambda m, a, o: seen.__setitem__("m0", o.detach()))]
    with torch.no_grad():
        model(input_ids=SOURCE)
        src = seen["m0"]
        model(input_ids=BASE)
        base_m0 = seen["m0"]
        hooks[0].remove()
        base = _metric(model(input_ids=BASE).logits[:, -1])
        ln = lay[1].post_attention_layernorm
        store = {}
        h1 = ln.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0]))
        h2 = lay[1].mlp.register_forward_pre_hook(lambda m, a: (torch.nn.functional.layer_norm(
            store["x"] + src - base_m0, (32,), ln.weight, ln.bias, ln.eps),))
        try:
            patched = _metric(model(input_ids=BASE).logits[:, -1])
        finally:
            h1.remove()
            h2.remove()
    assert abs(scores["m0->m1"] - (patched - base)) < 2e-5


@pytest.mark.parametrize("build", [_gpt2, lambda: _llama(kv=4), _llama, _gemma2],
                         ids=["gpt2", "llama", "llama_gqa", "gemma2_gqa"])
def test_eap_equals_the_first_order_estimate(build):
    model, Hand = build()
    hand = Hand(model)
    circuit = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="eap", qkv=True)
    scores = circuit.scores
    base_out, src_out = hand.outputs(BASE), hand.outputs(SOURCE)
    receivers = sorted({n.split("->")[1] for n in scores})
    flags = [(p, p.requires_grad) for p in model.parameters()]
    grads = {}
    for v in receivers:
        delta = torch.zeros(1, BASE.shape[1], model.config.hidden_size, requires_grad=True)
        grads[v] = torch.autograd.grad(_metric_t(hand.patched(BASE, v, delta)), delta)[0][0]
    worst = 0.0
    for name, score in scores.items():
        u, _, v = name.partition("->")
        want = float(((src_out[u] - base_out[u]) * grads[v]).sum())
        worst = max(worst, abs(score - want) / (1e-3 + abs(want)))
    assert worst < 1e-3
    assert all(p.requires_grad == f and p.grad is None for p, f in flags)


def _metric_t(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, TARGET] - logits[0, FOIL]


def test_edge_scores_leave_no_hooks_and_restore_kv_groups():
    model, _ = _llama()
    before = [m.self_attn.num_key_value_groups for m in model.model.layers]
    edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="eap", qkv=True)
    assert [m.self_attn.num_key_value_groups for m in model.model.layers] == before
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert len(HookSet()) == 0
