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

from .atomic import current_file, folder_lock
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


#: exception class names (httpx, requests, the standard library, huggingface_hub) that mean "no connection"
_UNREACHABLE = {"ConnectError", "ConnectTimeout", "ConnectionError", "NetworkError", "TransportError", "TimeoutException",
                "ProxyError", "TimeoutError", "OfflineModeIsEnabled", "gaierror"}


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) says the hub could not be reached, whichever HTTP library raised it."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ in _UNREACHABLE for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


def push_folder(
    folder: str,
    repo_id: str,
    private: Optional[bool] = None,
    token: Any = None,
    revision: Optional[str] = None,
    commit_message: Optional[str] = None,
    endpoint: Optional[str] = None,
    kept_locally: bool = True,
) -> Any:
    """Create ``repo_id`` if needed and upload the current version's files of ``folder`` in one commit.

    ``kept_locally``: whether ``folder`` stays on disk (``save``) or is temporary
    (``push_to_hub``); the error when the hub cannot be reached says which.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    with folder_lock(folder, exclusive=False):  # a save into the folder finishes before its files are read
        paths = {name: current_file(folder, name) for name in (CONFIG_NAME, TENSORS_NAME)}
        if not os.path.isfile(paths[CONFIG_NAME]):
            raise SerializationError(f"{folder!r} holds no {CONFIG_NAME}: save() the model there before pushing it.")
        api = HfApi(endpoint=endpoint, token=token)
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            return api.create_commit(
                repo_id,
                operations=[CommitOperationAdd(path_in_repo=name, path_or_fileobj=path) for name, path in paths.items()],
                commit_message=commit_message or "Upload interventions with intervenable",
                revision=revision,
            )
        except Exception as exc:
            if not unreachable(exc):
                raise
            where = endpoint or _default_endpoint()
            if kept_locally:
                then = (f"Nothing was uploaded; the local folder {folder!r} was written and is complete: upload it "
                        f"later with pv_model.push_to_hub({repo_id!r}) or `hf upload {repo_id} {folder}`.")
            else:
                then = ("Nothing was uploaded and nothing was kept on disk: save it locally with pv_model.save(folder) "
                        "and push it when the hub can be reached.")
            raise SerializationError(
                f"Could not reach the Hugging Face hub at {where} to upload {repo_id!r} "
                f"({type(exc).__name__}: {exc}). {then} Check the network and the endpoint (HF_HUB_OFFLINE=1 "
                "also blocks uploads)."
            ) from None


def _default_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except Exception:  # pragma: no cover - any hub version
        return "the default endpoint"
