"""Saving interventions that hold an SAE (by reference, or its weights in safetensors), and attributes set
after construction: restored on load, or named in a warning at save time, never lost silently."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

import intervenable as pv
from gpt2_manual import ids, tiny_gpt2
from intervenable.io import CONFIG_NAME, TENSORS_NAME, SerializationError

DATA = os.path.join(os.path.dirname(__file__), "data", "saes")
BASE = {"input_ids": ids(1, 6, seed=3)}


def logits(pv_model) -> torch.Tensor:
    with torch.no_grad():
        return pv_model(BASE)[1].logits


def test_an_sae_loaded_from_a_file_is_saved_by_reference(tmp_path) -> None:
    shutil.copytree(os.path.join(DATA, "gemma-scope-2b-pt-res"), tmp_path / "gemma-scope-2b-pt-res")
    sae = pv.load_sae(tmp_path / "gemma-scope-2b-pt-res", "layer_1/width_16k/average_l0_71")
    saved = pv.IntervenableModel(pv.SAEIntervention(sae, ablate=[1, 2], clamp={5: 3.0}, steer={7: -2.0}), tiny_gpt2())
    saved.save(str(tmp_path / "saved"))
    config = json.loads((tmp_path / "saved" / CONFIG_NAME).read_text())
    entry = config["interventions"][saved.sorted_keys[0]]
    assert entry["init_kwargs"]["sae"] == {"reference": {"path": str(tmp_path / "gemma-scope-2b-pt-res"),
                                                         "sae_id": "layer_1/width_16k/average_l0_71"}}
    assert entry["tensors"] == [] and load_file(str(tmp_path / "saved" / TENSORS_NAME)) == {}
    loaded = pv.IntervenableModel.load(str(tmp_path / "saved"), tiny_gpt2())
    iv = loaded.interventions[loaded.sorted_keys[0]]
    assert (iv.ablate, iv.clamp, iv.steer) == ([1, 2], {5: 3.0}, {7: -2.0})
    assert torch.equal(iv.sae.W_enc, sae.W_enc)
    assert torch.allclose(logits(loaded), logits(saved), atol=1e-6)
    assert not torch.allclose(logits(loaded), tiny_gpt2()(**BASE).logits, atol=1e-3)  # the edits are there
    shutil.rmtree(tmp_path / "gemma-scope-2b-pt-res")
    with pytest.raises(SerializationError, match="No SAE at|holds no SAE|gemma"):
        pv.IntervenableModel.load(str(tmp_path / "saved"), tiny_gpt2())


def test_an_sae_without_a_file_is_saved_with_its_weights_in_safetensors(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    sae = pv.SAE(torch.randn(32, 48, generator=g), torch.randn(48, 32, generator=g) * 0.1, architecture="topk", k=6,
                 b_enc=torch.randn(48, generator=g), layer=1, component="block_output")
    saved = pv.IntervenableModel(pv.SAEIntervention(sae, keep_error=False), tiny_gpt2())
    saved.save(str(tmp_path / "saved"))
    assert sorted(os.listdir(tmp_path / "saved")) == [CONFIG_NAME, TENSORS_NAME]  # data only, no pickle
    tensors = load_file(str(tmp_path / "saved" / TENSORS_NAME))
    key = saved.sorted_keys[0]
    assert torch.equal(tensors[f"interventions/{key}/sae.W_dec"], sae.W_dec)
    loaded = pv.IntervenableModel.load(str(tmp_path / "saved"), tiny_gpt2())
    again = loaded.interventions[key].sae
    assert (again.architecture, again.k, again.layer) == ("topk", 6, 1)
    assert torch.equal(logits(loaded), logits(saved))
    # an SAE with a reference can still be saved with its weights
    ref = pv.load_sae(os.path.join(DATA, "jumprelu"))
    with_weights = pv.IntervenableModel(pv.SAEIntervention(ref, save_weights=True), tiny_gpt2())
    with_weights.save(str(tmp_path / "w"))
    assert f"interventions/{key}/sae.threshold" in load_file(str(tmp_path / "w" / TENSORS_NAME))
    with pytest.raises(pv.ConfigError, match="save_weights=False needs"):
        pv.SAEIntervention(sae, save_weights=False)


def test_attributes_set_after_construction_are_restored_or_named(tmp_path) -> None:
    """The reference's SAE intervention with an attribute set afterwards (`sae.ablate = 0`, as a user of the
    reference's tutorial does): formerly written to the config and silently dropped on load."""
    g = torch.Generator().manual_seed(1)
    jr = pv.JumpReLUAutoencoderIntervention.from_weights(torch.randn(32, 16, generator=g), torch.randn(16, 32, generator=g),
                                                          torch.zeros(16), torch.zeros(32), torch.zeros(16))
    jr.ablate = 0
    jr.note = {"why": "latent 0"}
    saved = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": jr}, tiny_gpt2())
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # data attributes: no warning
        saved.save(str(tmp_path / "a"))
    loaded = pv.IntervenableModel.load(str(tmp_path / "a"), tiny_gpt2())
    again = loaded.interventions[loaded.sorted_keys[0]]
    assert again.ablate == 0 and again.note == {"why": "latent 0"}
    jr.scale = torch.ones(3)  # not data and not a buffer: the save says so
    with pytest.warns(UserWarning, match=r"scale \(Tensor\) set after construction is not JSON data"):
        saved.save(str(tmp_path / "b"))
