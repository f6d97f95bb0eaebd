"""Batched sweeps (fast and general paths) against the same patches done one at a time with IntervenableModel."""
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from intervenable import IntervenableModel, VanillaIntervention
from intervenable.errors import ConfigError, InputError
from intervenable.sweeps import SweepResult, causal_trace, patching_sweep, window_layers

T = 6
CLEAN = torch.tensor([[5, 17, 42, 8, 23, 9]])
CORRUPT = torch.tensor([[5, 31, 40, 8, 23, 9]])
TARGET = 11
ATOL = 2e-6


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=4, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=50, max_position_embeddings=32, bos_token_id=0,
                      eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()


MODELS = {"gpt2": gpt2, "llama": llama}


def prob(out, target: int = TARGET) -> float:
    return float(out.logits[0, -1].softmax(-1)[target])


def one_at_a_time(model, reps, sources, positions, base=CORRUPT) -> float:
    """One IntervenableModel forward with one representation per (component, layer) write."""
    im = IntervenableModel([dict(layer=l, component=c, intervention_type=VanillaIntervention) for c, l in reps], model)
    locs = [[[p]] for p in positions]
    _, out = im(base if isinstance(base, dict) else {"input_ids": base}, [{"input_ids": s} for s in sources],
                unit_locations={"sources->base": (locs, locs)})
    return prob(out)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_trace_matches_one_at_a_time(family: str) -> None:
    model = MODELS[family]()
    comps = ["block_output", "mlp_output", "attention_output"]
    r = causal_trace(model, CLEAN, CORRUPT, TARGET, components=comps, progress=False)
    g = causal_trace(model, CLEAN, CORRUPT, TARGET, components=comps, progress=False, fast=False)
    assert (r.info["path"], g.info["path"]) == ("fast", "general")
    n = model.config.num_hidden_layers
    assert r.values.shape == g.values.shape == (3, n, T)
    torch.testing.assert_close(r.values, g.values, atol=ATOL, rtol=1e-4)
    positions = [0, 2, 5]
    expected = torch.tensor([[[one_at_a_time(model, [(c, l)], [CLEAN], [p]) for p in positions]
                              for l in range(n)] for c in comps])
    torch.testing.assert_close(r.values[:, :, positions], expected, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(g.values[:, :, positions], expected, atol=ATOL, rtol=1e-4)
    with torch.no_grad():
        assert r.clean_score == pytest.approx(prob(model(CLEAN)), abs=1e-6)
        assert r.corrupted_score == pytest.approx(prob(model(CORRUPT)), abs=1e-6)
    # Restoring the last layer's output at the last position gives back the clean run's score.
    assert float(r["block_output"][-1, -1]) == pytest.approx(r.clean_score, abs=1e-6)


@pytest.mark.parametrize("fast", [None, False])
def test_window_and_sever_match(fast) -> None:
    model = gpt2()
    r = causal_trace(model, CLEAN, CORRUPT, TARGET, components=["mlp_output"], window=3, progress=False, fast=fast)
    for l in (0, 2):
        for p in (1, 4):
            ls = window_layers(l, 3, 4)
            ref = one_at_a_time(model, [("mlp_output", k) for k in ls], [CLEAN] * len(ls), [p] * len(ls))
            assert float(r.values[0, l, p]) == pytest.approx(ref, abs=ATOL)
    s = causal_trace(model, CLEAN, CORRUPT, TARGET, sever="mlp", progress=False, fast=fast)
    for l in (0, 2):
        for p in (1, 5):
            reps = [("block_output", l)] + [("mlp_output", k) for k in range(l + 1, 4)]
            sources = [CLEAN] + [CORRUPT] * (4 - l - 1)  # frozen MLPs read the corrupted run itself
            ref = one_at_a_time(model, reps, sources, [p] * len(reps))
            assert float(s.values[0, l, p]) == pytest.approx(ref, abs=ATOL)


def test_window_layers_like_rome() -> None:
    assert window_layers(0, 10, 12) == [0, 1, 2, 3, 4]
    assert window_layers(6, 10, 12) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert window_layers(11, 10, 12) == [6, 7, 8, 9, 10, 11]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_noise_trace_matches_embeddings_reference(family: str) -> None:
    model = MODELS[family]()
    r = causal_trace(model, CLEAN, target=TARGET, subject=(1, 3), noise=0.5, samples=2, seed=3, progress=False)
    gen = torch.Generator().manual_seed(3)
    draws = [torch.randn(2, 32, generator=gen) * 0.5 for _ in range(2)]
    for s in range(2):
        torch.testing.assert_close(r.tensors[f"noise_{s}"], draws[s])
    emb = model.get_input_embeddings()
    for l in (0, model.config.num_hidden_layers - 1):
        for p in (0, 2, 5):
            refs = []
            for d in draws:
                with torch.no_grad():
                    e = emb(CLEAN).clone()
                e[0, 1:3] += d
                refs.append(one_at_a_time(model, [("block_output", l)], [CLEAN], [p], base={"inputs_embeds": e}))
            assert float(r.values[0, l, p]) == pytest.approx(sum(refs) / 2, abs=ATOL)
    assert r.info["path"] == "fast"


def test_heads_sweep_matches_plain_hook() -> None:
    model = gpt2()
    r = patching_sweep(model, CORRUPT, CLEAN, TARGET, components=["head_attention_value_output"], heads="all",
                       layers=[1, 3], positions=[2, -1], progress=False)
    assert r.values.shape == (1, 2, 2, 4) and r.axes[-1] == "head"
    g = patching_sweep(model, CORRUPT, CLEAN, TARGET, components=["head_attention_value_output"], heads="all",
                       layers=[1, 3], positions=[2, -1], progress=False, fast=False)
    torch.testing.assert_close(r.values, g.values, atol=ATOL, rtol=0)
    for li, l in enumerate([1, 3]):
        proj = model.transformer.h[l].attn.c_proj
        store = {}
        h = proj.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0].clone()))
        with torch.no_grad():
            model(CLEAN)
        h.remove()
        for pi, p in enumerate([2, 5]):
            for head in range(4):
                sl = slice(head * 8, head * 8 + 8)

                def patch(m, a):
                    x = a[0].clone()
                    x[0, p, sl] = store["x"][0, p, sl]
                    return (x,)
                h = proj.register_forward_pre_hook(patch)
                with torch.no_grad():
                    ref = prob(model(CORRUPT))
                h.remove()
                assert float(r.values[0, li, pi, head]) == pytest.approx(ref, abs=ATOL)


