"""Make the SAELens fixtures of tests/test_saes_load.py with SAELens itself (not a dependency of ours).

Run in a separate venv: python -m venv /tmp/sl && /tmp/sl/bin/pip install sae-lens &&
/tmp/sl/bin/python tests/data/saes/make_fixtures.py. Each case is a folder written by
SAELens's ``save_model`` (cfg.json + sae_weights.safetensors) and ``expected.safetensors``:
inputs ``x``, SAELens's ``encode(x)`` (``latents``) and ``forward(x)`` (``output``) after
``SAE.load_from_disk`` of that folder.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from sae_lens import SAE
from sae_lens.saes.sae import SAEMetadata

HERE = os.path.dirname(os.path.abspath(__file__))
D, K = 32, 64  # the tiny GPT-2 of the tests has n_embd 32

CASES = {
    "standard": dict(architecture="standard", hook="blocks.1.hook_resid_post"),
    "standard_no_bdec": dict(architecture="standard", hook="blocks.1.hook_resid_pre", apply_b_dec_to_input=False),
    "standard_norm_rescale": dict(architecture="standard", hook="blocks.1.hook_resid_post",
                                  normalize_activations="constant_norm_rescale"),
    "standard_layer_norm": dict(architecture="standard", hook="blocks.0.hook_mlp_out", normalize_activations="layer_norm"),
    "topk": dict(architecture="topk", hook="blocks.1.hook_resid_post", k=5),
    "topk_rescaled": dict(architecture="topk", hook="blocks.1.hook_attn_out", k=4, rescale_acts_by_decoder_norm=True),
    "jumprelu": dict(architecture="jumprelu", hook="blocks.1.hook_resid_post"),
    "gated": dict(architecture="gated", hook="blocks.2.hook_resid_pre"),
    "transcoder": dict(architecture="transcoder", hook="blocks.1.ln2.hook_normalized", hook_out="blocks.1.hook_mlp_out"),
    "skip_transcoder": dict(architecture="skip_transcoder", hook="blocks.1.ln2.hook_normalized",
                            hook_out="blocks.1.hook_mlp_out"),
    "jumprelu_transcoder": dict(architecture="jumprelu_transcoder", hook="blocks.0.ln2.hook_normalized",
                                hook_out="blocks.0.hook_mlp_out"),
    "jumprelu_skip_transcoder": dict(architecture="jumprelu_skip_transcoder", hook="blocks.1.ln2.hook_normalized",
                                     hook_out="blocks.1.hook_mlp_out"),
}


def make(name: str, spec: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    arch = spec["architecture"]
    transcoder = "transcoder" in arch
    cfg = {"architecture": arch, "d_in": D, "d_sae": K, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": spec.get("apply_b_dec_to_input", not transcoder),
           "normalize_activations": spec.get("normalize_activations", "none"),
           "metadata": {"hook_name": spec["hook"], "model_name": "tiny-gpt2"}}
    if transcoder:
        cfg["d_out"] = D
        cfg["metadata"]["hook_name_out"] = spec["hook_out"]
    for key in ("k", "rescale_acts_by_decoder_norm"):
        if key in spec:
            cfg[key] = spec[key]
    sae = SAE.from_dict(cfg)
    with torch.no_grad():
        for pname, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() == 2 else 0.5))
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand(K, generator=g) * 0.6)
    folder = os.path.join(HERE, name)
    sae.save_model(folder)
    loaded = SAE.load_from_disk(folder)
    x = torch.randn(6, D, generator=g) * 2
    with torch.no_grad():
        latents = loaded.encode(x)
        output = loaded(x)
    save_file({"x": x, "latents": latents.contiguous(), "output": output.contiguous()},
              os.path.join(folder, "expected.safetensors"))
    print(name, "active latents per row:", (latents > 0).sum(-1).tolist())


def make_gemma_scope(seed: int) -> None:
    """A params.npz in Gemma Scope's layout, and SAELens's JumpReLU SAE built from it as its Gemma Scope
    loader builds one (apply_b_dec_to_input False, normalize_activations none)."""
    import numpy as np

    g = torch.Generator().manual_seed(seed)
    params = {"W_enc": torch.randn(D, K, generator=g) * 0.3, "W_dec": torch.randn(K, D, generator=g) * 0.3,
              "b_enc": torch.randn(K, generator=g) * 0.5, "b_dec": torch.randn(D, generator=g) * 0.5,
              "threshold": torch.rand(K, generator=g) * 0.6}
    folder = os.path.join(HERE, "gemma-scope-2b-pt-res", "layer_1", "width_16k", "average_l0_71")
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, "params.npz"), **{k: v.numpy() for k, v in params.items()})
    sae = SAE.from_dict({"architecture": "jumprelu", "d_in": D, "d_sae": K, "dtype": "float32", "device": "cpu",
                         "apply_b_dec_to_input": False, "normalize_activations": "none",
                         "metadata": {"hook_name": "blocks.1.hook_resid_post"}})
    sae.load_state_dict(params)
    x = torch.randn(6, D, generator=g) * 2
    with torch.no_grad():
        save_file({"x": x, "latents": sae.encode(x).contiguous(), "output": sae(x).contiguous()},
                  os.path.join(folder, "expected.safetensors"))


if __name__ == "__main__":
    import sae_lens

    print("sae-lens", sae_lens.__version__, file=sys.stderr)
    for i, (name, spec) in enumerate(CASES.items()):
        make(name, spec, seed=100 + i)
    make_gemma_scope(seed=99)
