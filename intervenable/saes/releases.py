"""SAELens release names (``gemma-scope-2b-pt-res-canonical``, ``gpt2-small-res-jb``) -> hub repo and folder.

SAELens users name SAEs by release and id: ``SAE.from_pretrained("gemma-scope-2b-pt-res-canonical",
"layer_12/width_16k/canonical")``. The table behind those names is SAELens's own data file,
``sae_lens/pretrained_saes.yaml``: per release a ``repo_id``, a ``conversion_func`` naming the file
format, and per SAE ``id`` its ``path`` inside the repo. Where sae-lens is installed we read that file
(found without importing sae-lens; parsed with PyYAML, which transformers requires), so the names mean
exactly what they mean there; we do not ship a copy that would go stale. Formats we read: SAELens
folders (no ``conversion_func``) and Gemma Scope's ``params.npz`` (``gemma_2``).
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import InputError

TABLE_NAME = "pretrained_saes.yaml"
#: conversion functions whose files load_sae reads (None: a SAELens folder)
READABLE = (None, "gemma_2")


def table_file() -> Optional[str]:
    """The installed sae-lens package's release table, or None when sae-lens is not installed."""
    spec = importlib.util.find_spec("sae_lens")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(folder, TABLE_NAME)
        if os.path.isfile(path):
            return path
    return None


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime: float) -> Dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as handle:
        table = yaml.safe_load(handle)
    if not isinstance(table, dict):
        raise InputError(f"{path} is not a table of SAELens releases.")
    return table


def resolve_release(name: str, sae_id: Optional[str]) -> Tuple[str, str]:
    """``(repo_id, path in the repo)`` of SAE ``sae_id`` of SAELens release ``name`` (``InputError`` naming the fix)."""
    path = table_file()
    if path is None:
        raise InputError(
            f"{name!r} is not a path or a hub repo id ('owner/name'). If it is a SAELens release name, install "
            "sae-lens (its pretrained_saes.yaml maps releases to hub repos), or pass the repo and the SAE's folder "
            "directly, e.g. pv.load_sae('google/gemma-scope-2b-pt-res', 'layer_12/width_16k/average_l0_82').")
    table = _read(path, os.path.getmtime(path))
    release = table.get(name)
    if not isinstance(release, dict) or not isinstance(release.get("repo_id"), str):
        raise InputError(f"{name!r} is not a path, a hub repo id, or a release in SAELens's table ({path}).")
    entries = [e for e in release.get("saes") or [] if isinstance(e, dict)]
    ids = [str(e.get("id")) for e in entries]
    if sae_id is None:
        raise InputError(f"SAELens release {name!r} holds {len(ids)} SAEs: pass sae_id= one of them, e.g. "
                         f"{ids[:3]}.")
    entry = next((e for e in entries if str(e.get("id")) == sae_id), None)
    if entry is None:
        near = [i for i in ids if sae_id.split("/")[0] in i][:5] or ids[:5]
        raise InputError(f"SAELens release {name!r} has no SAE {sae_id!r}; some of its ids: {near}.")
    conversion = release.get("conversion_func")
    if conversion not in READABLE:
        raise InputError(
            f"SAELens release {name!r} stores its SAEs in a format of its own (conversion_func {conversion!r}); "
            "load_sae reads SAELens folders and Gemma Scope params.npz. Convert it with SAELens "
            "(SAE.from_pretrained(...).save_model(folder)) and load that folder.")
    return release["repo_id"], str(entry.get("path") or sae_id)
