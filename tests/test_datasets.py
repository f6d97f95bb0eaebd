"""Sweeps over datasets: each example of a list call equals the single call on it (fast and general paths,
GPT-2 and LLaMA with grouped-query attention, prompts of different lengths sharing forwards), rows parse
like lists, and the aligned / normalised averages equal means computed by hand from the per-example cells."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from intervenable.errors import InputError
from intervenable.sweeps import (DatasetResult, attribution_patching, causal_trace, examples, patching_sweep)
from intervenable.sweeps.spec import spearman

TOL = 1e-5  # a wider batch rounds differently (float32, ~1e-7); the brief's bound


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=3, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=32, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()


MODELS = {"gpt2": gpt2, "llama": llama}


def pairs():
    """Four (clean, corrupted) pairs of lengths 6, 4, 6, 5: two share a length, so they share forwards."""
    g = torch.Generator().manual_seed(5)
    out = []
    for T in (6, 4, 6, 5):
        clean = torch.randint(1, 50, (1, T), generator=g)
        corrupt = clean.clone()
        corrupt[0, 1] = (clean[0, 1] + 7) % 49 + 1
        out.append((clean, corrupt))
    return out


TARGETS = [11, 3, 11, 20]


def same(a, b) -> None:
    torch.testing.assert_close(a.values, b.values, atol=TOL, rtol=0)
    assert a.positions == b.positions and a.tokens == b.tokens and a.layers == b.layers
    assert a.clean_score == pytest.approx(b.clean_score, abs=TOL)
    assert a.corrupted_score == pytest.approx(b.corrupted_score, abs=TOL)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("fast", [None, False])
def test_patching_list_equals_single_calls(family, fast) -> None:
    model = MODELS[family]()
    ps = pairs()
    comps = ["block_output", "mlp_output", "attention_output"]
    r = patching_sweep(model, [c for _, c in ps], [s for s, _ in ps], TARGETS, components=comps, fast=fast,
                       progress=False, examples_per_batch=2)
    assert isinstance(r, DatasetResult) and len(r) == 4 and not r.errors
    for i, (clean, corrupt) in enumerate(ps):
        one = patching_sweep(model, corrupt, clean, TARGETS[i], components=comps, fast=fast, progress=False)
        assert r.per_example[i].info["path"] == one.info["path"] == ("general" if fast is False else "fast")
        same(r.per_example[i], one)
    assert r.per_example[0].info["examples_per_batch"] == 2  # the two 6-token examples shared their forwards


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("fast", [None, False])
def test_noised_trace_list_equals_single_calls_with_seed_plus_index(family, fast) -> None:
    model = MODELS[family]()
    ps = pairs()
    subjects = [(1, 3), (0, 2), (2, 4), (1, 2)]
    r = causal_trace(model, [c for c, _ in ps], target=TARGETS, subject=subjects, samples=2, noise=0.4, seed=7,
                     components=["block_output", "mlp_output"], window=2, fast=fast, progress=False)
    for i, (clean, _) in enumerate(ps):
        one = causal_trace(model, clean, target=TARGETS[i], subject=subjects[i], samples=2, noise=0.4, seed=7 + i,
                           components=["block_output", "mlp_output"], window=2, fast=fast, progress=False)
        same(r.per_example[i], one)
        torch.testing.assert_close(r.per_example[i].tensors["noise_1"], one.tensors["noise_1"])
        assert r.per_example[i].subject == subjects[i]


def test_severed_trace_and_heads_list_equal_single_calls() -> None:
    model = llama()
    ps = pairs()
    r = causal_trace(model, [c for c, _ in ps], [k for _, k in ps], TARGETS, sever="mlp", progress=False)
    for i, (clean, corrupt) in enumerate(ps):
        same(r.per_example[i], causal_trace(model, clean, corrupt, TARGETS[i], sever="mlp", progress=False))
    kw = dict(components=["head_attention_value_output"], heads="all", progress=False)
    h = patching_sweep(model, [k for _, k in ps], [c for c, _ in ps], TARGETS, **kw)
    t = patching_sweep(model, [k for _, k in ps], [c for c, _ in ps], TARGETS, together=True, **kw)
    for i, (clean, corrupt) in enumerate(ps):
        same(h.per_example[i], patching_sweep(model, corrupt, clean, TARGETS[i], **kw))
        same(t.per_example[i], patching_sweep(model, corrupt, clean, TARGETS[i], together=True, **kw))


def test_attribution_list_equals_single_calls() -> None:
    model = gpt2()
    ps = pairs()
    for kw in (dict(method="atp", verify=3), dict(method="ig"), dict(method="atp", together=True)):
        r = attribution_patching(model, [k for _, k in ps], [c for c, _ in ps], TARGETS,
                                 components=["block_output", "attention_output"], **kw)
        for i, (clean, corrupt) in enumerate(ps):
            one = attribution_patching(model, corrupt, clean, TARGETS[i], components=["block_output", "attention_output"],
                                       **kw)
            same(r.per_example[i], one)
            if "verify" in kw:
                torch.testing.assert_close(r.per_example[i].tensors["exact"], one.tensors["exact"], atol=TOL, rtol=0,
                                           equal_nan=True)
        if kw["method"] == "atp":  # the two 6-token examples shared one forward and one backward
            assert r.per_example[0].info["examples_per_batch"] == 2 and r.per_example[1].info["examples_per_batch"] == 1


def test_heads_patched_at_every_position_together_match_a_plain_hook() -> None:
    """TransformerLens's head x all-positions patching: each head's slice of the attention output
    projection's input copied from the clean run at every position at once."""
    model = gpt2()
    clean, corrupt = pairs()[0]
    r = patching_sweep(model, corrupt, clean, TARGETS[0], components=["head_attention_value_output"], heads="all",
                       together=True, progress=False)
    assert r.values.shape == (1, 3, 1, 4) and r.tokens == ["all"]
    g = patching_sweep(model, corrupt, clean, TARGETS[0], components=["head_attention_value_output"], heads="all",
                       together=True, progress=False, fast=False)
    torch.testing.assert_close(r.values, g.values, atol=TOL, rtol=0)
    for layer in range(3):
        proj = model.transformer.h[layer].attn.c_proj
        store = {}
        hook = proj.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0].clone()))
        with torch.no_grad():
            model(clean)
        hook.remove()
        for head in range(4):
            sl = slice(head * 8, head * 8 + 8)

            def patch(m, a):
                x = a[0].clone()
                x[0, :, sl] = store["x"][0, :, sl]
                return (x,)
            hook = proj.register_forward_pre_hook(patch)
            with torch.no_grad():
                ref = float(model(corrupt).logits[0, -1].softmax(-1)[TARGETS[0]])
            hook.remove()
            assert float(r.values[0, layer, 0, head]) == pytest.approx(ref, abs=TOL)