def test_batch_size_and_raw_paths() -> None:
    model = gpt2()
    a = patching_sweep(model, CORRUPT, CLEAN, TARGET, progress=False, batch_size=5, fast=False)
    assert a.info["forwards"] == -(-4 * T // 5) and a.info["batch_size"] == 5
    b = patching_sweep(model, CORRUPT, CLEAN, TARGET, progress=False)
    torch.testing.assert_close(a.values, b.values, atol=ATOL, rtol=0)
    raw = patching_sweep(model, CORRUPT, CLEAN, TARGET, components=["transformer.h[2]"], progress=False)
    assert raw.info["path"] == "fast"
    torch.testing.assert_close(raw.values[0, 0], b.values[0, 2], atol=ATOL, rtol=0)
    assert raw.values.shape == (1, 4, T)  # a raw path has no layer: its scores fill the whole layer axis
    torch.testing.assert_close(raw.values[0], b.values[0, 2].expand(4, T), atol=ATOL, rtol=0)


def test_metrics_and_default_target() -> None:
    model = gpt2()
    with torch.no_grad():
        top = int(model(CLEAN).logits[0, -1].argmax())
    r = patching_sweep(model, CORRUPT, CLEAN, metric="logit_diff", foil=3, layers=[1], progress=False)
    assert r.target == top
    with torch.no_grad():
        logits = model(CLEAN).logits[0, -1]
    assert r.clean_score == pytest.approx(float(logits[top] - logits[3]), abs=1e-5)
    c = patching_sweep(model, CORRUPT, CLEAN, metric=lambda lg: lg.float().max(-1).values, layers=[1], progress=False)
    ref = patching_sweep(model, CORRUPT, CLEAN, TARGET, metric="logit", layers=[1], progress=False)
    assert c.values.shape == ref.values.shape and c.target is None
    assert float(c.values.min()) >= float(ref.values.min())  # max logit >= any one logit, row by row
    assert bool((c.values >= ref.values - 1e-6).all())


def test_errors_name_the_fix() -> None:
    model = gpt2()
    with pytest.raises(InputError, match="equal length"):
        causal_trace(model, CLEAN, CORRUPT[:, :4], TARGET, progress=False)
    with pytest.raises(InputError, match="needs a corruption"):
        causal_trace(model, CLEAN, target=TARGET, progress=False)
    with pytest.raises(InputError, match="empty"):
        causal_trace(model, torch.zeros(1, 0, dtype=torch.long), CORRUPT, TARGET, progress=False)
    with pytest.raises(ConfigError, match="sever"):
        causal_trace(model, CLEAN, CORRUPT, TARGET, sever="both", progress=False)
    with pytest.raises(InputError, match="Unknown metric"):
        causal_trace(model, CLEAN, CORRUPT, TARGET, metric="accuracy", progress=False)
    with pytest.raises(ConfigError, match="fast=True"):
        patching_sweep(model, CORRUPT, CLEAN, TARGET, components=["transformer.wte"], fast=True, progress=False)


def test_result_save_load_plot(tmp_path, capsys) -> None:
    model = gpt2()
    r = causal_trace(model, CLEAN, CORRUPT, TARGET, subject=(1, 3), components=["block_output", "mlp_output"],
                     progress=False)
    assert capsys.readouterr().err == ""  # progress=False: no bar
    for ext in (".pt", ".json", ".safetensors"):
        path = r.save(tmp_path / f"r{ext}")
        back = SweepResult.load(path)
        torch.testing.assert_close(back.values, r.values)
        assert back.tokens == r.tokens and back.subject == (1, 3) and back.components == r.components
    assert json.loads((tmp_path / "r.json").read_text())["target"] == TARGET
    # every format gets the umask's mode (safetensors' own save_file would leave 0600) and nothing beside it
    mask = os.umask(0o022)
    os.umask(mask)
    assert {oct(os.stat(tmp_path / f"r{ext}").st_mode & 0o777) for ext in (".pt", ".json", ".safetensors")} == {
        oct(0o666 & ~mask)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.pt", "r.safetensors"]
    png = r.save(tmp_path / "plots" / "trace.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match=".png"):
        r.save(tmp_path / "r.pickle")
    best = r.best("block_output")
    v = r["block_output"]
    assert best["value"] == pytest.approx(float(v.max()))
    assert float(v[r.layers.index(best["layer"]), best["position"]]) == best["value"]
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            r.to_pandas()
    else:
        df = r.to_pandas()
        assert len(df) == r.values.numel() and float(df["value"].max()) == pytest.approx(float(r.values.max()))
