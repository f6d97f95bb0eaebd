"""SAEIntervention against hand-written torch hooks: the error term leaves the model unchanged; ablate /
clamp / steer / source swaps in forward and token for token in generate; transcoders; latents per step."""
from __future__ import annotations

import os

import pytest
import torch

import intervenable as pv
from gpt2_manual import ids, tiny_gpt2
from intervenable.saes import site_of_hook

DATA = os.path.join(os.path.dirname(__file__), "data", "saes")
MODEL = tiny_gpt2()  # n_embd 32, 3 layers: the fixtures' width
BASE = ids(2, 6, seed=7)
SOURCE = ids(2, 6, seed=8)
STANDARD = pv.load_sae(os.path.join(DATA, "standard"))  # blocks.1.hook_resid_post
TOL = 1e-5  # float32; the spliced and hand-written paths do the same products in another order


def block_hook(layer: int, fn):
    """A plain forward hook on block ``layer`` that replaces its hidden states by ``fn(h)``."""
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)
    return MODEL.transformer.h[layer].register_forward_hook(hook)


def logits_with(handle_fn, ids_=BASE):
    handle = handle_fn()
    try:
        with torch.no_grad():
            return MODEL(ids_).logits
    finally:
        handle.remove()


def by_hand_standard(x, edit):
    """The standard SAE written out: z = relu((x - b_dec) W_enc + b_enc); x + (edit(z) - z) W_dec."""
    s = STANDARD
    z = torch.relu((x - s.b_dec) @ s.W_enc + s.b_enc)
    return x + (edit(z.clone()) - z) @ s.W_dec


@pytest.mark.parametrize("name", ["standard", "standard_norm_rescale", "standard_layer_norm", "topk", "jumprelu",
                                  "gated", "transcoder", "skip_transcoder", "jumprelu_skip_transcoder"])
def test_splicing_with_the_error_term_leaves_logits_unchanged(name: str) -> None:
    sae = pv.load_sae(os.path.join(DATA, name))
    pv_model = pv.IntervenableModel(pv.SAEIntervention(sae), MODEL)
    (_, collected), out = pv_model({"input_ids": BASE})
    with torch.no_grad():
        ref = MODEL(BASE).logits
    assert torch.allclose(out.logits, ref, atol=TOL, rtol=0)
    # the collected latents are the SAE's encoding of what it reads, captured by a plain hook
    seen = {}
    block = MODEL.transformer.h[sae.layer]
    module, reads_input = {"block_output": (block, False), "block_input": (block, True),
                           "mlp_output": (block.mlp, False), "mlp_residual": (block.mlp, sae.is_transcoder)}[sae.component]
    def read_input(m, a) -> None:  # hooks return None: the model's values stay as they are
        seen.setdefault("x", a[0])

    def read_output(m, a, o) -> None:
        seen.setdefault("x", o[0] if isinstance(o, tuple) else o)

    handle = module.register_forward_pre_hook(read_input) if reads_input else module.register_forward_hook(read_output)
    try:
        with torch.no_grad():
            MODEL(BASE)
    finally:
        handle.remove()
    assert torch.allclose(collected[0], sae.encode(seen["x"]), atol=TOL)
    assert (collected[0] > 0).any()


def test_without_the_error_term_the_reconstruction_replaces_the_activation() -> None:
    pv_model = pv.IntervenableModel(pv.SAEIntervention(STANDARD, keep_error=False), MODEL)
    _, out = pv_model({"input_ids": BASE})
    expected = logits_with(lambda: block_hook(1, lambda h: STANDARD(h)))
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    assert not torch.allclose(out.logits, MODEL(BASE).logits, atol=1e-3)  # the error term matters


def _ablate_3_clamp_5_steer_9(z):
    z[..., 3] = 0
    z[..., 5] = 2.5
    z[..., 9] = z[..., 9] + 4.0
    return z


