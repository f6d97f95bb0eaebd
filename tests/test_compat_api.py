"""The reference's public API beyond IntervenableModel: helpers, model builders, built-in models.

Expectations are hand-written torch, closed forms, or values read from the
reference's source (pyvene 0.1.8) and noted where used.
"""
from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, GPT2Model, LlamaConfig, PretrainedConfig

import intervenable as pv
from families import present
from intervenable.errors import ConfigError, InputError
from intervenable.models import MLPConfig, GRUConfig
from intervenable.models.constants import CONST_INPUT_HOOK, CONST_OUTPUT_HOOK, split_head_and_permute, split_three


def _tiny_gpt2(lm: bool = False):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=16, n_head=4, vocab_size=11, n_positions=16, bos_token_id=0, eos_token_id=0)
    config._attn_implementation = "eager"
    return (GPT2LMHeadModel if lm else GPT2Model)(config).eval()


class _CharTokenizer:
    """decode(id) -> a fixed string per id (enough for format_token / top_vals)."""

    words = ["a", " b", "c\n", " ", "e"]

    def decode(self, tok):
        return self.words[int(tok)]


# -- basic_utils ---------------------------------------------------------------
def test_embed_to_distrib_projects_on_the_embedding() -> None:
    model = _tiny_gpt2()
    h = torch.randn(2, 3, 16)
    logits = h @ model.wte.weight.T
    assert torch.allclose(pv.embed_to_distrib(model, h, logits=True), logits, atol=1e-6)
    assert torch.allclose(pv.embed_to_distrib(model, h), torch.softmax(logits, -1), atol=1e-6)
    assert torch.allclose(pv.embed_to_distrib(model, h, log=True), torch.log_softmax(logits, -1), atol=1e-6)
    lm = _tiny_gpt2(lm=True)  # no .wte at top level: the LM head (tied to wte) is the projection
    assert torch.allclose(pv.embed_to_distrib(lm, h, logits=True), h @ lm.lm_head.weight.T, atol=1e-6)


def test_format_token_and_top_vals(capsys) -> None:
    tok = _CharTokenizer()
    assert pv.format_token(tok, 1) == "_b" and pv.format_token(tok, 2) == "c\\n"
    dist = torch.tensor([0.1, 0.5, 0.05, 0.3, 0.05])
    got = pv.top_vals(tok, dist, n=2, return_results=True)
    assert [t for t, _ in got] == ["_b", "_"] and got[0][1] == pytest.approx(0.5) and got[1][1] == pytest.approx(0.3)
    assert capsys.readouterr().out == ""
    assert pv.top_vals(tok, dist, n=2) is None
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{'_b':<20} {dist[1].item()}", f"{'_':<20} {dist[3].item()}"]


def test_get_loc_nests_one_head_position_pair() -> None:
    assert pv.GET_LOC((3, 3)) == [[[[3]], [[3]]]]  # pyvene_101: head 3, position 3
    assert pv.GET_LOC((10, 2), batch_size=2) == [[[[10], [10]], [[2], [2]]]]
    with pytest.raises(NotImplementedError):
        pv.GET_LOC((1, 2), unit="pos")


def test_set_seed_seeds_python_and_torch() -> None:
    pv.set_seed(7)
    a, b = random.random(), torch.rand(3)
    assert a == random.Random(7).random()
    assert torch.equal(b, torch.rand(3, generator=torch.Generator().manual_seed(7)))


def test_count_parameters_counts_trainable_only() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    model[1].weight.requires_grad_(False)
    assert pv.count_parameters(model) == 3 * 4 + 4


def test_boundary_masks_closed_form() -> None:
    x = torch.tensor([-1.0, 0.5, 2.0])
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    want = [s(-1 / 0.5) * s(2 / 0.5), s(0.5 / 0.5) * s(0.5 / 0.5), s(2 / 0.5) * s(-1 / 0.5)]
    assert torch.allclose(pv.sigmoid_boundary(x, 0.0, 1.0, 0.5), torch.tensor(want), atol=1e-6)
    # Harmonic: outside -> sigmoid(-distance / T); inside -> sigmoid(harmonic mean of the distances / T).
    got = pv.harmonic_sigmoid_boundary(x, 0.0, 1.0, 1.0)
    assert torch.allclose(got, torch.tensor([s(-1.0), s(1 / (0.5 * (2 + 2))), s(-1.0)]), atol=1e-6)


