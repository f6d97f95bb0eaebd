"""The residual-stream descriptions (sites/residual.py) agree with each family's own forward.

For each family with a ``Residual`` description, a tiny random model runs once with plain forward
hooks on the modules the description resolves to. The model's own computation is the ground truth:
each layer's output must equal its input plus what the attention and the MLP add (sequential: the
MLP's norm reads input + attention; parallel: both norms read the input), and the read-out of the
last layer's output must equal the model's logits. A wrong writer, norm or parallel flag breaks
one of these identities.
"""
from __future__ import annotations

from typing import Any, Dict, List

import pytest
import torch

from families import provided
from intervenable.errors import ComponentError
from intervenable.sites.residual import final_norm, readout, residual_stream
from test_fast_families import CLEAN, FAMILIES

torch.set_num_threads(1)

DESCRIBED = ["gpt2", "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "olmo2",
             "gpt_oss", "phi", "phi3", "gpt_neox", "gpt_neox_serial", "gpt_neo", "gptj"]
PARALLEL = {"phi", "gpt_neox", "gptj"}


def _main(o: Any) -> torch.Tensor:
    return o[0] if isinstance(o, (tuple, list)) else o


@pytest.mark.parametrize("family", provided(DESCRIBED))
def test_layers_sum_their_writers_and_readout_gives_logits(family: str) -> None:
    model, _ = FAMILIES[family]()
    stream = residual_stream(model)
    assert stream.parallel == (family in PARALLEL)
    seen: Dict[Any, torch.Tensor] = {}
    handles: List[Any] = []

    def grab(key, module, kind):
        if kind == "input":
            # the input positionally or as hidden_states= (transformers 4.45's GPT-J calls its blocks so)
            handles.append(module.register_forward_pre_hook(
                lambda m, a, kw, k=key: seen.__setitem__(k, (a[0] if a else kw["hidden_states"]).detach())
                if a or "hidden_states" in kw else None, with_kwargs=True))
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, k=key: seen.__setitem__(k, _main(o).detach())))

    for lr in stream.layers:
        l = lr.layer
        grab(("x", l), lr.stream.module, lr.stream.hook)
        grab(("out", l), lr.output.module, lr.output.hook)
        grab(("A", l), lr.attention.module, lr.attention.hook)
        grab(("M", l), lr.mlp.module, lr.mlp.hook)
        for name, norm in (("an", lr.attention_norm), ("mn", lr.mlp_norm)):
            if norm is not None:
                grab((name, l), norm, "input")
    try:
        with torch.no_grad():
            logits = model(input_ids=CLEAN).logits
    finally:
        for h in handles:
            h.remove()
    for lr in stream.layers:
        l = lr.layer
        x, a, m = seen[("x", l)], seen[("A", l)], seen[("M", l)]
        assert torch.allclose(seen[("out", l)], x + a + m, atol=1e-5), (family, l)
        if ("an", l) in seen:
            assert torch.allclose(seen[("an", l)], x, atol=1e-6), (family, l)
        if ("mn", l) in seen:
            expect = x if stream.parallel else x + a
            assert torch.allclose(seen[("mn", l)], expect, atol=1e-5), (family, l)
    last = seen[("out", len(stream.layers) - 1)]
    with torch.no_grad():
        assert torch.allclose(stream.readout.logits(last), logits, atol=1e-5)


@pytest.mark.parametrize("family", provided(DESCRIBED))
def test_final_norm_arithmetic_is_the_module(family: str) -> None:
    """The described final norm (centring, epsilon, weight offset, bias) recomputes the module's output,
    and its frozen scale applied to parts of a sum gives the normed sum minus the bias."""
    model, _ = FAMILIES[family]()
    module = readout(model).final[0]
    with torch.no_grad():  # random, non-trivial parameters so that weight, offset and bias all matter
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    norm = final_norm(model)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 5, model.config.hidden_size if hasattr(model.config, "hidden_size") else model.config.n_embd,
                    generator=g) * 3 + 0.5
    parts = [torch.randn(x.shape, generator=g) for _ in range(2)]
    parts.append(x - parts[0] - parts[1])
    with torch.no_grad():
        assert torch.allclose(norm(x), module(x), atol=1e-5), family
        scale = norm.scale(x)
        frozen = sum(norm.frozen(p, scale) for p in parts)
        bias = norm.bias if norm.bias is not None else 0.0
        assert torch.allclose(frozen + bias, module(x), atol=1e-5), family


