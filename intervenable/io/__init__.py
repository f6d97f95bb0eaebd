"""Saving, loading and sharing interventions (mixed into ``IntervenableModel``).

``pv_model.save(dir)`` writes ``config.json`` (our JSON, data only) and
``interventions.safetensors``; ``IntervenableModel.load(dir_or_repo_id, model)``
rebuilds an equal model. Folders saved by the reference library (``config.json``
+ ``intkey_*.bin``, told from ours by content) load too, without unpickling
code, and so do our folders from before the rename (``intervenable_config.json``).
See docs/saving.md.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from . import native
from .atomic import folder_lock, interrupted, save_target
from .common import (
    CONFIG_NAME,
    FORMAT_VERSION,
    TENSORS_NAME,
    ModelStateGuard,
    SerializationError,
    copy_model_params,
)
from .hub import download, looks_like_repo_id, push_folder
from .reference import is_reference_folder, load_reference, load_reference_into

__all__ = ["SerializationMixin", "SerializationError", "CONFIG_NAME", "TENSORS_NAME", "FORMAT_VERSION", "resolve_folder"]


def resolve_folder(
    path: str,
    from_huggingface_hub: bool = False,
    local_directory: Optional[str] = None,
    revision: Optional[str] = None,
    token: Any = None,
    cache_dir: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> str:
    """A local folder: ``path`` itself, or the hub snapshot of the repo id ``path``."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path) and not from_huggingface_hub:
        return path
    if os.path.exists(path) and not from_huggingface_hub:
        raise SerializationError(f"{path!r} is a file; give the folder that save() wrote.")
    if not from_huggingface_hub and not looks_like_repo_id(path):
        raise SerializationError(f"No folder {path!r}: give the folder that save() wrote, or a hub repo id 'user/name'.")
    return download(path, revision=revision, token=token, cache_dir=cache_dir, local_dir=local_directory, endpoint=endpoint)


def _check_folder(folder: str) -> str:
    """'native' or 'reference'; a clear error for anything else."""
    if native.config_path(folder) is not None:
        return "native"
    if is_reference_folder(folder):
        return "reference"
    if interrupted(folder):
        raise SerializationError(
            f"{folder!r} holds no complete saved intervention: the first save into it was interrupted before it "
            "finished. Save the model again."
        )
    raise SerializationError(
        f"{folder!r} is not a saved intervention: it has no {CONFIG_NAME} (intervenable's, or the reference "
        "library's with intkey_*.bin). Give the folder that save() wrote."
    )


def _read_folder(folder: str) -> Tuple[str, Dict[str, Any], Dict[str, torch.Tensor]]:
    """The folder's kind and, for our format, its checked config and tensors, read as one version.

    The shared lock waits for a save running now; after a killed save the
    reading rule of ``atomic.current_file`` finds the last complete version.
    """
    with folder_lock(folder, exclusive=False):
        kind = _check_folder(folder)
        if kind == "reference":
            return kind, {}, {}
        config = native.read_config(folder)
        return kind, config, native.read_tensors(folder, config)


class SerializationMixin:
    """``save`` / ``load`` / ``save_intervention`` / ``load_intervention`` / ``push_to_hub``."""

    def save(
        self,
        save_directory: str,
        save_to_hf_hub: bool = False,
        hf_repo_name: str = "my-awesome-model",
        include_model: bool = False,
        **hub_kwargs: Any,
    ) -> None:
        """Write the configuration and tensors to ``save_directory`` (atomically; ``~`` is expanded).

        ``include_model=True`` also stores the model's parameters that require
        grad. ``save_to_hf_hub=True`` then uploads the folder to ``hf_repo_name``
        (``hub_kwargs``: ``private``, ``token``, ``revision``, ``commit_message``, ``endpoint``).
        """
        folder = save_target(save_directory)
        native.save_folder(self, folder, include_model)
        if save_to_hf_hub:
            push_folder(folder, hf_repo_name, **hub_kwargs)

    def push_to_hub(self, repo_id: str, include_model: bool = False, **hub_kwargs: Any) -> Any:
        """Save into a temporary folder and upload it to the hub repo ``repo_id``; returns the commit info."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = os.path.join(tmp, "saved")
            native.save_folder(self, folder, include_model)
            return push_folder(folder, repo_id, kept_locally=False, **hub_kwargs)

    @classmethod
    def load(
        cls,
        load_directory: str,
        model: nn.Module,
        local_directory: Optional[str] = None,
        from_huggingface_hub: bool = False,
        include_model: bool = False,
        revision: Optional[str] = None,
        token: Any = None,
        cache_dir: Optional[str] = None,
        endpoint: Optional[str] = None,
    ) -> Any:
        """A new model wrapping ``model``, equal to the saved one (a folder or a hub repo id)."""
        folder = resolve_folder(load_directory, from_huggingface_hub, local_directory, revision, token, cache_dir, endpoint)
        kind, config, tensors = _read_folder(folder)
        with ModelStateGuard(model):
            if kind == "reference":
                pv_model = load_reference(folder, model, cls, include_model)
                _to_model_device(pv_model)
                return pv_model
            pv_model = cls(native.build_config(config, tensors), model)
            states = native.intervention_states(pv_model, config, tensors)
            model_state = native.model_state(pv_model, config, tensors) if include_model else None
            native.apply_states(pv_model, config, states)
            if model_state is not None:
                copy_model_params(pv_model.model, model_state)
        _to_model_device(pv_model)
        return pv_model

    def save_intervention(self, save_directory: str, include_model: bool = True) -> None:
        """Write the weights (same files as ``save``) for ``load_intervention`` on an existing object."""
        native.save_folder(self, save_target(save_directory), include_model)

    def load_intervention(self, load_directory: str, include_model: bool = True, **hub_kwargs: Any) -> None:
        """Load saved weights into this object's interventions (and model); everything is checked first."""
        folder = resolve_folder(load_directory, **hub_kwargs)
        kind, config, tensors = _read_folder(folder)
        if kind == "reference":
            load_reference_into(self, folder, include_model)
        else:
            states = native.intervention_states(self, config, tensors)
            model_state = native.model_state(self, config, tensors) if include_model else None
            native.apply_states(self, config, states)
            if model_state is not None:
                copy_model_params(self.model, model_state)  # type: ignore[attr-defined]
        _to_model_device(self)


def _to_model_device(pv_model: Any) -> None:
    device = pv_model.get_device()
    if device.type != "cpu":
        pv_model.set_device(device, set_model=False)
