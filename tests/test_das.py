"""DAS demonstrations on the hierarchical equality task (seeded, CPU).

An MLP learns ``O = (W == X) == (Y == Z)``; distributed alignment search then
finds the variable ``WX = (W == X)`` in its first hidden layer: interchanging
the learned subspace with a source's makes the model output what the causal
model predicts for the interchange ``WX <- WX(source)``. Ground truth is the
causal model's counterfactual label, computed without the network.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import intervenable as pv
from intervenable.causal_model import hierarchical_equality_model
from intervenable.interventions import (
    BoundlessRotatedSpaceIntervention,
    LowRankRotatedSpaceIntervention,
    RotatedSpaceIntervention,
)
from intervenable.training import batches, eval_alignment, train_alignment

HIDDEN = 64
SITE = "0.output"  # first hidden layer (pre-activation) of the MLP


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread; restore the setting afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels.long().reshape(-1))


def accuracy(logits_list, labels_list) -> float:
    logits, labels = logits_list[0], labels_list[0]
    return float((logits.argmax(-1) == labels.long().reshape(-1)).float().mean())


@pytest.fixture(scope="module")
def task():
    """The causal model, a trained MLP, and counterfactual train / held-out sets for WX."""
    causal = hierarchical_equality_model(embedding_dim=4, n_entities=20, seed=0)
    factual = causal.generate_factual_dataset(20000, causal.sample_input_tree_balanced)
    held_out = causal.generate_factual_dataset(2000, causal.sample_input_tree_balanced)
    x = torch.stack([e["input_ids"] for e in factual])
    y = torch.stack([e["labels"] for e in factual]).long().reshape(-1)
    torch.manual_seed(0)
    mlp = nn.Sequential(
        nn.Linear(16, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 2),
    )
    opt = torch.optim.Adam(mlp.parameters(), lr=5e-3)
    for _ in range(8):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 256):
            idx = perm[i : i + 256]
            opt.zero_grad()
            loss_fn(mlp(x[idx]), y[idx]).backward()
            opt.step()
    mlp.eval()
    xt = torch.stack([e["input_ids"] for e in held_out])
    yt = torch.stack([e["labels"] for e in held_out]).long().reshape(-1)
    with torch.no_grad():
        factual_acc = float((mlp(xt).argmax(-1) == yt).float().mean())

    def wx_only():
        return {"WX": causal.rng.choice([True, False])}

    def counterfactuals(n):
        return causal.generate_counterfactual_dataset(
            n, lambda _: 0, 1, sampler=causal.sample_input_tree_balanced, intervention_sampler=wx_only
        )

    return {"causal": causal, "mlp": mlp, "factual_acc": factual_acc,
            "train": counterfactuals(8000), "test": counterfactuals(2000)}


def iia(pv_model, examples) -> float:
    return eval_alignment(pv_model, batches(examples, 500), accuracy)


def test_mlp_solves_the_task(task):
    assert task["factual_acc"] > 0.99


def test_counterfactual_labels_follow_the_causal_model(task):
    causal = task["causal"]
    for example in task["test"][:50]:
        base = example["input_ids"].reshape(4, 4)
        source = example["source_input_ids"][0].reshape(4, 4)
        expected = bool(torch.equal(source[0], source[1])) == bool(torch.equal(base[2], base[3]))
        assert bool(example["labels"].item()) == expected
        assert torch.equal(example["source_input_ids"][1], torch.zeros(16))  # YZ slot unused
    assert causal.outputs == ["O"]


def test_das_full_rotation_recovers_wx_and_stays_orthogonal(task):
    torch.manual_seed(1)
    mlp = task["mlp"]
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    rotation = RotatedSpaceIntervention(embed_dim=HIDDEN)
    rotation.set_interchange_dim(16)
    pv_model = pv.IntervenableModel({"component": SITE, "intervention": rotation}, mlp)
    control = iia(pv_model, task["test"])  # random, untrained rotation
    train_alignment(pv_model, batches(task["train"], 64), loss_fn, lr=1e-2, epochs=4)
    trained = iia(pv_model, task["test"])
    assert 0.35 < control < 0.65, control
    assert trained >= 0.95, trained
    key = pv_model.sorted_keys[0]
    R = pv_model.interventions[key].rotate_layer.weight.detach()
    assert torch.allclose(R @ R.T, torch.eye(HIDDEN), atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


def test_das_low_rank_recovers_wx(task):
    torch.manual_seed(2)
    intervention = LowRankRotatedSpaceIntervention(embed_dim=HIDDEN, low_rank_dimension=8)
    pv_model = pv.IntervenableModel({"component": SITE, "intervention": intervention}, task["mlp"])
    control = iia(pv_model, task["test"])
    train_alignment(pv_model, batches(task["train"], 64), loss_fn, lr=1e-2, epochs=4)
    trained = iia(pv_model, task["test"])
    assert 0.35 < control < 0.65, control
    assert trained >= 0.95, trained
    R = intervention.rotate_layer.weight.detach()  # [64, 8], orthonormal columns
    assert torch.allclose(R.T @ R, torch.eye(8), atol=1e-5)


def test_boundless_das_shrinks_its_boundary_and_keeps_accuracy(task):
    torch.manual_seed(3)
    intervention = BoundlessRotatedSpaceIntervention(embed_dim=HIDDEN)
    pv_model = pv.IntervenableModel({"component": SITE, "intervention": intervention}, task["mlp"])
    start_width = intervention.learned_width()

    def width_penalty(model):
        return intervention.intervention_boundaries.sum()

    train_alignment(pv_model, batches(task["train"], 64), loss_fn, lr=1e-2, epochs=4,
                    extra_loss=width_penalty, temperature_start=5.0, temperature_end=0.1)
    assert float(intervention.temperature) == pytest.approx(0.1, rel=1e-3)
    width = intervention.learned_width()
    assert width < start_width < HIDDEN, (start_width, width)
    assert iia(pv_model, task["test"]) >= 0.95
