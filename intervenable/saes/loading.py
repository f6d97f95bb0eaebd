"""``load_sae``: SAELens folders and Gemma Scope ``params.npz``, from a local path or the hub.

* SAELens: a folder with ``cfg.json`` and ``sae_weights.safetensors`` (the
  format ``SAE.save_model`` writes; configs before SAELens 6 are read too:
  top-level ``hook_name`` / ``hook_point``, ``activation_fn: topk`` with
  ``activation_fn_kwargs.k``, boolean ``normalize_activations``).
* Gemma Scope: ``params.npz`` with ``W_enc``, ``W_dec``, ``b_enc``, ``b_dec``,
  ``threshold`` (a JumpReLU SAE; ``b_dec`` is not subtracted from the input).
  The site comes from the path as Gemma Scope names it
  (``gemma-scope-2b-pt-res/layer_20/...``: the residual stream after layer 20;
  ``-mlp``: the MLP output; ``-att``: the attention's ``hook_z``;
  ``-transcoders``: an MLP transcoder).

Hub files are fetched with ``huggingface_hub.hf_hub_download`` (its cache,
``HF_HUB_OFFLINE`` and tokens apply). Reading never unpickles: safetensors, JSON,
and ``numpy.load(allow_pickle=False)``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ..errors import ConfigError, InputError
from .hook_names import site_of_hook
from .releases import resolve_release
from .sae import ARCHITECTURES, SAE

CFG_NAME = "cfg.json"
WEIGHTS_NAME = "sae_weights.safetensors"
NPZ_NAME = "params.npz"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def load_sae(path_or_repo: Union[str, os.PathLike], sae_id: Optional[str] = None, *,
             device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None,
             revision: Optional[str] = None, cache_dir: Optional[str] = None, token: Any = None) -> SAE:
    """An ``SAE`` from a SAELens folder or a Gemma Scope ``params.npz``, local or on the hub.

    ``path_or_repo``: a folder (``cfg.json`` + ``sae_weights.safetensors``, or ``params.npz``),
    a ``params.npz`` file, a hub repo id, or a SAELens release name (``"gemma-scope-2b-pt-res-canonical"``,
    read from an installed sae-lens's table; saes/releases.py); ``sae_id``: the sub-folder inside it
    (``"blocks.8.hook_resid_pre"``, ``"layer_20/width_16k/average_l0_71"``), or the release's SAE id. ``sae.layer`` and
    ``sae.component`` say where it acts (from its ``hook_name``); ``sae.reference`` where it came from.
    ``revision``, ``cache_dir`` and ``token`` go to ``huggingface_hub.hf_hub_download``.
    """
    local = os.fspath(path_or_repo)
    if os.path.exists(local):
        where = os.path.join(local, sae_id) if sae_id else local
        if not os.path.exists(where):
            raise InputError(f"No SAE at {where!r}: {local!r} exists but has no {sae_id!r} inside it.")
        reference = {"path": os.path.abspath(local), "sae_id": sae_id}
        files = _local_files(where)
        hint = where
    else:
        if re.fullmatch(r"[\w.-]+", local):  # no owner: a SAELens release name (saes/releases.py)
            local, sae_id = resolve_release(local, sae_id)
        elif not re.fullmatch(r"[\w.-]+/[\w.-]+", local):
            raise InputError(f"{local!r} is neither an existing path nor a hub repo id ('owner/name').")
        files, commit = _hub_files(local, sae_id, revision, cache_dir, token)
        reference = {"repo_id": local, "sae_id": sae_id, "revision": commit}
        hint = f"{local}/{sae_id or ''}"
    if "cfg" in files:
        sae = _from_saelens(files["cfg"], files["weights"], reference)
    else:
        sae = _from_npz(files["npz"], hint, reference)
    return sae.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else sae


def load_sae_from_reference(reference: Dict[str, Any], device: Any = None, dtype: Optional[torch.dtype] = None) -> SAE:
    """Load the SAE a ``reference`` (``sae.reference``) names: a local path or a hub repo, and its ``sae_id``."""
    source = reference.get("path") or reference.get("repo_id")
    if not isinstance(source, str):
        raise ConfigError(f"An SAE reference needs 'path' or 'repo_id'; got {reference!r}.")
    return load_sae(source, reference.get("sae_id"), device=device, dtype=dtype, revision=reference.get("revision"))


# -- finding the files ------------------------------------------------------------------
def _local_files(where: str) -> Dict[str, str]:
    if os.path.isfile(where):
        if where.endswith(".npz"):
            return {"npz": where}
        raise InputError(f"{where!r} is a file but not a params.npz: give the folder that holds {CFG_NAME} and "
                         f"{WEIGHTS_NAME}, or a Gemma Scope params.npz.")
    cfg, weights, npz = (os.path.join(where, n) for n in (CFG_NAME, WEIGHTS_NAME, NPZ_NAME))
    if os.path.isfile(cfg):
        if not os.path.isfile(weights):
            raise InputError(f"{where!r} has {CFG_NAME} but no {WEIGHTS_NAME}: the SAELens folder is incomplete.")
        return {"cfg": cfg, "weights": weights}
    if os.path.isfile(npz):
        return {"npz": npz}
    raise InputError(f"{where!r} holds no SAE: expected {CFG_NAME} + {WEIGHTS_NAME} (SAELens) or {NPZ_NAME} "
                     "(Gemma Scope). Pass sae_id= for a sub-folder.")


def _hub_files(repo_id: str, sae_id: Optional[str], revision: Optional[str], cache_dir: Optional[str],
               token: Any) -> Tuple[Dict[str, str], Optional[str]]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    def get(name: str) -> Optional[str]:
        try:
            return hf_hub_download(repo_id, name, subfolder=sae_id or None, revision=revision, cache_dir=cache_dir,
                                   token=token)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            return None

    cfg = get(CFG_NAME)
    if cfg is not None:
        weights = get(WEIGHTS_NAME)
        if weights is None:
            raise InputError(f"The hub repo {repo_id!r} has {CFG_NAME} under {sae_id!r} but no {WEIGHTS_NAME}.")
        files = {"cfg": cfg, "weights": weights}
    else:
        npz = get(NPZ_NAME)
        if npz is None:
            offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
            raise InputError(
                f"No SAE found in the hub repo {repo_id!r} under {sae_id!r}: neither {CFG_NAME} nor {NPZ_NAME} "
                + ("is in the local hub cache (HF_HUB_OFFLINE is set)." if offline else "could be downloaded.")
                + " Check the repo id and sae_id (the sub-folder that holds the SAE)."
            )
        files = {"npz": npz}
    path = next(iter(files.values()))
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", path)
    return files, (match.group(1) if match else revision)


# -- SAELens ------------------------------------------------------------------------------
def saelens_settings(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The ``SAE`` constructor settings of a SAELens ``cfg.json`` (pre-6.0 layouts included)."""
    meta = dict(cfg.get("metadata") or {})
    get = lambda key, default=None: cfg.get(key, meta.get(key, default))  # noqa: E731
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str"))
    k = cfg.get("k")
    if activation == "topk" and architecture == "standard":
        architecture, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k", k)
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"This SAELens file has architecture {architecture!r}, which we do not read "
                          f"(we read {', '.join(ARCHITECTURES)}).")
    if activation not in (None, "relu", "topk"):
        raise ConfigError(f"This SAELens file uses activation_fn {activation!r}; we read 'relu' and 'topk' only.")
    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool) or normalize is None:
        normalize = "expected_average_only_in" if normalize else "none"
    if cfg.get("finetuning_scaling_factor"):
        raise ConfigError("This SAELens file uses finetuning_scaling_factor, which we do not read.")
    hook_name = get("hook_name", cfg.get("hook_point"))
    hook_out = get("hook_name_out")
    is_transcoder = "transcoder" in architecture
    layer, component = site_of_hook(hook_out if is_transcoder else hook_name, get("hf_hook_name_out" if is_transcoder else "hf_hook_name"))
    settings: Dict[str, Any] = {
        "architecture": architecture, "k": k, "normalize_activations": normalize,
        "apply_b_dec_to_input": bool(cfg.get("apply_b_dec_to_input", not is_transcoder)),
        "rescale_acts_by_decoder_norm": bool(cfg.get("rescale_acts_by_decoder_norm", False)),
        "hook_name": hook_name, "hook_name_out": hook_out, "layer": layer, "component": component,
    }
    if is_transcoder:
        settings["input_layer"], settings["input_component"] = site_of_hook(hook_name, get("hf_hook_name"))
    return settings


