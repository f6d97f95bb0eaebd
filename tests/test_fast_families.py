"""The fast sweep path on every described family: fast == general == a hand-written hook sweep.

For each family a tiny random model (3 layers, 32 wide, eager attention unless the case says
otherwise) is traced (block outputs, every layer x every position, logit of a target token).
The reference is written here with plain forward hooks on the layer modules, named by their
path in the transformers model (never through the library's sites): cache the clean run's
layer outputs, then for each layer one batched forward of the corrupted prompt where row r
gets position r restored. Sliding windows are set shorter than the prompt, soft-capping and
projection variants are switched on, so the stack descriptions' parts are all exercised.
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
import transformers as T

from families import provided
from intervenable.errors import ConfigError, FastPathFallbackWarning
from intervenable.sites.registry import Architecture, find_architecture, register_architecture
from intervenable.sweeps import causal_trace, patching_sweep
from intervenable.sweeps import stack as stack_module

torch.set_num_threads(1)
TOKENS = 9
CLEAN = torch.tensor([[5, 17, 42, 8, 23, 9, 31, 12, 7]])
CORRUPT = torch.tensor([[5, 30, 40, 8, 23, 9, 31, 12, 7]])
TARGET = 11
BASE = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=3, intermediate_size=64, vocab_size=50,
            pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=0.15)


def _build(cfg_cls: str, model_cls: str, path: str, attn: str = "eager", **extra: Any) -> Callable[[], Tuple[Any, str]]:
    def build():
        torch.manual_seed(0)
        kw = dict(BASE)
        kw.update(extra)
        config = getattr(T, cfg_cls)(**kw)
        config._attn_implementation = attn
        return getattr(T, model_cls)(config).eval(), path
    return build


L = "model.layers.{}"
FAMILIES: Dict[str, Callable[[], Tuple[Any, str]]] = {
    "gpt2": _build("GPT2Config", "GPT2LMHeadModel", "transformer.h.{}", n_layer=3, n_embd=32, n_head=4, n_positions=16),
    "llama": _build("LlamaConfig", "LlamaForCausalLM", L, num_key_value_heads=2),
    "llama_sdpa": _build("LlamaConfig", "LlamaForCausalLM", L, attn="sdpa", num_key_value_heads=2),
    "mistral": _build("MistralConfig", "MistralForCausalLM", L, num_key_value_heads=1, sliding_window=4),
    "mixtral": _build("MixtralConfig", "MixtralForCausalLM", L, num_key_value_heads=2, num_local_experts=4,
                      sliding_window=4),
    "qwen2": _build("Qwen2Config", "Qwen2ForCausalLM", L, num_key_value_heads=2, use_sliding_window=True,
                    sliding_window=3, max_window_layers=1),
    "qwen3": _build("Qwen3Config", "Qwen3ForCausalLM", L, num_key_value_heads=2, head_dim=12),
    "gemma": _build("GemmaConfig", "GemmaForCausalLM", L, num_key_value_heads=1, head_dim=12),
    "gemma2": _build("Gemma2Config", "Gemma2ForCausalLM", L, num_key_value_heads=2, head_dim=12, sliding_window=3,
                     final_logit_softcapping=2.0, attn_logit_softcapping=5.0),
    "olmo": _build("OlmoConfig", "OlmoForCausalLM", L, num_key_value_heads=2),
    "olmo2": _build("Olmo2Config", "Olmo2ForCausalLM", L, num_key_value_heads=2),
    "gpt_oss": _build("GptOssConfig", "GptOssForCausalLM", L, num_key_value_heads=2, head_dim=12, num_local_experts=4,
                      sliding_window=3, layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    "phi": _build("PhiConfig", "PhiForCausalLM", L, num_key_value_heads=2),
    "phi3": _build("Phi3Config", "Phi3ForCausalLM", L, num_key_value_heads=2, sliding_window=4),
    "gpt_neox": _build("GPTNeoXConfig", "GPTNeoXForCausalLM", "gpt_neox.layers.{}"),
    "gpt_neox_serial": _build("GPTNeoXConfig", "GPTNeoXForCausalLM", "gpt_neox.layers.{}", use_parallel_residual=False),
    "gpt_neo": _build("GPTNeoConfig", "GPTNeoForCausalLM", "transformer.h.{}", num_layers=3, num_heads=4, window_size=3,
                      attention_types=[[["global", "local"], 1], [["local"], 1]]),
    "gptj": _build("GPTJConfig", "GPTJForCausalLM", "transformer.h.{}", n_layer=3, n_embd=32, n_head=4, rotary_dim=4,
                   n_inner=64),
    # init_std: transformers 4.x initialises OPT from it, not from initializer_range.
    "opt": _build("OPTConfig", "OPTForCausalLM", "model.decoder.layers.{}", ffn_dim=48, word_embed_proj_dim=16,
                  init_std=0.15),
    "opt_post_norm": _build("OPTConfig", "OPTForCausalLM", "model.decoder.layers.{}", ffn_dim=48,
                            word_embed_proj_dim=32, do_layer_norm_before=False, init_std=0.15),
    "falcon_mqa": _build("FalconConfig", "FalconForCausalLM", "transformer.h.{}", multi_query=True),
    "falcon_mha": _build("FalconConfig", "FalconForCausalLM", "transformer.h.{}", multi_query=False,
                         parallel_attn=False),
    "falcon_new": _build("FalconConfig", "FalconForCausalLM", "transformer.h.{}", new_decoder_architecture=True,
                         num_kv_heads=2),
    "bert": _build("BertConfig", "BertForMaskedLM", "bert.encoder.layer.{}"),
    "roberta": _build("RobertaConfig", "RobertaForMaskedLM", "roberta.encoder.layer.{}"),
    "esm": _build("EsmConfig", "EsmForMaskedLM", "esm.encoder.layer.{}", mask_token_id=2),
}


def hand_sweep(model: Any, path: str) -> torch.Tensor:
    """Logit of TARGET with each layer's output restored at one position, by plain forward hooks."""
    n = model.config.num_hidden_layers
    layers = [model.get_submodule(path.format(i)) for i in range(n)]
    saved: Dict[int, torch.Tensor] = {}

    def main(o):
        return o[0] if isinstance(o, tuple) else o

    handles = [m.register_forward_hook(lambda mod, a, o, i=i: saved.__setitem__(i, main(o).detach()))
               for i, m in enumerate(layers)]
    with torch.no_grad():
        model(input_ids=CLEAN)
    for h in handles:
        h.remove()
    out = torch.zeros(n, TOKENS)
    rows = torch.arange(TOKENS)
    for i, layer in enumerate(layers):
        def patch(mod, a, o, i=i):
            h = main(o).clone()
            h[rows, rows] = saved[i][0, rows]
            return (h,) + tuple(o[1:]) if isinstance(o, tuple) else h
        handle = layer.register_forward_hook(patch)
        try:
            with torch.no_grad():
                out[i] = model(input_ids=CORRUPT.expand(TOKENS, -1)).logits[:, -1, TARGET]
        finally:
            handle.remove()
    return out


