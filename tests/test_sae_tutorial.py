"""The reference's Gemma Scope tutorial (tutorials/basic_tutorials/Sparse_Autoencoder.ipynb) replayed cell by
cell under ``sys.modules["pyvene"] = intervenable``, on a random Gemma2-shaped model (21 layers, a byte-level
tokenizer) and a random params.npz in Gemma Scope's layout served from a local hub cache, offline.

Substituted: the two model-loading cells (the hub's gemma-2-2b / -it), the install cell, and "cuda" by
"cpu" (no GPU here). ``hf_hub_download(...)`` of the params runs as written. Each result is checked
against the same computation done with plain torch hooks.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import intervenable

LAYER, D_MODEL, D_SAE = 20, 64, 16384  # the tutorial's layer and width (latent 10004 must exist)

CELLS = [
    # 6: imports
    '''from pyvene import (
    ConstantSourceIntervention,
    SourcelessIntervention,
    TrainableIntervention,
    DistributedRepresentationIntervention,
    CollectIntervention,
    JumpReLUAutoencoderIntervention
)

from transformers import AutoModelForCausalLM, BitsAndBytesConfig, AutoTokenizer
from huggingface_hub import hf_hub_download, notebook_login
import numpy as np
import torch
import torch.nn as nn''',
    # 8: model loading (substituted)
    '''torch.set_grad_enabled(False) # avoid blowing up mem
model, tokenizer = random_gemma2(seed=0)''',
    # 10
    '''prompt = "Would you be able to travel through time using a wormhole?"
inputs = tokenizer.encode(prompt, return_tensors="pt", add_special_tokens=True).to("cuda")
print(inputs)
outputs = model.generate(input_ids=inputs, max_new_tokens=50)
print(tokenizer.decode(outputs[0]))''',
    # 12
    '''LAYER = 20
path_to_params = hf_hub_download(
    repo_id="google/gemma-scope-2b-pt-res",
    filename=f"layer_{LAYER}/width_16k/average_l0_71/params.npz",
    force_download=False,
)
params = np.load(path_to_params)
pt_params = {k: torch.from_numpy(v).cuda() for k, v in params.items()}''',
    # 14
    '''class JumpReLUSAECollectIntervention(
    CollectIntervention
):
  """Collect activations"""
  def __init__(self, **kwargs):
    super().__init__(**kwargs, keep_last_dim=True)
    self.W_enc = nn.Parameter(torch.zeros(self.embed_dim, kwargs["low_rank_dimension"]))
    self.W_dec = nn.Parameter(torch.zeros(kwargs["low_rank_dimension"], self.embed_dim))
    self.threshold = nn.Parameter(torch.zeros(kwargs["low_rank_dimension"]))
    self.b_enc = nn.Parameter(torch.zeros(kwargs["low_rank_dimension"]))
    self.b_dec = nn.Parameter(torch.zeros(self.embed_dim))

  def encode(self, input_acts):
    pre_acts = input_acts @ self.W_enc + self.b_enc
    mask = (pre_acts > self.threshold)
    acts = mask * torch.nn.functional.relu(pre_acts)
    return acts

  def forward(self, base, source=None, subspaces=None):
    acts = self.encode(base)

    return acts''',
    # 16
    '''sae = JumpReLUSAECollectIntervention(
    embed_dim=params['W_enc'].shape[0],
    low_rank_dimension=params['W_enc'].shape[1]
)
sae.load_state_dict(pt_params, strict=False)
sae.cuda()

pv_model = pyvene.IntervenableModel({
   "component": f"model.layers[{LAYER}].output",
   "intervention": sae}, model=model)''',
    # 17
    '''sae_acts = pv_model.forward(
    {"input_ids": inputs}, return_dict=True).collected_activations[0]''',
    # 18, 19
    '''(sae_acts > 1).sum(-1)''',
    '''values, inds = sae_acts.max(-1)

inds''',
    # 21: the -it model (substituted)
    '''torch.set_grad_enabled(False) # avoid blowing up mem
model, tokenizer = random_gemma2(seed=1)''',
    # 23
    '''class JumpReLUSAESteeringIntervention(
    SourcelessIntervention,
    TrainableIntervention, 
    DistributedRepresentationIntervention
):
  def __init__(self, **kwargs):
    super().__init__(**kwargs, keep_last_dim=True)
    self.W_enc = nn.Parameter(torch.zeros(self.embed_dim, kwargs["low_rank_dimension"]))
    self.W_dec = nn.Parameter(torch.zeros(kwargs["low_rank_dimension"], self.embed_dim))
    self.threshold = nn.Parameter(torch.zeros(kwargs["low_rank_dimension"]))
    self.b_enc = nn.Parameter(torch.zeros(kwargs["low_rank_dimension"]))
    self.b_dec = nn.Parameter(torch.zeros(self.embed_dim))

  def encode(self, input_acts):
    pre_acts = input_acts @ self.W_enc + self.b_enc
    mask = (pre_acts > self.threshold)
    acts = mask * torch.nn.functional.relu(pre_acts)
    return acts

  def decode(self, acts):
    return acts @ self.W_dec + self.b_dec

  def forward(self, base, source=None, subspaces=None):
    steering_vec = torch.tensor(subspaces["mag"]) * self.W_dec[subspaces["idx"]]
    return base + steering_vec''',
    # 25
    '''sae = JumpReLUSAESteeringIntervention(
    embed_dim=params['W_enc'].shape[0],
    low_rank_dimension=params['W_enc'].shape[1]
)
sae.load_state_dict(pt_params, strict=False)
sae.cuda()

pv_model = pyvene.IntervenableModel({
   "component": f"model.layers[{LAYER}].output",
   "intervention": sae}, model=model)''',
    # 26
    '''prompt = "Which dog breed do people think is cuter, poodle or doodle?"

prompt = tokenizer(prompt, return_tensors="pt").to("cuda")
_, reft_response = pv_model.generate(
    prompt, unit_locations=None, intervene_on_prompt=True, 
    subspaces=[{"idx": 10004, "mag": 100.0}],
    max_new_tokens=128, do_sample=True, early_stopping=True
)''',
    # 27
    '''print(tokenizer.decode(reft_response[0], skip_special_tokens=True))''',
    # 30
    '''sae = JumpReLUAutoencoderIntervention(
    embed_dim=params['W_enc'].shape[0],
    low_rank_dimension=params['W_enc'].shape[1]
)
sae.load_state_dict(pt_params, strict=False)
sae.cuda()

pv_model = pyvene.IntervenableModel({
   "component": f"model.layers[{LAYER}].output",
   "intervention": sae}, model=model)''',
    # 31
    '''base = tokenizer(
    "Which dog breed do people think is cuter, poodle or doodle?", 
    return_tensors="pt").to("cuda")
source = tokenizer(
    "Origin (general) Space-travel, time-travel", 
    return_tensors="pt").to("cuda")

original_outputs, intervened_outputs = pv_model(
  base=base, 
  sources=source, 
  unit_locations={"sources->base": (11, 14)},
  subspaces=[10004],
  output_original_output=True
)
logits_diff = intervened_outputs.logits[:,-1] - original_outputs.logits[:,-1]
values, indices = logits_diff.topk(k=10, sorted=True)''',
    # 32
    '''print("** topk logits diff **")
tokenizer.batch_decode(indices[0].unsqueeze(dim=-1))''',
]


def random_gemma2(seed: int):
    """A Gemma2-shaped causal LM with random weights and a byte-level tokenizer (every byte one token)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({"<bos>": 256, "<eos>": 257, "<pad>": 258})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 256)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   model_input_names=["input_ids", "attention_mask"])  # as Gemma's (4.x adds token_type_ids otherwise)
    torch.manual_seed(seed)
    config = Gemma2Config(vocab_size=259, hidden_size=D_MODEL, intermediate_size=128, num_hidden_layers=LAYER + 1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                          sliding_window=16, bos_token_id=256, eos_token_id=257, pad_token_id=258)
    return Gemma2ForCausalLM(config).eval(), fast