def test_permutation_helpers() -> None:
    torch.manual_seed(3)
    p = pv.random_permutation_matrix(5)
    assert torch.equal(p.sum(0), torch.ones(5)) and torch.equal(p.sum(1), torch.ones(5))
    assert set(p.unique().tolist()) == {0.0, 1.0}
    assert pv.closeness_to_permutation_loss(p).item() == 0.0
    # rows/cols of 0.5 * ones(2, 2) sum to 1; entries give 0.5 * 0.5.
    assert pv.closeness_to_permutation_loss(0.5 * torch.ones(2, 2)).item() == pytest.approx(0.25)
    assert pv.closeness_to_permutation_loss(torch.zeros(2, 2)).item() == pytest.approx(1.0)


def test_list_depth_and_batch_size() -> None:
    assert pv.get_list_depth(5) == 0 and pv.get_list_depth([]) == 1
    assert pv.get_list_depth([[[0]], [[1, [2]]]]) == 4
    assert pv.get_batch_size(torch.zeros(3, 2)) == 3
    assert pv.get_batch_size({"input_ids": torch.zeros(4, 7), "attention_mask": torch.zeros(4, 7)}) == 4


# -- type_to_module_mapping / type_to_dimension_mapping -----------------------
def test_type_mappings_read_like_the_reference() -> None:
    # Values as in pyvene 0.1.8's gpt2 / mlp model cards.
    assert pv.type_to_module_mapping[GPT2LMHeadModel]["block_output"] == ("transformer.h[%s]", CONST_OUTPUT_HOOK)
    assert pv.type_to_module_mapping[GPT2Model]["mlp_input"] == ("h[%s].mlp", CONST_INPUT_HOOK)
    assert pv.type_to_module_mapping[pv.models.MLPForClassification] == {
        "block_input": ("mlp.h[%s]", CONST_INPUT_HOOK),
        "block_output": ("mlp.h[%s]", CONST_OUTPUT_HOOK),
        "mlp_activation": ("mlp.h[%s].act", CONST_OUTPUT_HOOK),
    }
    assert pv.type_to_module_mapping[pv.models.GRUForClassification]["cell_output"] == ("gru.cells[%s]", CONST_OUTPUT_HOOK)
    assert pv.type_to_dimension_mapping[GPT2Model]["block_output"][0] == "n_embd"
    assert pv.type_to_dimension_mapping[GPT2Model]["head_query_output"][0] == "n_embd/n_head"
    assert GPT2Model in pv.type_to_module_mapping and int not in pv.type_to_module_mapping


class _Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ff = nn.Linear(d, d)
        self.attn = nn.Linear(d, 3 * d)

    def forward(self, x):
        q, k, v = self.attn(x).chunk(3, -1)
        return torch.tanh(self.ff(x) + q * k + v)


class _NewModel(nn.Module):
    """A model family the registry does not know, registered through the reference's tables."""

    def __init__(self) -> None:
        super().__init__()
        self.config = PretrainedConfig(d_model=8, n_head=2, num_layers=2)
        self.blocks = nn.ModuleList([_Block(8), _Block(8)])

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


def _with_hook(module, hook, fn):
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return fn()
    finally:
        handle.remove()


