"""Saving and loading in our format: round trips for every registered type, and bad input."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List

import pytest
import torch
from safetensors.torch import load_file, save_file

import intervenable as pv
from io_models import WIDTH, tiny_gpt2
from intervenable.io import CONFIG_NAME, TENSORS_NAME, SerializationError
from intervenable.io.common import sha256_file
from intervenable.interventions.registry import _REGISTRY

BASE = {"input_ids": torch.tensor([[3, 14, 15, 9, 2], [6, 5, 3, 5, 8]])}
SOURCE = {"input_ids": torch.tensor([[2, 7, 18, 28, 1], [8, 2, 8, 4, 5]])}
LOC = {"sources->base": 1}








def outputs(pv_model: Any) -> List[torch.Tensor]:
    """Every tensor an intervened call returns (logits, plus collected activations)."""
    with torch.no_grad():
        result = pv_model(BASE, pv.SharedSource(SOURCE), unit_locations=LOC)  # linked sites are two groups
    first, intervened = result
    tensors = [intervened.logits]
    if isinstance(first, tuple):
        tensors += list(first[1])
    return tensors


def assert_same_outputs(a: Any, b: Any) -> None:
    for x, y in zip(outputs(a), outputs(b), strict=True):
        assert torch.equal(x, y)


# -- every registered type ----------------------------------------------------------------
#: types that need constructor arguments beyond a representation (the protocol carries them)
NEEDS_ARGUMENTS = {"PCARotatedSpaceIntervention": lambda: {"data": torch.randn(40, WIDTH), "n_components": 4}}


def build(name: str, model: torch.nn.Module) -> Any:
    cls = pv.get_intervention_class(name)
    rep: Dict[str, Any] = {"layer": 1, "component": "block_output", "low_rank_dimension": 4, "latent_dim": 8}
    if name in NEEDS_ARGUMENTS:
        rep["intervention"] = cls(embed_dim=WIDTH, **NEEDS_ARGUMENTS[name]())
    else:
        rep["intervention_type"] = cls
    return pv.IntervenableModel(rep, model)


def train_a_little(pv_model: Any, include_model: bool) -> None:
    if include_model:
        pv_model.model.transformer.h[0].mlp.c_fc.weight.requires_grad_(True)
    params = pv_model.get_trainable_parameters()
    if not params:
        return
    optimiser = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):
        optimiser.zero_grad()
        loss = sum((t.float() ** 2).mean() for t in outputs_with_grad(pv_model))
        loss.backward()
        optimiser.step()


def outputs_with_grad(pv_model: Any) -> List[torch.Tensor]:
    first, intervened = pv_model(BASE, pv.SharedSource(SOURCE), unit_locations=LOC)
    return [intervened.logits] + (list(first[1]) if isinstance(first, tuple) else [])


@pytest.mark.parametrize("include_model", [False, True])
@pytest.mark.parametrize("name", sorted(pv.registered_interventions()))
def test_round_trip_every_registered_type(name: str, include_model: bool, tmp_path) -> None:
    torch.manual_seed(1)
    saved = build(name, tiny_gpt2())
    train_a_little(saved, include_model)
    saved.save(tmp_path / "saved", include_model=include_model)

    torch.manual_seed(99)  # a fresh model gets other random weights; loading must restore them
    loaded = pv.IntervenableModel.load(str(tmp_path / "saved"), tiny_gpt2(), include_model=include_model)
    assert loaded.sorted_keys == saved.sorted_keys
    key = saved.sorted_keys[0]
    assert type(loaded.interventions[key]) is type(saved.interventions[key])
    for (n, a), b in zip(saved.interventions[key].state_dict().items(), loaded.interventions[key].state_dict().values()):
        assert torch.equal(a, b), n
    assert_same_outputs(saved, loaded)
    if include_model:  # the trained model weight came from the file, not from the fresh model
        trained = saved.model.transformer.h[0].mlp.c_fc.weight
        assert not torch.equal(trained, tiny_gpt2().transformer.h[0].mlp.c_fc.weight)
        assert torch.equal(trained, loaded.model.transformer.h[0].mlp.c_fc.weight)


def test_constant_steering_vector_matches_a_plain_hook(tmp_path) -> None:
    vector = torch.randn(WIDTH)
    saved = pv.IntervenableModel(
        {"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention,
         "source_representation": vector}, tiny_gpt2())
    saved.save(tmp_path / "steer")
    stored = load_file(str(tmp_path / "steer" / TENSORS_NAME))
    assert torch.equal(stored[f"interventions/{saved.sorted_keys[0]}/source_representation"], vector)
    config = json.loads((tmp_path / "steer" / CONFIG_NAME).read_text())
    assert config["interventions"][saved.sorted_keys[0]]["constant_source"] is True
    assert config["representations"][0]["source_representation"] is None

    model = tiny_gpt2()
    loaded = pv.IntervenableModel.load(str(tmp_path / "steer"), model)
    with torch.no_grad():
        _, steered = loaded(BASE, unit_locations={"base": 1})

        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden.clone()
            hidden[:, 1] += vector
            return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

        handle = model.transformer.h[1].register_forward_hook(hook)
        try:
            expected = model(**BASE).logits
        finally:
            handle.remove()
    assert torch.allclose(steered.logits, expected, atol=1e-6)


def test_linked_interventions_are_stored_once(tmp_path) -> None:
    rotated = pv.get_intervention_class("RotatedSpaceIntervention")
    reps = [{"layer": layer, "component": "block_output", "intervention_type": rotated, "intervention_link_key": 0}
            for layer in (0, 1)]
    saved = pv.IntervenableModel(reps, tiny_gpt2())
    train_a_little(saved, False)
    saved.save(tmp_path / "linked")
    first, second = saved.sorted_keys
    names = set(load_file(str(tmp_path / "linked" / TENSORS_NAME)))
    assert names and all(n.startswith(f"interventions/{first}/") for n in names)
    loaded = pv.IntervenableModel.load(str(tmp_path / "linked"), tiny_gpt2())
    assert loaded.interventions[first] is loaded.interventions[second]
    assert_same_outputs(saved, loaded)


def test_instance_arguments_and_attributes_round_trip(tmp_path) -> None:
    noise = pv.NoiseIntervention(embed_dim=WIDTH, noise_level=0.5, seed=7)
    saved = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": noise}, tiny_gpt2())
    saved.save(tmp_path / "noise")
    loaded = pv.IntervenableModel.load(str(tmp_path / "noise"), tiny_gpt2())
    key = saved.sorted_keys[0]
    assert loaded.interventions[key].seed == 7 and float(loaded.interventions[key].noise_level) == 0.5
    assert_same_outputs(saved, loaded)
    default = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": pv.NoiseIntervention(
        embed_dim=WIDTH)}, tiny_gpt2())
    assert not torch.equal(outputs(default)[0], outputs(loaded)[0])  # seed and level really came from the file


class ScaledSteer(pv.Intervention):
    """A custom intervention with constructor arguments that are not representation fields."""

    def __init__(self, scale: float = 1.0, how: str = "add", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale, self.how = float(scale), how
        self.direction = torch.nn.Parameter(torch.randn(int(kwargs["embed_dim"])))

    def config_dict(self) -> Dict[str, Any]:
        return {"scale": self.scale, "how": self.how}

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return base + self.scale * self.direction if self.how == "add" else base - self.scale * self.direction


pv.register_intervention("TestIoScaledSteer", ScaledSteer)


def test_custom_intervention_with_config_dict(tmp_path) -> None:
    steer = ScaledSteer(scale=2.5, how="subtract", embed_dim=WIDTH)
    saved = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": steer}, tiny_gpt2())
    saved.save(tmp_path / "custom")
    entry = json.loads((tmp_path / "custom" / CONFIG_NAME).read_text())["interventions"][saved.sorted_keys[0]]
    assert entry["type"] == "TestIoScaledSteer" and entry["init_kwargs"] == {"scale": 2.5, "how": "subtract"}
    loaded = pv.IntervenableModel.load(str(tmp_path / "custom"), tiny_gpt2())
    assert (loaded.interventions[saved.sorted_keys[0]].scale, loaded.interventions[saved.sorted_keys[0]].how) == (2.5, "subtract")
    assert_same_outputs(saved, loaded)


class HalfSteer(pv.ConstantSourceIntervention):
    """Passes its own setting on to the base (as pyreft's classes pass keep_last_dim=True)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs, keep_last_dim=True)
        self.factor = torch.nn.Linear(int(kwargs["embed_dim"]), 1, dtype=kwargs.get("dtype", torch.float32))

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return base * self.factor(base.to(self.factor.weight.dtype)).to(base.dtype)


def test_saved_arguments_are_the_outermost_constructors(tmp_path) -> None:
    steer = HalfSteer(embed_dim=WIDTH, dtype=torch.float64, note="mine")
    assert steer.keep_last_dim and steer.init_kwargs == {"dtype": torch.float64, "note": "mine"}
    saved = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": steer}, tiny_gpt2())
    saved.save(tmp_path / "half")
    entry = json.loads((tmp_path / "half" / CONFIG_NAME).read_text())["interventions"][saved.sorted_keys[0]]
    assert entry["type"] == f"{__name__}.HalfSteer"
    assert entry["init_kwargs"] == {"embed_dim": WIDTH, "dtype": {"torch.dtype": "float64"}, "note": "mine"}
    loaded = pv.IntervenableModel.load(str(tmp_path / "half"), tiny_gpt2())
    assert loaded.interventions[saved.sorted_keys[0]].factor.weight.dtype == torch.float64
    assert_same_outputs(saved, loaded)


def test_save_and_load_intervention_update_an_existing_object(tmp_path) -> None:
    rotated = pv.get_intervention_class("LowRankRotatedSpaceIntervention")
    rep = {"layer": 1, "component": "block_output", "intervention_type": rotated, "low_rank_dimension": 2}
    trained = pv.IntervenableModel(rep, tiny_gpt2())
    train_a_little(trained, False)
    trained.save_intervention(tmp_path / "weights", include_model=False)
    other = pv.IntervenableModel(rep, tiny_gpt2())
    assert not torch.equal(outputs(other)[0], outputs(trained)[0])
    other.load_intervention(str(tmp_path / "weights"), include_model=False)
    assert_same_outputs(trained, other)
    with pytest.raises(SerializationError, match="without the model's parameters"):
        other.load_intervention(str(tmp_path / "weights"), include_model=True)


# -- what cannot be saved ------------------------------------------------------------------
def test_plain_callables_cannot_be_saved(tmp_path) -> None:
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": lambda b, s: b * 2},
                                    tiny_gpt2())
    with pytest.raises(SerializationError, match="plain callable"):
        pv_model.save(tmp_path / "lambda")
    assert not os.path.exists(tmp_path / "lambda") and os.listdir(tmp_path) == []


