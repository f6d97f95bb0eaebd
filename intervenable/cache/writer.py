"""``cache_to_disk``: run the plan of ``disk.py``, shard by shard, skipping the shards already written."""
from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from ..distributed import rank_and_world
from ..errors import ConfigError, InputError
from ..io.atomic import remove_temporaries, replace_file
from ..io.common import SerializationError, sha256_file, write_safetensors
from . import disk
from .request import resolve_sites
from .run import run_with_cache


def _dtype_name(dtype: Optional[torch.dtype], model: nn.Module) -> str:
    if dtype is None:
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating torch dtype (torch.float16, torch.bfloat16, ...); got {dtype!r}.")
    return str(dtype).replace("torch.", "")


def _batch(seqs: List[torch.Tensor], device: Any) -> Dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` and ``attention_mask`` (a causal model's real tokens do not see the padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def _shard_tensors(model: nn.Module, seqs: List[torch.Tensor], shard: disk.Shard, batch_size: int,
                   components: Any, layers: Any, dtype: torch.dtype, device: Any) -> Dict[str, torch.Tensor]:
    parts: Dict[str, List[torch.Tensor]] = {}
    for start in range(shard.first, shard.end, batch_size):
        rows = seqs[start:min(start + batch_size, shard.end)]
        batch = _batch(rows, device)
        _, cache = run_with_cache(model, batch, components, layers, dtype=dtype, device="cpu")
        keep = batch["attention_mask"].bool().cpu()
        dense = bool(keep.all())  # no padding: every row is whole, a reshape keeps them all
        for key, value in cache.items():
            parts.setdefault(disk.site_name(key), []).append(value.reshape(-1, *value.shape[2:]) if dense else value[keep])
        parts.setdefault("tokens", []).append(batch["input_ids"].cpu()[keep])
        seq = torch.arange(start, start + len(rows))[:, None].expand_as(keep)
        parts.setdefault("sequence", []).append(seq[keep])
        parts.setdefault("position", []).append(torch.arange(keep.shape[1]).expand_as(keep)[keep])
    return {name: (values[0] if len(values) == 1 else torch.cat(values)).contiguous() for name, values in parts.items()}


def cache_to_disk(model: nn.Module, data: Any, path: Any, components: Sequence[str] = ("block_output",),
                  layers: Any = None, *, tokenizer: Any = None, dtype: Optional[torch.dtype] = None,
                  shard_tokens: int = 1 << 16, batch_size: int = 8, max_length: Optional[int] = None,
                  device: Any = None, progress: bool = True) -> Dict[str, Any]:
    """Cache ``components`` at ``layers`` for every token of ``data`` into shards under ``path``; returns the manifest.

    ``data``: texts (with ``tokenizer``), token batches (``[batch, seq]`` tensors, lists of ids, or
    tokenizer outputs with an ``attention_mask``). Rerun with the same arguments to resume after an
    interruption (see ``disk.py``). ``device``: where the inputs go (default: the model's).
    """
    from tqdm.auto import tqdm

    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, int) or shard_tokens < 1:
        raise ConfigError(f"shard_tokens must be a positive int; got {shard_tokens!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int; got {batch_size!r}.")
    folder = disk.check_folder(path)
    dtype_name = _dtype_name(dtype, model)
    torch_dtype = getattr(torch, dtype_name)
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    seqs = disk.sequences_of(data, tokenizer, max_length)
    if not seqs:
        raise InputError("data is empty: nothing to cache.")
    sites = resolve_sites(model, components, layers)
    described = [{"name": disk.site_name(cs.key), "component": cs.key[0], "layer": cs.key[1],
                  "module": cs.site.module_path, "hook": cs.site.hook} for cs in sites]
    shards = disk.plan_shards(seqs, batch_size, shard_tokens)
    fingerprint = disk.model_fingerprint(model)
    run = disk.run_id(fingerprint, described, dtype_name, shards)
    rank, world = rank_and_world()
    mine = [s for s in shards if s.index % world == rank]
    remove_temporaries(folder, [disk.shard_name(s.index) for s in mine] + ([disk.MANIFEST] if rank == 0 else []),
                       step=disk.after_step)
    done = []
    for s in mine:
        file = os.path.join(folder, disk.shard_name(s.index))
        if os.path.exists(file):
            found = disk.shard_run(file)
            if found is not None and found[0] != run:
                raise SerializationError(
                    f"{folder!r} holds shards of another run (another model, sites, dtype or data): cache into a new "
                    "folder, or remove that one first.")
            if found == (run, s.index):
                done.append(s.index)
    bar = tqdm(total=sum(s.tokens for s in mine), initial=sum(s.tokens for s in mine if s.index in done),
               unit="tok", disable=not progress, desc=f"cache_to_disk (rank {rank})" if world > 1 else "cache_to_disk")
    was_training = model.training
    model.eval()
    # Shard k is written (serialised, flushed, renamed) by one background thread while shard k + 1 is
    # computed; at most one write is pending, and writes happen in shard order.
    pending: Optional[Future] = None
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            for s in mine:
                if s.index in done:
                    continue
                tensors = _shard_tensors(model, seqs, s, batch_size, components, layers, torch_dtype, device)
                if pending is not None:
                    bar.update(pending.result())
                pending = pool.submit(_write_shard, folder, s, tensors, disk.shard_metadata(run, s))
            if pending is not None:
                bar.update(pending.result())
    finally:
        bar.close()
        model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    current = os.path.join(folder, disk.MANIFEST)
    if rank == 0:
        manifest = _manifest(folder, fingerprint, described, dtype_name, shards, run, shard_tokens, batch_size, len(seqs))
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        if not (os.path.exists(current) and _read(current) == text):
            replace_file(folder, disk.MANIFEST, lambda tmp: _write(tmp, text), step=disk.after_step)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # the manifest is in place before any rank returns
    return json.loads(_read(current))


def _write_shard(folder: str, shard: disk.Shard, tensors: Dict[str, torch.Tensor], meta: Dict[str, str]) -> int:
    replace_file(folder, disk.shard_name(shard.index), lambda tmp: write_safetensors(tmp, tensors, meta),
                 step=disk.after_step)
    return shard.tokens


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _manifest(folder: str, fingerprint: Dict[str, Any], sites: List[Dict[str, Any]], dtype: str,
              shards: List[disk.Shard], run: str, shard_tokens: int, batch_size: int, n_sequences: int) -> Dict[str, Any]:
    from safetensors import safe_open

    listed = []
    shapes: Dict[str, List[int]] = {}
    for s in shards:
        file = os.path.join(folder, disk.shard_name(s.index))
        if disk.shard_run(file) != (run, s.index):
            raise SerializationError(f"Shard {disk.shard_name(s.index)} is missing or not this run's after every rank "
                                     "finished: rerun cache_to_disk with the same arguments.")
        if not shapes:
            with safe_open(file, framework="pt") as handle:
                shapes = {site["name"]: list(handle.get_slice(site["name"]).get_shape()[1:]) for site in sites}
        listed.append({"file": disk.shard_name(s.index), "sequences": [s.first, s.end], "tokens": s.tokens,
                       "tokens_sha256": s.tokens_sha256, "sha256": sha256_file(file),
                       "bytes": os.path.getsize(file)})
    return {"format": disk.FORMAT, "run": run, "model": fingerprint,
            "sites": [dict(site, shape=shapes[site["name"]]) for site in sites], "dtype": dtype,
            "shard_tokens": shard_tokens, "batch_size": batch_size, "sequences": n_sequences,
            "tokens": sum(s.tokens for s in shards), "shards": listed}
