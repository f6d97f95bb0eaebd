"""Reading folders saved by the reference library (pyvene): ``config.json`` + ``intkey_<key>.bin``.

Class names such as ``"<class 'pyvene.models.interventions.AdditionIntervention'>"``
resolve to the class of that module-qualified name when it is registered or
already imported (pyreft's classes, after ``import pyreft``), else by their
last part in our registry; nothing is imported. ``.bin`` files are read with ``torch.load(weights_only=True)``, which
refuses any pickle that would construct objects other than tensors and plain
containers, so loading never runs code from a file.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config import REPRESENTATION_FIELDS, IntervenableConfig, RepresentationConfig
from ..errors import ConfigError, IntervenableError
from ..interventions.base import get_intervention_class
from .common import (
    REFERENCE_CONFIG_NAME,
    REFERENCE_MODEL_NAME,
    SerializationError,
    check_model_params,
    check_state,
    copy_model_params,
    expect,
    load_module_state,
    read_json,
)
from .native import _check_representation, check_source_width, config_path
from .protocol import set_dims

_CLASS_STRING = re.compile(r"^(?:<class ')?([A-Za-z_][\w.]*)(?:'>)?$")
_REFERENCE_ONLY_BUFFERS = ("embed_dim", "interchange_dim")
_SOURCE = "source_representation"


def is_reference_folder(directory: str) -> bool:
    """A ``config.json`` that is not ours (see ``native.config_path``) is read as the reference's."""
    return os.path.isfile(os.path.join(directory, REFERENCE_CONFIG_NAME)) and config_path(directory) is None


def class_name(type_string: Any, where: str) -> str:
    """``"<class 'pkg.mod.Name'>"`` (or ``"pkg.mod.Name"``) -> ``"pkg.mod.Name"``; never imported."""
    expect(type_string, (str,), where)
    match = _CLASS_STRING.match(type_string.strip())
    if match is None:
        raise SerializationError(f"{where}: {type_string!r} is not a class name such as \"<class 'pkg.Name'>\".")
    return match.group(1)


def reference_class(name: str) -> type:
    """The class of module-qualified ``name`` if registered or already imported, else ours by its last part."""
    try:
        return get_intervention_class(name)
    except ConfigError:
        if "." not in name:
            raise
        return get_intervention_class(name.rsplit(".", 1)[-1])


