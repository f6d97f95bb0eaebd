"""Built-in models (MLP, unrolled GRU), a ResNet-style CNN via raw module paths, and the hub helpers.

References are plain forward hooks written here, or closed forms.
"""
from __future__ import annotations

import json
import time
from typing import List

import pytest
import torch
from torch import nn

import intervenable as pv
from intervenable.errors import InputError
torch.set_num_threads(1)
from intervenable.models import (  # noqa: E402
    GRUConfig,
    MLPConfig,
    create_gpt2,
    create_gpt2_lm,
    create_gru_classifier,
    create_gru_lm,
    create_mlp_classifier,
)


def _run_with(model, module, hook, **inputs):
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(**inputs)
    finally:
        handle.remove()


# -- MLP -----------------------------------------------------------------------
def test_mlp_patch_and_collect() -> None:
    torch.manual_seed(0)
    _, tok, model = create_mlp_classifier(MLPConfig(h_dim=16, n_layer=2, pdrop=0.0, num_classes=3))
    assert tok is None
    model.eval()
    base, source = torch.randn(4, 1, 16), torch.randn(4, 1, 16)
    with torch.no_grad():
        src_h0 = model.mlp.h[0](source)  # block 0 output of the source, by hand
    expected = _run_with(model, model.mlp.h[0], lambda m, a, o: src_h0, inputs_embeds=base)[0]
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": pv.VanillaIntervention}, model)
    _, out = pv_model({"inputs_embeds": base}, [{"inputs_embeds": source}], unit_locations={"sources->base": 0})
    assert out[0].shape == (4, 3)  # a tuple, as the reference's MLP returns without return_dict=True
    assert torch.allclose(out[0], expected, atol=1e-6)

    seen: List[torch.Tensor] = []
    _run_with(model, model.mlp.h[1].act, lambda m, a, o: seen.append(o), inputs_embeds=base)
    rep = {"layer": 1, "component": "mlp_activation", "intervention": pv.CollectIntervention}
    (_, collected), _ = pv.IntervenableModel(rep, model)({"inputs_embeds": base}, unit_locations=None)
    assert torch.allclose(collected[0], seen[0])


# -- GRU -----------------------------------------------------------------------
def _gru_lm():
    torch.manual_seed(0)
    config = GRUConfig(h_dim=16, n_layer=2, include_emb=True, vocab_size=20)
    _, _, model = create_gru_lm(config)
    return model.eval(), torch.randint(0, 20, (2, 5))


def test_gru_cell_called_once_per_step_and_states_exposed() -> None:
    model, ids = _gru_lm()
    outputs: List[torch.Tensor] = []
    _run_with(model, model.gru.cells[1], lambda m, a, o: outputs.append(o), input_ids=ids)
    assert len(outputs) == ids.shape[1]
    with torch.no_grad():
        states = model.gru(input_ids=ids, return_dict=True).all_layer_states
    assert torch.allclose(torch.stack(outputs, 1), states[1])
    # Closed form of one step of layer 0 at t = 0 (h_{-1} = 0).
    cell = model.gru.cells[0]
    with torch.no_grad():
        x = model.gru.wte(ids[:, 0])
        xr, xu, xn = cell.x2h(x).chunk(3, -1)
        hr, hu, hn = cell.h2h(torch.zeros(2, 16)).chunk(3, -1)
        r, u = torch.sigmoid(xr + hr), torch.sigmoid(xu + hu)
        want = (1 - u) * torch.tanh(xn + r * hn)
    assert torch.allclose(states[0][:, 0], want, atol=1e-6)


