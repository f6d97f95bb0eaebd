"""Folders in the reference library's layout (config.json + intkey_<key>.bin + pytorch_model.bin).

The folders are written here following the reference's ``save``: a
PretrainedConfig-style JSON (representations as 14-field lists, class names as
``"<class '...'>"`` strings) and ``torch.save``-d state dicts that carry the
reference's extra ``embed_dim`` / ``interchange_dim`` buffers.
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Any, Dict, Optional

import pytest
import torch
from torch import nn

import intervenable as pv
from io_models import WIDTH, tiny_gpt2
from intervenable.io import SerializationError

BASE = {"input_ids": torch.tensor([[3, 14, 15, 9, 2]])}
SOURCE = {"input_ids": torch.tensor([[2, 7, 18, 28, 1]])}






def write_reference_folder(directory: Any, layer: int, type_name: str, state: Optional[Dict[str, torch.Tensor]],
                           constant: bool, dimension: int, model_state: Optional[Dict[str, Any]] = None) -> str:
    """A folder as the reference's ``IntervenableModel.save`` writes it for one representation."""
    os.makedirs(directory, exist_ok=True)
    key = f"layer_{layer}_comp_block_output_unit_pos_nunit_1#0"
    representation = [layer, "block_output", "pos", 1, None, None, None, None, None, None, None, None,
                      True if constant else None, None]
    config = {
        "intervention_constant_sources": [constant],
        "intervention_dimensions": [dimension],
        "intervention_types": [f"<class 'pyvene.models.interventions.{type_name}'>"],
        "mode": "parallel",
        "model_type": "None",
        "representations": [representation],
        "sorted_keys": [key],
        "transformers_version": "4.45.2",
    }
    with open(os.path.join(directory, "config.json"), "w") as handle:
        handle.write(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if state is not None:
        torch.save(state, os.path.join(directory, f"intkey_{key}.bin"))
    if model_state is not None:
        torch.save(model_state, os.path.join(directory, "pytorch_model.bin"))
    return key


def patched_logits(model: nn.Module, layer: int, new_value) -> torch.Tensor:
    """Logits of BASE with h[layer]'s output at position 1 replaced by new_value(old) (a plain hook)."""
    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 1] = new_value(hidden[:, 1])
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handle = model.transformer.h[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(**BASE).logits
    finally:
        handle.remove()


def test_a_shared_steering_vector(tmp_path) -> None:
    vector = torch.randn(WIDTH)
    state = {"embed_dim": torch.tensor(WIDTH), "interchange_dim": torch.tensor(WIDTH), "source_representation": vector}
    write_reference_folder(tmp_path, 1, "AdditionIntervention", state, True, WIDTH)
    model = tiny_gpt2()
    pv_model = pv.IntervenableModel.load(str(tmp_path), model)
    assert type(pv_model.interventions[pv_model.sorted_keys[0]]) is pv.AdditionIntervention
    with torch.no_grad():
        _, steered = pv_model(BASE, unit_locations={"base": 1})
    assert torch.allclose(steered.logits, patched_logits(model, 1, lambda h: h + vector), atol=1e-6)


class ReferenceRotateLayer(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.orthogonal_(torch.empty(n, n)))


class ReferenceRotated(nn.Module):
    """The reference's RotatedSpaceIntervention layout: buffers + orthogonal rotate_layer."""

    def __init__(self, n: int, interchange_dim: int) -> None:
        super().__init__()
        self.register_buffer("embed_dim", torch.tensor(n))
        self.register_buffer("interchange_dim", torch.tensor(interchange_dim))
        self.rotate_layer = nn.utils.parametrizations.orthogonal(ReferenceRotateLayer(n))


def test_a_trained_rotation_with_model_weights(tmp_path) -> None:
    torch.manual_seed(5)
    reference = ReferenceRotated(WIDTH, 4)
    rotation = reference.rotate_layer.weight.detach().clone()
    new_weight = torch.randn(WIDTH, 4 * WIDTH)
    write_reference_folder(tmp_path, 0, "RotatedSpaceIntervention", reference.state_dict(), False, 4,
                           model_state={"transformer.h.1.mlp.c_fc.weight": new_weight})
    model = tiny_gpt2()
    pv_model = pv.IntervenableModel.load(str(tmp_path), model, include_model=True)
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, new_weight)
    with torch.no_grad():
        _, patched = pv_model(BASE, [SOURCE], unit_locations={"sources->base": 1})
        source_hidden = model(**SOURCE, output_hidden_states=True).hidden_states[1][:, 1]

    def das(base_hidden: torch.Tensor) -> torch.Tensor:  # swap the first 4 rotated dims, rotate back
        rb, rs = base_hidden @ rotation, source_hidden @ rotation
        return torch.cat([rs[:, :4], rb[:, 4:]], dim=-1) @ rotation.T

    assert torch.allclose(patched.logits, patched_logits(model, 0, das), atol=1e-5)


