"""``load_cache``: a folder written by ``cache_to_disk`` as a map-style dataset of tokens.

Item ``i`` is token ``i`` of the whole run (shards in order): ``{site: [...], "tokens", "sequence",
"position"}``. Shards are opened with ``safetensors.safe_open`` (memory-mapped) and only the rows
asked for are read, so ``DataLoader(ds, shuffle=True, batch_size=...)`` streams a cache larger than
memory; ``__getitems__`` reads a batch shard by shard. ``column(name)`` reads one site whole.
"""
from __future__ import annotations

import bisect
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from ..io.common import SerializationError, sha256_file
from . import disk

INDEX_COLUMNS = ("tokens", "sequence", "position")


class CachedActivations(Dataset):
    """A ``cache_to_disk`` folder, one item per token (see the module docstring)."""

    def __init__(self, folder: str, manifest: Dict[str, Any], columns: Optional[Sequence[str]] = None) -> None:
        self.folder = folder
        self.manifest = manifest
        self.sites: List[str] = [site["name"] for site in manifest["sites"]]
        known = self.sites + list(INDEX_COLUMNS)
        self.columns: List[str] = list(known if columns is None else columns)
        unknown = [c for c in self.columns if c not in known]
        if unknown:
            raise SerializationError(f"{unknown[0]!r} is not in this cache; its columns are {known}.")
        self.files = [os.path.join(folder, s["file"]) for s in manifest["shards"]]
        self.starts: List[int] = []
        total = 0
        for s in manifest["shards"]:
            self.starts.append(total)
            total += int(s["tokens"])
        self.total = total
        self._handles: Dict[int, Any] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.total

    def __getstate__(self) -> Dict[str, Any]:  # DataLoader workers (spawn) get the dataset without open files
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _handle(self, k: int) -> Any:
        from safetensors import safe_open

        if self._pid != os.getpid():  # a DataLoader worker: open our own handles
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            self._handles[k] = safe_open(self.files[k], framework="pt")
        return self._handles[k]

    def _locate(self, i: int) -> tuple:
        if isinstance(i, bool) or not isinstance(i, int):
            i = int(i)
        if not -self.total <= i < self.total:
            raise IndexError(f"token {i} is out of range for a cache of {self.total} tokens.")
        i %= self.total
        k = bisect.bisect_right(self.starts, i) - 1
        return k, i - self.starts[k]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        k, j = self._locate(i)
        handle = self._handle(k)
        return {c: handle.get_slice(c)[j:j + 1][0] for c in self.columns}

    def __getitems__(self, indices: Sequence[int]) -> List[Dict[str, torch.Tensor]]:
        """A batch, read per shard: one contiguous read when the rows are dense in it, else row by row."""
        located = [self._locate(i) for i in indices]
        rows: Dict[int, List[int]] = {}
        for k, j in located:
            rows.setdefault(k, []).append(j)
        read: Dict[tuple, Dict[str, torch.Tensor]] = {}
        for k, js in rows.items():
            lo, hi = min(js), max(js) + 1
            handle = self._handle(k)
            if hi - lo <= 4 * len(js):
                block = {c: handle.get_slice(c)[lo:hi] for c in self.columns}
                for j in js:
                    read[(k, j)] = {c: block[c][j - lo] for c in self.columns}
            else:
                for j in js:
                    read[(k, j)] = {c: handle.get_slice(c)[j:j + 1][0] for c in self.columns}
        return [read[kj] for kj in located]

    def column(self, name: str) -> torch.Tensor:
        """One column over every token, ``[tokens, ...]`` (in memory)."""
        if name not in self.sites and name not in INDEX_COLUMNS:
            raise SerializationError(f"{name!r} is not in this cache; its sites are {self.sites}.")
        return torch.cat([self._handle(k).get_tensor(name) for k in range(len(self.files))])

    def __repr__(self) -> str:
        return (f"CachedActivations({self.total} tokens, {len(self.files)} shards, sites {self.sites}, "
                f"dtype {self.manifest['dtype']})")


def load_cache(path: Any, columns: Optional[Sequence[str]] = None, verify: bool = False) -> CachedActivations:
    """The activations a completed ``cache_to_disk`` wrote to ``path``; ``verify=True`` re-hashes every shard."""
    folder = os.path.abspath(os.path.expanduser(os.fspath(path)))
    manifest_path = os.path.join(folder, disk.MANIFEST)
    if not os.path.isdir(folder):
        raise SerializationError(f"No folder {folder!r}: give the path cache_to_disk wrote to.")
    if not os.path.isfile(manifest_path):
        raise SerializationError(
            f"{folder!r} has no {disk.MANIFEST}: the run that writes it did not finish. Rerun cache_to_disk with the "
            "same arguments: it keeps the complete shards and computes the rest.")
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
        if manifest.get("format") != disk.FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}")
        shards = manifest["shards"]
    except (ValueError, KeyError, TypeError) as exc:
        raise SerializationError(f"{manifest_path!r} is not a cache_to_disk manifest ({exc}).") from None
    for s in shards:
        file = os.path.join(folder, s["file"])
        if not os.path.isfile(file) or os.path.getsize(file) != s["bytes"]:
            raise SerializationError(f"Shard {s['file']} is missing or has the wrong size ({file!r}): the folder is "
                                     "damaged; rerun cache_to_disk into a new folder.")
        if verify and sha256_file(file) != s["sha256"]:
            raise SerializationError(f"Shard {s['file']}'s content does not match its hash in the manifest: the file "
                                     "is damaged; rerun cache_to_disk into a new folder.")
    return CachedActivations(folder, manifest, columns)