def test_rows_and_jsonl_lines_parse_like_lists() -> None:
    model = gpt2()
    ps = pairs()
    rows = [{"base": k.tolist()[0], "source": c.tolist()[0], "target": t, "relation": "r"}
            for (c, k), t in zip(ps, TARGETS)]
    a = patching_sweep(model, rows, progress=False)
    b = patching_sweep(model, [json.dumps(r) for r in rows], progress=False)  # a JSONL file's lines
    c = patching_sweep(model, [k for _, k in ps], [c for c, _ in ps], TARGETS, progress=False)
    for i in range(4):
        same(a.per_example[i], c.per_example[i])
        same(b.per_example[i], c.per_example[i])
    ex = examples(rows)
    assert ex[2].corrupted == rows[2]["base"] and ex[2].clean == rows[2]["source"] and ex[2].meta == {"relation": "r"}
    import pandas

    assert list(examples(pandas.DataFrame(rows))) == list(ex) == list(examples(r for r in rows))  # frame, generator
    one_target = examples(clean=["a b", "c d"], target=" x")  # a single value broadcasts
    assert [e.target for e in one_target] == [" x", " x"]
    with pytest.raises(InputError, match="target has 3 entries but there are 2 examples"):
        examples(clean=["a b", "c d"], target=[1, 2, 3])
    with pytest.raises(InputError, match="Row 1 gives its clean prompt twice"):
        examples([{"prompt": "a"}, {"prompt": "a", "source": "b"}])
    with pytest.raises(InputError, match="target is given both in the rows"):
        examples(rows, target=3)


def test_unequal_pair_is_reported_with_its_index_and_skip_goes_on() -> None:
    model = gpt2()
    ps = pairs()
    bases = [k for _, k in ps]
    bases[2] = bases[2][:, :5]
    with pytest.raises(InputError, match="Example 2 cannot run: The clean prompt has 6 tokens but the corrupted one has 5"):
        patching_sweep(model, bases, [c for c, _ in ps], TARGETS, progress=False)
    r = patching_sweep(model, bases, [c for c, _ in ps], TARGETS, progress=False, on_error="skip")
    assert list(r.errors) == [2] and r.per_example[2] is None and "6 tokens" in r.errors[2]
    same(r.per_example[3], patching_sweep(model, bases[3], ps[3][0], TARGETS[3], progress=False))
    assert r.average(align="end").info["examples"] == 3


# -- averages, by hand from the per-example cells ----------------------------------------------
def noised():
    model = gpt2()
    ps = pairs()
    subjects = [(1, 3), (0, 1), (2, 4), (0, 3)]
    r = causal_trace(model, [c for c, _ in ps], target=TARGETS, subject=subjects, noise=0.5,
                     components=["block_output", "mlp_output"], progress=False)
    return r, ps, subjects


