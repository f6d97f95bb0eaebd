"""Attribution patching against exact patching (patching_sweep and plain hooks) and hand-written autograd."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from families import provided
import intervenable as pv
from intervenable.cli import main
from intervenable.demo import demo_facts, load_demo_model
from intervenable.errors import ConfigError
from intervenable.sweeps import SweepResult
from intervenable.sweeps.spec import spearman

CLEAN = torch.tensor([[5, 17, 42, 8, 23, 9]])
CORRUPT = torch.tensor([[5, 31, 40, 8, 23, 9]])
TARGET = 11


def gpt2(layers: int = 3, init: float = 0.02) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0,
                     initializer_range=init)
    return GPT2LMHeadModel(cfg).eval()


def llama(layers: int = 3, init: float = 0.02) -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=32, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0, initializer_range=init)
    return LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()


class Zero(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def linear_tail(family: str) -> nn.Module:
    """A model whose logits are linear in the last layer's value / attention / block outputs:
    the final norm is the identity and the last MLP outputs zeros (attention patterns stay fixed,
    since queries and keys are not patched)."""
    if family == "gpt2":
        model = gpt2(init=0.3)  # large weights: effects far above float tolerance
        model.transformer.ln_f = nn.Identity()
        model.transformer.h[-1].mlp = Zero()
    else:
        model = llama(init=0.3)
        model.model.norm = nn.Identity()
        model.model.layers[-1].mlp = Zero()
    return model


def value_module(model: nn.Module, layer: int) -> nn.Module:
    return model.transformer.h[layer].attn.c_attn if hasattr(model, "transformer") else model.model.layers[layer].self_attn.v_proj


def patch_value_by_hand(model: nn.Module, layer: int, pos: int) -> float:
    """Exact patching with a plain forward hook: the clean value vector at ``pos`` copied into the corrupted run."""
    module = value_module(model, layer)
    gpt = hasattr(model, "transformer")
    d = model.config.hidden_size
    store = {}
    h = module.register_forward_hook(lambda m, a, o: store.__setitem__("v", o.detach().clone()))
    with torch.no_grad():
        model(CLEAN)
    h.remove()

    def patch(m, a, o):
        o = o.clone()
        sl = slice(2 * d, 3 * d) if gpt else slice(None)
        o[0, pos, sl] = store["v"][0, pos, sl]
        return o
    h = module.register_forward_hook(patch)
    with torch.no_grad():
        logit = float(model(CORRUPT).logits[0, -1, TARGET])
    h.remove()
    return logit


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["atp", "ig", "eap-ig"])
def test_estimate_is_exact_where_the_model_is_linear(family: str, method: str) -> None:
    model = linear_tail(family)
    last = model.config.num_hidden_layers - 1
    # Linear in each site with the rest of the run fixed. atp and ig keep the rest of the run at the base
    # prompt's values (ig moves one site at a time), so both are exact at every site here. eap-ig moves the
    # whole run: the gradient at the block / attention outputs is constant, so it is exact there too, but at
    # the value vectors the gradient depends on the attention pattern, which its path moves.
    comps = ["block_output", "attention_output", "attention_value_output"]
    head_comps = ["head_attention_value_output"]
    if method != "eap-ig":
        comps, head_comps = comps + ["value_output"], head_comps + ["head_value_output"]
    kw = dict(components=comps, layers=[last], metric="logit")
    est = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, method=method, **kw)
    exact = pv.patching_sweep(model, CORRUPT, CLEAN, TARGET, progress=False, **kw)
    assert float((exact.values - exact.corrupted_score).abs().max()) > 0.1  # patches that matter
    torch.testing.assert_close(est.values, exact.values, atol=2e-5, rtol=1e-5)
    if method != "eap-ig":
        for p in range(CLEAN.shape[1]):
            assert float(est.values[3, 0, p]) == pytest.approx(patch_value_by_hand(model, last, p), abs=2e-5)
    for comp in head_comps:
        heads = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, method=method, components=[comp],
                                        heads="all", layers=[last], metric="logit")
        exact_heads = pv.patching_sweep(model, CORRUPT, CLEAN, TARGET, components=[comp], heads="all",
                                        layers=[last], metric="logit", progress=False)
        assert float((exact_heads.values - exact_heads.corrupted_score).abs().max()) > 0.1
        torch.testing.assert_close(heads.values, exact_heads.values, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ig_converges_to_exact_patching_where_the_tokens_differ(family: str) -> None:
    """ig moves a position whose token differs between the prompts on its own path, the rest of the run computed
    from the base prompt: by the completeness of integrated gradients its estimate is that site's exact
    patching effect, up to the quadrature error of the midpoint rule (measured: ~3e-5 at 64 steps)."""
    model = gpt2(init=0.3) if family == "gpt2" else llama(init=0.3)  # large weights: far from linear
    kw = dict(components=["block_output", "mlp_output", "attention_output"], metric="logprob")
    exact = pv.patching_sweep(model, CORRUPT, CLEAN, TARGET, progress=False, **kw)
    ig = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, method="ig", steps=64, **kw)
    atp = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, **kw)
    differ = (CLEAN != CORRUPT)[0]
    assert float((exact.values[..., differ] - atp.values[..., differ]).abs().max()) > 0.1  # atp is far off there
    torch.testing.assert_close(ig.values[..., differ], exact.values[..., differ], atol=2e-4, rtol=0)


# -- the embedded demo model ----------------------------------------------------------
DEMO, TOK = load_demo_model()


def demo_pair():
    facts = demo_facts()
    fact = facts[0]
    other = next(g for g in facts if g["relation"] == fact["relation"] and g["template_id"] == fact["template_id"]
                 and not set(g["subject"].split()) & set(fact["subject"].split()))
    return fact, other


def test_demo_model_ig_ranks_like_exact_and_verify_is_exact() -> None:
    fact, other = demo_pair()
    kw = dict(target=fact["target"], tokenizer=TOK, metric="logit_diff", foil=other["target"])
    for comp in ("block_output", "mlp_output", "attention_output"):
        exact = pv.patching_sweep(DEMO, other["prompt"], fact["prompt"], components=[comp], progress=False, **kw)
        ig = pv.attribution_patching(DEMO, other["prompt"], fact["prompt"], components=[comp], method="ig", **kw)
        eap = pv.attribution_patching(DEMO, other["prompt"], fact["prompt"], components=[comp], method="eap-ig", **kw)
        atp = pv.attribution_patching(DEMO, other["prompt"], fact["prompt"], components=[comp], verify=5, **kw)
        # Rank correlation over all 64 cells, most of which have almost no effect (measured, 8 steps:
        # ig 0.97 / 1.00 / 0.99 for block / mlp / attention outputs; eap-ig 0.96 / 0.66 / 0.76; atp 0.44 / 0.69 / 0.56).
        rho = spearman(ig.values, exact.values)
        assert rho >= 0.9
        assert rho > spearman(atp.values, exact.values) and rho > spearman(eap.values, exact.values)
        # verify=5: the five largest |estimate - base score| cells, rerun exactly, equal patching_sweep's values
        # (up to float rounding: the rows are batched differently).
        checked = ~torch.isnan(atp.tensors["exact"])
        top = torch.topk((atp.values - atp.corrupted_score).abs().flatten(), 5).indices
        assert sorted(torch.nonzero(checked.flatten()).flatten().tolist()) == sorted(top.tolist())
        torch.testing.assert_close(atp.tensors["exact"][checked], exact.values[checked], atol=1e-5, rtol=1e-6)
        assert atp.info["verified"] == 5 and "verified 5 cells" in atp.summary()
        # Same axes, labels and scores of the two endpoints as the exact sweep.
        for name in ("axes", "components", "layers", "positions", "heads", "tokens", "metric", "target"):
            assert getattr(atp, name) == getattr(exact, name)
        assert atp.clean_score == pytest.approx(exact.clean_score, abs=1e-4)
        assert atp.corrupted_score == pytest.approx(exact.corrupted_score, abs=1e-4)


# -- heads: against a hand-written gradient computation ------------------------------------
def head_modules(model: nn.Module, layer: int, comp: str):
    """(module, hook kind, slice of its last dim, heads) of a head component, written out by hand."""
    if hasattr(model, "transformer"):
        attn, d, H = model.transformer.h[layer].attn, 32, 4
        if comp == "head_attention_value_output":
            return attn.c_proj, "input", slice(0, d), H
        i = ["head_query_output", "head_key_output", "head_value_output"].index(comp)
        return attn.c_attn, "output", slice(i * d, (i + 1) * d), H
    attn = model.model.layers[layer].self_attn
    return {"head_query_output": (attn.q_proj, "output", slice(0, 32), 4),
            "head_key_output": (attn.k_proj, "output", slice(0, 16), 2),
            "head_value_output": (attn.v_proj, "output", slice(0, 16), 2),
            "head_attention_value_output": (attn.o_proj, "input", slice(0, 32), 4)}[comp]


def hand_attribution(model: nn.Module, layer: int, comp: str, alphas=None, moved=None, heads=None) -> torch.Tensor:
    """[heads, T]: (clean - corrupted) . d logprob / d activation, with plain hooks and autograd;
    with ``alphas``, the gradient averaged over token embeddings interpolated between the prompts, or with
    ``moved`` (a [rows, T] 0/1 mask), over the activation itself interpolated at the masked positions
    (row r moves by ``alphas[r]``; only ``heads`` if given), read where it moved."""
    module, kind, sl, H = head_modules(model, layer, comp)
    acts = {}

    def read(name):
        if kind == "input":
            return module.register_forward_pre_hook(lambda m, a: acts.__setitem__(name, a[0].detach()))
        return module.register_forward_hook(lambda m, a, o: acts.__setitem__(name, o.detach()))
    for name, ids in (("clean", CLEAN), ("corrupted", CORRUPT)):
        h = read(name)
        with torch.no_grad():
            model(ids)
        h.remove()
    probe = torch.zeros((1 if alphas is None else len(alphas),) + acts["clean"].shape[1:], requires_grad=True)
    shift = torch.zeros_like(probe)
    if moved is not None:  # only the component's slice moves, at the masked positions
        a = torch.tensor(alphas).view(-1, 1, 1) * moved.unsqueeze(-1)
        diff = (acts["clean"] - acts["corrupted"])[..., sl]
        if heads is not None:
            diff = (diff.unflatten(-1, (H, -1)) * torch.isin(torch.arange(H), torch.tensor(heads)).view(H, 1)).flatten(-2)
        shift[..., sl] = a * diff
    if kind == "input":
        h = module.register_forward_pre_hook(lambda m, a: (a[0] + shift + probe,))
    else:
        h = module.register_forward_hook(lambda m, a, o: o + shift + probe)
    handles = [h]
    ids = CORRUPT
    if moved is not None:
        ids = CORRUPT.expand(len(alphas), -1)
    elif alphas is not None:
        emb = model.get_input_embeddings()
        with torch.no_grad():
            eb, es = emb(CORRUPT), emb(CLEAN)
        a = torch.tensor(alphas).view(-1, 1, 1)
        handles.append(emb.register_forward_hook(lambda m, i, o: eb + a * (es - eb)))
        ids = CORRUPT.expand(len(alphas), -1)
    try:
        score = model(ids).logits[:, -1].log_softmax(-1)[:, TARGET].sum()
        (grad,) = torch.autograd.grad(score, [probe])
    finally:
        for handle in handles:
            handle.remove()
    if moved is not None:
        grad = (grad * moved.unsqueeze(-1)).sum(0) / moved.sum(0).clamp(min=1).unsqueeze(-1)
    else:
        grad = grad.sum(0) / (1 if alphas is None else len(alphas))
    diff = (acts["clean"] - acts["corrupted"])[0]
    T = diff.shape[0]
    return (diff[:, sl] * grad[:, sl]).reshape(T, H, -1).sum(-1).T


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_head_estimates_match_hand_written_gradients(family: str) -> None:
    model = gpt2() if family == "gpt2" else llama()
    comps = ["head_query_output", "head_key_output", "head_value_output", "head_attention_value_output"]
    for comp in comps:
        r = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, components=[comp], heads="all", layers=[0, 2],
                                    metric="logprob")
        ref = pv.patching_sweep(model, CORRUPT, CLEAN, TARGET, components=[comp], heads="all", layers=[0, 2],
                                metric="logprob", progress=False)
        H = head_modules(model, 0, comp)[3]
        assert r.values.shape == ref.values.shape == (1, 2, 6, H)
        assert (r.axes, r.heads, r.layers, r.positions, r.tokens) == (ref.axes, ref.heads, ref.layers, ref.positions, ref.tokens)
        assert r.heads == list(range(H))
        for li, layer in enumerate([0, 2]):
            expected = hand_attribution(model, layer, comp).T + r.corrupted_score  # [T, heads]
            torch.testing.assert_close(r.values[0, li], expected, atol=1e-5, rtol=1e-5)
    alphas = [0.125, 0.375, 0.625, 0.875]
    eap = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, components=["head_attention_value_output"],
                                  heads="all", layers=[1], metric="logprob", method="eap-ig", steps=4, batch_size=3)
    assert eap.info["backwards"] == 2  # 4 points, 3 per forward
    expected = hand_attribution(model, 1, "head_attention_value_output", alphas).T + eap.corrupted_score
    torch.testing.assert_close(eap.values[0, 0], expected, atol=1e-5, rtol=1e-5)
    # ig: the prompts differ at positions 1 and 2, each moved on its own; positions 0, 3, 4, 5 move together.
    groups = [[1], [2], [0, 3, 4, 5]]
    moved = torch.zeros(3 * 2, 6)
    for g, group in enumerate(groups):
        moved[2 * g:2 * g + 2, group] = 1
    for heads in ("all", [1, 3]):
        ig = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, components=["head_attention_value_output"],
                                     heads=heads, layers=[1], metric="logprob", method="ig", steps=2, batch_size=4)
        assert ig.info["backwards"] == 2  # 3 groups x 2 points, 4 per forward
        expected = hand_attribution(model, 1, "head_attention_value_output", [0.25, 0.75] * 3, moved,
                                    None if heads == "all" else heads).T + ig.corrupted_score
        cols = [0, 1, 2, 3] if heads == "all" else [1, 3]
        torch.testing.assert_close(ig.values[0, 0], expected[:, cols], atol=1e-5, rtol=1e-5)


# -- hygiene and errors -------------------------------------------------------------------
def test_model_is_left_as_found() -> None:
    model = gpt2()
    model.train()
    model.transformer.h[0].attn.c_attn.weight.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for method in ("atp", "ig", "eap-ig"):
        pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, components=["block_output", "mlp_output"],
                                method=method, verify=3)
    with pytest.raises(RuntimeError, match="metric failed"):
        pv.attribution_patching(model, CORRUPT, CLEAN, metric=lambda lg: (_ for _ in ()).throw(RuntimeError("metric failed")))
    assert model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_errors_name_the_fix() -> None:
    model = gpt2()
    with pytest.raises(ConfigError, match="Unknown method"):
        pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, method="exact")
    with pytest.raises(ConfigError, match="steps=... applies to method='ig'"):
        pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, steps=4)
    with pytest.raises(ConfigError, match="positive number of points"):
        pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, method="ig", steps=0)
    with pytest.raises(ConfigError, match="verify must be"):
        pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, verify=0)
    with pytest.raises(ConfigError, match="read-only"):
        pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, components=["attention_weight"])


def test_cli_patch_with_attribution_methods(tmp_path, capsys) -> None:
    fact, other = demo_pair()
    data = tmp_path / "atp.pt"
    code = main(["patch", "--clean", fact["prompt"], "--corrupted", other["prompt"], "--target", fact["target"],
                 "--components", "block_output", "mlp_output", "--method", "ig", "--steps", "4", "--verify", "3",
                 "--save", str(data), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "attribution_patching (ig)" in out and "verified 3 cells" in out
    saved = SweepResult.load(data)
    ref = pv.attribution_patching(DEMO, other["prompt"], fact["prompt"], fact["target"], tokenizer=TOK,
                                  components=["block_output", "mlp_output"], method="ig", steps=4, verify=3)
    torch.testing.assert_close(saved.values, ref.values)
    torch.testing.assert_close(saved.tensors["exact"], ref.tensors["exact"], equal_nan=True)
    assert main(["patch", "--clean", "a", "--corrupted", "b", "--verify", "2"]) == 2
    assert "--verify and --steps apply to --method atp, ig or eap-ig" in capsys.readouterr().err


@pytest.mark.parametrize("family", provided(["gpt_neox", "qwen3", "falcon_new"]))
def test_other_families_give_patching_sweeps_cells(family: str) -> None:
    """Families beyond GPT-2 / LLaMA (general path, q/k norms, fused qkv): same cells as patching_sweep,
    and the verified cells equal its exact values."""
    from test_archs import FAMILIES

    torch.manual_seed(0)
    model = FAMILIES[family]()[0].eval()
    kw = dict(components=["block_output", "mlp_output", "attention_output"], metric="logprob")
    exact = pv.patching_sweep(model, CORRUPT, CLEAN, TARGET, progress=False, **kw)
    for method in ("atp", "ig", "eap-ig"):
        r = pv.attribution_patching(model, CORRUPT, CLEAN, TARGET, method=method, verify=4, **kw)
        assert (r.axes, r.components, r.layers, r.positions, r.tokens) == (exact.axes, exact.components, exact.layers,
                                                                         exact.positions, exact.tokens)
        checked = ~r.tensors["exact"].isnan()
        assert int(checked.sum()) == 4
        torch.testing.assert_close(r.tensors["exact"][checked], exact.values[checked], atol=1e-5, rtol=1e-5)
        # The last layer's block output at the last position reaches the metric only through the final norm
        # and the head: restoring it gives back the clean score exactly, and the estimate moves towards it.
        last = float(r.values[0, -1, -1])
        assert (last - r.corrupted_score) * (exact.clean_score - exact.corrupted_score) > 0