class Unregistered(pv.ZeroIntervention):
    pass


def test_importable_unregistered_types_save_by_module_qualified_name(tmp_path) -> None:
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": Unregistered()}, tiny_gpt2())
    pv_model.save(tmp_path / "x")
    key = pv_model.sorted_keys[0]
    entry = json.loads((tmp_path / "x" / CONFIG_NAME).read_text())["interventions"][key]
    assert entry["type"] == f"{Unregistered.__module__}.Unregistered"
    loaded = pv.IntervenableModel.load(str(tmp_path / "x"), tiny_gpt2())
    assert type(loaded.interventions[key]) is Unregistered
    assert_same_outputs(pv_model, loaded)


def _saved_with_type(tmp_path, type_name: str) -> str:
    saved = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.ZeroIntervention},
                                 tiny_gpt2())
    saved.save(tmp_path / "zero")
    path = tmp_path / "zero" / CONFIG_NAME
    config = json.loads(path.read_text())
    config["interventions"][saved.sorted_keys[0]]["type"] = type_name
    path.write_text(json.dumps(config))
    return str(tmp_path / "zero")


def test_local_types_fail_on_save_and_unknown_names_on_load(tmp_path) -> None:
    class Local(pv.ZeroIntervention):
        pass

    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": Local()}, tiny_gpt2())
    with pytest.raises(SerializationError, match=r"inside a function.*pv.register_intervention\('Local', Local\)"):
        pv_model.save(tmp_path / "x")
    with pytest.raises(pv.ConfigError, match=r"pv.register_intervention\('SomeoneElsesIntervention'"):
        pv.IntervenableModel.load(_saved_with_type(tmp_path, "SomeoneElsesIntervention"), tiny_gpt2())


