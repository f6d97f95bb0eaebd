"""``cache_to_disk``: activations over a dataset, written as safetensors shards plus a manifest; resumable.

The run is planned before any forward, from the data alone: sequences (one per text or token row)
are grouped into forward batches of ``batch_size`` consecutive sequences, and batches into shards
of at least ``shard_tokens`` tokens. Each shard is written to a temporary file, flushed, and renamed
to ``shard-NNNNN.safetensors`` (the rename is its commit: a shard file under its final name is
complete). Its metadata names the run (a hash of the model's fingerprint, the sites, the dtype and
the plan with every shard's token hash), so a rerun with the same arguments skips the shards already
written and computes the rest: after a kill at any moment, the folder ends byte-identical to an
uninterrupted run, with no token twice. ``manifest.json`` (written last, atomically) lists the shards
with their content hashes; ``load_cache`` reads only folders that have one.

Under ``torchrun`` (an initialised process group) rank ``r`` writes the shards ``k`` with
``k % world == r``; rank 0 writes the manifest after every rank is done. The shards are the same
files one process writes.

A shard holds, per cached site, ``[tokens, ...]`` (padding dropped; heads as ``[tokens, heads,
head_dim]``) under ``"{component}.{layer}"`` (a raw module path under its own name), and
``tokens`` / ``sequence`` / ``position`` (int64): each row's token id, its sequence's index in the
data and its position there.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..errors import InputError
from ..io.common import SerializationError
from .request import Key

FORMAT = "intervenable-activations/1"
MANIFEST = "manifest.json"


def after_step(step: str) -> None:
    """Called after every change on disk; a no-op that the kill tests replace to stop the process there."""


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def site_name(key: Key) -> str:
    component, layer = key
    return component if layer is None else f"{component}.{layer}"


@dataclass(frozen=True)
class Shard:
    index: int
    first: int  # first sequence (index into the data)
    end: int  # one past the last sequence
    tokens: int
    tokens_sha256: str


def sequences_of(data: Any, tokenizer: Any = None, max_length: Optional[int] = None) -> List[torch.Tensor]:
    """The data as a list of 1-D int64 token sequences (texts need ``tokenizer``; padding masks are applied)."""
    if isinstance(data, (str, bytes)):
        raise InputError("data must be a list of texts or token batches, not one string: wrap it, [text].")
    items = list(data)
    if items and all(isinstance(x, str) for x in items):
        if tokenizer is None:
            raise InputError("Texts need tokenizer=: cache_to_disk(model, texts, path, tokenizer=tok, ...).")
        kw = dict(truncation=True, max_length=max_length) if max_length else {}
        ids = tokenizer(items, **kw)["input_ids"]
        out = [torch.as_tensor(x, dtype=torch.long) for x in ids]
    else:
        out = []
        for item in items:
            mask = None
            if isinstance(item, dict) or hasattr(item, "keys"):
                item, mask = item["input_ids"], item.get("attention_mask")
            t = torch.as_tensor(item)
            if t.is_floating_point():
                raise InputError(f"Token batches must hold integer ids; got {t.dtype}.")
            rows = t.long().reshape(1, -1) if t.dim() == 1 else t.long()
            if rows.dim() != 2:
                raise InputError(f"A token batch must be [batch, seq] or [seq]; got shape {tuple(t.shape)}.")
            m = None if mask is None else torch.as_tensor(mask).bool().reshape(rows.shape)
            for r in range(rows.shape[0]):
                out.append(rows[r] if m is None else rows[r][m[r]])
        if max_length:
            out = [s[:max_length] for s in out]
    for i, s in enumerate(out):
        if s.numel() == 0:
            raise InputError(f"Sequence {i} of the data has no tokens: drop empty texts before caching.")
    return out


def plan_shards(seqs: List[torch.Tensor], batch_size: int, shard_tokens: int) -> List[Shard]:
    """Consecutive batches of ``batch_size`` sequences, grouped into shards of at least ``shard_tokens`` tokens."""
    shards: List[Shard] = []
    first, tokens, digest = 0, 0, hashlib.sha256()
    for start in range(0, len(seqs), batch_size):
        for s in seqs[start:start + batch_size]:
            digest.update(len(s).to_bytes(8, "little"))
            digest.update(s.numpy().astype("<i8").tobytes())
            tokens += len(s)
        end = min(start + batch_size, len(seqs))
        if tokens >= shard_tokens or end == len(seqs):
            shards.append(Shard(len(shards), first, end, tokens, digest.hexdigest()))
            first, tokens, digest = end, 0, hashlib.sha256()
    return shards


def model_fingerprint(model: nn.Module) -> Dict[str, Any]:
    """The model's class, config hash and a hash of every parameter's shape and first 4096 values."""
    config = getattr(model, "config", None)
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    digest = hashlib.sha256()
    for name, p in model.state_dict().items():
        digest.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        digest.update(p.detach().reshape(-1)[:4096].float().cpu().numpy().tobytes())
    return {"class": type(model).__name__, "model_type": getattr(config, "model_type", None),
            "config_sha256": hashlib.sha256(text.encode()).hexdigest(), "weights_sample_sha256": digest.hexdigest()}


def run_id(fingerprint: Dict[str, Any], sites: List[Dict[str, Any]], dtype: str, shards: List[Shard]) -> str:
    text = json.dumps({"model": fingerprint, "sites": sites, "dtype": dtype,
                       "shards": [(s.first, s.end, s.tokens, s.tokens_sha256) for s in shards]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def shard_metadata(run: str, shard: Shard) -> Dict[str, str]:
    """A shard's safetensors metadata: one key, so that the header's bytes never depend on a map's order."""
    info = {"format": FORMAT, "run": run, "shard": shard.index, "sequences": [shard.first, shard.end]}
    return {"intervenable": json.dumps(info, sort_keys=True)}


def shard_run(path: str) -> Optional[Tuple[str, int]]:
    """``(run, shard index)`` from a shard file's metadata, or None when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["intervenable"])
        return meta["run"], int(meta["shard"])
    except Exception:  # noqa: BLE001 - any unreadable file is "not a complete shard"
        return None


def check_folder(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise SerializationError(f"path must be a folder path; got {type(path).__name__}.")
    folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise SerializationError(f"{folder!r} exists and is not a folder: give a folder to write the shards into.")
    os.makedirs(folder, exist_ok=True)
    return folder
