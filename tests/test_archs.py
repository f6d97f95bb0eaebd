"""Every registered transformer family: patch and collect through abstract components.

For each family a tiny random model (2 layers, eager attention) is built. For
every component of its table, the library's patch (source -> base, chosen
positions / heads, batch of 2 with different units per row) must equal the
same patch done by hand with plain forward hooks in this file, and collect
must return what the hooks see. The hand-written reference finds the last-dim
indices of a component by index arithmetic (slice, per-group slice, head)
and never uses the library's Site / units code. Widths are checked against
the real tensors, and block components against ``output_hidden_states``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import pytest
import torch
import transformers as T

import intervenable as pv
from families import expected_missing, missing, provided
from intervenable.sites.registry import find_architecture
from intervenable.sites.resolve import component_module

torch.set_num_threads(1)  # tiny models: threads only add contention on a busy machine
SMALL = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=64)


def _ids(seed: int, n: int = 6, vocab: int = 50) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (2, n), generator=g)


def _decoder(cfg_cls: str, model_cls: str, **extra: Any) -> Callable[[], Tuple[Any, Dict, Dict]]:
    def build():
        kw = dict(SMALL, vocab_size=50, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        kw.update(extra)
        config = getattr(T, cfg_cls)(**kw)
        config._attn_implementation = "eager"
        model = getattr(T, model_cls)(config)
        return model, {"input_ids": _ids(1)}, {"input_ids": _ids(2)}
    return build


def _blip(cls: str):
    def build():
        config = T.BlipConfig(
            text_config=dict(vocab_size=50, initializer_range=0.2, **SMALL),
            vision_config=dict(image_size=32, patch_size=8, initializer_range=0.2, **SMALL),
            projection_dim=16, image_text_hidden_size=32,
        )
        config._attn_implementation = "eager"
        model = getattr(T, cls)(config)
        g = torch.Generator().manual_seed(0)
        def inputs(seed):
            d = {"input_ids": _ids(seed), "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
            if cls == "BlipForQuestionAnswering":
                d["labels"] = _ids(seed + 10, 5)
            return d
        return model, inputs(1), inputs(2)
    return build


def _llava():
    config = T.LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=64, num_key_value_heads=2, pad_token_id=0, **SMALL),
        vision_config=dict(model_type="clip_vision_model", image_size=32, patch_size=8, projection_dim=16, **SMALL),
        image_token_index=60,
        image_seq_length=16,  # the tower's 16 patches (transformers 4.45 otherwise expands the image tokens itself)
        vision_feature_layer=-1,  # features from the last vision layer (read via output_hidden_states)
    )
    config._attn_implementation = "eager"
    model = T.LlavaForConditionalGeneration(config)
    g = torch.Generator().manual_seed(0)
    def inputs(seed):
        ids = _ids(seed, 6)
        ids = torch.cat([ids[:, :3], torch.full((2, 16), 60), ids[:, 3:]], dim=1)
        return {"input_ids": ids, "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}
    return model, inputs(1), inputs(2)


def _whisper():
    config = T.WhisperConfig(
        vocab_size=60, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, num_mel_bins=8,
        max_source_positions=16, max_target_positions=16, pad_token_id=0, decoder_start_token_id=1,
        eos_token_id=2, bos_token_id=1,
    )
    config._attn_implementation = "eager"
    model = T.WhisperForConditionalGeneration(config)
    g = torch.Generator().manual_seed(0)
    def inputs(seed):
        return {"input_features": torch.randn(2, 8, 32, generator=g), "decoder_input_ids": _ids(seed, 5, 60)}
    return model, inputs(1), inputs(2)


def _w2v2bert():
    config = T.Wav2Vec2BertConfig(feature_projection_input_dim=16, conv_depthwise_kernel_size=3, **SMALL)
    config._attn_implementation = "eager"
    model = T.Wav2Vec2BertModel(config)
    g = torch.Generator().manual_seed(0)
    return model, {"input_features": torch.randn(2, 7, 16, generator=g)}, {"input_features": torch.randn(2, 7, 16, generator=g)}


def _mamba():
    config = T.MambaConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, state_size=4, vocab_size=50)
    return T.MambaForCausalLM(config), {"input_ids": _ids(1)}, {"input_ids": _ids(2)}


FAMILIES: Dict[str, Callable[[], Tuple[Any, Dict, Dict]]] = {
    "llama": _decoder("LlamaConfig", "LlamaForCausalLM", num_key_value_heads=2),
    "mistral": _decoder("MistralConfig", "MistralForCausalLM", num_key_value_heads=1),
    "mixtral": _decoder("MixtralConfig", "MixtralForCausalLM", num_key_value_heads=2, num_local_experts=4),
    "qwen2": _decoder("Qwen2Config", "Qwen2ForCausalLM", num_key_value_heads=2),
    "qwen3": _decoder("Qwen3Config", "Qwen3ForCausalLM", num_key_value_heads=2, head_dim=12),
    "gemma": _decoder("GemmaConfig", "GemmaForCausalLM", num_key_value_heads=1, head_dim=12),
    "gemma2": _decoder("Gemma2Config", "Gemma2ForCausalLM", num_key_value_heads=2, head_dim=12),
    "olmo": _decoder("OlmoConfig", "OlmoForCausalLM", num_key_value_heads=2),
    "olmo2": _decoder("Olmo2Config", "Olmo2ForCausalLM", num_key_value_heads=2),
    "gpt_oss": _decoder("GptOssConfig", "GptOssForCausalLM", num_key_value_heads=2, head_dim=12, num_local_experts=4),
    "gpt_neox": _decoder("GPTNeoXConfig", "GPTNeoXForCausalLM"),
    "gpt_neo": _decoder("GPTNeoConfig", "GPTNeoForCausalLM", num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]]),
    "gptj": _decoder("GPTJConfig", "GPTJForCausalLM", n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_inner=64),
    "opt": _decoder("OPTConfig", "OPTForCausalLM", ffn_dim=48, word_embed_proj_dim=32),
    "phi": _decoder("PhiConfig", "PhiForCausalLM", num_key_value_heads=2),
    "phi3": _decoder("Phi3Config", "Phi3ForCausalLM", num_key_value_heads=2),
    "falcon_mqa": _decoder("FalconConfig", "FalconForCausalLM", multi_query=True),
    "falcon_mha": _decoder("FalconConfig", "FalconForCausalLM", multi_query=False),
    "falcon_new": _decoder("FalconConfig", "FalconForCausalLM", new_decoder_architecture=True, num_kv_heads=2),
    "bert": _decoder("BertConfig", "BertForMaskedLM"),
    "roberta": _decoder("RobertaConfig", "RobertaForMaskedLM"),
    "esm": _decoder("EsmConfig", "EsmForMaskedLM", mask_token_id=2),
    "blip_qa": _blip("BlipForQuestionAnswering"),
    "blip_itm": _blip("BlipForImageTextRetrieval"),
    "llava": _llava,
    "whisper": _whisper,
    "wav2vec2_bert": _w2v2bert,
    "mamba": _mamba,
}
# Layout facts checked against the real tensors (GQA: keys/values use the KV heads).
KV_HEADS = {"llama": 2, "mistral": 1, "qwen3": 2, "gemma": 1, "phi3": 2, "falcon_mqa": 1, "falcon_new": 2, "gpt_oss": 2}
NEEDS_SPLIT = {"mlp_output", "mlp_input", "mlp_activation"}  # Mixtral: per-expert, tested below
# Token-flattened [batch * positions, width] activations: every unit, no positions.
FLAT = {"opt": {"mlp_output", "mlp_input", "mlp_activation"}, "mixtral": {"mlp_gate_output"}, "gpt_oss": {"mlp_gate_output"}}


# -- plain-torch reference -----------------------------------------------------
def _tensor_of(value: Any, index: int) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    return value[index]


def _input_of(args: tuple, kwargs: dict, index: int) -> Tuple[str, Any]:
    if len(args) > index:
        return "arg", index
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return "kw", "hidden_states"
    return "kw", next(k for k, v in kwargs.items() if isinstance(v, torch.Tensor))


def _indices(comp: Any, config: Any, width: int, head: Any = None) -> List[int]:
    """Last-dim indices of a component (and head), by arithmetic on the table's numbers."""
    a, b = comp.slice(config) if comp.slice is not None else (0, width)
    groups = comp.groups(config) if comp.groups is not None else 1
    if groups > 1:
        chunk = width // groups
        idx = [g * chunk + j for g in range(groups) for j in range(a, b)]
    else:
        idx = list(range(a, b))
    if head is not None:
        hd = len(idx) // comp.heads(config)
        idx = idx[head * hd:(head + 1) * hd]
    return idx