class PlainModule(torch.nn.Module):
    def forward(self, base, source=None, subspaces=None):
        return base * 0


def test_plain_modules_must_be_registered(tmp_path) -> None:
    pv_model = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention": PlainModule()}, tiny_gpt2())
    with pytest.raises(SerializationError, match=r"plain nn.Module.*pv.register_intervention\('PlainModule', PlainModule\)"):
        pv_model.save(tmp_path / "x")


@pytest.mark.parametrize("name", ["someones_package.steering.SteerIntervention", "subprocess.Popen",
                                  "collections.OrderedDict", "torch.nn.modules.linear.Linear",
                                  f"{__name__}.PlainModule", f"{__name__}.Unregistered.forward"])
def test_qualified_names_resolve_only_to_loaded_intervention_classes(name: str, tmp_path) -> None:
    """Nothing a file names is imported, and only pv.Intervention subclasses already loaded are found."""
    with pytest.raises(pv.ConfigError, match=rf"No intervention class '{name}' is imported.*import {name.split('.')[0]}"):
        pv.IntervenableModel.load(_saved_with_type(tmp_path, name), tiny_gpt2())
    assert "someones_package" not in sys.modules


def test_qualified_names_can_be_registered_beside_short_ones() -> None:
    class LoreftIntervention(pv.ZeroIntervention):  # another library's class with our class's name
        pass

    with pytest.raises(pv.ConfigError, match=r"already registered.*module-qualified name"):
        pv.register_intervention("LoreftIntervention", LoreftIntervention)
    try:
        assert pv.register_intervention("tests_io.LoreftIntervention", LoreftIntervention) is LoreftIntervention
        assert pv.get_intervention_class("tests_io.LoreftIntervention") is LoreftIntervention
        assert pv.get_intervention_class("LoreftIntervention") is pv.LoreftIntervention
    finally:
        _REGISTRY.pop("tests_io.LoreftIntervention", None)


