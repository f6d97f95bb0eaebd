"""The edge graph, selection, pruning, JSON and plots of circuits; input forms and errors.

Counts are closed forms (every node before a receiver feeds it); selections are checked against
sorting the scores by hand; pruning and greedy search against small hand-built circuits.
"""
from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from circuit_hand import Gpt2Hand
from families import present
from intervenable import Circuit, edge_attribution_patching
from intervenable.circuits import layout_of
from intervenable.errors import ComponentError, ConfigError, InputError
from test_circuits_exact import BASE, FOIL, SOURCE, TARGET, _gpt2, _hand_exact
from test_fast_families import FAMILIES

torch.set_num_threads(1)


def test_gpt2_small_graph_has_eap_ig_names_and_counts():
    model = T.GPT2LMHeadModel(T.GPT2Config(n_layer=12, n_head=12, n_embd=24, n_positions=8, vocab_size=10))
    lay = layout_of(model, qkv=True)
    L, H = 12, 12
    heads = sum(3 * H * (1 + l * (H + 1)) for l in range(L))
    mlps = sum(1 + l * (H + 1) + H for l in range(L))
    assert lay.n_edges == heads + mlps + 1 + L * (H + 1) == 32491
    names = set(lay.edge_names)
    assert {"input->a0.h0<q>", "a0.h1->m1", "a0.h1->m0", "a3.h2->a7.h11<v>", "m11->logits"} <= names
    assert "a1.h0->m0" not in names and "m0->a0.h0<k>" not in names and "a2.h3->a2.h4<q>" not in names
    assert len(layout_of(model).edge_names) == (heads // 3) + mlps + 1 + L * (H + 1)


def _scored(seed=0):
    model, _ = _gpt2()
    lay = layout_of(model)
    g = torch.Generator().manual_seed(seed)
    return Circuit(lay, torch.randn(lay.n_forward, lay.n_receivers, generator=g, dtype=torch.float64)), lay


def test_top_threshold_and_greedy_select_by_score():
    c, lay = _scored()
    scores = c.scores
    by_abs = sorted(scores, key=lambda e: -abs(scores[e]))
    assert set(c.top(7).edges) == set(by_abs[:7])
    assert set(c.top(7, absolute=False).edges) == set(sorted(scores, key=lambda e: -scores[e])[:7])
    t = abs(scores[by_abs[9]])
    assert set(c.threshold(t).edges) == set(by_abs[:10])
    assert len(c.top(0.5)) == round(0.5 * lay.n_edges)
    greedy = c.greedy(12)
    assert len(greedy) == 12
    kept = set(greedy.edges)
    first = max((e for e in scores if e.endswith("->logits")), key=lambda e: abs(scores[e]))
    assert first in kept
    for e in kept:  # every edge leads to a node already in the circuit, or to the logits
        child = e.split("->")[1].split("<")[0]
        assert child == "logits" or any(k.startswith(child + "->") for k in kept), e


def test_prune_drops_nodes_without_a_path_from_input_to_logits():
    _, lay = _scored()
    keep = torch.zeros(lay.n_forward, lay.n_receivers, dtype=torch.bool)
    chosen = ["input->a0.h0", "a0.h0->logits", "a1.h2->logits", "a0.h1->m1", "input->a0.h1", "a0.h3->a1.h2"]
    for name in chosen:
        u, r = lay.edge_lookup[name]
        keep[u, r] = True
    c = Circuit(lay, torch.ones(lay.n_forward, lay.n_receivers), keep)
    pruned = c.prune()
    # a1.h2 reads a0.h3, which reads nothing; m1 sends nothing, so a0.h1's edges go too
    assert set(pruned.edges) == {"input->a0.h0", "a0.h0->logits"}
    assert pruned.nodes == ["input", "a0.h0", "logits"]
    assert set(c.edges) == set(chosen)  # selections return new circuits


def test_json_round_trip_in_eap_ig_format(tmp_path):
    c, lay = _scored()
    c = c.top(20)
    path = tmp_path / "circuit.json"
    text = c.to_json(path)
    d = json.loads(path.read_text())
    assert json.loads(text) == d
    assert d["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32, "qkv": False}
    assert set(d["edges"]["a0.h1->m1"]) == {"score", "in_graph"} and d["nodes"]["logits"]["in_graph"]
    back = Circuit.from_json(path)
    assert torch.equal(back.matrix, c.matrix) and torch.equal(back.in_graph, c.in_graph)
    assert back.scores == c.scores and back.edges == c.edges
    del d["cfg"]["qkv"]  # EAP-IG's own files: qkv read from the edge names
    assert Circuit.from_json(d).layout == lay
    d["edges"]["a9.h0->m1"] = {"score": 1.0, "in_graph": True}
    with pytest.raises(InputError, match="does not have"):
        Circuit.from_json(d)
    with pytest.raises(InputError, match="Not a circuit JSON"):
        Circuit.from_json("{not json")


def test_plot_draws_every_edge_and_node(tmp_path):
    c, _ = _scored()
    small = c.top(15).prune()
    fig = small.plot(tmp_path / "c.png")
    ax = fig.axes[0]
    assert len(ax.lines) == len(small.edges) and len(ax.texts) == len(small.nodes)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lists_of_pairs_average_per_pair_scores_across_lengths():
    model, Hand = _gpt2()
    long_b, long_s = torch.tensor([[5, 17, 42, 8, 23, 9, 3]]), torch.tensor([[5, 30, 40, 8, 23, 9, 3]])
    both = edge_attribution_patching(model, [BASE, long_b], [SOURCE, long_s], target=[TARGET, 7], foil=[FOIL, 8],
                                     method="eap")
    one = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="eap").scores
    two = edge_attribution_patching(model, long_b, long_s, target=7, foil=8, method="eap").scores
    for e, v in both.scores.items():
        assert v == pytest.approx((one[e] + two[e]) / 2, abs=1e-7)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_zero_and_mean_ablation_patch_the_ablated_value(ablation):
    model, Hand = _gpt2()
    hand = Hand(model)
    c = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="exact", ablation=ablation)
    base_out, src_out = hand.outputs(BASE), hand.outputs(SOURCE)
    with torch.no_grad():
        base = float(model(input_ids=BASE).logits[0, -1, TARGET] - model(input_ids=BASE).logits[0, -1, FOIL])
        for name in ["input->m0", "a0.h2->a1.h1", "m0->logits", "a1.h3->logits"]:
            u, _, v = name.partition("->")
            value = torch.zeros_like(base_out[u]) if ablation == "zero" else src_out[u].mean(0, keepdim=True)
            logits = hand.patched(BASE, v, (value - base_out[u]).unsqueeze(0))
            assert c.scores[name] == pytest.approx(float(logits[0, TARGET] - logits[0, FOIL]) - base, abs=2e-5)