def test_gru_abstract_components_every_step() -> None:
    model, ids = _gru_lm()
    # Zero layer 0's state at every step, by hand and through block_output.
    expected = _run_with(model, model.gru.cells[0], lambda m, a, o: torch.zeros_like(o), input_ids=ids)[0]
    rep = {"layer": 0, "component": "block_output", "intervention": pv.ZeroIntervention}
    _, out = pv.IntervenableModel(rep, model)({"input_ids": ids}, unit_locations=None)
    assert torch.allclose(out[0], expected, atol=1e-6)
    # Zero the update third of x2h in layer 1 (a slice of a 2-D activation).
    def zero_update(m, a, o):
        o = o.clone()
        o[:, 16:32] = 0
        return o
    expected = _run_with(model, model.gru.cells[1].x2h, zero_update, input_ids=ids)[0]
    rep = {"layer": 1, "component": "update_x2h_output", "intervention": pv.ZeroIntervention}
    _, out = pv.IntervenableModel(rep, model)({"input_ids": ids}, unit_locations=None)
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert not torch.allclose(out[0], model(input_ids=ids)[0])


def test_gru_classifier_reads_last_step() -> None:
    torch.manual_seed(0)
    _, _, model = create_gru_classifier(GRUConfig(h_dim=8, n_layer=2, n_labels=3))
    x = torch.randn(2, 4, 8)
    with torch.no_grad():
        out = model(inputs_embeds=x, return_dict=True)
        want = model.score(model.gru(inputs_embeds=x, return_dict=True).hidden_states[:, -1])
    assert torch.allclose(out.logits, want)


# -- a ResNet-style CNN through raw module paths -----------------------------
class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.layer1 = nn.Sequential(Block(8), Block(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1(torch.relu(self.stem(x))).mean((2, 3)))


def test_cnn_raw_paths() -> None:
    torch.manual_seed(0)
    model = TinyResNet().eval()
    base, source = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    seen: List[torch.Tensor] = []
    h = model.layer1[0].conv2.register_forward_hook(lambda m, a, o: seen.append(o))
    with torch.no_grad():
        model(source)
    h.remove()

    def patch(m, a, o):
        o = o.clone()
        o[:, [2, 5]] = seen[0][:, [2, 5]]
        return o
    h = model.layer1[0].conv2.register_forward_hook(patch)
    with torch.no_grad():
        expected = model(base)
    h.remove()
    rep = {"component": "layer1[0].conv2.output", "intervention": pv.VanillaIntervention}
    _, out = pv.IntervenableModel(rep, model)(base, [source], unit_locations={"sources->base": ([[[2, 5], [2, 5]]], [[[2, 5], [2, 5]]])})
    assert torch.allclose(out, expected, atol=1e-6)

    grabbed: List[torch.Tensor] = []
    h = model.layer1[1].register_forward_hook(lambda m, a, o: grabbed.append(o))
    with torch.no_grad():
        model(base)
    h.remove()
    rep = {"component": "layer1[1].output", "intervention": pv.CollectIntervention}
    (_, collected), _ = pv.IntervenableModel(rep, model)(base, unit_locations=None)
    assert torch.allclose(collected[0], grabbed[0])


# -- hub helpers ---------------------------------------------------------------
def _tiny_gpt2_folder(path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=8, n_positions=16)).save_pretrained(path)
    vocab = {t: i for i, t in enumerate(["a", "b", "c", "d", "Ġ", "Ġa", "<|endoftext|>", "e"])}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\nĠ a\n")
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}))


def test_create_gpt2_from_local_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _tiny_gpt2_folder(tmp_path)
    config, tokenizer, model = create_gpt2_lm(str(tmp_path))
    assert config.n_layer == 2 and tokenizer is not None
    assert tokenizer("a a")["input_ids"] == [0, 5]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model.safetensors"))
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, saved["transformer.h.1.mlp.c_fc.weight"])
    _, _, base = create_gpt2(str(tmp_path))
    assert type(base).__name__ == "GPT2Model"


def test_create_gpt2_fails_fast_offline(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.time()
    with pytest.raises(InputError, match="HF_HUB_OFFLINE"):
        create_gpt2("no-such-org/no-such-model")
    assert time.time() - start < 60  # no network retries (those run for minutes); loose for a loaded machine
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import intervenable.models.hf as hf

    monkeypatch.setattr(hf, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(InputError, match="cannot be\\s+reached|cannot be reached"):
        create_gpt2("no-such-org/no-such-model", cache_dir=str(tmp_path))