def _hook(model, path: str, comp: Any, fn: Callable[[torch.Tensor], Any]):
    """Register a plain hook at ``path`` calling ``fn(tensor)``; a returned tensor replaces it."""
    module = model.get_submodule(path)
    if comp.hook == "input":
        def pre(mod, args, kwargs):
            kind, where = _input_of(args, kwargs, comp.output_index)
            new = fn(args[where] if kind == "arg" else kwargs[where])
            if new is None:
                return None
            if kind == "arg":
                args = tuple(new if i == where else x for i, x in enumerate(args))
            else:
                kwargs = dict(kwargs, **{where: new})
            return args, kwargs
        return module.register_forward_pre_hook(pre, with_kwargs=True)

    def post(mod, args, output):
        new = fn(_tensor_of(output, comp.output_index))
        if new is None:
            return None
        if isinstance(output, torch.Tensor):
            return new
        items = list(output)
        items[comp.output_index] = new
        return type(output)(items) if isinstance(output, tuple) else items
    return module.register_forward_hook(post)


def _run(model, inputs, hooks=()):
    handles = [_hook(model, *h) for h in hooks]
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        for h in handles:
            h.remove()


def _main(output: Any) -> torch.Tensor:
    for name in ("logits", "itm_score", "decoder_logits", "loss", "last_hidden_state"):
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            return value
    return output[0]


