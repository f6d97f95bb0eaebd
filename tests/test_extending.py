"""The two checklists of docs/architecture.md ("Extending"), followed to the letter.

A new intervention type and a new model family are added here exactly as the
checklists say, and each is checked against a hand-written computation.
"""
from types import SimpleNamespace

import torch
from torch import nn

import intervenable as pv
from intervenable.interventions.base import Capabilities
from intervenable.sites.registry import Architecture, attr, out, register_architecture


# -- a new intervention type ---------------------------------------------------
@pv.register_intervention("test_extending.ScaleIntervention")
class ScaleIntervention(pv.Intervention):
    """Multiply the selected units by a constant factor; reads no source."""

    needs_source = False

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(factor=factor, **kwargs)
        self.factor = factor

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return base * self.factor


class NormProbe(nn.Module):
    """A plain nn.Module that declares it collects: the norm of each unit, activation untouched."""

    collects = True
    needs_source = False

    def forward(self, base, source=None, subspaces=None, **kwargs):
        return base.norm(dim=-1)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def test_capabilities_are_read_once_into_a_frozen_record():
    model = mlp()
    pv_model = pv.IntervenableModel(
        [{"component": "0.output", "intervention": NormProbe()},
         {"component": "0.output", "intervention": pv.RotatedSpaceIntervention},
         {"component": "0.output", "intervention": pv.SkipIntervention}],
        model,
    )
    caps = [slot.caps for slot in pv_model._slots]
    assert caps[0] == Capabilities(needs_source=False, collects=True, flatten_units=False, uses_module_input=False)
    assert caps[1] == Capabilities(needs_source=True, collects=False, flatten_units=True, uses_module_input=False)
    assert caps[2].uses_module_input and not caps[2].collects
    assert Capabilities.of(pv.CollectIntervention()).collects
    assert Capabilities.of(nn.Identity()) == Capabilities()


def test_new_intervention_type_runs_saves_and_loads(tmp_path):
    model = mlp()
    x = torch.randn(2, 4)
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention": ScaleIntervention(factor=3.0)}, model)
    _, out = pv_model(x)
    expected = model[2](torch.relu(model[0](x) * 3.0))
    assert torch.allclose(out, expected, atol=1e-6)
    pv_model.save(str(tmp_path / "scale"))
    loaded = pv.IntervenableModel.load(str(tmp_path / "scale"), model)
    (only,) = loaded.interventions.values()
    assert isinstance(only, ScaleIntervention) and only.factor == 3.0
    assert torch.allclose(loaded(x)[1], expected, atol=1e-6)


def test_plain_module_that_collects_appears_in_collected_activations():
    model = mlp()
    x = torch.randn(2, 4)
    pv_model = pv.IntervenableModel({"component": "0.output", "intervention": NormProbe()}, model)
    (_, collected), out = pv_model(x)
    assert torch.allclose(collected[0], model[0](x).norm(dim=-1), atol=1e-6)
    assert torch.allclose(out, model(x), atol=1e-6)  # collecting left the activation untouched


# -- a new model family --------------------------------------------------------
class ToyBlock(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))

    def forward(self, h):
        return h + self.mlp(h)


class ToyStackLM(nn.Module):
    """A residual stack that is no transformers model: embeddings, blocks, a head."""

    def __init__(self, vocab=11, width=8, layers=3):
        super().__init__()
        self.config = SimpleNamespace(model_type="toy_stack", width=width, n_layers=layers)
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(ToyBlock(width) for _ in range(layers))
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


TOY = register_architecture(
    Architecture(
        name="toy_stack",
        model_types=("toy_stack",),
        class_names=("ToyStackLM",),
        num_layers=attr("n_layers"),
        components={
            "block_output": out("blocks.{layer}", attr("width")),
            "mlp_output": out("blocks.{layer}.mlp", attr("width")),
        },
        description="A toy residual stack (tests/test_extending.py).",
    )
)


def test_new_family_by_the_checklist():
    torch.manual_seed(0)
    model = ToyStackLM().eval()
    base = torch.tensor([[1, 2, 3, 4]])
    source = torch.tensor([[5, 6, 7, 8]])
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output"}, model)
    _, out = pv_model(base, [source], unit_locations={"sources->base": 2})

    def run(ids, patch=None):
        h = model.embed(ids)
        for i, block in enumerate(model.blocks):
            h = block(h)
            if patch is not None and i == 1:
                h = h.clone()
                h[:, 2] = patch[:, 2]
        return h

    def hidden_at_1(ids):
        h = model.embed(ids)
        for block in model.blocks[:2]:
            h = block(h)
        return h

    expected = model.head(run(base, patch=hidden_at_1(source)))
    assert torch.allclose(out, expected, atol=1e-6)
    table = pv.list_components(model, layer=1, print_table=False)
    assert set(table) == {"block_output", "mlp_output"}
    assert table["block_output"].startswith("blocks.1")