def test_ablate_clamp_steer_equal_a_hand_written_hook_in_forward() -> None:
    iv = pv.SAEIntervention(STANDARD, ablate=[3], clamp={5: 2.5}, steer={9: 4.0})
    pv_model = pv.IntervenableModel(iv, MODEL)
    _, out = pv_model({"input_ids": BASE})
    expected = logits_with(lambda: block_hook(1, lambda h: by_hand_standard(h, _ablate_3_clamp_5_steer_9)))
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    assert not torch.allclose(expected, MODEL(BASE).logits, atol=1e-3)

    def at_positions(h):  # only positions 1 and 4
        new = h.clone()
        new[:, [1, 4]] = by_hand_standard(h[:, [1, 4]], _ablate_3_clamp_5_steer_9)
        return new
    _, out = pv_model({"input_ids": BASE}, unit_locations={"base": [[[1, 4]]]})
    assert torch.allclose(out.logits, logits_with(lambda: block_hook(1, at_positions)), atol=TOL, rtol=0)
    # edits changed after construction take effect (and are checked)
    iv.ablate, iv.clamp, iv.steer = [], {}, {}
    assert torch.allclose(pv_model({"input_ids": BASE})[1].logits, MODEL(BASE).logits, atol=TOL)
    with pytest.raises(pv.InputError, match="out of range"):
        iv.ablate = [64]


def test_steering_on_every_generated_token_matches_a_hand_written_hook() -> None:
    prompt = BASE[:1]

    def steer(z):
        z[..., 9] = z[..., 9] + 6.0
        return z

    for on_prompt in (False, True):
        calls = {"n": 0}

        def fn(h):
            calls["n"] += 1
            if not on_prompt and calls["n"] == 1:
                return h  # the prefill: only generated tokens are steered
            return by_hand_standard(h, steer)
        handle = block_hook(1, fn)
        try:
            expected = MODEL.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                                      do_sample=False, pad_token_id=0)
        finally:
            handle.remove()
        pv_model = pv.IntervenableModel(pv.SAEIntervention(STANDARD, steer={9: 6.0}), MODEL)
        out = pv_model.generate({"input_ids": prompt}, intervene_on_prompt=on_prompt, max_new_tokens=6,
                                do_sample=False, pad_token_id=0, return_dict=True)
        assert out.intervened_outputs.tolist() == expected.tolist()
        plain = MODEL.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False,
                               pad_token_id=0)
        assert plain.tolist() != expected.tolist()  # the steering changes the text
        # latents of every forward call (prefill included when it is intervened on)
        key = pv_model.sorted_keys[0]
        steps = out.latents[key]
        assert isinstance(steps, list) and len(steps) == 5 + int(on_prompt)
        assert len(out.collected_activations[0]) == len(steps)
        assert steps[-1].shape == (1, 1, 64)


def test_latents_of_each_generate_step_are_the_encoding_of_that_step() -> None:
    prompt = BASE[:1]
    seen = []
    handle = block_hook(1, lambda h: seen.append(h.detach().clone()) or h)
    try:
        MODEL.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False, pad_token_id=0)
    finally:
        handle.remove()
    pv_model = pv.IntervenableModel(pv.SAEIntervention(STANDARD), MODEL)
    out = pv_model.generate({"input_ids": prompt}, intervene_on_prompt=True, max_new_tokens=4, do_sample=False,
                            pad_token_id=0, return_dict=True)
    latents = out.latents[pv_model.sorted_keys[0]]
    assert len(latents) == len(seen) == 4
    for z, h in zip(latents, seen):
        assert torch.allclose(z, STANDARD.encode(h), atol=TOL)


def test_source_swaps_chosen_latents_like_other_subspace_interventions() -> None:
    def swap(h):
        src = cache["src"]
        s = STANDARD
        z = torch.relu((h - s.b_dec) @ s.W_enc + s.b_enc)
        zs = torch.relu((src - s.b_dec) @ s.W_enc + s.b_enc)
        mixed = z.clone()
        mixed[..., [5, 9]] = zs[..., [5, 9]]
        return h + (mixed - z) @ s.W_dec
    cache = {}
    handle = block_hook(1, lambda h: cache.setdefault("src", h) if "src" not in cache else h)
    try:
        with torch.no_grad():
            MODEL(SOURCE)
    finally:
        handle.remove()
    expected = logits_with(lambda: block_hook(1, swap))
    pv_model = pv.IntervenableModel(pv.SAEIntervention(STANDARD), MODEL)
    _, out = pv_model({"input_ids": BASE}, [{"input_ids": SOURCE}], subspaces=[[[5, 9]] * 2])
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    _, out = pv.IntervenableModel(pv.SAEIntervention(STANDARD, latents=[5, 9]), MODEL)(
        {"input_ids": BASE}, [{"input_ids": SOURCE}])
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    with pytest.raises(pv.InputError, match="no source"):
        pv_model({"input_ids": BASE}, subspaces=[[[5]] * 2])