def test_type_mapping_write_registers_a_new_model_type() -> None:
    torch.manual_seed(0)
    model, x = _NewModel().eval(), torch.randn(2, 4, 8)
    pv.type_to_module_mapping[_NewModel] = {
        "mlp_output": ("blocks[%s].ff", CONST_OUTPUT_HOOK),
        "head_key_output": ("blocks[%s].attn", CONST_OUTPUT_HOOK, (split_three, 1), (split_head_and_permute, "n_head")),
    }
    pv.type_to_dimension_mapping[_NewModel] = {"mlp_output": ("d_model",), "head_key_output": ("d_model/n_head",)}
    try:
        def zero_ff_pos2(m, a, o):
            o = o.clone()
            o[:, 2] = 0
            return o

        want = _with_hook(model.blocks[1].ff, zero_ff_pos2, lambda: model(x))
        rep = {"layer": 1, "component": "mlp_output", "source_representation": torch.zeros(8)}
        _, got = pv.IntervenableModel(rep, model)(x, unit_locations={"base": 2})
        assert torch.allclose(got, want, atol=1e-6)

        def zero_key_head1_pos3(m, a, o):  # k is dims 8:16; head 1 of 2 is k[4:8] -> dims 12:16
            o = o.clone()
            o[:, 3, 12:16] = 0
            return o

        want = _with_hook(model.blocks[0].attn, zero_key_head1_pos3, lambda: model(x))
        rep = {"layer": 0, "component": "head_key_output", "unit": "h.pos", "intervention": pv.ZeroIntervention}
        _, got = pv.IntervenableModel(rep, model)(x, unit_locations={"base": pv.GET_LOC((1, 3), batch_size=2)})
        assert torch.allclose(got, want, atol=1e-6)
    finally:
        del pv.type_to_module_mapping[_NewModel]
        del pv.type_to_dimension_mapping[_NewModel]
    with pytest.raises(Exception, match="no entry in the architecture registry"):
        pv.IntervenableModel({"layer": 0, "component": "mlp_output"}, _NewModel())
    with pytest.raises(ConfigError, match="not supported"):
        pv.type_to_module_mapping[_NewModel] = {"mlp_output": ("blocks[%s].ff", CONST_OUTPUT_HOOK, (print, 0))}


def test_reference_new_model_type_recipe_on_t5() -> None:
    """The reference's test_new_model_type (flan-t5 from the hub there; a tiny random T5 here)."""
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(d_model=16, d_ff=32, num_layers=2, num_heads=2, d_kv=8, vocab_size=30)).eval()
    pv.type_to_module_mapping[type(t5)] = {
        "mlp_output": ("encoder.block[%s].layer[1]", pv.models.constants.CONST_OUTPUT_HOOK),
        "attention_input": ("encoder.block[%s].layer[0]", pv.models.constants.CONST_OUTPUT_HOOK),
    }
    pv.type_to_dimension_mapping[type(t5)] = {
        "mlp_output": ("d_model",), "attention_input": ("d_model",),
        "block_output": ("d_model",), "head_attention_value_output": ("d_model/num_heads",),
    }
    try:
        base = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]]), "decoder_input_ids": torch.tensor([[0]])}

        def zero_pos3(m, a, o):
            o = o.clone()
            o[:, 3] = 0
            return o

        want = _with_hook(t5.encoder.block[0].layer[1], zero_pos3, lambda: t5(**base).logits)
        rep = {"layer": 0, "component": "mlp_output", "source_representation": torch.zeros(t5.config.d_model)}
        _, out = pv.IntervenableModel(rep, model=t5)(base, unit_locations={"base": 3})
        assert torch.allclose(out.logits, want, atol=1e-6)
    finally:
        del pv.type_to_module_mapping[type(t5)]
        del pv.type_to_dimension_mapping[type(t5)]


def test_callable_with_subspaces_argument() -> None:
    """pyvene_101: ``def pv_patcher(b, s, sp)`` receives the call's subspaces (here: a position to zero)."""
    model = _tiny_gpt2()
    ids = torch.tensor([[1, 2, 3, 4, 5]])

    def zero_pos3(m, a, o):
        o = o.clone()
        o[:, 3] = 0
        return o

    want = _with_hook(model.h[0].mlp, zero_pos3, lambda: model(ids).last_hidden_state)

    def pv_patcher(b, s, sp):
        mask = torch.ones_like(b)
        mask[:, sp[0][0], :] = 0.0
        return b * mask

    pv_model = pv.IntervenableModel({"component": "h[0].mlp.output", "intervention": pv_patcher}, model=model)
    _, out = pv_model(base={"input_ids": ids}, subspaces=3)
    assert torch.allclose(out.last_hidden_state, want, atol=1e-6)


