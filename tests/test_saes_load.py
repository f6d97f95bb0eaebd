"""load_sae against SAELens's own computation: fixtures written and evaluated by SAELens
(tests/data/saes/README.md), a Gemma Scope params.npz, configs from before SAELens 6, the hub cache
offline, and hook names -> our sites."""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Tuple

import pytest
import torch
from safetensors.torch import load_file

import intervenable as pv
from intervenable.saes.hook_names import hf_path, site_of_hook

DATA = os.path.join(os.path.dirname(__file__), "data", "saes")
SAELENS = ["standard", "standard_no_bdec", "standard_norm_rescale", "standard_layer_norm", "topk", "topk_rescaled",
           "jumprelu", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder", "jumprelu_skip_transcoder"]
GEMMA = os.path.join(DATA, "gemma-scope-2b-pt-res")
GEMMA_ID = "layer_1/width_16k/average_l0_71"
TOL = 1e-5  # float32 matmuls of the same order as SAELens's; observed max error 1e-6


def check_against(sae: pv.SAE, folder: str) -> None:
    expected = load_file(os.path.join(folder, "expected.safetensors"))
    with torch.no_grad():
        latents, output = sae.encode(expected["x"]), sae(expected["x"])
    assert torch.allclose(latents, expected["latents"], atol=TOL, rtol=0)
    assert torch.allclose(output, expected["output"], atol=TOL, rtol=0)
    assert (expected["latents"] > 0).any() and (expected["latents"] == 0).any()  # a test with bite


@pytest.mark.parametrize("name", SAELENS)
def test_saelens_folders_encode_and_decode_as_saelens_does(name: str) -> None:
    sae = pv.load_sae(os.path.join(DATA, name))
    assert sae.architecture == name.replace("_no_bdec", "").replace("_norm_rescale", "").replace(
        "_layer_norm", "").replace("_rescaled", "")
    assert (sae.d_in, sae.d_sae) == (32, 64) and sae.W_enc.shape == (32, 64) and sae.W_dec.shape == (64, 32)
    check_against(sae, os.path.join(DATA, name))


def test_gemma_scope_params_npz_encodes_as_saelens_does() -> None:
    folder = os.path.join(GEMMA, GEMMA_ID)
    by_file = pv.load_sae(os.path.join(folder, "params.npz"))
    by_folder = pv.load_sae(GEMMA, GEMMA_ID)
    for sae in (by_file, by_folder):
        assert sae.architecture == "jumprelu" and not sae.apply_b_dec_to_input
        assert (sae.layer, sae.component) == (1, "block_output")  # gemma-scope-...-res, layer_1: resid_post
        check_against(sae, folder)
    assert by_folder.reference == {"path": os.path.abspath(GEMMA), "sae_id": GEMMA_ID}
    # the formula of the Gemma Scope tutorial, by hand
    import numpy as np

    params = {k: torch.from_numpy(v) for k, v in np.load(os.path.join(folder, "params.npz")).items()}
    x = load_file(os.path.join(folder, "expected.safetensors"))["x"]
    pre = x @ params["W_enc"] + params["b_enc"]
    assert torch.allclose(by_file.encode(x), torch.relu(pre) * (pre > params["threshold"]), atol=TOL)


def test_sites_come_from_the_hook_names() -> None:
    assert (pv.load_sae(os.path.join(DATA, "standard_no_bdec")).layer,
            pv.load_sae(os.path.join(DATA, "standard_no_bdec")).component) == (1, "block_input")
    tc = pv.load_sae(os.path.join(DATA, "transcoder"))
    assert (tc.layer, tc.component, tc.input_layer, tc.input_component) == (1, "mlp_residual", 1, "mlp_input")
    assert site_of_hook("blocks.7.attn.hook_z") == (7, "attention_value_output")
    assert site_of_hook("blocks.3.hook_mlp_out") == (3, "mlp_residual")  # = mlp_output but in Gemma 2 / OLMo 2
    assert site_of_hook("blocks.3.mlp.hook_post") == (3, "mlp_activation")
    assert site_of_hook(None, "model.layers.12") == (None, "model.layers.12.output")
    assert hf_path("model.layers.3.mlp.input") == "model.layers.3.mlp.input"
    with pytest.raises(pv.ConfigError, match="resid_mid.*component="):
        site_of_hook("blocks.2.hook_resid_mid")
    with pytest.raises(pv.ConfigError, match="no counterpart.*component="):
        site_of_hook("blocks.2.attn.hook_pattern")


def test_configs_from_before_saelens_6_are_read(tmp_path) -> None:
    """Top-level hook_name / activation_fn_str 'topk' with activation_fn_kwargs, boolean normalize_activations."""
    for name, old in (("topk", {"activation_fn_str": "topk", "activation_fn_kwargs": {"k": 5}, "architecture": "standard"}),
                      ("standard", {"normalize_activations": False})):
        folder = tmp_path / name
        shutil.copytree(os.path.join(DATA, name), folder)
        cfg = json.loads((folder / "cfg.json").read_text())
        hook = cfg.pop("metadata")["hook_name"]
        cfg.pop("k", None)
        cfg.update({"hook_point": hook, "hook_point_layer": 1, "context_size": 128, **old})
        (folder / "cfg.json").write_text(json.dumps(cfg))
        sae = pv.load_sae(folder)
        assert sae.architecture == name and (sae.layer, sae.component) == (1, "block_output")
        check_against(sae, str(folder))


def put_in_hub_cache(cache: str, repo_id: str, files: Dict[str, bytes], commit: str) -> None:
    """Files (names may have folders) of one commit in huggingface_hub's cache layout."""
    import hashlib

    repo = os.path.join(cache, "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for name, data in files.items():
        etag = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs", etag), "wb") as handle:
            handle.write(data)
        link = os.path.join(repo, "snapshots", commit, name)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(os.path.join(repo, "blobs", etag), os.path.dirname(link)), link)
    with open(os.path.join(repo, "refs", "main"), "w") as handle:
        handle.write(commit)


def two_repos_in_hub_cache(tmp_path, commit: str) -> Tuple[str, str]:
    """A hub cache holding Gemma Scope's layer-1 params.npz and a SAELens folder in ``someone/tiny-saes``."""
    cache = str(tmp_path / "hub")
    read = lambda *p: open(os.path.join(*p), "rb").read()  # noqa: E731
    put_in_hub_cache(cache, "google/gemma-scope-2b-pt-res",
                     {f"{GEMMA_ID}/params.npz": read(GEMMA, GEMMA_ID, "params.npz")}, commit)
    put_in_hub_cache(cache, "someone/tiny-saes", {f"blocks.1.hook_resid_post/{n}": read(DATA, "jumprelu", n)
                                                  for n in ("cfg.json", "sae_weights.safetensors")}, commit)
    return cache, commit


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # the library reads the variable at import


def test_hub_repos_load_from_the_local_cache_offline(tmp_path, offline) -> None:
    cache, commit = two_repos_in_hub_cache(tmp_path, "c" * 40)
    gemma = pv.load_sae("google/gemma-scope-2b-pt-res", GEMMA_ID, cache_dir=cache)
    check_against(gemma, os.path.join(GEMMA, GEMMA_ID))
    assert gemma.reference == {"repo_id": "google/gemma-scope-2b-pt-res", "sae_id": GEMMA_ID, "revision": commit}
    assert (gemma.layer, gemma.component) == (1, "block_output")
    lens = pv.load_sae("someone/tiny-saes", "blocks.1.hook_resid_post", cache_dir=cache, dtype=torch.float64)
    assert lens.W_enc.dtype == torch.float64
    check_against(lens.float(), os.path.join(DATA, "jumprelu"))
    with pytest.raises(pv.InputError, match="HF_HUB_OFFLINE"):
        pv.load_sae("someone/tiny-saes", "blocks.2.hook_resid_post", cache_dir=cache)


def test_bad_inputs_are_clear_errors(tmp_path) -> None:
    with pytest.raises(pv.InputError, match="holds no SAE"):
        pv.load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text("{")
    with pytest.raises(pv.InputError, match="no sae_weights.safetensors"):
        pv.load_sae(tmp_path)
    shutil.copy(os.path.join(DATA, "standard", "sae_weights.safetensors"), tmp_path)
    with pytest.raises(pv.InputError, match="not a readable JSON"):
        pv.load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "matryoshka_batchtopk", "d_in": 32, "d_sae": 64}))
    with pytest.raises(pv.ConfigError, match="matryoshka_batchtopk"):
        pv.load_sae(tmp_path)
    with pytest.raises(pv.InputError, match="neither an existing path nor a hub repo"):
        pv.load_sae("no such folder")
    sae = pv.load_sae(os.path.join(DATA, "standard"))
    with pytest.raises(pv.ShapeError, match="width 32"):
        sae.encode(torch.zeros(2, 31))
    with pytest.raises(pv.ConfigError, match="needs that input's norm"):
        pv.load_sae(os.path.join(DATA, "standard_norm_rescale")).decode(torch.zeros(64))