def test_a_transcoder_replaces_its_mlp_with_an_error_node() -> None:
    tc = pv.load_sae(os.path.join(DATA, "skip_transcoder"))  # blocks.1.ln2.hook_normalized -> blocks.1.hook_mlp_out
    mlp = MODEL.transformer.h[1].mlp

    def by_hand(module, args, output):
        x = args[0]
        z = torch.relu(x @ tc.W_enc + tc.b_enc)
        edited = z.clone()
        edited[..., 7] = 0
        edited[..., 2] = 3.0
        with_error = output + (edited - z) @ tc.W_dec
        return with_error
    handle = mlp.register_forward_hook(by_hand)
    try:
        with torch.no_grad():
            expected = MODEL(BASE).logits
    finally:
        handle.remove()
    _, out = pv.IntervenableModel(pv.SAEIntervention(tc, ablate=[7], clamp={2: 3.0}), MODEL)({"input_ids": BASE})
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)

    def replaced(module, args, output):  # no error node: the transcoder's prediction, skip connection included
        x = args[0]
        return torch.relu(x @ tc.W_enc + tc.b_enc) @ tc.W_dec + tc.b_dec + x @ tc.W_skip.T
    handle = mlp.register_forward_hook(replaced)
    try:
        with torch.no_grad():
            expected = MODEL(BASE).logits
    finally:
        handle.remove()
    _, out = pv.IntervenableModel(pv.SAEIntervention(tc, keep_error=False), MODEL)({"input_ids": BASE})
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    with pytest.raises(pv.ConfigError, match="transcoders that read an MLP's input"):
        pv.SAEIntervention(tc, component="block_output")


def test_the_site_comes_from_the_sae_or_is_given() -> None:
    iv = pv.SAEIntervention(STANDARD)
    for config in (iv, {"intervention": iv}, [iv]):
        assert pv.IntervenableModel(config, MODEL).sorted_keys == ["layer_1_comp_block_output_unit_pos_nunit_1#0"]
    moved = pv.SAEIntervention(STANDARD, layer=2)
    assert pv.IntervenableModel(moved, MODEL).sorted_keys[0].startswith("layer_2_comp_block_output")
    raw = pv.IntervenableModel({"component": "transformer.h[1].output", "intervention": pv.SAEIntervention(STANDARD)},
                               MODEL)
    assert torch.allclose(raw({"input_ids": BASE})[1].logits, MODEL(BASE).logits, atol=TOL)
    nowhere = pv.SAE(STANDARD.W_enc, STANDARD.W_dec, b_enc=STANDARD.b_enc, b_dec=STANDARD.b_dec)
    with pytest.raises(pv.ConfigError, match="does not say where it acts.*component="):
        pv.IntervenableModel(pv.SAEIntervention(nowhere), MODEL)