# -- bad input: clear error, nothing loaded ------------------------------------------------
@pytest.fixture
def saved_dir(tmp_path):
    torch.manual_seed(3)
    rotated = pv.get_intervention_class("RotatedSpaceIntervention")
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": rotated},
                                    tiny_gpt2())
    pv_model.save(tmp_path / "good")
    return tmp_path / "good"


def load_fails(directory: Any, match: str, model: Any = None) -> None:
    model = model if model is not None else tiny_gpt2()
    model.train()
    weight = model.transformer.h[0].mlp.c_fc.weight
    weight.requires_grad_(True)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(pv.IntervenableError, match=match):
        pv.IntervenableModel.load(str(directory), model)
    assert model.training and weight.requires_grad  # the model is left as it was
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def edit_config(directory: Any, change) -> None:
    path = directory / CONFIG_NAME
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


def test_missing_files(saved_dir) -> None:
    os.remove(saved_dir / TENSORS_NAME)
    load_fails(saved_dir, "Missing file")
    os.remove(saved_dir / CONFIG_NAME)
    load_fails(saved_dir, "not a saved intervention")
    load_fails(saved_dir / "nope", "No folder")


def test_truncated_tensors(saved_dir) -> None:
    path = saved_dir / TENSORS_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    load_fails(saved_dir, "checksum")
    edit_config(saved_dir, lambda c: c.update(tensors_sha256=sha256_file(str(path))))  # now the parser sees it
    load_fails(saved_dir, "not a readable safetensors")


