"""Feature sweeps over SAE latents x positions against plain torch: exact cells equal hand-written edit
hooks, AtP / IG estimates equal autograd written out, verify=k equals exact patching of those latents."""
from __future__ import annotations

import os

import pytest
import torch

import intervenable as pv
from gpt2_manual import ids, tiny_gpt2

DATA = os.path.join(os.path.dirname(__file__), "data", "saes")
MODEL = tiny_gpt2()
BASE = ids(1, 6, seed=7)
SOURCE = ids(1, 6, seed=8)
TARGET = 11
SAE = pv.load_sae(os.path.join(DATA, "standard"))  # blocks.1.hook_resid_post
TOL = 1e-5


def prob(logits: torch.Tensor) -> float:
    return float(logits[0, -1].softmax(-1)[TARGET])


def encode(x):
    return torch.relu((x - SAE.b_dec) @ SAE.W_enc + SAE.b_enc)


def block1(fn):
    def hook(module, args, output):
        return (fn(output[0]),) + tuple(output[1:]) if isinstance(output, tuple) else fn(output)
    return MODEL.transformer.h[1].register_forward_hook(hook)


def run(fn, ids_=BASE) -> torch.Tensor:
    handle = block1(fn)
    try:
        return MODEL(ids_).logits
    finally:
        handle.remove()


def block1_output(ids_) -> torch.Tensor:
    seen = {}
    with torch.no_grad():
        run(lambda h: seen.setdefault("h", h), ids_)
    return seen["h"]


def edited_prob(pos: int, latent: int, value: float) -> float:
    """Latent ``latent`` at ``pos`` set to ``value``, the error held, by a plain hook."""
    def fn(h):
        z = encode(h[0, pos])
        new = h.clone()
        new[0, pos] = h[0, pos] + (value - z[latent]) * SAE.W_dec[latent]
        return new
    with torch.no_grad():
        return prob(run(fn))


def test_ablating_each_latent_equals_a_hand_written_ablation(tmp_path) -> None:
    result = pv.feature_patching(MODEL, SAE, BASE, target=TARGET, positions=[2, -1])
    z = encode(block1_output(BASE)[0])
    assert result.positions == [2, 5] and result.axes == ("component", "layer", "position", "latent")
    assert result.components == ["block_output"] and result.layers == [1]
    active = sorted(set(torch.nonzero(z[[2, 5]] > 0)[:, 1].tolist()))
    assert result.latents == active  # the latents an ablation changes at those positions
    for j, pos in enumerate(result.positions):
        for k, latent in enumerate(result.latents):
            expected = edited_prob(pos, latent, 0.0)
            assert abs(float(result.values[0, 0, j, k]) - expected) < TOL
    assert result.info["path"] == "fast"
    general = pv.feature_patching(MODEL, SAE, BASE, target=TARGET, positions=[2, -1], fast=False, batch_size=7)
    assert general.info["path"] == "general" and torch.allclose(general.values, result.values, atol=TOL)
    best = result.best()
    assert best["latent"] in result.latents and "latent" in result.summary()
    for ext in ("json", "safetensors"):  # the latent axis survives saving
        path = os.path.join(tmp_path, f"sweep.{ext}")
        result.save(path)
        again = pv.SweepResult.load(path)
        assert again.latents == result.latents and torch.allclose(again.values, result.values)
        assert again.axes == result.axes


def test_patching_from_a_source_and_explicit_latents() -> None:
    z_src = encode(block1_output(SOURCE)[0])
    result = pv.feature_patching(MODEL, pv.SAEIntervention(SAE), BASE, SOURCE, target=TARGET, latents=[0, 5, 9],
                                 positions=[4])
    for k, latent in enumerate([0, 5, 9]):
        assert abs(float(result.values[0, 0, 0, k]) - edited_prob(4, latent, float(z_src[4, latent]))) < TOL
    everything = pv.feature_patching(MODEL, SAE, BASE, target=TARGET, latents="all", positions=[5], value=1.5)
    assert everything.latents == list(range(64))
    assert abs(float(everything.values[0, 0, 0, 17]) - edited_prob(5, 17, 1.5)) < TOL


def _latent_grad(shift: torch.Tensor) -> torch.Tensor:
    """dProb/dz ``[T, d_sae]`` at block 1 output + ``shift``, by autograd on a latent probe."""
    dz = torch.zeros(BASE.shape[1], 64, requires_grad=True)
    logits = run(lambda h: h + shift + dz @ SAE.W_dec)
    (grad,) = torch.autograd.grad(logits[0, -1].softmax(-1)[TARGET], dz)
    return grad