def safe_torch_load(path: str) -> Dict[str, torch.Tensor]:
    """A ``{name: tensor}`` dict from a ``.bin`` file; any pickle that needs code is refused."""
    if not os.path.isfile(path):
        raise SerializationError(f"Missing file {path!r}: the reference-format folder is incomplete.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # protocol notices; a refusal is reported below
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError, EOFError, ... all mean "refused"
        raise SerializationError(
            f"Refused to load {path!r}: it is not a plain tensor file that can be read without running code "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Only load files you trust, "
            "and re-save them as tensors (safetensors) with intervenable."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise SerializationError(f"{path!r} must hold a dict of named tensors (a state_dict); it holds {type(state).__name__}.")
    return state


def read_reference_config(directory: str) -> Dict[str, Any]:
    """The reference's config.json, checked: representations, types, keys, dimensions, constant flags."""
    data = read_json(os.path.join(directory, REFERENCE_CONFIG_NAME))
    if "representations" not in data or "intervention_types" not in data:
        raise SerializationError(
            f"{directory!r} has a config.json without 'representations' and 'intervention_types': it is not a "
            "saved intervention (perhaps a model config). Give the folder written by save()."
        )
    reps_raw = expect(data["representations"], (list,), "config.json representations")
    reps: List[Dict[str, Any]] = []
    for i, rep in enumerate(reps_raw):
        if isinstance(rep, list):
            if len(rep) > len(REPRESENTATION_FIELDS):
                raise SerializationError(f"config.json representation {i} has {len(rep)} fields; at most {len(REPRESENTATION_FIELDS)}.")
            rep = dict(zip(REPRESENTATION_FIELDS, rep))
        expect(rep, (dict,), f"config.json representation {i}")
        rep = {k: v for k, v in rep.items() if not (k in ("intervention", "intervention_type", _SOURCE) and v is None)}
        _check_representation(rep, str(i))
        reps.append(rep)
    types = data["intervention_types"]
    types = [types] * len(reps) if isinstance(types, str) else expect(types, (list,), "config.json intervention_types")
    names = [class_name(t, f"config.json intervention_types[{i}]") for i, t in enumerate(types)]
    n = len(reps)
    keys = expect(data.get("sorted_keys"), (list,), "config.json sorted_keys", allow_none=True)
    dims = expect(data.get("intervention_dimensions"), (list,), "config.json intervention_dimensions", allow_none=True)
    consts = expect(data.get("intervention_constant_sources"), (list,), "config.json intervention_constant_sources", allow_none=True)
    for what, values in (("intervention_types", names), ("sorted_keys", keys), ("intervention_dimensions", dims),
                         ("intervention_constant_sources", consts)):
        if values is not None and len(values) != n:
            raise SerializationError(f"config.json lists {len(values)} {what} for {n} representations; the file is damaged.")
    for key in keys or []:
        expect(key, (str,), "config.json sorted_keys item")
        if os.sep in key or "/" in key or key.startswith("."):
            raise SerializationError(f"config.json sorted_keys item {key!r} is not a valid key.")
    for dim in dims or []:
        expect(dim, (int,), "config.json intervention_dimensions item", allow_none=True)
    for flag in consts or []:
        expect(flag, (bool,), "config.json intervention_constant_sources item", allow_none=True)
    mode = expect(data.get("mode", "parallel"), (str,), "config.json mode")
    return {"representations": reps, "types": names, "sorted_keys": keys, "dims": dims or [None] * n,
            "constants": consts or [False] * n, "mode": mode}


def _adapt(cls: type, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    state = {k: v for k, v in state.items() if k not in _REFERENCE_ONLY_BUFFERS}
    hook = getattr(cls, "from_reference_state_dict", None)
    return dict(hook(state)) if callable(hook) else state


def load_reference(
    directory: str, model: nn.Module, build: Callable[[IntervenableConfig, nn.Module], Any], include_model: bool
) -> Any:
    """A new intervenable model from a reference-format folder."""
    info = read_reference_config(directory)
    classes = [reference_class(name) for name in info["types"]]
    keys: Optional[List[str]] = info["sorted_keys"]
    files: List[Optional[Dict[str, torch.Tensor]]] = []
    reps: List[RepresentationConfig] = []
    for i, data in enumerate(info["representations"]):
        state = None
        if keys is not None and os.path.isfile(os.path.join(directory, f"intkey_{keys[i]}.bin")):
            state = safe_torch_load(os.path.join(directory, f"intkey_{keys[i]}.bin"))
        fields = dict(data)
        if info["constants"][i] and state is not None and _SOURCE in state:
            fields[_SOURCE] = state[_SOURCE]
            fields["hidden_source_representation"] = None
        try:
            rep = RepresentationConfig.from_any(fields).validate()._replace(intervention_type=classes[i])
        except IntervenableError as exc:
            raise SerializationError(f"config.json representation {i} is invalid: {exc}") from None
        reps.append(rep)
        files.append(state)
    model_state = safe_torch_load(os.path.join(directory, REFERENCE_MODEL_NAME)) if include_model else None
    if model_state is not None:
        check_model_params(model, model_state, REFERENCE_MODEL_NAME)
    pv_model = build(IntervenableConfig(representations=reps, mode=info["mode"]), model)
    if keys is None:
        keys = list(pv_model.sorted_keys)
    apply_reference(pv_model, info, keys, files, directory)
    if model_state is not None:
        copy_model_params(pv_model.model, model_state)
    return pv_model


def reference_states(pv_model: Any, info: Dict[str, Any], keys: List[str], files: List[Optional[Dict[str, torch.Tensor]]],
                     directory: str) -> List[Tuple[str, Optional[Dict[str, torch.Tensor]]]]:
    """Check each module against its file; return ``(our key, state or None)`` (nothing is changed)."""
    if len(pv_model.sorted_keys) != len(keys):
        raise SerializationError(f"{directory!r} holds {len(keys)} interventions but this model has {len(pv_model.sorted_keys)}.")
    out: List[Tuple[str, Optional[Dict[str, torch.Tensor]]]] = []
    seen = set()
    for i, key in enumerate(pv_model.sorted_keys):
        module = pv_model.interventions[key]
        state = files[i]
        if id(module) in seen:
            out.append((key, None))
            continue
        seen.add(id(module))
        if state is None:
            if any(True for _ in module.parameters()):
                raise SerializationError(
                    f"Missing file intkey_{keys[i]}.bin in {directory!r}: {type(module).__name__} has weights to load."
                )
            out.append((key, None))
            continue
        state = _adapt(type(module), state)
        if _SOURCE in state and isinstance(getattr(module, _SOURCE, None), torch.Tensor):
            check_source_width(pv_model, key, state[_SOURCE])
        elif _SOURCE in state:
            state.pop(_SOURCE)
        check_state(module, state, f"intkey_{keys[i]}.bin")
        out.append((key, state))
    return out


def apply_reference(pv_model: Any, info: Dict[str, Any], keys: List[str], files: List[Optional[Dict[str, torch.Tensor]]],
                    directory: str) -> None:
    checked = reference_states(pv_model, info, keys, files, directory)
    for i, (key, state) in enumerate(checked):
        module = pv_model.interventions[key]
        set_dims(module, None, info["dims"][i])
        if state is not None:
            load_module_state(module, state)


def load_reference_into(pv_model: Any, directory: str, include_model: bool) -> None:
    """``load_intervention`` for a reference-format folder: update weights of ``pv_model`` in place."""
    info = read_reference_config(directory)
    keys = info["sorted_keys"] or list(pv_model.sorted_keys)
    files: List[Optional[Dict[str, torch.Tensor]]] = []
    for key in keys:
        path = os.path.join(directory, f"intkey_{key}.bin")
        files.append(safe_torch_load(path) if os.path.isfile(path) else None)
    model_state = safe_torch_load(os.path.join(directory, REFERENCE_MODEL_NAME)) if include_model else None
    if model_state is not None:
        check_model_params(pv_model.model, model_state, REFERENCE_MODEL_NAME)
    reference_states(pv_model, info, keys, files, directory)  # check everything before changing anything
    apply_reference(pv_model, info, keys, files, directory)
    if model_state is not None:
        copy_model_params(pv_model.model, model_state)