def _from_saelens(cfg_path: str, weights_path: str, reference: Dict[str, Any]) -> SAE:
    from safetensors.torch import load_file

    try:
        with open(cfg_path, encoding="utf-8") as handle:
            cfg = json.load(handle)
    except (OSError, ValueError) as exc:
        raise InputError(f"{cfg_path!r} is not a readable JSON config ({exc}).") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path!r} holds {type(cfg).__name__}, not a SAELens config object.")
    weights = load_file(weights_path)
    if "log_threshold" in weights and "threshold" not in weights:
        weights["threshold"] = weights.pop("log_threshold").exp()
    scale = weights.pop("scaling_factor", None)
    if scale is not None and not torch.allclose(scale, torch.ones_like(scale)):
        raise ConfigError(f"{weights_path!r} has a scaling_factor other than 1 (finetuning scaling), which we do not read.")
    settings = saelens_settings(cfg)
    meta = {k: v for k, v in dict(cfg.get("metadata") or {}).items() if isinstance(v, (str, int, float, bool))}
    dtype = _DTYPES.get(str(cfg.get("dtype", "float32")).replace("torch.", ""))
    sae = SAE.from_weights(weights, settings, reference=reference)
    sae.metadata.update(meta)
    return sae if dtype is None else sae.to(dtype)