def test_atp_and_ig_estimates_equal_autograd_written_out() -> None:
    z_base, z_src = encode(block1_output(BASE)[0]), encode(block1_output(SOURCE)[0])
    with torch.no_grad():
        base_score = prob(MODEL(BASE).logits)
    flags = [p.requires_grad for p in MODEL.parameters()]
    atp = pv.feature_attribution(MODEL, SAE, BASE, SOURCE, target=TARGET)
    grad = _latent_grad(torch.zeros(()))
    for j, pos in enumerate(atp.positions):
        for k, latent in enumerate(atp.latents):
            expected = base_score + float((z_src[pos, latent] - z_base[pos, latent]) * grad[pos, latent])
            assert abs(float(atp.values[0, 0, j, k]) - expected) < TOL
    steps = 4
    ig = pv.feature_attribution(MODEL, SAE, BASE, SOURCE, target=TARGET, method="ig", steps=steps)
    assert [p.requires_grad for p in MODEL.parameters()] == flags
    path = (z_src - z_base) @ SAE.W_dec  # every latent of the SAE moves together
    mean = sum(_latent_grad((k + 0.5) / steps * path) for k in range(steps)) / steps
    for j, pos in enumerate(ig.positions):
        for k, latent in enumerate(ig.latents):
            expected = base_score + float((z_src[pos, latent] - z_base[pos, latent]) * mean[pos, latent])
            assert abs(float(ig.values[0, 0, j, k]) - expected) < TOL
    assert not any(p.grad is not None for p in MODEL.parameters())
    assert [p.requires_grad for p in MODEL.parameters()] == flags  # left as found


@pytest.mark.parametrize("name", ["standard", "standard_norm_rescale", "transcoder", "topk_rescaled"])
def test_verify_equals_exact_patching_of_those_latents(name: str) -> None:
    sae = pv.load_sae(os.path.join(DATA, name))
    est = pv.feature_attribution(MODEL, sae, BASE, SOURCE, target=TARGET, verify=6, method="ig")
    exact = pv.feature_patching(MODEL, sae, BASE, SOURCE, target=TARGET)
    verified = est.tensors["exact"]
    mask = ~torch.isnan(verified)
    assert int(mask.sum()) == 6 == est.info["verified"]
    assert torch.allclose(verified[mask], exact.values[mask], atol=TOL, rtol=0)
    # they are the 6 largest estimated effects
    effect = (est.values - est.corrupted_score).abs().nan_to_num(-1.0)
    assert set(torch.topk(effect.flatten(), 6).indices.tolist()) == set(torch.nonzero(mask.flatten()).flatten().tolist())
    assert "verified 6 cells" in est.summary()


def test_two_saes_share_one_result() -> None:
    other = pv.load_sae(os.path.join(DATA, "standard_no_bdec"))  # blocks.1.hook_resid_pre: block_input 1
    both = pv.feature_patching(MODEL, [SAE, other], BASE, target=TARGET, positions=[5])
    alone = pv.feature_patching(MODEL, other, BASE, target=TARGET, positions=[5], latents=both.latents)
    assert both.components == ["block_output", "block_input"] and both.layers == [1]
    assert torch.allclose(both.values[1], alone.values[0], atol=TOL, equal_nan=True)


def test_bad_arguments_are_clear_errors() -> None:
    with pytest.raises(pv.InputError, match="equal length"):
        pv.feature_patching(MODEL, SAE, BASE, ids(1, 5), target=TARGET)
    with pytest.raises(pv.InputError, match="out of range"):
        pv.feature_patching(MODEL, SAE, BASE, target=TARGET, latents=[64])
    with pytest.raises(pv.ConfigError, match="steps"):
        pv.feature_attribution(MODEL, SAE, BASE, target=TARGET, steps=4)
    with pytest.raises(pv.ConfigError, match="verify"):
        pv.feature_attribution(MODEL, SAE, BASE, target=TARGET, verify=0)
    wide = pv.SAE(torch.zeros(16, 4), torch.zeros(4, 16), layer=1, component="block_output")
    with pytest.raises(pv.ConfigError, match="width 16"):
        pv.feature_patching(MODEL, wide, BASE, target=TARGET)


def test_error_nodes_are_cells_too() -> None:
    """errors=True: latent -1 is the SAE's error node x - decode(encode(x)), set to the source's (or 0)."""
    h_base, h_src = block1_output(BASE)[0], block1_output(SOURCE)[0]
    recon = lambda h: encode(h) @ SAE.W_dec + SAE.b_dec  # noqa: E731
    e_base, e_src = h_base - recon(h_base), h_src - recon(h_src)

    def with_error(pos, e):
        def fn(h):
            new = h.clone()
            new[0, pos] = h[0, pos] - e_base[pos] + e
            return new
        with torch.no_grad():
            return prob(run(fn))
    patched = pv.feature_patching(MODEL, SAE, BASE, SOURCE, target=TARGET, latents=[3], errors=True)
    ablated = pv.feature_patching(MODEL, SAE, BASE, target=TARGET, latents=[3], errors=True)
    assert patched.latents == [3, -1]
    for j, pos in enumerate(patched.positions):
        assert abs(float(patched.values[0, 0, j, 1]) - with_error(pos, e_src[pos])) < TOL
        assert abs(float(ablated.values[0, 0, j, 1]) - with_error(pos, torch.zeros(32))) < TOL
    est = pv.feature_attribution(MODEL, SAE, BASE, SOURCE, target=TARGET, latents=[3], errors=True, verify=20)
    x = torch.zeros_like(h_base, requires_grad=True)  # dProb/dx at block 1's output
    (g,) = torch.autograd.grad(run(lambda h: h + x)[0, -1].softmax(-1)[TARGET], x)
    with torch.no_grad():
        base_score = prob(MODEL(BASE).logits)
    for j, pos in enumerate(est.positions):
        expected = base_score + float((e_src[pos] - e_base[pos]) @ g[pos])
        assert abs(float(est.values[0, 0, j, 1]) - expected) < TOL
    mask = ~torch.isnan(est.tensors["exact"])
    assert torch.allclose(est.tensors["exact"][mask], patched.values[mask], atol=TOL)
