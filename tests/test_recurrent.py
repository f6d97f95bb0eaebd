"""Unit "t": time steps of unrolled recurrent cells (call indices) and of nn.GRU outputs (time dimension)."""
import pytest
import torch
from torch import nn

import intervenable as pv


class UnrolledRNN(nn.Module):
    """h_t = tanh(cell(x_t, h_{t-1})): the cell module is called once per step."""

    def __init__(self, d_in=3, d_h=5):
        super().__init__()
        self.cell = nn.RNNCell(d_in, d_h)
        self.head = nn.Linear(d_h, 2)

    def forward(self, x, edit=None):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if edit is not None:
                h = edit(t, h)
        return self.head(h)


def model():
    torch.manual_seed(0)
    return UnrolledRNN().eval()


def states(m, x):
    out = []
    m(x, edit=lambda t, h: out.append(h.detach().clone()) or h)
    return out


def test_step_patch_from_another_step_per_row():
    m = model()
    base, source = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    clean = states(m, source)
    # row 0: source step 0 -> base step 2; row 1: source step 3 -> base step 1
    pv_model = pv.IntervenableModel({"component": "cell.output", "unit": "t"}, m)
    _, out = pv_model(base, [source], unit_locations={"sources->base": ([[[0], [3]]], [[[2], [1]]])})

    def edit(t, h):
        h = h.clone()
        if t == 2:
            h[0] = clean[0][0]
        if t == 1:
            h[1] = clean[3][1]
        return h

    assert torch.allclose(out, m(base, edit=edit), atol=1e-6)


def test_all_steps_take_the_same_step_of_the_source():
    m = model()
    base, source = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    pv_model = pv.IntervenableModel({"component": "cell.output", "unit": "t", "intervention": pv.AdditionIntervention}, m)
    _, out = pv_model(base, [source])
    # Adding the source's state at each step, by hand (the source's states are its own, unpatched run).
    clean = states(m, source)
    assert torch.allclose(out, m(base, edit=lambda t, h: h + clean[t]), atol=1e-5)


def test_collect_steps():
    m = model()
    base = torch.randn(2, 4, 3)
    pv_model = pv.IntervenableModel({"component": "cell.output", "unit": "t", "intervention": pv.CollectIntervention}, m)
    (_, collected), _ = pv_model(base, unit_locations={"base": [[[1], [3]]]})
    clean = states(m, base)
    got = collected[0]  # one entry per step where rows were collected: step 1 (row 0), step 3 (row 1)
    assert torch.allclose(got[0], clean[1][[0]]) and torch.allclose(got[1], clean[3][[1]])


def test_step_past_the_source_length_is_an_error():
    m = model()
    pv_model = pv.IntervenableModel({"component": "cell.output", "unit": "t"}, m)
    with pytest.raises(pv.LocationError, match="never reached"):
        pv_model(torch.randn(1, 4, 3), [torch.randn(1, 4, 3)], unit_locations={"sources->base": ([[[7]]], [[[1]]])})


def test_nn_gru_time_dimension():
    torch.manual_seed(0)
    gru = nn.GRU(3, 4, batch_first=True).eval()
    base, source = torch.randn(2, 5, 3), torch.randn(2, 5, 3)

    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = gru
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            out, _ = self.gru(x)
            return self.head(out)

    torch.manual_seed(1)
    w = Wrapper().eval()
    pv_model = pv.IntervenableModel({"component": "gru.output", "unit": "t"}, w)
    _, out = pv_model(base, [source], unit_locations={"sources->base": (1, 3)})
    src_out, _ = gru(source)
    base_out, _ = gru(base)
    base_out = base_out.clone()
    base_out[:, 3] = src_out[:, 1]
    assert torch.allclose(out, w.head(base_out), atol=1e-6)