def test_build_intervenable_model() -> None:
    model = _tiny_gpt2()
    built = pv.build_intervenable_model({"layer": 0, "component": "block_output"}, model)
    assert isinstance(built, pv.IntervenableModel) and built.model is model


# -- model builders ------------------------------------------------------------
def _attention_by_hand(model: GPT2LMHeadModel, ids: torch.Tensor) -> torch.Tensor:
    t, block = model.transformer, model.transformer.h[0]
    x = block.ln_1(t.wte(ids) + t.wpe(torch.arange(ids.shape[1])))
    q, k, _ = block.attn.c_attn(x).split(16, -1)
    heads = lambda z: z.view(1, ids.shape[1], 4, 4).transpose(1, 2)  # noqa: E731
    scores = heads(q) @ heads(k).transpose(-1, -2) / 2.0
    causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
    return torch.softmax(scores.masked_fill(~causal, float("-inf")), -1)


def test_create_gpt2_lm_from_config_uses_eager_attention(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=4, vocab_size=11, n_positions=16, bos_token_id=0, eos_token_id=0)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        cfg, tok, model = pv.create_gpt2_lm(config=config)
    assert cfg is config and tok is None and model.config._attn_implementation == "eager"
    ids = torch.tensor([[1, 4, 2, 7]])
    with torch.no_grad():
        att = model.eval()(ids, output_attentions=True).attentions[0]
        assert torch.allclose(att, _attention_by_hand(model, ids), atol=1e-5)


def test_create_gpt2_from_folder_uses_eager_attention(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_gpt2().save_pretrained(tmp_path)
    _, _, model = pv.create_gpt2(str(tmp_path))
    assert model.config._attn_implementation == "eager"
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]]), output_attentions=True).attentions[1].shape == (1, 4, 3, 3)


def test_create_llama_from_config(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=13)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg, tok, model = pv.create_llama(config=config)
    assert tok is None and any("tokenizer" in str(w.message) for w in caught)
    assert type(model).__name__ == "LlamaForCausalLM" and len(model.model.layers) == 2
    assert model.lm_head.weight.shape == (13, 16)


def test_other_builders_fail_clearly_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    builders = {"olmo": pv.create_olmo, "llava": pv.create_llava, "blip": pv.create_blip, "blip_itm": pv.create_blip_itm,
                "gpt_oss": pv.create_gpt_oss}
    for family, create in builders.items():
        # a family this transformers lacks (tests/families.py) is refused first, naming the upgrade
        match = "HF_HUB_OFFLINE" if present(family) else "has no .* upgrade transformers"
        with pytest.raises(InputError, match=match):
            create(cache_dir=str(tmp_path))
    with pytest.raises(InputError, match="trust_remote_code=True"):
        pv.create_backpack_gpt2()


# -- built-in MLP and GRU: the reference's fields and return values -----------
def _mlp(**kw):
    torch.manual_seed(0)
    config = MLPConfig(h_dim=3, n_layer=1, pdrop=0.0, num_classes=5, include_bias=False, **kw)
    return pv.create_mlp_classifier(config)[2].eval()