@pytest.mark.parametrize("change, match", [
    (lambda c: c.update(surprise=1), r"unknown field\(s\) \['surprise'\]"),
    (lambda c: c["representations"][0].update(colour="red"), "unknown field"),
    (lambda c: next(iter(c["interventions"].values())).update(code="import os"), "unknown field"),
    (lambda c: c["representations"][0].update(layer="one"), "'layer' must be int"),
    (lambda c: c.update(format_version="1"), "format_version must be int"),
    (lambda c: c.update(sorted_keys={"a": 1}), "sorted_keys must be list"),
    (lambda c: c["representations"][0].update(intervention="os.system"), "must be null"),
    (lambda c: c.update(format_version=99), "Upgrade intervenable"),
])
def test_bad_json_config(saved_dir, change, match) -> None:
    edit_config(saved_dir, change)
    load_fails(saved_dir, match)


def test_json_that_is_not_an_object(saved_dir) -> None:
    (saved_dir / CONFIG_NAME).write_text("[1, 2")
    load_fails(saved_dir, "not valid JSON")


def test_wrong_shape_for_the_model(saved_dir, tmp_path) -> None:
    load_fails(saved_dir, "shape", model=tiny_gpt2(width=24))
    steer = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention_type": pv.AdditionIntervention,
                                  "source_representation": torch.ones(WIDTH)}, tiny_gpt2())
    steer.save(tmp_path / "steer")
    load_fails(tmp_path / "steer", "width 16", model=tiny_gpt2(width=24))


def test_tensor_list_must_match_the_config(saved_dir) -> None:
    path = saved_dir / TENSORS_NAME
    tensors = load_file(str(path))
    tensors["interventions/extra/payload"] = torch.zeros(3)
    save_file(tensors, str(path))
    edit_config(saved_dir, lambda c: c.update(tensors_sha256=sha256_file(str(path))))
    load_fails(saved_dir, "disagree")


def test_the_config_is_config_json_and_old_folders_still_load(saved_dir) -> None:
    """Our config has the reference's file name; the loader tells the formats apart by content."""
    assert sorted(os.listdir(saved_dir)) == ["config.json", TENSORS_NAME]
    assert json.loads((saved_dir / "config.json").read_text())["format"] == "intervenable"
    expected = outputs(pv.IntervenableModel.load(str(saved_dir), tiny_gpt2()))
    os.rename(saved_dir / "config.json", saved_dir / "intervenable_config.json")  # a folder saved before the rename
    for got, want in zip(outputs(pv.IntervenableModel.load(str(saved_dir), tiny_gpt2())), expected, strict=True):
        assert torch.equal(got, want)


def test_a_folder_that_is_not_a_saved_intervention(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    load_fails(tmp_path, "not a saved intervention")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 16}))
    load_fails(tmp_path, "not a saved intervention")


# -- atomic writes -------------------------------------------------------------------------
def test_an_interrupted_save_leaves_nothing_that_loads(saved_dir, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    good = pv.IntervenableModel.load(str(saved_dir), tiny_gpt2())
    expected = outputs(good)[0]

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"\x10\x00\x00")  # a few bytes, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    other = pv.IntervenableModel({"layer": 0, "component": "block_output", "intervention_type": pv.ZeroIntervention},
                                 tiny_gpt2())
    with pytest.raises(KeyboardInterrupt):
        other.save(tmp_path / "new")
    with pytest.raises(KeyboardInterrupt):
        other.save(saved_dir)  # over an existing save
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "new")
    assert sorted(os.listdir(tmp_path)) == ["good"]  # no temporary folders left behind
    assert sorted(os.listdir(saved_dir)) == [CONFIG_NAME, TENSORS_NAME]
    assert torch.equal(outputs(pv.IntervenableModel.load(str(saved_dir), tiny_gpt2()))[0], expected)