def _full(model, inputs, path, comp) -> torch.Tensor:
    seen: List[torch.Tensor] = []
    _run(model, inputs, [(path, comp, lambda t: seen.append(t.detach().clone()))])
    return seen[0]


SRC_POS, BASE_POS, HEADS = [1, 3], [2, 0], [1, 0]


def _locations(is_head: bool) -> Dict:
    if is_head:
        src = [[[[h] for h in HEADS], [[p] for p in SRC_POS]]]
        base = [[[[h] for h in HEADS], [[p] for p in BASE_POS]]]
    else:
        src, base = [[[p] for p in SRC_POS]], [[[p] for p in BASE_POS]]
    return {"sources->base": (src, base)}


def _check_flat(model, base, arch, name, layer=0):
    """Collect everything, and (if writable) zero everything, against hooks."""
    comp = arch.components[name]
    path = component_module(model, arch, comp, layer)[0]  # the table's path, in this model's layout
    full = _full(model, base, path, comp)
    rep = {"layer": layer, "component": name, "intervention": pv.CollectIntervention}
    (_, collected), _ = pv.IntervenableModel(rep, model)(base, unit_locations=None)
    assert torch.allclose(collected[0], full), name
    if comp.writable:
        expected = _main(_run(model, base, [(path, comp, torch.zeros_like)]))
        rep = {"layer": layer, "component": name, "intervention": pv.ZeroIntervention}
        _, out = pv.IntervenableModel(rep, model)(base, unit_locations=None)
        assert torch.allclose(_main(out), expected, atol=1e-5), name


