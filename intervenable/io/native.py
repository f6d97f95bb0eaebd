"""Our on-disk format: ``config.json`` + ``interventions.safetensors``.

See docs/saving.md for the schema. Loading reads data only: intervention types
are looked up by name in the registry or among classes already imported (by
module-qualified name), never imported from a path.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..config import REPRESENTATION_FIELDS, IntervenableConfig, RepresentationConfig
from ..errors import IntervenableError
from ..interventions.base import Intervention, get_intervention_class, saved_type_name
from ..interventions.basic import LambdaIntervention
from .atomic import atomic_write_folder, current_file
from .common import (
    CONFIG_NAME,
    FORMAT_NAME,
    LEGACY_CONFIG_NAME,
    FORMAT_VERSION,
    TENSORS_NAME,
    SerializationError,
    check_model_params,
    check_state,
    expect,
    jsonable,
    library_version,
    load_module_state,
    read_json,
    reject_unknown,
    sha256_file,
    storable,
)
from .protocol import (
    decode_value,
    dim_of,
    init_kwargs_of,
    init_tensors_of,
    plain_attributes,
    restore_attributes,
    set_dims,
)

TOP_FIELDS = (
    "format", "format_version", "library_version", "mode", "sorted_keys", "representations",
    "interventions", "include_model", "model_parameters", "tensors_file", "tensors_sha256",
)
ENTRY_FIELDS = ("type", "built_from", "init_kwargs", "init_tensors", "attributes", "embed_dim", "interchange_dim",
                "constant_source", "shared_with", "tensors")
_SOURCE = "source_representation"


def tensor_name(key: str, name: str) -> str:
    """Name of an intervention tensor in the safetensors file."""
    return f"interventions/{key}/{name}"


def model_tensor_name(name: str) -> str:
    return f"model/{name}"


# -- save --------------------------------------------------------------------------------
def _type_name(module: nn.Module, key: str) -> str:
    if isinstance(module, LambdaIntervention):
        raise SerializationError(
            f"Intervention {key} wraps a plain callable ({module.extra_repr()}), which cannot be saved: files hold "
            "data, not code. Write it as an Intervention subclass and register it with "
            "pv.register_intervention('Name', Class)."
        )
    name = saved_type_name(module)
    if name is None:
        cls = type(module).__name__
        why = ("defined inside a function" if isinstance(module, Intervention)
               else "a plain nn.Module (only pv.Intervention subclasses are found by module-qualified name)")
        raise SerializationError(
            f"Intervention {key} is a {cls}, {why}, so a saved file could not name it. Register it: "
            f"pv.register_intervention({cls!r}, {cls}), or define it at module level as a pv.Intervention subclass."
        )
    return name


def _representation_json(rep: RepresentationConfig, key: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for field in REPRESENTATION_FIELDS:
        value = getattr(rep, field)
        if field in ("intervention", _SOURCE):
            value = None  # stored with the intervention entry and the tensors
        elif field == "intervention_type" and value is not None:
            value = value if isinstance(value, str) else saved_type_name(value)
            if value is None:
                raise SerializationError(
                    f"{key}: intervention_type {rep.intervention_type!r} has no name a saved file could use; "
                    "register it with pv.register_intervention(name, cls), or define it at module level as a "
                    "pv.Intervention subclass."
                )
        elif field == "hidden_source_representation" and isinstance(value, torch.Tensor):
            value = True
        out[field] = jsonable(value, f"{key}: representation field {field!r}")
    return out


def build_payload(pv_model: Any, include_model: bool) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """The JSON config and the named tensors of ``pv_model``."""
    tensors: Dict[str, torch.Tensor] = {}
    entries: Dict[str, Any] = {}
    first_key: Dict[int, str] = {}
    reps: List[Dict[str, Any]] = []
    for key in pv_model.sorted_keys:
        module = pv_model.interventions[key]
        rep = pv_model.representations[key]
        name = _type_name(module, key)
        reps.append(_representation_json(rep, key))
        shared = first_key.get(id(module))
        state = {} if shared is not None else module.state_dict()
        for n, t in state.items():
            tensors[tensor_name(key, n)] = storable(t)
        first_key.setdefault(id(module), key)
        source = getattr(module, _SOURCE, None)
        built_from = "instance" if rep.intervention is not None else "type"
        entries[key] = {
            "type": name,
            "built_from": built_from,
            "init_kwargs": init_kwargs_of(module, key, built_from),
            "init_tensors": init_tensors_of(module) if rep.intervention is not None else [],
            "attributes": plain_attributes(module, key),
            "embed_dim": dim_of(module, "embed_dim"),
            "interchange_dim": dim_of(module, "interchange_dim"),
            "constant_source": isinstance(source, torch.Tensor),
            "shared_with": shared,
            "tensors": sorted(state),
        }
    model_params: List[str] = []
    if include_model:
        for n, p in pv_model.model.named_parameters():
            if p.requires_grad:
                tensors[model_tensor_name(n)] = storable(p)
                model_params.append(n)
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "mode": pv_model.config.mode,
        "sorted_keys": list(pv_model.sorted_keys),
        "representations": reps,
        "interventions": entries,
        "include_model": bool(include_model),
        "model_parameters": model_params,
        "tensors_file": TENSORS_NAME,
    }
    return config, tensors


def save_folder(pv_model: Any, directory: str, include_model: bool) -> None:
    """Write ``pv_model``'s config and tensors into ``directory`` atomically."""
    from safetensors.torch import save_file

    config, tensors = build_payload(pv_model, include_model)

    def write(tmp: str) -> List[str]:
        path = os.path.join(tmp, TENSORS_NAME)
        # One metadata key: safetensors stores metadata unordered, and several keys would make
        # two saves of the same model differ byte for byte (and in their checksum).
        save_file(tensors, path, metadata={"format": "pt"})
        config["tensors_sha256"] = sha256_file(path)
        with open(os.path.join(tmp, CONFIG_NAME), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True, allow_nan=False)
            handle.write("\n")
        return [TENSORS_NAME, CONFIG_NAME]

    atomic_write_folder(directory, write)