def test_generate_with_a_source_at_every_position_reads_the_source_at_the_same_position() -> None:
    """The reference's JumpReLU interchange (no error term), built from a loaded Gemma Scope SAE, in generate
    with a source and no unit_locations: formerly a LocationError; now each position reads the source at the
    same absolute position, generated tokens past the source's end its last position."""
    sae = pv.load_sae(os.path.join(DATA, "gemma-scope-2b-pt-res"), "layer_1/width_16k/average_l0_71")
    iv = pv.JumpReLUAutoencoderIntervention.from_sae(sae)
    enc = lambda x: torch.relu(x @ sae.W_enc + sae.b_enc) * ((x @ sae.W_enc + sae.b_enc) > sae.threshold)  # noqa: E731
    prompt, source = BASE[:1], SOURCE[:1]
    src = {}
    handle = block_hook(1, lambda h: src.setdefault("h", h))
    try:
        with torch.no_grad():
            MODEL(source)
    finally:
        handle.remove()
    state = {"start": 0}

    def swap(h):
        n = h.shape[1]
        at = torch.arange(state["start"], state["start"] + n).clamp(max=source.shape[1] - 1)
        state["start"] += n
        z, zs = enc(h), enc(src["h"][:, at])
        z = z.clone()
        z[..., 3] = zs[..., 3]
        return z @ sae.W_dec + sae.b_dec
    handle = block_hook(1, swap)
    try:
        expected = MODEL.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=4, do_sample=False,
                                  pad_token_id=0)
    finally:
        handle.remove()
    pv_model = pv.IntervenableModel({"layer": 1, "component": "block_output", "intervention": iv}, MODEL)
    _, out = pv_model.generate({"input_ids": prompt}, [{"input_ids": source}], intervene_on_prompt=True,
                               subspaces=[[[3]]], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out.tolist() == expected.tolist()
    with pytest.raises(pv.ConfigError, match="Use pv.SAEIntervention"):
        pv.JumpReLUAutoencoderIntervention.from_sae(STANDARD)


def test_hook_mlp_out_is_what_the_mlp_adds_to_the_residual_stream_also_in_gemma2() -> None:
    """TransformerLens's hook_mlp_out / hook_attn_out come after Gemma 2's post-MLP / post-attention norms."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    ids_ = ids(1, 5, seed=2)
    g = torch.Generator().manual_seed(4)
    for hook, module in (("hook_mlp_out", gemma.model.layers[1].post_feedforward_layernorm),
                         ("hook_attn_out", gemma.model.layers[1].post_attention_layernorm)):
        sae = pv.SAE(torch.randn(32, 48, generator=g), torch.randn(48, 32, generator=g) * 0.3,
                     b_enc=torch.randn(48, generator=g), hook_name=f"blocks.1.{hook}",
                     **dict(zip(("layer", "component"), site_of_hook(f"blocks.1.{hook}"))))

        def ablate(m, a, output, sae=sae):
            z = sae.encode(output)
            return output - z[..., :4] @ sae.W_dec[:4]  # latents 0-3 set to 0, the error held
        handle = module.register_forward_hook(ablate)
        try:
            with torch.no_grad():
                expected = gemma(ids_).logits
        finally:
            handle.remove()
        _, out = pv.IntervenableModel(pv.SAEIntervention(sae, ablate=[0, 1, 2, 3]), gemma)({"input_ids": ids_})
        assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
        assert not torch.allclose(expected, gemma(ids_).logits, atol=1e-4)


def _gemma2_and_transcoder():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=16)).eval()
    with torch.no_grad():  # a post-MLP norm that is not the identity
        gemma.model.layers[1].post_feedforward_layernorm.weight.normal_(generator=torch.Generator().manual_seed(5))
    return gemma, pv.load_sae(os.path.join(DATA, "transcoder"))  # ln2.hook_normalized -> hook_mlp_out


def _gemma2_by_hand(gemma, tc, edit, ids_):
    """Gemma 2 adds post_feedforward_layernorm(mlp(x)) to the stream: the transcoder reads the MLP's input x
    (a pre-hook on the MLP) and its edit lands on the norm's output (what hook_mlp_out is)."""
    layer, kept = gemma.model.layers[1], {}

    def keep(module, args):
        kept["x"] = args[0]

    def edited(module, args, output):
        z = torch.relu(kept["x"] @ tc.W_enc + tc.b_enc)
        return output + (edit(z.clone()) - z) @ tc.W_dec
    handles = [layer.mlp.register_forward_pre_hook(keep),
               layer.post_feedforward_layernorm.register_forward_hook(edited)]
    try:
        with torch.no_grad():
            return gemma(ids_).logits, torch.relu(kept["x"] @ tc.W_enc + tc.b_enc)
    finally:
        for h in handles:
            h.remove()


def test_a_transcoder_in_gemma2_reads_the_mlp_input_and_writes_the_normed_mlp_output() -> None:
    """Gemma 2's hook_mlp_out is the output of the norm after the MLP, another module than the one whose input
    the transcoder reads: the splice and the feature sweep read the MLP's input and write the norm's output."""
    gemma, tc = _gemma2_and_transcoder()
    ids_ = ids(2, 5, seed=2)

    def edit(z):
        z[..., 3] = 0
        z[..., 9] = 2.5
        return z
    expected, z = _gemma2_by_hand(gemma, tc, edit, ids_)
    iv = pv.SAEIntervention(tc, ablate=[3], clamp={9: 2.5})
    assert (iv.layer, iv.component) == (1, "mlp_residual")
    (_, collected), out = pv.IntervenableModel(iv, gemma)({"input_ids": ids_})
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    assert not torch.allclose(out.logits, gemma(ids_).logits, atol=1e-4)  # the edit does something
    unedited, _ = pv.IntervenableModel(pv.SAEIntervention(tc), gemma)({"input_ids": ids_})
    assert torch.allclose(unedited[1][0], z, atol=TOL)  # latents of the MLP's input
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in gemma.modules())
    # the feature sweep: latent 9 clamped at the last position of one prompt, exactly the hand-written edit
    one = ids_[:1]
    result = pv.feature_patching(gemma, tc, one, target=7, positions=[-1], latents=[9], value=2.5, metric="logit")

    def at_last(z):
        z[..., -1, 9] = 2.5
        return z
    want, _ = _gemma2_by_hand(gemma, tc, at_last, one)
    assert abs(float(result.values.flatten()[0]) - float(want[0, -1, 7])) < TOL
    # written at the MLP's raw output instead (a transcoder trained on it), it reads the same module's input
    raw = pv.SAEIntervention(tc, layer=1, component="mlp_output", ablate=[3])
    _, out = pv.IntervenableModel(raw, gemma)({"input_ids": ids_})
    layer = gemma.model.layers[1]

    def by_hand(module, args, output):
        z = torch.relu(args[0] @ tc.W_enc + tc.b_enc)
        edited = z.clone()
        edited[..., 3] = 0
        return output + (edited - z) @ tc.W_dec
    handle = layer.mlp.register_forward_hook(by_hand)
    try:
        with torch.no_grad():
            expected = gemma(ids_).logits
    finally:
        handle.remove()
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)