def test_load_intervention_updates_an_existing_model(tmp_path) -> None:
    torch.manual_seed(6)
    reference = ReferenceRotated(WIDTH, WIDTH)
    write_reference_folder(tmp_path, 0, "RotatedSpaceIntervention", reference.state_dict(), False, WIDTH)
    rotated = pv.get_intervention_class("RotatedSpaceIntervention")
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": rotated},
                                    tiny_gpt2())
    pv_model.load_intervention(str(tmp_path), include_model=False)
    loaded = pv_model.interventions[pv_model.sorted_keys[0]].rotate_layer.weight
    assert torch.allclose(loaded, reference.rotate_layer.weight, atol=1e-6)


class WritesAFile:
    """Unpickling this calls open(path, "w"), creating the file: code run by loading."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_that_run_code_are_refused(tmp_path) -> None:
    marker = tmp_path / "pwned.txt"
    folder = tmp_path / "evil"
    write_reference_folder(folder, 1, "AdditionIntervention", {"source_representation": WritesAFile(str(marker))},
                           True, WIDTH)
    with pytest.raises(SerializationError, match="Refused to load"):
        pv.IntervenableModel.load(str(folder), tiny_gpt2())
    assert not marker.exists()
    folder2 = tmp_path / "evil_model"
    write_reference_folder(folder2, 1, "ZeroIntervention", None, False, WIDTH)
    with open(folder2 / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"w": WritesAFile(str(marker))}, handle)
    with pytest.raises(SerializationError, match="Refused to load"):
        pv.IntervenableModel.load(str(folder2), tiny_gpt2(), include_model=True)
    assert not marker.exists()
    # the payload is live: an unsafe load would have created the file
    key = "layer_1_comp_block_output_unit_pos_nunit_1#0"
    torch.load(folder / f"intkey_{key}.bin", weights_only=False)
    assert marker.exists()


def test_unregistered_and_malformed_reference_folders(tmp_path) -> None:
    write_reference_folder(tmp_path / "custom", 1, "MySteering", None, False, WIDTH)
    with pytest.raises(pv.ConfigError, match=r"pv.register_intervention\('MySteering'"):
        pv.IntervenableModel.load(str(tmp_path / "custom"), tiny_gpt2())
    write_reference_folder(tmp_path / "missing", 0, "RotatedSpaceIntervention", None, False, WIDTH)
    with pytest.raises(SerializationError, match="Missing file intkey_"):
        pv.IntervenableModel.load(str(tmp_path / "missing"), tiny_gpt2())
    state = {"embed_dim": torch.tensor(8), "interchange_dim": torch.tensor(8), "source_representation": torch.ones(8)}
    write_reference_folder(tmp_path / "narrow", 1, "AdditionIntervention", state, True, 8)
    with pytest.raises(SerializationError, match="width 8"):
        pv.IntervenableModel.load(str(tmp_path / "narrow"), tiny_gpt2())
    write_reference_folder(tmp_path / "bad", 1, "AdditionIntervention", None, False, WIDTH)
    config = json.loads((tmp_path / "bad" / "config.json").read_text())
    config["representations"][0][0] = "one"
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    with pytest.raises(SerializationError, match="'layer' must be int"):
        pv.IntervenableModel.load(str(tmp_path / "bad"), tiny_gpt2())