@pytest.mark.parametrize("family", provided(sorted(FAMILIES)))
def test_fast_equals_general_equals_hand_written(family: str) -> None:
    model, path = FAMILIES[family]()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the description must fit
        fast = causal_trace(model, CLEAN, CORRUPT, TARGET, metric="logit", progress=False, fast=True)
    general = causal_trace(model, CLEAN, CORRUPT, TARGET, metric="logit", progress=False, fast=False)
    assert (fast.info["path"], general.info["path"]) == ("fast", "general")
    ref = hand_sweep(model, path)
    assert float(ref.max() - ref.min()) > 100 * 2e-5  # the patches matter, so equality means something
    torch.testing.assert_close(general.values[0], ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(fast.values[0], ref, atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        clean_logit = float(model(input_ids=CLEAN).logits[0, -1, TARGET])
    assert fast.clean_score == pytest.approx(clean_logit, abs=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "bert"])
def test_fast_hooked_components_equal_general(family: str) -> None:
    """Sites inside a layer (attention / MLP outputs, heads) are written by hooks in the fast path too."""
    model, _ = FAMILIES[family]()
    kw = dict(components=["attention_output", "mlp_output"], layers=[0, 2], metric="logit", progress=False)
    fast = causal_trace(model, CLEAN, CORRUPT, TARGET, fast=True, **kw)
    general = causal_trace(model, CLEAN, CORRUPT, TARGET, fast=False, **kw)
    torch.testing.assert_close(fast.values, general.values, atol=2e-5, rtol=1e-5)
    kw = dict(components=["head_attention_value_output"], heads="all", layers=[1], positions=[1, -1],
              metric="logit", progress=False)
    fast = patching_sweep(model, CORRUPT, CLEAN, TARGET, fast=True, **kw)
    general = patching_sweep(model, CORRUPT, CLEAN, TARGET, fast=False, **kw)
    torch.testing.assert_close(fast.values, general.values, atol=2e-5, rtol=1e-5)


def test_undescribed_variant_and_family_use_the_general_path() -> None:
    model, _ = _build("FalconConfig", "FalconForCausalLM", "transformer.h.{}", alibi=True)()
    r = causal_trace(model, CLEAN, CORRUPT, TARGET, progress=False)
    assert r.info["path"] == "general" and "ALiBi" in r.info["fallback_reason"]
    with pytest.raises(ConfigError, match="ALiBi"):
        causal_trace(model, CLEAN, CORRUPT, TARGET, progress=False, fast=True)
    torch.manual_seed(0)
    mamba = T.MambaForCausalLM(T.MambaConfig(hidden_size=16, num_hidden_layers=2, intermediate_size=32,
                                             state_size=4, vocab_size=50)).eval()
    stack_module._TOLD.discard("mamba")
    with pytest.warns(UserWarning, match="'mamba' family has no stack description") as told:
        first = causal_trace(mamba, CLEAN, CORRUPT, TARGET, progress=False)
    assert len([w for w in told if "stack description" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once: the second sweep is silent
        second = causal_trace(mamba, CLEAN, CORRUPT, TARGET, progress=False)
    assert first.info["path"] == second.info["path"] == "general"
    torch.testing.assert_close(first.values, second.values)


def test_register_architecture_refuses_a_duplicate_name() -> None:
    gpt2 = find_architecture(FAMILIES["gpt2"]()[0])
    copy = Architecture(name="gpt2", model_types=("gpt2",), num_layers=gpt2.num_layers, components=gpt2.components)
    with pytest.raises(ValueError, match="replace=True"):
        register_architecture(copy)
    try:
        assert register_architecture(copy, replace=True) is copy
        assert find_architecture(FAMILIES["gpt2"]()[0]) is copy
    finally:
        register_architecture(gpt2, replace=True)
    assert find_architecture(FAMILIES["gpt2"]()[0]) is gpt2


def test_a_description_that_does_not_fit_warns_and_the_suite_makes_that_an_error(pytestconfig) -> None:
    """A described family falling back is a FastPathFallbackWarning (same results), an error in this suite."""
    model, _ = FAMILIES["llama"]()
    arch = find_architecture(model)
    general = causal_trace(model, CLEAN, CORRUPT, TARGET, metric="logit", progress=False, fast=False)
    cases = [(replace(arch.stack, rotary="no_such_rotary"), "no rotary module at 'no_such_rotary'"),
             (replace(arch.stack, final=()), "did not reproduce the model's own logits")]  # no final norm
    try:
        for stack, message in cases:
            register_architecture(replace(arch, stack=stack), replace=True)
            with pytest.warns(FastPathFallbackWarning, match=message):
                r = causal_trace(model, CLEAN, CORRUPT, TARGET, metric="logit", progress=False)
            assert r.info["path"] == "general" and message in r.info["fallback_reason"]
            torch.testing.assert_close(r.values, general.values)
    finally:
        register_architecture(arch, replace=True)
    # Everywhere else in the suite (every family we claim fast, on this transformers) it fails the test.
    assert "error::intervenable.errors.FastPathFallbackWarning" in pytestconfig.getini("filterwarnings")