def test_verify_reruns_the_largest_edges_exactly():
    model, Hand = _gpt2()
    c = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method="eap", verify=5, qkv=True)
    top = sorted(c.scores, key=lambda e: -abs(c.scores[e]))[:5]
    assert list(c.exact) == top
    hand = _hand_exact(model, Hand(model), top)
    for e in top:
        assert c.exact[e] == pytest.approx(hand[e], abs=2e-5)
    assert c.info["verify_max_abs_error"] == pytest.approx(max(abs(c.scores[e] - c.exact[e]) for e in top), abs=1e-9)


def test_families_without_additive_heads_or_descriptions_are_refused():
    if present("olmo2"):  # absent before transformers 4.47 (tests/families.py declares it; test_archs checks that)
        olmo2, _ = FAMILIES["olmo2"]()  # reads the stream itself: no norm for a changed receiver's input
        with pytest.raises(ComponentError, match="no norm before layer 0's attention"):
            layout_of(olmo2)
    opt, _ = FAMILIES["opt"]()
    with pytest.raises(ComponentError, match="residual=Residual"):
        layout_of(opt)


def test_bad_arguments_name_the_fix():
    model, _ = _gpt2()
    kw = dict(target=TARGET, foil=FOIL)
    with pytest.raises(ConfigError, match="Unknown method"):
        edge_attribution_patching(model, BASE, SOURCE, method="acdc", **kw)
    with pytest.raises(ConfigError, match="steps"):
        edge_attribution_patching(model, BASE, SOURCE, method="eap", steps=4, **kw)
    with pytest.raises(InputError, match="same length"):
        edge_attribution_patching(model, BASE, SOURCE[:, :-1], **kw)
    with pytest.raises(InputError, match="needs source prompts"):
        edge_attribution_patching(model, BASE, **kw)
    with pytest.raises(InputError, match="one source per base"):
        edge_attribution_patching(model, [BASE, BASE], [SOURCE], **kw)
    with pytest.raises(InputError, match="foil"):
        edge_attribution_patching(model, BASE, SOURCE, target=TARGET)


def test_data_rows_are_the_same_pairs_as_lists():
    """faithfulness(model, circuit, data): rows with base / source / target / foil read as the list form."""
    from intervenable import faithfulness

    model, _ = _gpt2()
    other_b, other_s = torch.tensor([[7, 1, 4, 8, 23, 9]]), torch.tensor([[7, 2, 4, 9, 23, 9]])
    circuit = edge_attribution_patching(model, [BASE, other_b], [SOURCE, other_s], target=[TARGET, 5],
                                        foil=[FOIL, 6], method="eap")
    rows = [{"base": BASE, "source": SOURCE, "target": TARGET, "foil": FOIL},
            {"base": other_b, "source": other_s, "target": 5, "foil": 6}]
    a = faithfulness(model, circuit, rows, sizes=[5, 30], random_baseline=False)
    b = faithfulness(model, circuit, [BASE, other_b], [SOURCE, other_s], target=[TARGET, 5], foil=[FOIL, 6],
                     sizes=[5, 30], random_baseline=False)
    assert a.faithfulness == b.faithfulness and a.full == b.full and a.empty == b.empty