# -- read and validate -------------------------------------------------------------------
def _is_ours(path: str) -> bool:
    """Whether a ``config.json`` was written by us (the reference's has no 'format' / 'interventions')."""
    try:
        data = read_json(path)
    except SerializationError:
        return False
    return data.get("format") == FORMAT_NAME or ("format_version" in data and "interventions" in data)


def config_path(directory: str) -> Optional[str]:
    """Our config file in ``directory``: ``config.json`` when its content is ours, else the old
    ``intervenable_config.json``; None when the folder holds neither (it may be the reference's)."""
    path = current_file(directory, CONFIG_NAME)  # the reading rule of io/atomic.py
    if os.path.isfile(path) and _is_ours(path):
        return path
    legacy = current_file(directory, LEGACY_CONFIG_NAME)
    return legacy if os.path.isfile(legacy) else None


def read_config(directory: str) -> Dict[str, Any]:
    """Our JSON config, fully type-checked."""
    data = read_json(config_path(directory) or current_file(directory, CONFIG_NAME))
    if data.get("format") != FORMAT_NAME:
        raise SerializationError(f"{CONFIG_NAME} in {directory!r} does not say format 'intervenable'; it is not ours.")
    version = data.get("format_version")
    expect(version, (int,), "format_version")
    if version > FORMAT_VERSION:
        raise SerializationError(
            f"{directory!r} was written in format version {version} (intervenable {data.get('library_version')}); "
            f"this intervenable ({library_version()}) reads versions up to {FORMAT_VERSION}. Upgrade intervenable."
        )
    reject_unknown(data, TOP_FIELDS, CONFIG_NAME)
    for field in TOP_FIELDS:
        if field not in data:
            raise SerializationError(f"{CONFIG_NAME} lacks the field {field!r}; the file is damaged: save again.")
    expect(data["library_version"], (str,), "library_version")
    expect(data["mode"], (str,), "mode")
    expect(data["include_model"], (bool,), "include_model")
    expect(data["tensors_file"], (str,), "tensors_file")
    expect(data["tensors_sha256"], (str,), "tensors_sha256")
    if data["tensors_file"] != TENSORS_NAME:
        raise SerializationError(f"tensors_file must be {TENSORS_NAME!r}; the file names {data['tensors_file']!r}.")
    keys = expect(data["sorted_keys"], (list,), "sorted_keys")
    for key in keys:
        expect(key, (str,), "each of sorted_keys")
    reps = expect(data["representations"], (list,), "representations")
    entries = expect(data["interventions"], (dict,), "interventions")
    if len(reps) != len(keys) or sorted(entries) != sorted(keys) or len(set(keys)) != len(keys):
        raise SerializationError("sorted_keys, representations and interventions in the config do not match up.")
    for key, rep in zip(keys, reps):
        _check_representation(expect(rep, (dict,), f"representation {key}"), key)
        _check_entry(expect(entries[key], (dict,), f"interventions[{key!r}]"), key, keys)
    for name in expect(data["model_parameters"], (list,), "model_parameters"):
        expect(name, (str,), "each of model_parameters")
    return data