def put_params_in_hub_cache(cache: str) -> dict:
    """A random params.npz in Gemma Scope's layout, as google/gemma-scope-2b-pt-res would have it cached."""
    g = torch.Generator().manual_seed(5)
    params = {"W_enc": torch.randn(D_MODEL, D_SAE, generator=g) * 0.2, "W_dec": torch.randn(D_SAE, D_MODEL, generator=g) * 0.2,
              "b_enc": torch.randn(D_SAE, generator=g) * 0.1, "b_dec": torch.randn(D_MODEL, generator=g) * 0.1,
              "threshold": torch.rand(D_SAE, generator=g) * 0.5}
    repo = os.path.join(cache, "models--google--gemma-scope-2b-pt-res")
    commit = "e" * 40
    name = f"layer_{LAYER}/width_16k/average_l0_71/params.npz"
    folder = os.path.join(repo, "snapshots", commit, os.path.dirname(name))
    os.makedirs(folder)
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(commit)
    np.savez(os.path.join(folder, "params.npz"), **{k: v.numpy() for k, v in params.items()})
    return params


def layer_hook(model, fn):
    def hook(module, args, output):
        return (fn(output[0]),) + tuple(output[1:]) if isinstance(output, tuple) else fn(output)
    return model.model.layers[LAYER].register_forward_hook(hook)