# -- Gemma Scope --------------------------------------------------------------------------
def gemma_scope_site(where: str) -> Dict[str, Any]:
    """Architecture and site from a Gemma Scope path (repo id or folder names)."""
    match = re.search(r"layer_(\d+)", where)
    layer = int(match.group(1)) if match else None
    name = where.replace("\\", "/").lower()
    if "transcoder" in name:
        hooks = (f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out")
        return {"architecture": "jumprelu_transcoder", "hook_name": hooks[0], "hook_name_out": hooks[1]}
    if layer is None:
        return {"architecture": "jumprelu"}
    for tag, hook in (("-res", "hook_resid_post"), ("-mlp", "hook_mlp_out"), ("-att", "attn.hook_z")):
        if tag in name:
            return {"architecture": "jumprelu", "hook_name": f"blocks.{layer}.{hook}"}
    return {"architecture": "jumprelu"}


def _from_npz(path: str, where: str, reference: Dict[str, Any]) -> SAE:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.array(data[k])) for k in data.files}
    except (OSError, ValueError) as exc:
        raise InputError(f"{path!r} is not a readable params.npz ({exc}).") from None
    missing = [k for k in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if k not in arrays]
    if missing:
        raise InputError(f"{path!r} lacks {missing}: a Gemma Scope params.npz has W_enc, W_dec, b_enc, b_dec, threshold.")
    site = gemma_scope_site(where + "/" + path)
    hook_name, hook_out = site.get("hook_name"), site.get("hook_name_out")
    transcoder = site["architecture"] == "jumprelu_transcoder"
    layer, component = site_of_hook(hook_out if transcoder else hook_name)
    extra: Dict[str, Any] = {}
    if transcoder:
        extra["input_layer"], extra["input_component"] = site_of_hook(hook_name)
    arrays = {k: v.float() for k, v in arrays.items()}
    return SAE(arrays["W_enc"], arrays["W_dec"], b_enc=arrays["b_enc"], b_dec=arrays["b_dec"],
               threshold=arrays["threshold"], architecture=site["architecture"], apply_b_dec_to_input=False,
               hook_name=hook_name, hook_name_out=hook_out, layer=layer, component=component, reference=reference,
               **extra)
