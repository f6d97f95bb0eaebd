"""Shared pieces of saving and loading: errors, JSON checks, checksums, tensor checks."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch
from torch import nn

from ..errors import IntervenableError

#: files of our own format (the config has the reference's file name; its content says which format it is)
CONFIG_NAME = "config.json"
#: the config's name in folders saved by intervenable before it took the reference's name; still loaded
LEGACY_CONFIG_NAME = "intervenable_config.json"
TENSORS_NAME = "interventions.safetensors"
FORMAT_NAME = "intervenable"
FORMAT_VERSION = 1
#: files of the reference library's format
REFERENCE_CONFIG_NAME = "config.json"
REFERENCE_MODEL_NAME = "pytorch_model.bin"
#: everything a saved folder may hold (what hub uploads and downloads fetch)
SAVED_FILE_PATTERNS = [CONFIG_NAME, LEGACY_CONFIG_NAME, TENSORS_NAME, "intkey_*.bin", REFERENCE_MODEL_NAME]


class SerializationError(IntervenableError, ValueError):
    """A saved intervention cannot be written or read; the message says why and what to do."""


def library_version() -> str:
    """``intervenable.__version__`` (from version.py: this layer does not import the package)."""
    from ..version import __version__

    return str(__version__)


# -- JSON values -------------------------------------------------------------------
def jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (tuples become lists); SerializationError if it is not data."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v, where) for v in value]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: jsonable(v, where) for k, v in value.items()}
    raise SerializationError(
        f"{where} is a {type(value).__name__}, which cannot be written to JSON. Saved files hold data only: "
        "use ints, floats, strings, bools, lists or dicts there."
    )


def is_jsonable(value: Any, convert: Callable[[Any, str], Any] = jsonable) -> bool:
    """True when ``convert`` (by default ``jsonable``) turns ``value`` into JSON data."""
    try:
        convert(value, "")
    except SerializationError:
        return False
    return True


def read_json(path: str) -> Dict[str, Any]:
    """A JSON object from ``path``, with a clear error for a missing or malformed file."""
    if not os.path.isfile(path):
        raise SerializationError(f"Missing file {path!r}: the folder is not a complete saved intervention.")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SerializationError(f"{path!r} is not valid JSON ({exc}); the file is damaged: save it again.") from None
    if not isinstance(data, dict):
        raise SerializationError(f"{path!r} must hold a JSON object, not a {type(data).__name__}.")
    return data


def expect(value: Any, types: Tuple[type, ...], where: str, allow_none: bool = False) -> Any:
    """Check one JSON value's type (bools are not ints)."""
    if value is None and allow_none:
        return value
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join(t.__name__ for t in types) + (" or null" if allow_none else "")
        raise SerializationError(f"{where} must be {names}; the file has {value!r}. The config file is damaged or hand-edited.")
    return value


def reject_unknown(data: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SerializationError(
            f"{where} has unknown field(s) {unknown}; allowed: {sorted(allowed)}. The file was hand-edited or "
            "written by another program."
        )


# -- files -------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_safetensors(path: str, tensors: Mapping[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> None:
    """``tensors`` as a safetensors file at ``path``, written by us: safetensors' ``save_file`` writes a
    ``.tmpXXXXXX`` sibling (mode 0600, whatever the umask) and renames it, so a kill during the write
    leaves a stray file no cleanup knows, and the file keeps mode 0600. Here the bytes are serialised
    in memory and written with ``open``: the umask's modes, nothing beside ``path``."""
    from safetensors.torch import save

    data = save(dict(tensors), metadata=metadata)
    with open(path, "wb") as handle:
        handle.write(data)


# -- tensors -----------------------------------------------------------------------
def storable(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU, contiguous, unshared copy that safetensors accepts."""
    return tensor.detach().to("cpu").contiguous().clone()


def check_state(module: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> None:
    """Names and shapes of ``state`` must be exactly the module's ``state_dict``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise SerializationError(
            f"{where}: saved tensors do not match {type(module).__name__} (missing {missing}, unexpected "
            f"{unexpected}). The file was saved from a different intervention type or version."
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SerializationError(
                f"{where}: tensor {name!r} has shape {tuple(tensor.shape)} but this model needs "
                f"{tuple(expected[name].shape)}. Load onto the same architecture (width, heads, layers) it was "
                "saved from."
            )


def load_module_state(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into ``module`` (matching its floating dtype to the saved one first)."""
    floats = {t.dtype for t in state.values() if t.is_floating_point()}
    current = {t.dtype for t in module.state_dict().values() if t.is_floating_point()}
    if len(floats) == 1 and current and current != floats:
        module.to(next(iter(floats)))
    module.load_state_dict(dict(state), strict=True)


def check_model_params(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> Dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        if name not in params:
            raise SerializationError(
                f"{where}: the saved model parameter {name!r} does not exist in {type(model).__name__}. Load onto "
                "the model class it was saved from, or load with include_model=False."
            )
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise SerializationError(
                f"{where}: model parameter {name!r} has shape {tuple(tensor.shape)} in the file but "
                f"{tuple(params[name].shape)} in the model."
            )
    return params


def copy_model_params(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))


class ModelStateGuard:
    """Restore the model's ``requires_grad`` and train/eval flags if loading fails midway."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.grads = [(p, p.requires_grad) for p in model.parameters()]
        self.modes = [(m, m.training) for m in model.modules()]

    def __enter__(self) -> "ModelStateGuard":
        return self

    def __exit__(self, exc_type: Optional[type], exc: Optional[BaseException], tb: Any) -> None:
        if exc_type is None:
            return
        for param, flag in self.grads:
            param.requires_grad_(flag)
        for module, flag in self.modes:
            module.training = flag
