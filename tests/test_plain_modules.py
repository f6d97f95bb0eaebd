"""Raw module paths on models that are not transformers: a small MLP and a small CNN."""
import torch
from torch import nn

import intervenable as pv


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.conv1(x))
        h = h + self.block(h)  # a residual block
        return self.head(h.mean(dim=(2, 3)))


def by_hand_mlp(model, x, layer, value):
    h = x
    for i, module in enumerate(model):
        h = module(h)
        if i == layer:
            h = value(h)
    return h


def test_mlp_patch_whole_activation_from_source():
    model = mlp()
    base, source = torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        clean = model[:3](source)
    pv_model = pv.IntervenableModel({"component": "2.output"}, model)
    _, out = pv_model(base, [source])
    assert torch.allclose(out, by_hand_mlp(model, base, 2, lambda h: clean), atol=1e-6)


def test_mlp_neurons_as_units_and_input_hook():
    model = mlp()
    base, source = torch.randn(4, 6), torch.randn(4, 6)
    with torch.no_grad():
        clean = model[:2](source)
    # Units of a 2-D activation index its second dimension: here neurons 1 and 5 of the input of layer 2.
    pv_model = pv.IntervenableModel({"component": "2.input", "max_number_of_units": 2}, model)
    _, out = pv_model(base, [source], unit_locations={"sources->base": [[[1, 5]] * 4]})

    def patch(h):
        h = h.clone()
        h[:, [1, 5]] = clean[:, [1, 5]]
        return h

    assert torch.allclose(out, by_hand_mlp(model, base, 1, patch), atol=1e-6)


def test_cnn_channel_patch_and_collect():
    torch.manual_seed(1)
    model = SmallCNN().eval()
    base, source = torch.randn(2, 3, 5, 5), torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        clean_block = model.block(torch.relu(model.conv1(source)))
    pv_model = pv.IntervenableModel({"component": "block.output"}, model)
    # For a [batch, channels, H, W] activation the units are channels.
    _, out = pv_model(base, [source], unit_locations={"sources->base": [[[2]] * 2]})
    with torch.no_grad():
        h = torch.relu(model.conv1(base))
        b = model.block(h).clone()
        b[:, 2] = clean_block[:, 2]
        expected = model.head((h + b).mean(dim=(2, 3)))
    assert torch.allclose(out, expected, atol=1e-6)

    collector = pv.IntervenableModel({"component": "conv1.output", "intervention": pv.CollectIntervention}, model)
    (_, collected), _ = collector(base)
    assert torch.allclose(collected[0], model.conv1(base), atol=1e-6)


def test_list_components_for_an_unregistered_model_lists_modules(capsys):
    table = pv.list_components(SmallCNN())
    assert "block.0" in table and "conv1" in table
    assert capsys.readouterr().out == ""  # returned, not printed: a notebook shows it once
    shown = repr(table).splitlines()
    assert "raw module paths" in shown[0]
    assert shown[1:] == [f"  {name.ljust(max(map(len, table)))}  {where}" for name, where in table.items()]


def test_abstract_component_on_unregistered_model_explains_the_fix():
    import pytest

    with pytest.raises(pv.ComponentError, match="no entry in the architecture registry.*raw module path"):
        pv.IntervenableModel({"layer": 0, "component": "block_output"}, SmallCNN())