def test_mlp_num_classes_and_tuple_outputs() -> None:
    model = _mlp(squeeze_output=False)
    x = torch.randn(4, 1, 3)
    act = nn.functional.gelu(x @ model.mlp.h[0].ff1.weight.T)  # the reference tests' ONE_MLP_CLEAN_RUN
    want = act @ model.score.weight.T
    out = model(inputs_embeds=x)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (4, 1, 5)
    assert torch.allclose(out[0], want, atol=1e-6)
    assert torch.allclose(model(inputs_embeds=x, return_dict=True).logits, want, atol=1e-6)
    assert torch.cat([model(inputs_embeds=x[i : i + 1])[0] for i in range(4)]).shape == (4, 1, 5)  # DAS tutorial
    squeezed = _mlp()(inputs_embeds=x)[0]
    assert squeezed.shape == (4, 5) and torch.allclose(squeezed, want[:, 0], atol=1e-6)
    labels = torch.tensor([0, 4, 2, 1])
    loss, logits = _mlp()(inputs_embeds=x, labels=labels)
    assert torch.allclose(loss, nn.functional.cross_entropy(want[:, 0], labels), atol=1e-6)
    last, states = model.mlp(inputs_embeds=x, output_hidden_states=True)
    assert len(states) == 2 and torch.equal(states[0], x) and torch.allclose(last, act, atol=1e-6)


def test_mlp_num_labels_warns_that_num_classes_sizes_the_head() -> None:
    with pytest.warns(UserWarning, match="num_classes"):
        config = MLPConfig(h_dim=3, num_labels=4)
    assert pv.create_mlp_classifier(config)[2].score.out_features == 2  # the reference's default num_classes


def test_mlp_problem_type_none_infers_regression() -> None:
    torch.manual_seed(0)
    model = MLPConfig(h_dim=3, n_layer=1, pdrop=0.0, num_classes=1, problem_type=None)
    model = pv.create_mlp_classifier(model)[2].eval()
    x, y = torch.randn(4, 3), torch.randn(4)
    loss, logits = model(inputs_embeds=x, labels=y)
    assert model.config.problem_type == "regression"
    assert logits.shape == (4,)  # squeeze(1) of [4, 1], as the reference
    assert torch.allclose(loss, ((logits - y) ** 2).mean(), atol=1e-6)


def test_gru_fields_and_outputs() -> None:
    torch.manual_seed(0)
    config = GRUConfig(h_dim=4, n_layer=2, n_labels=3)
    model = pv.create_gru_classifier(config)[2].eval()
    x = torch.randn(2, 5, 4)
    states, last = model.gru(inputs_embeds=x)  # the reference's tuple: (states over time, last state)
    assert states.shape == (2, 5, 4) and torch.equal(states[:, -1], last)
    as_dict = model.gru(inputs_embeds=x, return_dict=True)
    assert torch.equal(as_dict[0], last) and torch.equal(as_dict.hidden_states, states)
    logits, state = model(inputs_embeds=x)
    assert logits.shape == (2, 3) and torch.allclose(logits, last @ model.score.weight.T, atol=1e-6)
    labels = torch.tensor([2, 0])
    loss = model(inputs_embeds=x, labels=labels)[0]
    assert torch.allclose(loss, nn.functional.cross_entropy(logits, labels), atol=1e-6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    masked = model(inputs_embeds=x, attention_mask=mask, return_dict=True).logits
    assert torch.allclose(masked[0], states[0, 2] @ model.score.weight.T, atol=1e-6)
    lm_config = GRUConfig(h_dim=4, n_layer=1, include_emb=True, vocab_size=9)
    lm = pv.create_gru_lm(lm_config)[2].eval()
    ids = torch.tensor([[1, 2, 3]])
    lm_logits, lm_last = lm(input_ids=ids)
    assert lm_logits.shape == (1, 3, 9) and lm_last.shape == (1, 4)


def test_is_model_stateless_is_false_only_for_the_recurrent_builtin_models():
    """The reference: ``is_stateless(model)`` is False exactly for its GRU classes."""
    gru = pv.create_gru_classifier(GRUConfig(h_dim=4, n_layer=1, n_labels=2))[2]
    mlp = pv.create_mlp_classifier(MLPConfig(h_dim=4, n_layer=1, num_classes=2))[2]
    assert pv.IntervenableModel({"layer": 0, "component": "cell_output", "unit": "t"}, gru).is_model_stateless is False
    assert pv.IntervenableModel({"layer": 0, "component": "block_output"}, mlp).is_model_stateless is True
    assert pv.IntervenableModel({"layer": 0, "component": "block_output"}, _tiny_gpt2()).is_model_stateless is True