def _check_representation(rep: Dict[str, Any], key: str) -> None:
    reject_unknown(rep, REPRESENTATION_FIELDS, f"representation {key}")
    where = f"representation {key}: field"
    expect(rep.get("layer"), (int,), f"{where} 'layer'", allow_none=True)
    expect(rep.get("component", "block_output"), (str,), f"{where} 'component'")
    expect(rep.get("unit", "pos"), (str,), f"{where} 'unit'")
    expect(rep.get("max_number_of_units", 1), (int,), f"{where} 'max_number_of_units'")
    for field in ("low_rank_dimension", "latent_dim"):
        expect(rep.get(field), (int,), f"{where} {field!r}", allow_none=True)
    expect(rep.get("intervention_type"), (str,), f"{where} 'intervention_type'", allow_none=True)
    for field in ("intervention", _SOURCE):
        if rep.get(field) is not None:
            raise SerializationError(f"{where} {field!r} must be null in a saved file (its data is stored apart).")
    for field in ("group_key", "intervention_link_key", "moe_key"):
        expect(rep.get(field), (str, int), f"{where} {field!r}", allow_none=True)
    expect(rep.get("hidden_source_representation"), (bool,), f"{where} 'hidden_source_representation'", allow_none=True)
    partition = expect(rep.get("subspace_partition"), (list,), f"{where} 'subspace_partition'", allow_none=True)
    for part in partition or []:
        for dim in expect(part, (list,), f"{where} 'subspace_partition' part"):
            expect(dim, (int,), f"{where} 'subspace_partition' dimension")


def _check_entry(entry: Dict[str, Any], key: str, keys: List[str]) -> None:
    where = f"interventions[{key!r}]"
    reject_unknown(entry, ENTRY_FIELDS, where)
    for field in ENTRY_FIELDS:
        if field not in entry:
            raise SerializationError(f"{where} lacks the field {field!r}; the file is damaged: save again.")
    expect(entry["type"], (str,), f"{where}.type")
    if entry["built_from"] not in ("type", "instance"):
        raise SerializationError(f"{where}.built_from must be 'type' or 'instance'; got {entry['built_from']!r}.")
    expect(entry["init_kwargs"], (dict,), f"{where}.init_kwargs")
    expect(entry["attributes"], (dict,), f"{where}.attributes")
    for name in expect(entry["init_tensors"], (list,), f"{where}.init_tensors"):
        if name not in expect(entry["tensors"], (list,), f"{where}.tensors"):
            raise SerializationError(f"{where}.init_tensors names {name!r}, which is not among its tensors.")
    expect(entry["embed_dim"], (int,), f"{where}.embed_dim", allow_none=True)
    expect(entry["interchange_dim"], (int,), f"{where}.interchange_dim", allow_none=True)
    expect(entry["constant_source"], (bool,), f"{where}.constant_source")
    shared = expect(entry["shared_with"], (str,), f"{where}.shared_with", allow_none=True)
    if shared is not None and (shared not in keys or keys.index(shared) >= keys.index(key)):
        raise SerializationError(f"{where}.shared_with must name an earlier key; got {shared!r}.")
    for name in expect(entry["tensors"], (list,), f"{where}.tensors"):
        expect(name, (str,), f"{where}.tensors item")