def test_a_transcoder_in_gemma2_steers_generation_token_for_token() -> None:
    """In generate the MLP's input is kept per forward call (prompt, then each new token) for the norm's output."""
    gemma, tc = _gemma2_and_transcoder()
    prompt = ids(1, 4, seed=3)
    layer, kept = gemma.model.layers[1], {}

    def keep(module, args):
        kept["x"] = args[0]

    def steered(module, args, output):
        z = torch.relu(kept["x"] @ tc.W_enc + tc.b_enc)
        edited = z.clone()
        edited[..., 9] += 4.0
        return output + (edited - z) @ tc.W_dec
    handles = [layer.mlp.register_forward_pre_hook(keep), layer.post_feedforward_layernorm.register_forward_hook(steered)]
    try:
        with torch.no_grad():
            want = gemma.generate(prompt, max_new_tokens=6, do_sample=False)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        plain = gemma.generate(prompt, max_new_tokens=6, do_sample=False)
    assert not torch.equal(want, plain)  # the steering changes the continuation
    model = pv.IntervenableModel(pv.SAEIntervention(tc, steer={9: 4.0}), gemma)
    _, got = model.generate({"input_ids": prompt}, max_new_tokens=6, do_sample=False, intervene_on_prompt=True)
    assert torch.equal(got, want)


def test_a_transcoder_in_opt_reads_fc1s_input_and_writes_fc2s_output() -> None:
    """OPT's MLP is fc1 -> activation -> fc2 with no MLP module: the transcoder reads fc1's input (the MLP's, after
    its norm) and writes fc2's output. Its flattened [tokens, width] sites refuse a feature sweep by name."""
    from test_fast_families import FAMILIES

    opt, _ = FAMILIES["opt"]()
    tc = pv.load_sae(os.path.join(DATA, "transcoder"))
    ids_ = ids(2, 5, seed=2)
    layer, kept = opt.model.decoder.layers[1], {}

    def keep(module, args):
        kept["x"] = args[0]

    def edited(module, args, output):
        z = torch.relu(kept["x"] @ tc.W_enc + tc.b_enc)
        new = z.clone()
        new[..., 3] = 0
        new[..., 9] = 2.5
        return output + (new - z) @ tc.W_dec
    handles = [layer.fc1.register_forward_pre_hook(keep), layer.fc2.register_forward_hook(edited)]
    try:
        with torch.no_grad():
            expected = opt(ids_).logits
    finally:
        for h in handles:
            h.remove()
    _, out = pv.IntervenableModel(pv.SAEIntervention(tc, ablate=[3], clamp={9: 2.5}), opt)({"input_ids": ids_})
    assert torch.allclose(out.logits, expected, atol=TOL, rtol=0)
    assert not torch.allclose(out.logits, opt(ids_).logits, atol=1e-4)
    with pytest.raises(pv.ConfigError, match="flattened"):
        pv.feature_patching(opt, tc, ids_[:1], target=7, positions=[-1], latents=[9], value=2.5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in opt.modules())