@pytest.fixture
def notebook(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setitem(sys.modules, "pyvene", intervenable)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    params = put_params_in_hub_cache(str(tmp_path / "hub"))
    grad = torch.is_grad_enabled()
    try:
        yield params
    finally:
        torch.set_grad_enabled(grad)  # the notebook turns gradients off globally


def test_the_gemma_scope_tutorial_runs_and_computes_what_it_says(notebook) -> None:
    params = notebook
    ns = {"random_gemma2": random_gemma2, "pyvene": intervenable}
    run = lambda i: exec(CELLS[i].replace('"cuda"', '"cpu"').replace(".cuda()", ".cpu()"), ns)  # noqa: E731
    for i in range(4):
        run(i)  # imports, model, generate, hf_hub_download of the params
    assert torch.equal(torch.from_numpy(ns["params"]["W_enc"]), params["W_enc"])

    def encode(x):
        pre = x @ params["W_enc"] + params["b_enc"]
        return (pre > params["threshold"]) * torch.relu(pre)

    for i in range(4, 9):
        run(i)  # the collect intervention and its latents
    seen = {}
    handle = layer_hook(ns["model"], lambda h: seen.setdefault("h", h))
    try:
        ns["model"](ns["inputs"])
    finally:
        handle.remove()
    assert torch.allclose(ns["sae_acts"], encode(seen["h"]), atol=1e-5)
    assert (ns["sae_acts"] > 0).any() and ns["inds"].shape == ns["inputs"].shape

    for i in range(9, 12):
        run(i)  # the -it model, the steering intervention
    torch.manual_seed(0)
    run(12)  # generate with subspaces=[{"idx": 10004, "mag": 100.0}] at every position of every step
    run(13)
    model, prompt = ns["model"], ns["prompt"]
    handle = layer_hook(model, lambda h: h + 100.0 * params["W_dec"][10004])
    try:
        torch.manual_seed(0)
        expected = model.generate(**prompt, max_new_tokens=128, do_sample=True, early_stopping=True)
    finally:
        handle.remove()
    assert ns["reft_response"].tolist() == expected.tolist()
    torch.manual_seed(0)  # the same draws: the first 8 tokens of an unsteered run
    unsteered = model.generate(**prompt, max_new_tokens=8, do_sample=True, early_stopping=True)
    assert unsteered.tolist() != expected[:, :unsteered.shape[1]].tolist()  # the steering changes the text

    for i in range(14, 17):
        run(i)  # the reference's JumpReLU interchange: latent 10004 of source position 11 into base position 14
    source_h = {}
    handle = layer_hook(model, lambda h: source_h.setdefault("h", h))
    try:
        model(**ns["source"])
    finally:
        handle.remove()

    def swap(h):
        z = encode(h[:, 14])
        z[..., 10004] = encode(source_h["h"][:, 11])[..., 10004]
        new = h.clone()
        new[:, 14] = z @ params["W_dec"] + params["b_dec"]  # the reference's reconstruction, no error term
        return new
    handle = layer_hook(model, swap)
    try:
        expected = model(**ns["base"]).logits
    finally:
        handle.remove()
    assert torch.allclose(ns["intervened_outputs"].logits, expected, atol=1e-4)
    assert torch.allclose(ns["original_outputs"].logits, model(**ns["base"]).logits, atol=1e-5)
    assert not torch.allclose(expected, ns["original_outputs"].logits, atol=1e-3)
    assert ns["indices"].shape == (1, 10)
