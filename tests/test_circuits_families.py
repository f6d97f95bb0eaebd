"""Every family with a residual description: the edge decomposition reproduces the model's own runs.

With every edge reading its node's source value (the empty circuit) each receiver reads the sum of
the source run's node outputs plus the constants, i.e. the source run's stream, so the metric must
be the source prompt's as the model computes it (plain forward); with none, the base prompt's. This
checks on each family at once that the nodes (input, per-head output-projection terms without the
bias, MLPs) add up to the stream, that each receiver reads through the right norm, that the q / k / v
copies (and ungrouped keys and values under grouped-query attention) recombine into the model's
attention, and the parallel-residual wiring.
"""
from __future__ import annotations

import pytest
import torch

from families import provided
from intervenable import Circuit, faithfulness
from intervenable.circuits import layout_of
from intervenable.errors import ComponentError
from test_fast_families import CLEAN, CORRUPT, FAMILIES, TARGET

torch.set_num_threads(1)

EDGE_FAMILIES = ["gpt2", "llama", "llama_sdpa", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "gpt_oss",
                 "phi", "gpt_neox", "gpt_neox_serial", "gpt_neo", "gptj"]


@pytest.mark.parametrize("qkv", [False, True])
@pytest.mark.parametrize("family", provided(EDGE_FAMILIES))
def test_empty_circuit_is_the_source_run_and_full_circuit_the_base_run(family, qkv):
    model, _ = FAMILIES[family]()
    lay = layout_of(model, qkv=qkv)
    circuit = Circuit(lay, torch.zeros(lay.n_forward, lay.n_receivers))
    metric = lambda logits: logits[:, TARGET] - logits[:, 0]  # noqa: E731
    result = faithfulness(model, circuit, CLEAN, CORRUPT, sizes=[0], metric=metric, random_baseline=False)
    with torch.no_grad():
        base = float(metric(model(input_ids=CLEAN).logits[:, -1]))
        source = float(metric(model(input_ids=CORRUPT).logits[:, -1]))
    assert result.full == pytest.approx(base, abs=1e-5)
    assert result.empty == pytest.approx(source, abs=1e-4), (family, result.empty, source)
    assert abs(base - source) > 1e-3  # the check has teeth


def test_grouped_query_attention_through_a_fused_projection_is_refused():
    model, _ = FAMILIES["phi3"]()  # fused qkv_proj with 2 key/value heads for 4 query heads
    with pytest.raises(ComponentError, match="separate k/v projections"):
        faithfulness(model, Circuit(layout_of(model), torch.zeros(1, 1).expand(*_shape(model))), CLEAN, CORRUPT,
                     sizes=[0], metric="logit", target=TARGET, random_baseline=False)


def _shape(model):
    lay = layout_of(model)
    return lay.n_forward, lay.n_receivers