def _check_component(model, base, source, arch, name, layer=0):
    global HEADS
    comp = arch.components[name]
    config = model.config
    path = component_module(model, arch, comp, layer, moe_key=0)[0]  # the table's path, in this model's layout
    is_head = comp.heads is not None
    HEADS = [1, 0] if not is_head or comp.heads(config) > 1 else [0, 0]
    bhsd = comp.head_layout == "bhsd"
    unit = "h.pos" if is_head else "pos"
    if name.endswith("attention_weight"):
        # transformers 4.x's OPT and CLIP attentions return their weights only when asked (5.x always does):
        # ask through the configs, which also reach LLaVA's vision tower (transformers 4.45 gives the tower a copy
        # of vision_config: the submodules' own configs are asked too).
        held = [getattr(m, "config", None) for m in model.modules()]
        for cfg in (config, getattr(config, "text_config", None), getattr(config, "vision_config", None), *held):
            if cfg is not None:
                cfg.output_attentions = True
    src_full = _full(model, source, path, comp)
    base_full = _full(model, base, path, comp)

    # Collect: the library returns exactly the selected units of the hooked tensor.
    collect = pv.IntervenableModel({"layer": layer, "component": name, "unit": unit,
                                    "intervention": pv.CollectIntervention}, model)
    base_units = _locations(is_head)["sources->base"][1]
    (_, collected), _ = collect(base, unit_locations={"base": base_units})
    got = collected[0]
    for r in range(2):
        if bhsd:  # attention weights [b, H, q, k]: query position BASE_POS[r] of head HEADS[r]
            want = base_full[r, HEADS[r], BASE_POS[r]]
            assert torch.allclose(got[r, 0, 0], want, atol=1e-6), name
        else:
            idx = _indices(comp, config, base_full.shape[-1], HEADS[r] if is_head else None)
            want = base_full[r, BASE_POS[r], idx]
            assert torch.allclose(got[r].reshape(-1), want, atol=1e-6), name
    if not bhsd:  # the table's width is the real width of the component
        site = collect.sites[collect.sorted_keys[0]]
        assert site.width == len(_indices(comp, config, base_full.shape[-1])), name
    if not comp.writable:
        return

    # Patch: source units -> base units, against the same patch by hand.
    def patch(t):
        t = t.clone()
        for r in range(2):
            idx = _indices(comp, config, t.shape[-1], HEADS[r] if is_head else None)
            t[r, BASE_POS[r], idx] = src_full[r, SRC_POS[r], idx].to(t.dtype)
        return t

    expected = _main(_run(model, base, [(path, comp, patch)]))
    unpatched = _main(_run(model, base))
    pv_model = pv.IntervenableModel({"layer": layer, "component": name, "unit": unit,
                                     "intervention": pv.VanillaIntervention}, model)
    _, patched = pv_model(base, [source], unit_locations=_locations(is_head))
    assert torch.allclose(_main(patched), expected, atol=1e-5), name
    assert not torch.equal(expected, unpatched), f"{name}: the patch changed nothing"


def test_families_missing_here_are_exactly_those_declared_for_this_release() -> None:
    """Family lists across the suite drop what this transformers lacks (tests/families.py): only the
    families declared to arrive in a later release may be missing, and those must be."""
    assert missing() == expected_missing()
    assert set(FAMILIES) >= set(expected_missing())  # the dropped families are ones this file lists


@pytest.mark.parametrize("family", provided(sorted(FAMILIES)))
def test_family(family: str) -> None:
    torch.manual_seed(0)
    model, base, source = FAMILIES[family]()
    model.eval()
    arch = find_architecture(model)
    assert arch is not None, family
    names = [n for n in arch.components if not (family == "mixtral" and n in NEEDS_SPLIT)]
    if family == "blip_itm":  # the retrieval model has no answer decoder: decoder_* names say so
        with pytest.raises(pv.ComponentError, match="does not have"):
            pv.IntervenableModel({"layer": 0, "component": "decoder_block_output"}, model)
        names = [n for n in names if not n.startswith("decoder_")]
    for name in names:
        if name in FLAT.get(family, ()):
            _check_flat(model, base, arch, name)
        else:
            _check_component(model, base, source, arch, name)
    if family in KV_HEADS:
        site = pv.IntervenableModel({"layer": 0, "component": "head_key_output", "unit": "h"}, model).sites
        assert next(iter(site.values())).n_heads == KV_HEADS[family]
    if "block_output" in arch.components and "input_ids" in base and family not in ("llava", "blip_qa", "blip_itm", "mamba"):
        with torch.no_grad():
            hs = model(**base, output_hidden_states=True).hidden_states
        for comp, index in (("block_input", 0), ("block_output", 1)):
            rep = {"layer": 0, "component": comp, "intervention": pv.CollectIntervention}
            (_, collected), _ = pv.IntervenableModel(rep, model)(base, unit_locations=None)
            assert torch.allclose(collected[0], hs[index], atol=1e-5), (family, comp)