def test_heads_mix_through_the_output_projection() -> None:
    """The output projection applied to the head site's (concatenated) value is the attention output."""
    model, _ = FAMILIES["llama"]()
    lr = residual_stream(model).layers[1]
    seen: Dict[str, torch.Tensor] = {}
    h1 = lr.heads.module.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].detach()))
    h2 = lr.attention.module.register_forward_hook(lambda m, a, o: seen.__setitem__("A", _main(o).detach()))
    try:
        with torch.no_grad():
            model(input_ids=CLEAN)
    finally:
        h1.remove()
        h2.remove()
    assert lr.heads.n_heads == model.config.num_attention_heads
    with torch.no_grad():
        assert torch.allclose(lr.out_proj(seen["z"]), seen["A"], atol=1e-6)


@pytest.mark.parametrize("family", ["opt", "falcon_new", "bert"])
def test_undescribed_families_say_what_to_add(family: str) -> None:
    model, _ = FAMILIES[family]()
    with pytest.raises(ComponentError, match="residual=Residual"):
        residual_stream(model)


def test_a_model_without_a_head_has_no_readout() -> None:
    import transformers as T

    model = T.GPT2Model(T.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20, n_positions=8))
    with pytest.raises(ComponentError, match="no output head"):
        readout(model)


@pytest.mark.parametrize("family", provided(DESCRIBED))
def test_grouped_query_and_post_norm_descriptions(family: str) -> None:
    """``kv_groups`` names the attention's attribute holding query heads per key/value head (what the
    model's own attention reads); ``attention_post`` marks the families that norm sublayer outputs."""
    model, _ = FAMILIES[family]()
    stream = residual_stream(model)
    assert any(lr.attention_post is not None for lr in stream.layers) == (family in ("gemma2", "olmo2"))
    config = model.config
    heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_head
    kv = getattr(config, "num_key_value_heads", None) or heads
    for lr in stream.layers:
        if lr.kv_groups is None:
            assert family in ("gpt2", "phi3", "gpt_neox", "gpt_neox_serial", "gpt_neo", "gptj"), family
            continue
        owner, name = lr.kv_groups
        assert getattr(owner, name) == heads // kv
        assert any(m is lr.out_proj for m in owner.modules())  # the attention module of this layer


@pytest.mark.parametrize("family", provided(["gemma2", "olmo2"]))
def test_sublayer_norm_arithmetic_is_the_module_and_heads_share_the_attention_write(family: str) -> None:
    """The described post-sublayer norms recompute their modules; each head's output-projection term
    through the attention norm's frozen scale (of the whole attention output) sums to what the attention
    writes; the MLP's own input is the pre-MLP norm's output."""
    model, _ = FAMILIES[family]()
    stream = residual_stream(model)
    lr = stream.layers[1]
    with torch.no_grad():
        for module in (lr.attention.module, lr.mlp.module):
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
    stream = residual_stream(model)  # re-read the parameters
    lr = stream.layers[1]
    seen: Dict[str, torch.Tensor] = {}
    hooks = [lr.heads.module.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0].detach())),
             lr.attention.module.register_forward_hook(lambda m, a, o: seen.__setitem__("A", _main(o).detach())),
             lr.attention.module.register_forward_pre_hook(lambda m, a: seen.__setitem__("raw", a[0].detach())),
             lr.mlp.module.register_forward_hook(lambda m, a, o: seen.__setitem__("M", _main(o).detach())),
             lr.mlp.module.register_forward_pre_hook(lambda m, a: seen.__setitem__("mraw", a[0].detach())),
             lr.mlp_input.module.register_forward_pre_hook(lambda m, a: seen.__setitem__("min", a[0].detach()))]
    if lr.mlp_norm is not None:
        hooks.append(lr.mlp_norm.register_forward_hook(lambda m, a, o: seen.__setitem__("nout", o.detach())))
    try:
        with torch.no_grad():
            model(input_ids=CLEAN)
    finally:
        for h in hooks:
            h.remove()
    post = lr.attention_post
    assert torch.allclose(post(seen["raw"]), seen["A"], atol=1e-5)
    assert torch.allclose(lr.mlp_post(seen["mraw"]), seen["M"], atol=1e-5)
    if lr.mlp_norm is not None:
        assert torch.equal(seen["min"], seen["nout"])
    H = lr.heads.n_heads
    W = lr.out_proj.weight  # Linear [out, in], no bias
    z = seen["z"].view(*seen["z"].shape[:-1], H, -1)
    terms = [z[..., h, :] @ W[:, h * z.shape[-1]:(h + 1) * z.shape[-1]].T for h in range(H)]
    scale = post.scale(seen["raw"])
    assert torch.allclose(sum(post.frozen(t, scale) for t in terms), seen["A"], atol=1e-5)