def read_tensors(directory: str, config: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    """The tensors file, checked against the config's checksum and tensor list."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = current_file(directory, TENSORS_NAME)
    if not os.path.isfile(path):
        raise SerializationError(f"Missing file {path!r}: the folder is not a complete saved intervention.")
    if sha256_file(path) != config["tensors_sha256"]:
        raise SerializationError(
            f"{path!r} does not match the checksum in {CONFIG_NAME}: it is damaged, truncated or from another "
            "save. Save the model again."
        )
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SerializationError(f"{path!r} is not a readable safetensors file ({exc}). Save the model again.") from None
    expected = {tensor_name(k, n) for k, e in config["interventions"].items() for n in e["tensors"]}
    expected |= {model_tensor_name(n) for n in config["model_parameters"]}
    if set(tensors) != expected:
        raise SerializationError(
            f"{path!r} holds tensors {sorted(set(tensors) ^ expected)} that disagree with {CONFIG_NAME}. Save again."
        )
    return tensors


# -- load --------------------------------------------------------------------------------
def _instance(cls: type, rep: RepresentationConfig, entry: Dict[str, Any], key: str,
              tensors: Dict[str, torch.Tensor]) -> nn.Module:
    kwargs = {k: v for k, v in rep._asdict().items() if k not in ("intervention", "intervention_type")}
    if entry["embed_dim"] is not None:
        kwargs["embed_dim"] = entry["embed_dim"]
    kwargs.update(decode_value(entry["init_kwargs"], f"interventions[{key!r}].init_kwargs"))
    kwargs.update({name: tensors[tensor_name(key, name)] for name in entry["init_tensors"]})
    try:
        return cls(**kwargs)
    except (TypeError, KeyError) as exc:
        if issubclass(cls, Intervention) or entry["init_kwargs"] or entry["init_tensors"]:
            raise SerializationError(
                f"Cannot rebuild {cls.__name__} from its saved arguments ({type(exc).__name__}: {exc}). Give the "
                "class a config_dict() returning the constructor arguments it needs (see docs/saving.md)."
            ) from None
        return cls()
    except IntervenableError as exc:
        raise SerializationError(
            f"Cannot rebuild {cls.__name__} for {key}: {exc} Give the class a config_dict() returning the "
            "constructor arguments it needs (see docs/saving.md)."
        ) from None


def build_config(config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> IntervenableConfig:
    """An ``IntervenableConfig`` equal to the saved one, with constant sources and instances filled in."""
    reps: List[RepresentationConfig] = []
    built: Dict[str, nn.Module] = {}
    for key, data in zip(config["sorted_keys"], config["representations"]):
        entry = config["interventions"][key]
        cls = get_intervention_class(entry["type"])
        fields = dict(data)
        if fields.get("intervention_type") is not None:
            get_intervention_class(fields["intervention_type"])  # clear error when unregistered
        fields["intervention_type"] = None
        owner = entry["shared_with"] or key
        source_key = tensor_name(owner, _SOURCE)
        if entry["constant_source"] and source_key in tensors:
            fields[_SOURCE] = tensors[source_key]
        try:
            rep = RepresentationConfig.from_any(fields).validate()
        except IntervenableError as exc:
            raise SerializationError(f"representation {key} in the saved config is invalid: {exc}") from None
        if entry["built_from"] == "type" and not entry["init_kwargs"]:
            rep = rep._replace(intervention_type=cls)
        elif entry["shared_with"] is not None and entry["shared_with"] in built:
            rep = rep._replace(intervention=built[entry["shared_with"]])
        else:
            built[key] = _instance(cls, rep, entry, key, tensors)
            rep = rep._replace(intervention=built[key])
        reps.append(rep)
    return IntervenableConfig(representations=reps, mode=config["mode"])


def intervention_states(pv_model: Any, config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per unique key, the state to load; checked against the modules of ``pv_model`` (nothing is changed)."""
    if list(pv_model.sorted_keys) != list(config["sorted_keys"]):
        raise SerializationError(
            f"The saved interventions {config['sorted_keys']} do not match this model's {pv_model.sorted_keys}: "
            "load onto the same configuration it was saved from."
        )
    states: Dict[str, Dict[str, torch.Tensor]] = {}
    for key in config["sorted_keys"]:
        entry = config["interventions"][key]
        module = pv_model.interventions[key]
        if (saved_type_name(module) or type(module).__name__) != entry["type"]:
            raise SerializationError(f"{key}: the file holds a {entry['type']}, this model a {type(module).__name__}.")
        if entry["shared_with"] is not None:
            if module is not pv_model.interventions[entry["shared_with"]]:
                raise SerializationError(f"{key} was saved sharing {entry['shared_with']}'s weights, but here it does not.")
            continue
        state = {n: tensors[tensor_name(key, n)] for n in entry["tensors"]}
        if _SOURCE in state:
            if not isinstance(getattr(module, _SOURCE, None), torch.Tensor):
                raise SerializationError(f"{key}: the file has a constant source_representation but this intervention has none.")
            check_source_width(pv_model, key, state[_SOURCE])
        check_state(module, state, key)
        states[key] = state
    return states


def check_source_width(pv_model: Any, key: str, source: torch.Tensor) -> None:
    """A constant source must be as wide as what the intervention sees at its site on this model."""
    site = pv_model.sites[key]
    if site.width is None or source.dim() == 0:
        return
    units = int(pv_model.representations[key].max_number_of_units)
    widths = {site.width, site.width * units}
    if site.head_dim is not None:
        widths |= {site.head_dim, site.head_dim * units}
    if int(source.shape[-1]) not in widths:
        raise SerializationError(
            f"{key}: the saved source_representation has width {source.shape[-1]} but {site.describe()} of this "
            f"model has width {site.width}. Load onto the same architecture it was saved from."
        )


def apply_states(pv_model: Any, config: Dict[str, Any], states: Dict[str, Dict[str, torch.Tensor]]) -> None:
    """Restore saved attributes, dimensions and tensors into the (already checked) interventions."""
    for key, state in states.items():
        module = pv_model.interventions[key]
        entry = config["interventions"][key]
        restore_attributes(module, entry["attributes"])
        set_dims(module, entry["embed_dim"], entry["interchange_dim"])
        load_module_state(module, state)


def model_state(pv_model: Any, config: Dict[str, Any], tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    if not config["include_model"]:
        raise SerializationError(
            "The folder was saved without the model's parameters: load with include_model=False, or save with "
            "include_model=True."
        )
    state = {n: tensors[model_tensor_name(n)] for n in config["model_parameters"]}
    check_model_params(pv_model.model, state, "model parameters")
    return state