def test_mixtral_experts() -> None:
    """moe_key selects one expert after split_experts; zeroing it equals zeroing its weights."""
    from intervenable.sites.archs.mixtral import split_experts

    torch.manual_seed(0)
    model, base, _ = FAMILIES["mixtral"]()
    model.eval()
    with torch.no_grad():
        before = model(**base).logits
    layer = model.model.layers[0]
    fused = hasattr(layer, "mlp")  # transformers >= 5: experts fused in 3-D weights; 4.x: block_sparse_moe
    if fused:
        with pytest.raises(pv.ComponentError, match="split_experts"):
            pv.IntervenableModel({"layer": 0, "component": "mlp_output", "moe_key": 1}, model)
    keys = set(model.state_dict())
    split_experts(model)  # a no-op on the 4.x layout, whose experts are modules already
    assert set(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.allclose(model(**base).logits, before, atol=1e-6)  # same function after the split
    moe = layer.mlp if fused else layer.block_sparse_moe
    experts = moe.experts
    if fused:
        w_gate, w_up = experts.gate_up_proj[1].chunk(2, 0)
        w_down = experts.down_proj[1]
    else:
        w_gate, w_up, w_down = experts[1].w1.weight, experts[1].w3.weight, experts[1].w2.weight
    # Collect expert 1's output: by hand, route with the router and apply that expert's weights.
    routed: List[torch.Tensor] = []
    h = moe.register_forward_pre_hook(lambda m, a: routed.append(a[0].reshape(-1, 32)))
    with torch.no_grad():
        model(**base)
    h.remove()
    x = routed[0]
    top = torch.topk(torch.softmax(x @ moe.gate.weight.T, -1), 2, dim=-1).indices
    token, slot = (top == 1).nonzero().unbind(-1)  # by token
    # Rows in the model's order: by token (fused experts), by top-k slot then token (4.x's expert mask).
    tokens = token if fused else token[torch.argsort(slot * len(x) + token)]
    want = (torch.nn.functional.silu(x[tokens] @ w_gate.T) * (x[tokens] @ w_up.T)) @ w_down.T
    rep = {"layer": 0, "component": "mlp_output", "moe_key": 1, "intervention": pv.CollectIntervention}
    (_, collected), _ = pv.IntervenableModel(rep, model)(base, unit_locations=None)
    assert torch.allclose(collected[0], want, atol=1e-5)
    # Zero expert 1's output == zero its down-projection weights.
    rep = {"layer": 0, "component": "mlp_output", "moe_key": 1, "intervention": pv.ZeroIntervention}
    _, zeroed = pv.IntervenableModel(rep, model)(base, unit_locations=None)
    with torch.no_grad():
        saved = w_down.clone()
        w_down.zero_()
        want_logits = model(**base).logits
        w_down.copy_(saved)
    assert torch.allclose(zeroed.logits, want_logits, atol=1e-5)
    assert not torch.allclose(zeroed.logits, before, atol=1e-4)


def test_second_stack_layer_count() -> None:
    """Whisper's decoder has its own layer count; an out-of-range layer names the fix."""
    model, _, _ = _whisper()
    with pytest.raises(pv.ConfigError, match="out of range"):
        pv.IntervenableModel({"layer": 2, "component": "decoder_block_output"}, model)
