"""pyreft (PyPI ``pyreft==0.1.0``, built on pyvene) runs its README quickstart on intervenable.

``pyvene`` is aliased to ``intervenable`` before pyreft is imported (and the alias
and pyreft's modules are removed afterwards). The ten steps run on a tiny random
LLaMA with a character-level tokenizer built here, in fp32 and bf16. Each result
is checked against an independent expectation: parameter counts from the sizes,
intervention positions from the tokenizer, generation against a plain forward
hook that applies LoReFT by hand, and the loaded model against the trained one.
pyreft 0.1.0's trainer predates transformers' ``num_items_in_batch`` argument to
``compute_loss``; that one signature is patched, nothing else of pyreft.
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import sys
from typing import Any, Iterator

import pytest
import torch
import transformers

import intervenable

HIDDEN, RANK, LAYER = 32, 4, 1
TEMPLATE = "<s>[INST] %s [/INST]\n"
EXAMPLES = [["Who are you?", "xyz"], ["Who am I?", "abc"], ["Why is the sky blue?", "qq"]]
QUESTION = "Which dog?"


@pytest.fixture(scope="module")
def pyreft() -> Iterator[Any]:
    """pyreft imported against ``pyvene = intervenable``; sys.modules restored afterwards."""
    saved = {name: module for name, module in sys.modules.items() if name == "pyvene" or name.startswith("pyreft")}
    for name in saved:
        del sys.modules[name]
    sys.modules["pyvene"] = intervenable
    try:
        import pyreft as module

        yield module
    finally:
        for name in [n for n in sys.modules if n == "pyvene" or n.startswith("pyreft")]:
            del sys.modules[name]
        sys.modules.update(saved)


def char_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per character, plus <unk> (also padding), <s> and </s>."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>"] + [chr(c) for c in range(32, 127)] + ["\n"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", model_max_length=64,
        model_input_names=["input_ids", "attention_mask"],  # transformers 4.x adds token_type_ids otherwise
        padding_side="right")
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def tiny_llama(vocab_size: int, dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).to(dtype).eval()


def loreft_by_hand(intervention: torch.nn.Module, position: int):
    """A forward hook that applies h + R^T(W h + b - R h) at ``position`` of the prompt (prefill only),
    with R, W and b read from the trained intervention: the formula of the pyreft paper, in plain torch."""
    rotation = intervention.rotate_layer.weight.detach()  # [HIDDEN, RANK], orthonormal columns
    weight, bias = intervention.learned_source.weight.detach(), intervention.learned_source.bias.detach()

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] <= position:
            return output  # a generated token's forward: the prompt position is in the cache
        h = hidden[:, position]
        edit = torch.nn.functional.linear(h, weight, bias) - h.to(rotation.dtype) @ rotation
        hidden = hidden.clone()
        hidden[:, position] = (h + edit @ rotation.T).to(hidden.dtype)
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    return hook


def generate(reft_model: Any, prompt: Any, position: int) -> torch.Tensor:
    _, tokens = reft_model.generate(
        prompt, unit_locations={"sources->base": (None, [[[position]]])}, intervene_on_prompt=True,
        max_new_tokens=12, do_sample=False, eos_token_id=None)
    return tokens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_readme_quickstart(pyreft: Any, dtype: torch.dtype, tmp_path, capsys, monkeypatch) -> None:
    tokenizer = char_tokenizer()
    model = tiny_llama(len(tokenizer), dtype)
    fresh = copy.deepcopy(model)  # the base model as a new user would load it again

    # 1. ReftConfig: a PretrainedConfig subclass with **kwargs, as pyreft defines it.
    dtype_kwargs = {"dtype": torch.float32} if dtype == torch.float32 else {}  # pyreft's default dtype is bf16
    reft_config = pyreft.ReftConfig(representations={
        "layer": LAYER, "component": "block_output", "low_rank_dimension": RANK,
        "intervention": pyreft.LoreftIntervention(embed_dim=HIDDEN, low_rank_dimension=RANK, **dtype_kwargs)})
    assert isinstance(reft_config, transformers.PretrainedConfig) and reft_config.get_text_config() is reft_config
    as_json = json.loads(reft_config.to_json_string())
    assert as_json["representations"][0]["intervention"] == "pyreft.interventions.LoreftIntervention"

    # 2-4. get_reft_model, set_device, print_trainable_parameters.
    reft_model = pyreft.get_reft_model(model, reft_config)
    reft_model.set_device("cpu")
    capsys.readouterr()
    reft_model.print_trainable_parameters()
    intervention_params = HIDDEN * RANK + (HIDDEN * RANK + RANK)  # R, then W and b
    model_params = sum(p.numel() for p in model.parameters())
    assert capsys.readouterr().out.splitlines() == [
        f"trainable intervention params: {intervention_params:,d} || trainable model params: 0",
        f"model params: {model_params:,d} || trainable%: {100 * intervention_params / model_params}",
    ]

    # 5. make_last_position_supervised_data_module: the last prompt position of each example.
    prompts = [TEMPLATE % question for question, _ in EXAMPLES]
    data_module = pyreft.make_last_position_supervised_data_module(
        tokenizer, model, prompts, [answer for _, answer in EXAMPLES])
    assert [row["intervention_locations"] for row in data_module["train_dataset"]] == [
        [[len(tokenizer(p)["input_ids"]) - 1]] for p in prompts]

    # 6. ReftTrainerForCausalLM.train: a few steps; only the intervention changes. transformers 5's
    # Trainer saves a checkpoint at the end, through the model's save_intervention.
    compute_loss = pyreft.ReftTrainer.compute_loss
    monkeypatch.setattr(pyreft.ReftTrainer, "compute_loss",
                        lambda self, model, inputs, return_outputs=False, num_items_in_batch=None:
                        compute_loss(self, model, inputs, return_outputs))
    intervention = reft_model.interventions[reft_model.sorted_keys[0]]
    before = {k: v.clone() for k, v in intervention.state_dict().items()}
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=len(EXAMPLES), max_steps=4, learning_rate=4e-3,
        report_to="none", use_cpu=True, disable_tqdm=True)
    # Trainer's tokenizer= is processing_class= from transformers 4.46 on (5 drops the old name).
    named = "processing_class" if "processing_class" in inspect.signature(transformers.Trainer).parameters else "tokenizer"
    trainer = pyreft.ReftTrainerForCausalLM(model=reft_model, args=args, **{named: tokenizer}, **data_module)
    trainer.train()
    assert all(not torch.equal(before[k], v) for k, v in intervention.state_dict().items())
    assert all(torch.equal(base_before[k], v) for k, v in model.state_dict().items())
    checkpoint = tmp_path / "run" / "checkpoint-4" / "intervenable_model"  # what _load_best_model reads
    trained = {k: v.clone() for k, v in intervention.state_dict().items()}
    reft_model.load_intervention(str(checkpoint), include_model=True)
    assert all(torch.equal(trained[k], v) for k, v in intervention.state_dict().items())

    # 7. Generate with the intervention on the last prompt position: equal to a hand-written hook.
    prompt = tokenizer(TEMPLATE % QUESTION, return_tensors="pt")
    position = prompt["input_ids"].shape[-1] - 1
    tokens = generate(reft_model, prompt, position)
    handle = model.model.layers[LAYER].register_forward_hook(loreft_by_hand(intervention, position))
    try:
        by_hand = model.generate(**prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    finally:
        handle.remove()
    plain = model.generate(**prompt, max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert torch.equal(tokens, by_hand) and not torch.equal(tokens, plain)

    # 8. save: our format, the class by its module-qualified name, the constructor's own arguments.
    reft_model.set_device("cpu")
    reft_model.save(save_directory=str(tmp_path / "reft_to_share"))
    assert sorted(os.listdir(tmp_path / "reft_to_share")) == ["config.json", "interventions.safetensors"]
    entry = json.loads((tmp_path / "reft_to_share" / "config.json").read_text())["interventions"][reft_model.sorted_keys[0]]
    assert entry["type"] == "pyreft.interventions.LoreftIntervention"
    expected_kwargs = {"embed_dim": HIDDEN, "low_rank_dimension": RANK}
    if dtype_kwargs:
        expected_kwargs["dtype"] = {"torch.dtype": "float32"}
    assert entry["init_kwargs"] == expected_kwargs  # no keep_last_dim: pyreft adds it itself

    # 9. ReftModel.load onto a freshly loaded base model.
    loaded = pyreft.ReftModel.load(str(tmp_path / "reft_to_share"), fresh)
    assert isinstance(loaded, pyreft.ReftModel)
    reloaded = loaded.interventions[loaded.sorted_keys[0]]
    assert type(reloaded) is pyreft.LoreftIntervention and reloaded is not intervention
    for name, tensor in intervention.state_dict().items():
        assert reloaded.state_dict()[name].dtype == tensor.dtype and torch.equal(reloaded.state_dict()[name], tensor)

    # 10. The loaded model generates the same tokens, token for token, in the saved dtype.
    assert torch.equal(generate(loaded, prompt, position), tokens)


def test_pyreft_classes_register_by_module_qualified_name(pyreft: Any) -> None:
    """Registering pyreft's class under our class's short name is refused with advice that works."""
    from intervenable.interventions.registry import _REGISTRY

    with pytest.raises(intervenable.ConfigError, match=r"'pyreft\.interventions\.LoreftIntervention'"):
        intervenable.register_intervention("LoreftIntervention", pyreft.LoreftIntervention)
    name = "pyreft.interventions.LoreftIntervention"
    try:
        assert intervenable.register_intervention(name, pyreft.LoreftIntervention) is pyreft.LoreftIntervention
        assert intervenable.get_intervention_class(name) is pyreft.LoreftIntervention
    finally:
        _REGISTRY.pop(name, None)


@pytest.mark.parametrize("name", ["LoreftIntervention", "NoreftIntervention", "ConsreftIntervention",
                                  "LobireftIntervention", "DireftIntervention", "NodireftIntervention"])
def test_every_pyreft_intervention_round_trips(pyreft: Any, name: str, tmp_path) -> None:
    """Each of pyreft's six classes (they pass keep_last_dim=True to our base) is rebuilt from what its
    user passed, and gives identical logits after loading."""
    cls = getattr(pyreft, name)
    model = tiny_llama(40, torch.float32)
    torch.manual_seed(1)
    intervention = cls(embed_dim=HIDDEN, low_rank_dimension=RANK, dtype=torch.float32, add_bias=True)
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations={
        "layer": LAYER, "component": "block_output", "low_rank_dimension": RANK, "intervention": intervention}))
    base = {"input_ids": torch.tensor([[1, 5, 9, 12, 7]])}
    locations = {"sources->base": (None, [[[2, 4]]])}
    with torch.no_grad():
        _, expected = reft_model(base, unit_locations=locations)
        plain = model(**base).logits
    assert not torch.equal(expected.logits, plain)
    reft_model.save(str(tmp_path / name))
    loaded = pyreft.ReftModel.load(str(tmp_path / name), tiny_llama(40, torch.float32))
    with torch.no_grad():
        _, got = loaded(base, unit_locations=locations)
    assert type(loaded.interventions[loaded.sorted_keys[0]]) is cls
    assert torch.equal(got.logits, expected.logits)


def test_a_folder_pyvene_saved_for_pyreft_loads(pyreft: Any, tmp_path) -> None:
    """The reference's layout (config.json naming pyreft's class, intkey_<key>.bin with pyreft's own
    state_dict), written here as pyvene 0.1.8 writes it: pyreft's class is used, with identical logits."""
    model = tiny_llama(40, torch.float32)
    torch.manual_seed(1)
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations={
        "layer": LAYER, "component": "block_output", "low_rank_dimension": RANK,
        "intervention": pyreft.LoreftIntervention(embed_dim=HIDDEN, low_rank_dimension=RANK, dtype=torch.float32)}))
    key = reft_model.sorted_keys[0]
    config = {
        "intervention_constant_sources": [True], "intervention_dimensions": [HIDDEN],
        "intervention_types": ["<class 'pyreft.interventions.LoreftIntervention'>"], "mode": "parallel",
        "representations": [[LAYER, "block_output", "pos", 1, RANK] + [None] * 9], "sorted_keys": [key],
        "transformers_version": "4.45.1",
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    torch.save(reft_model.interventions[key].state_dict(), tmp_path / f"intkey_{key}.bin")
    base = {"input_ids": torch.tensor([[1, 5, 9, 12, 7]])}
    locations = {"sources->base": (None, [[[2, 4]]])}
    with torch.no_grad():
        _, expected = reft_model(base, unit_locations=locations)
    loaded = pyreft.ReftModel.load(str(tmp_path), tiny_llama(40, torch.float32))
    assert type(loaded.interventions[key]) is pyreft.LoreftIntervention
    with torch.no_grad():
        _, got = loaded(base, unit_locations=locations)
    assert torch.equal(got.logits, expected.logits)


def test_linked_interventions_are_counted_once(pyreft: Any, capsys) -> None:
    """print_trainable_parameters reads _intervention_reverse_link (key -> "link#<link key>")."""
    model = tiny_llama(40, torch.float32)
    shared = pyreft.LoreftIntervention(embed_dim=HIDDEN, low_rank_dimension=RANK, dtype=torch.float32)
    reps = [{"layer": layer, "component": "block_output", "low_rank_dimension": RANK, "intervention": shared,
             "intervention_link_key": 7} for layer in (0, 1)]
    reft_model = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=reps))
    assert reft_model._intervention_reverse_link == {key: "link#7" for key in reft_model.sorted_keys}
    capsys.readouterr()
    reft_model.print_trainable_parameters()
    count = HIDDEN * RANK + HIDDEN * RANK + RANK
    assert capsys.readouterr().out.startswith(f"trainable intervention params: {count:,d} ||")


def test_the_config_is_a_pretrained_config(pyreft: Any) -> None:
    """What transformers' Trainer and pyreft's ReftConfig(**kwargs) use, and the reference's public fields."""
    from intervenable.config import IntervenableConfig

    config = pyreft.ReftConfig(representations=[{"layer": 1, "intervention_type": intervenable.ZeroIntervention}],
                               mode="serial", note="kept")
    assert isinstance(config, IntervenableConfig) and isinstance(config, transformers.PretrainedConfig)
    assert config.mode == "serial" and config.note == "kept" and config.get_text_config() is config
    assert (config.model_type, config.intervention_dimensions, config.intervention_constant_sources) == (None, None, None)
    config.eos_token_id = 2  # the Trainer aligns token ids on model.config
    data = json.loads(config.to_json_string(use_diff=False))
    assert data["eos_token_id"] == 2 and data["note"] == "kept" and data["mode"] == "serial"
    assert data["representations"][0]["intervention_type"] == "intervenable.interventions.basic.ZeroIntervention"
    assert config.to_dict()["representations"] == data["representations"]
    other = pyreft.ReftConfig(representations=[{"layer": 2}])
    assert config == config and config != other  # not the base class's field-only equality
