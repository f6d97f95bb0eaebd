"""CausalModel: forward runs, interchanges, balanced sampling and counterfactual datasets."""
from __future__ import annotations

import collections

import pytest
import torch

from intervenable.causal_model import CausalModel, hierarchical_equality_model
from intervenable.errors import ConfigError


def and_model() -> CausalModel:
    variables = ["A", "B", "C"]
    values = {v: [True, False] for v in variables}
    parents = {"A": [], "B": [], "C": ["A", "B"]}
    functions = {"A": lambda: True, "B": lambda: False, "C": lambda a, b: a and b}
    return CausalModel(variables, values, parents, functions, seed=0)


def split(t: torch.Tensor):
    return [tuple(row.tolist()) for row in t.reshape(4, 4)]


def test_structure_and_forward():
    model = hierarchical_equality_model(seed=0)
    assert model.inputs == ["W", "X", "Y", "Z"] and model.outputs == ["O"]
    assert model.timesteps == {"W": 0, "X": 0, "Y": 0, "Z": 0, "WX": 1, "YZ": 1, "O": 2}
    assert model.variables[-1] == "O" and set(model.variables[:4]) == {"W", "X", "Y", "Z"}
    e = model.values["W"]
    setting = model.run_forward({"W": e[0], "X": e[0], "Y": e[1], "Z": e[2]})
    assert setting["WX"] is True and setting["YZ"] is False and setting["O"] is False
    forced = model.run_forward({"W": e[0], "X": e[0], "Y": e[1], "Z": e[2], "YZ": True})
    assert forced["O"] is True and forced["WX"] is True


def test_run_interchange_takes_the_variable_from_the_source():
    model = hierarchical_equality_model(seed=0)
    e = model.values["W"]
    base = {"W": e[0], "X": e[1], "Y": e[2], "Z": e[2]}  # WX False, YZ True -> O False
    source = {"W": e[3], "X": e[3], "Y": e[4], "Z": e[5]}  # WX True
    result = model.run_interchange(base, {"WX": source})
    assert result["WX"] is True and result["YZ"] is True and result["O"] is True
    assert model.run_interchange(base, {"YZ": source})["O"] is True  # YZ(source) False == WX False


def test_equivalence_classes_and_balanced_sampling():
    model = hierarchical_equality_model(n_entities=20, seed=0)
    model.generate_equiv_classes()
    assert len(model.equiv_classes["WX"][True]) == 20 and len(model.equiv_classes["WX"][False]) == 380
    assert len(model.equiv_classes["O"][True]) == 2
    counts = collections.Counter()
    for _ in range(2000):
        inputs = model.sample_input_tree_balanced()
        assert set(inputs) == {"W", "X", "Y", "Z"}
        assert all(inputs[v] in model.values[v] for v in inputs)
        total = model.run_forward(inputs)
        counts[(total["O"], total["WX"])] += 1
    for cell in [(True, True), (True, False), (False, True), (False, False)]:
        assert 400 < counts[cell] < 600, counts  # each a quarter, by construction
    wx_true = model.sample_input_tree_balanced(output_var="WX", output_var_value=True)
    assert wx_true["W"] == wx_true["X"]


def test_counterfactual_dataset_labels_and_shapes():
    model = hierarchical_equality_model(seed=1)
    data = model.generate_counterfactual_dataset(
        60, lambda iv: 0 if set(iv) == {"WX"} else 1 if set(iv) == {"YZ"} else 2, 4,
        sampler=model.sample_input_tree_balanced,
    )
    assert len(data) == 60
    for ex in data:
        assert ex["input_ids"].shape == (16,) and ex["source_input_ids"].shape == (2, 16)
        w, x, y, z = split(ex["input_ids"])
        wx, yz = w == x, y == z
        kind = int(ex["intervention_id"])
        if kind in (0, 2):  # WX intervened: its source is the first
            sw, sx, _, _ = split(ex["source_input_ids"][0])
            wx = sw == sx
        if kind in (1, 2):  # YZ intervened: its source follows any WX source
            _, _, sy, sz = split(ex["source_input_ids"][1 if kind == 2 else 0])
            yz = sy == sz
        if kind != 2:
            assert torch.equal(ex["source_input_ids"][1], torch.zeros(16))
        assert bool(ex["labels"].item()) == (wx == yz)
        assert bool(ex["base_labels"].item()) == ((w == x) == (y == z))


def test_default_sampler_and_reproducibility():
    first = hierarchical_equality_model(seed=3).generate_counterfactual_dataset(10, lambda iv: 0, 2)
    second = hierarchical_equality_model(seed=3).generate_counterfactual_dataset(10, lambda iv: 0, 2)
    for a, b in zip(first, second):
        assert all(torch.equal(a[k], b[k]) for k in a)
    factual = hierarchical_equality_model(seed=3).generate_factual_dataset(20)
    for ex in factual:
        w, x, y, z = split(ex["input_ids"])
        assert bool(ex["labels"].item()) == ((w == x) == (y == z))


def test_live_paths_and_filters():
    model = and_model()
    paths = model.find_live_paths({"A": True, "B": False})
    assert paths[2] == [["B", "C"]]  # with B False, only B changes C
    both = model.find_live_paths({"A": True, "B": True})
    assert sorted(both[2]) == [["A", "C"], ["B", "C"]]
    assert model.get_partial_filter({"C": False})(model.run_forward({"A": True, "B": False}))
    assert model.get_specific_path_filter("B", "C")(model.run_forward({"A": True, "B": False}))
    assert not model.get_specific_path_filter("A", "C")(model.run_forward({"A": True, "B": False}))
    assert model.sample_input(mandatory=lambda s: s["C"]) == {"A": True, "B": True}


def test_invalid_models_raise_with_a_fix():
    with pytest.raises(ConfigError, match="parents"):
        CausalModel(["A"], {"A": [0]}, {}, {"A": lambda: 0})
    with pytest.raises(ConfigError, match="unknown parent"):
        CausalModel(["A"], {"A": [0]}, {"A": ["Q"]}, {"A": lambda q: q})
    with pytest.raises(ConfigError, match="intermediate"):
        and_model().sample_intervention()
