"""Sharing through the Hugging Face hub, by way of ``huggingface_hub`` (imported only when used).

Downloads go through ``snapshot_download``, so the hub cache (``HF_HUB_CACHE``
or ``cache_dir``), ``HF_HUB_OFFLINE``, ``revision`` and ``token`` behave as
everywhere else in the Hugging Face ecosystem. Only the files of a saved folder
are fetched or uploaded.
"""
from __future__ import annotations

import os
import re
from typing import Any, Optional

from .common import CONFIG_NAME, SAVED_FILE_PATTERNS, TENSORS_NAME, SerializationError

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_repo_id(name: str) -> bool:
    return bool(_REPO_ID.match(name)) and ".." not in name


def download(
    repo_id: str,
    revision: Optional[str] = None,
    token: Any = None,
    cache_dir: Optional[str] = None,
    local_dir: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> str:
    """The local folder of ``repo_id`` at ``revision``, from the hub cache or downloaded into it."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise SerializationError("Loading from the hub needs huggingface_hub: pip install huggingface_hub.") from None
    try:
        return snapshot_download(
            repo_id=repo_id,
            revision=revision,
            token=token,
            cache_dir=cache_dir,
            local_dir=local_dir,
            endpoint=endpoint,
            allow_patterns=SAVED_FILE_PATTERNS,
        )
    except Exception as exc:  # the hub's errors are many; all mean "not available"
        raise SerializationError(
            f"{repo_id!r} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(exc).__name__}: {exc}). Check the path or repo id, the revision, your token, and the "
            "network (with HF_HUB_OFFLINE=1 only the local hub cache is used)."
        ) from None


def push_folder(
    folder: str,
    repo_id: str,
    private: Optional[bool] = None,
    token: Any = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> Any:
    """Create ``repo_id`` if needed and upload the saved files of ``folder`` in one commit."""
    from huggingface_hub import HfApi

    if not os.path.isfile(os.path.join(folder, CONFIG_NAME)):
        raise SerializationError(f"{folder!r} holds no {CONFIG_NAME}: save() the model there before pushing it.")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    return api.upload_folder(
        folder_path=folder,
        repo_id=repo_id,
        revision=revision,
        commit_message=commit_message or "Upload interventions with intervenable",
        allow_patterns=[CONFIG_NAME, TENSORS_NAME],
    )
