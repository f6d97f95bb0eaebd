"""EAP-IG edge scores against integrated gradients written out by hand on a 2-layer GPT-2.

Ground truth from tests/circuit_hand.py (plain torch hooks): node outputs read by hand give
``Δu = u_source - u_base``; ``g_v(point)`` is the metric's gradient at receiver ``v``'s input, by
autograd through a hand-written probe at that point of the path. Each method's score of ``u->v`` is
``Δu . mean_k g_v(a_k)``, summed over positions, with the steps' midpoints ``a_k = (k + 1/2) / steps``:

* ``eap-ig-inputs``: layer 0's input moved by ``a_k Δinput`` (every node recomputed from it);
* ``eap-ig-activations``: ``u``'s group (the input, layer ``l``'s heads together, ``m{l}``) written into
  the stream with ``a_k`` times the group's summed ``Δ`` added, which every later reader sees;
* ``eap-ig-blocks``: the same addition read only by the receivers of ``v``'s layer that read the group
  (the logits a layer of their own), the stream itself unchanged.

q / k / v receivers are separate (``qkv=True``), so every kind of edge is checked.
"""
from __future__ import annotations

from typing import Dict, List

import pytest
import torch
import transformers as T

from circuit_hand import Gpt2Hand, _parse
from intervenable.circuits import edge_attribution_patching

torch.set_num_threads(1)
BASE = torch.tensor([[5, 17, 42, 8, 23, 9]])
SOURCE = torch.tensor([[5, 30, 40, 8, 11, 9]])
TARGET, FOIL = 3, 4
STEPS = 2
ALPHAS = [(k + 0.5) / STEPS for k in range(STEPS)]


def _model():
    torch.manual_seed(0)
    cfg = T.GPT2Config(n_layer=2, n_embd=32, n_head=4, n_positions=16, vocab_size=50, initializer_range=0.2,
                       bos_token_id=1, eos_token_id=2)
    return T.GPT2LMHeadModel(cfg).eval()


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[0, TARGET] - logits[0, FOIL]


def _group(node: str) -> str:
    """The interpolation group a node moves with: ``input``, ``a{l}`` (layer l's heads) or ``m{l}``."""
    return node.split(".")[0]


def _layer(receiver: str, n_layers: int) -> int:
    kind = _parse(receiver)
    return n_layers if kind[0] == "logits" else kind[1]


def _reads(group: str, receiver: str, n_layers: int) -> bool:
    """GPT-2 is sequential: a layer's MLP reads its own heads; heads read the layers below."""
    if group == "input":
        return True
    layer, kind = int(group[1:]), _parse(receiver)[0]
    r = _layer(receiver, n_layers)
    return r > layer or (group[0] == "a" and kind == "mlp" and r == layer)


def _grad(hand: Gpt2Hand, v: str, width: int, shift=None, extra=None) -> torch.Tensor:
    leaf = torch.zeros(1, BASE.shape[1], width, requires_grad=True)
    deltas = dict(extra or {})
    deltas[v] = deltas.get(v, 0) + leaf
    return torch.autograd.grad(_metric(hand.patched_many(BASE, deltas, shift)), leaf)[0][0]


@pytest.mark.parametrize("method", ["eap-ig-inputs", "eap-ig-activations", "eap-ig-blocks"])
def test_eap_ig_scores_equal_hand_written_integrated_gradients(method: str) -> None:
    model = _model()
    hand = Gpt2Hand(model)
    d, L = model.config.n_embd, model.config.n_layer
    scores = edge_attribution_patching(model, BASE, SOURCE, target=TARGET, foil=FOIL, method=method, steps=STEPS,
                                       qkv=True).scores
    base, src = hand.outputs(BASE), hand.outputs(SOURCE)
    delta = {u: src[u] - base[u] for u in base}
    moved: Dict[str, torch.Tensor] = {"input": delta["input"]}
    for l in range(L):
        moved[f"a{l}"] = sum(delta[f"a{l}.h{h}"] for h in range(model.config.n_head))
        moved[f"m{l}"] = delta[f"m{l}"]
    receivers: List[str] = sorted({n.split("->")[1] for n in scores})
    mean_grad: Dict[tuple, torch.Tensor] = {}

    def gradient(group: str, v: str) -> torch.Tensor:
        key = (group, v) if method != "eap-ig-inputs" else ("input", v)
        if key not in mean_grad:
            grads = []
            for a in ALPHAS:
                if method == "eap-ig-inputs":
                    grads.append(_grad(hand, v, d, shift={"input": a * moved["input"]}))
                elif method == "eap-ig-activations":
                    grads.append(_grad(hand, v, d, shift={group: a * moved[group]}))
                else:  # only v's layer's readers of the group see it
                    block = [r for r in receivers if _layer(r, L) == _layer(v, L) and _reads(group, r, L)]
                    grads.append(_grad(hand, v, d, extra={r: a * moved[group] for r in block}))
            mean_grad[key] = torch.stack(grads).mean(0)
        return mean_grad[key]

    worst, biggest = 0.0, 0.0
    for name, score in scores.items():
        u, _, v = name.partition("->")
        assert _reads(_group(u), v, L), name  # the graph's edges are exactly the reads
        want = float((delta[u] * gradient(_group(u), v)).sum())
        worst = max(worst, abs(score - want) / (1e-3 + abs(want)))
        biggest = max(biggest, abs(want))
    assert biggest > 1e-2  # the scores are not all zero
    assert worst < 1e-3, worst
    # every edge: layer 0's 12 q/k/v receivers read input; m0 input + 4 heads; layer 1's 12 read 6 nodes; m1 10; logits 11
    assert len(scores) == 12 + 5 + 12 * 6 + 10 + 11