RELEASES = """
gemma-scope-2b-pt-res-canonical:
  conversion_func: gemma_2
  model: gemma-2-2b
  repo_id: google/gemma-scope-2b-pt-res
  saes:
  - id: layer_1/width_16k/canonical
    path: layer_1/width_16k/average_l0_71
tiny-res:
  model: tiny-gpt2
  repo_id: someone/tiny-saes
  saes:
  - id: blocks.1.hook_resid_post
    path: blocks.1.hook_resid_post
llama-scope-lxr-8x:
  conversion_func: llama_scope
  repo_id: fnlp/Llama-Scope
  saes:
  - id: l0r_8x
    path: Llama3_1-8B-Base-L0R-8x
"""


def test_saelens_release_names_resolve_through_sae_lens_own_table(tmp_path, offline, monkeypatch) -> None:
    """A release name and SAE id mean what SAELens's pretrained_saes.yaml says: that repo and folder. The table
    is read from the installed package's folder without importing it (its __init__ here refuses to run)."""
    package = tmp_path / "site" / "sae_lens"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('sae_lens code is never imported')\n")
    (package / "pretrained_saes.yaml").write_text(RELEASES)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    cache, commit = two_repos_in_hub_cache(tmp_path, "d" * 40)
    gemma = pv.load_sae("gemma-scope-2b-pt-res-canonical", "layer_1/width_16k/canonical", cache_dir=cache)
    check_against(gemma, os.path.join(GEMMA, GEMMA_ID))
    assert gemma.reference == {"repo_id": "google/gemma-scope-2b-pt-res", "sae_id": GEMMA_ID, "revision": commit}
    assert (gemma.layer, gemma.component) == (1, "block_output")
    check_against(pv.load_sae("tiny-res", "blocks.1.hook_resid_post", cache_dir=cache), os.path.join(DATA, "jumprelu"))
    with pytest.raises(pv.InputError, match="pass sae_id= one of them"):
        pv.load_sae("tiny-res", cache_dir=cache)
    with pytest.raises(pv.InputError, match="no SAE 'blocks.9.hook_resid_post'"):
        pv.load_sae("tiny-res", "blocks.9.hook_resid_post", cache_dir=cache)
    with pytest.raises(pv.InputError, match="not a path, a hub repo id, or a release"):
        pv.load_sae("no-such-release", "x", cache_dir=cache)
    with pytest.raises(pv.InputError, match="conversion_func 'llama_scope'"):
        pv.load_sae("llama-scope-lxr-8x", "l0r_8x", cache_dir=cache)
    import intervenable.saes.releases as releases

    monkeypatch.setattr(releases, "table_file", lambda: None)  # sae-lens not installed
    with pytest.raises(pv.InputError, match="install sae-lens"):
        pv.load_sae("gemma-scope-2b-pt-res-canonical", "layer_1/width_16k/canonical", cache_dir=cache)