def test_subject_alignment_is_romes_six_rows_pooling_tokens() -> None:
    r, ps, subjects = noised()
    avg = r.average(align="subject")
    assert avg.tokens == ["first subject token", "middle subject tokens", "last subject token",
                          "first subsequent token", "further tokens", "last token"]
    rows = [[] for _ in range(6)]
    for res, (s, e), (clean, _) in zip(r.per_example, subjects, ps):
        T = clean.shape[1]
        v = res.values
        rows[0].append(v[:, :, s])
        rows[1] += [v[:, :, q] for q in range(s + 1, e - 1)]
        rows[2].append(v[:, :, e - 1])
        rows[3].append(v[:, :, e])
        rows[4] += [v[:, :, q] for q in range(e + 1, T - 1)]
        rows[5].append(v[:, :, T - 1])
    for k, samples in enumerate(rows):
        x = torch.stack(samples)
        torch.testing.assert_close(avg.values[:, :, k], x.mean(0), atol=1e-6, rtol=0)
        if len(samples) > 1:  # one sample: no standard error (NaN)
            torch.testing.assert_close(avg.tensors["stderr"][:, :, k], x.std(0) / len(samples) ** 0.5, atol=1e-6, rtol=0)
        else:
            assert bool(avg.tensors["stderr"][:, :, k].isnan().all())
        assert int(avg.tensors["count"][k]) == len(samples)
    assert avg.subject == (0, 3)  # the plot marks the three subject rows
    fig = r.plot(align="subject")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()][:3] == ["first subject token*",
                                                                         "middle subject tokens*", "last subject token*"]


def test_end_alignment_and_normalised_average() -> None:
    r, ps, _ = noised()
    avg = r.average(align="end", normalise=True)
    K = 4  # the shortest prompt
    assert avg.tokens == ["last-3", "last-2", "last-1", "last"]
    for k in range(K):
        cells = []
        for res in r.per_example:
            v = res.values[:, :, len(res.positions) - K + k]
            cells.append((v - res.corrupted_score) / (res.clean_score - res.corrupted_score))
        torch.testing.assert_close(avg.values[:, :, k], torch.stack(cells).mean(0), atol=1e-5, rtol=0)
    assert avg.metric == "normalised prob" and avg.clean_score == 1.0 and avg.corrupted_score == 0.0


def test_named_marks_give_named_columns() -> None:
    model = gpt2()
    ps = pairs()
    marks = [{"S": 1, "END": -1}, {"S": 1, "END": 3}, {"S": 1, "END": -1}, {"S": 1, "END": 4}]
    r = patching_sweep(model, [k for _, k in ps], [c for c, _ in ps], TARGETS, marks=marks, progress=False)
    avg = r.average()
    assert avg.tokens == ["S", "END"]
    for k, name in enumerate(["S", "END"]):
        cells = [res.values[:, :, m[name] % len(res.positions)] for res, m in zip(r.per_example, marks)]
        torch.testing.assert_close(avg.values[:, :, k], torch.stack(cells).mean(0), atol=1e-6, rtol=0)
    with pytest.raises(InputError, match="Example 1 has marks"):
        r.average(marks=[{"S": 1}, {"X": 2}, {"S": 1}, {"S": 1}])


def test_dataset_result_to_pandas_save_and_load(tmp_path) -> None:
    r, _, _ = noised()
    for ext in (".json", ".safetensors", ".pt"):
        back = DatasetResult.load(r.save(tmp_path / f"d{ext}"))
        assert len(back) == 4
        for a, b in zip(r.per_example, back.per_example):
            torch.testing.assert_close(a.values, b.values)
            assert a.subject == b.subject and a.tokens == b.tokens
        torch.testing.assert_close(back.average(align="subject").values, r.average(align="subject").values)
    assert r.save(tmp_path / "avg.png", align="subject").read_bytes()[:4] == b"\x89PNG"
    df = r.to_pandas()
    assert list(df.columns)[0] == "example" and len(df) == sum(x.values.numel() for x in r.per_example)
    assert float(df[df.example == 2]["value"].sum()) == pytest.approx(float(r.per_example[2].values.sum()), rel=1e-5)


# -- degenerate input ------------------------------------------------------------------------
def test_degenerate_inputs_are_errors() -> None:
    model = gpt2()
    clean, corrupt = pairs()[0]
    with pytest.raises(InputError, match="foil is the target"):
        patching_sweep(model, corrupt, clean, 11, metric="logit_diff", foil=11, progress=False)
    r = patching_sweep(model, [corrupt, clean], [clean, clean], 11, progress=False)  # example 1: base == source
    with pytest.raises(InputError, match="Example 1: its clean and corrupted scores are equal"):
        r.average(normalise=True)
    torch.testing.assert_close(r.subset([0]).average(normalise=True).values,
                               (r.per_example[0].values - r.per_example[0].corrupted_score)
                               / (r.per_example[0].clean_score - r.per_example[0].corrupted_score), atol=1e-5, rtol=0)
    with pytest.raises(InputError, match="constant"):
        spearman(torch.ones(5), torch.ones(5))
    assert spearman(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)


def test_progress_bar_counts_examples(capsys) -> None:
    model = gpt2()
    ps = pairs()
    patching_sweep(model, [k for _, k in ps], [c for c, _ in ps], TARGETS, progress=True)
    err = capsys.readouterr().err
    assert "4/4" in err and "example" in err
    patching_sweep(model, [k for _, k in ps], [c for c, _ in ps], TARGETS, progress=False)
    assert capsys.readouterr().err == ""
