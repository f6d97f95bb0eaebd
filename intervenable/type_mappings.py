"""The reference's ``type_to_module_mapping`` / ``type_to_dimension_mapping``, over our architecture registry.

Reading: ``type_to_module_mapping[GPT2LMHeadModel]["block_output"] ==
("transformer.h[%s]", CONST_OUTPUT_HOOK)`` and
``type_to_dimension_mapping[GPT2LMHeadModel]["block_output"] == ("n_embd", "hidden_size")``
(config attributes tried in order), built on demand from the registry
(``sites/archs``), so importing intervenable imports no modelling code.
Fused-projection slices and head views appear as extra ``("slice", fn)`` /
``("heads", fn)`` entries (``fn`` reads the config); widths that are computed
rather than read (``4 * n_embd``) appear as a callable of the config.

Writing, as the reference's tutorial on new model types does::

    pv.type_to_module_mapping[type(t5)] = {"mlp_output": ("encoder.block[%s].layer[1]", CONST_OUTPUT_HOOK)}
    pv.type_to_dimension_mapping[type(t5)] = {"mlp_output": ("d_model",)}

registers an architecture for that class (replacing any entry for it), so
those names work as components. Extras ``(split_three, i)``,
``(split_half, i)`` and ``(split_head_and_permute, "n_head")`` from
``intervenable.models.constants`` are understood.
"""
from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from .errors import ConfigError
from .models.constants import CONST_INPUT_HOOK, CONST_OUTPUT_HOOK, split_half, split_head_and_permute, split_three
from .sites.registry import _BY_CLASS, _BY_MODEL_TYPE, _BY_NAME, Architecture, Component, attr, register_architecture, registered_architectures

_HOOK_TO_CONST = {"input": CONST_INPUT_HOOK, "output": CONST_OUTPUT_HOOK}
_CONST_TO_HOOK = {v: k for k, v in _HOOK_TO_CONST.items()}
_BUILTIN_CLASSES = {
    "mlp": ("MLPModel", "MLPForClassification"),
    "gru": ("GRUModel", "GRULMHeadModel", "GRUForClassification"),
}
_HF_MAPPINGS = (
    "MODEL_MAPPING_NAMES",
    "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
    "MODEL_FOR_VISUAL_QUESTION_ANSWERING_MAPPING_NAMES",
    "MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES",
)


# -- reading: registry -> reference-shaped tables ------------------------------
def _names(fn: Any) -> Optional[Tuple[Any, ...]]:
    """What an ``attr(...)`` reader tries, in order (names, then its default), or None for other functions."""
    cells = [cell.cell_contents for cell in getattr(fn, "__closure__", None) or ()]
    names = next((v for v in cells if isinstance(v, tuple) and v and all(isinstance(n, str) for n in v)), None)
    if names is None:
        return None
    default = next((v for v in cells if v is not names and v is not None), None)
    return names + ((default,) if default is not None else ())


def _reference_path(module: str, prefix: str) -> str:
    """``"h.{layer}.mlp"`` -> ``"h[%s].mlp"``; numeric segments become ``[n]``."""
    parts = []
    for part in (prefix + module).split("."):
        if part == "{layer}":
            parts[-1] += "[%s]"
        elif part.isdigit() and parts:
            parts[-1] += f"[{part}]"
        elif part:
            parts.append(part)
    return ".".join(parts)


def _is_base_class(cls: type) -> bool:
    if cls.__name__ in ("MLPModel", "GRUModel"):
        return True
    try:
        from transformers.models.auto import modeling_auto
    except ImportError:  # pragma: no cover
        return False
    bases = modeling_auto.MODEL_MAPPING_NAMES.values()
    return any(cls.__name__ == b or (isinstance(b, tuple) and cls.__name__ in b) for b in bases)


def _prefix(cls: type, arch: Architecture) -> str:
    if arch.name.startswith("user:") or _is_base_class(cls):
        return ""
    for path in arch.base_paths:
        if path:
            return path + "."
    prefix = getattr(cls, "base_model_prefix", "")
    return prefix + "." if prefix else ""


def _module_entry(comp: Component, prefix: str) -> Tuple[Any, ...]:
    entry: Tuple[Any, ...] = (_reference_path(comp.module, prefix), _HOOK_TO_CONST[comp.hook])
    if comp.slice is not None:
        entry += (("slice", comp.slice),)
    if comp.heads is not None:
        entry += (("heads", comp.heads),)
    return entry


def _dimension_entry(comp: Component) -> Tuple[Any, ...]:
    if comp.width is None:
        return ()
    width_names = _names(comp.width)
    if comp.heads is None:
        return width_names if width_names else (comp.width,)
    head_names = _names(comp.heads)
    if width_names and head_names and all(isinstance(n, str) for n in width_names + head_names[:1]):
        return tuple(f"{w}/{head_names[0]}" for w in width_names)
    return (lambda config, w=comp.width, h=comp.heads: w(config) // h(config),)


def _architecture_of(cls: type) -> Optional[Architecture]:
    arch = _BY_CLASS.get(cls.__name__)
    if arch is not None:
        return arch
    model_type = getattr(getattr(cls, "config_class", None), "model_type", None)
    return _BY_MODEL_TYPE.get(model_type) if isinstance(model_type, str) and model_type else None


def _classes_of(arch: Architecture) -> List[type]:
    """The model classes of a family that are importable here (head classes included)."""
    names: List[str] = list(arch.class_names)
    try:
        import transformers
        from transformers.models.auto import modeling_auto
    except ImportError:  # pragma: no cover
        return []
    for model_type in arch.model_types:
        names.extend(_BUILTIN_CLASSES.get(model_type, ()))
        for table in _HF_MAPPINGS:
            value = getattr(modeling_auto, table, {}).get(model_type)
            names.extend((value,) if isinstance(value, str) else (value or ()))
    classes: List[type] = []
    for name in dict.fromkeys(names):
        if name in ("MLPModel", "MLPForClassification", "GRUModel", "GRULMHeadModel", "GRUForClassification"):
            from . import models

            classes.append(getattr(models, name))
            continue
        try:
            cls = getattr(transformers, name)
        except (AttributeError, ImportError, RuntimeError):
            continue
        if isinstance(cls, type):
            classes.append(cls)
    return classes


class _TypeTable(MutableMapping):
    """``{model class: {component: entry}}``, read from the registry on demand; writes register."""

    def __init__(self, entry: Callable[[Component, str], Tuple[Any, ...]]) -> None:
        self._entry = entry
        self._user: Dict[type, Dict[str, Tuple[Any, ...]]] = {}

    def _from_registry(self, cls: type) -> Optional[Dict[str, Tuple[Any, ...]]]:
        arch = _architecture_of(cls)
        if arch is None:
            return None
        prefix = _prefix(cls, arch)
        return {name: self._entry(comp, prefix) for name, comp in arch.components.items()}

    def __getitem__(self, cls: type) -> Dict[str, Tuple[Any, ...]]:
        if cls in self._user:
            return self._user[cls]
        table = self._from_registry(cls) if isinstance(cls, type) else None
        if table is None:
            raise KeyError(cls)
        return table

    def __contains__(self, cls: object) -> bool:
        return cls in self._user or (isinstance(cls, type) and _architecture_of(cls) is not None)

    def __setitem__(self, cls: type, table: Dict[str, Tuple[Any, ...]]) -> None:
        if not isinstance(cls, type):
            raise ConfigError(f"Keys are model classes (type(model)); got {cls!r}.")
        self._user[cls] = dict(table)
        _register_user_architecture(cls)

    def __delitem__(self, cls: type) -> None:
        del self._user[cls]
        _register_user_architecture(cls)

    def _keys(self) -> List[type]:
        keys: List[type] = list(self._user)
        for arch in registered_architectures():
            keys.extend(c for c in _classes_of(arch) if c not in keys)
        return keys

    def __iter__(self) -> Iterator[type]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: model class -> component table; {len(self._user)} set by the user>"


type_to_module_mapping = _TypeTable(_module_entry)
type_to_dimension_mapping = _TypeTable(lambda comp, prefix: _dimension_entry(comp))


# -- writing: reference-shaped tables -> an architecture ----------------------
def _dimension_reader(spec: Tuple[Any, ...], what: str) -> Callable[[Any], int]:
    """A config reader for ``("d_model",)``, ``("n_inner", "n_embd*4")``, ``("d_model/num_heads",)``."""

    def evaluate(expr: Any, config: Any) -> Optional[int]:
        if callable(expr):
            return int(expr(config))
        if isinstance(expr, int):
            return expr
        value: Optional[float] = None
        op = "*"
        for token in str(expr).replace("*", " * ").replace("/", " / ").split():
            if token in "*/":
                op = token
                continue
            operand = int(token) if token.isdigit() else getattr(config, token, None)
            if operand is None:
                return None
            value = operand if value is None else (value * operand if op == "*" else value / operand)
        return None if value is None else int(value)

    def read(config: Any) -> int:
        for expr in spec:
            value = evaluate(expr, config)
            if value is not None:
                return value
        raise ConfigError(f"type_to_dimension_mapping for {what}: the config has none of {spec}.")

    return read


def _user_component(cls: type, name: str, entry: Tuple[Any, ...], dims: Dict[str, Tuple[Any, ...]]) -> Component:
    if not isinstance(entry, tuple) or len(entry) < 2 or entry[1] not in _CONST_TO_HOOK:
        raise ConfigError(
            f"type_to_module_mapping[{cls.__name__}][{name!r}] must be (path, CONST_INPUT_HOOK or "
            f"CONST_OUTPUT_HOOK, *extras); got {entry!r}."
        )
    module = entry[0].replace("[%s]", ".{layer}").replace("%s", "{layer}")
    module = module.replace("[", ".").replace("]", "")
    spec = dims.get(name)
    width = _dimension_reader(tuple(spec), f"{cls.__name__}[{name!r}]") if spec else None
    heads: Optional[Callable[[Any], Any]] = None
    third: Optional[Tuple[int, int]] = None  # (chunk index, number of chunks) of a fused output
    for extra in entry[2:]:
        fn, arg = extra if isinstance(extra, tuple) and len(extra) == 2 else (extra, None)
        if fn in (split_three, split_half) and isinstance(arg, int):
            third = (arg, 3 if fn is split_three else 2)
        elif fn is split_head_and_permute and isinstance(arg, str):
            heads = attr(arg)
        else:
            raise ConfigError(
                f"type_to_module_mapping[{cls.__name__}][{name!r}]: extra {extra!r} is not supported "
                "(supported: (split_three, i), (split_half, i), "
                "(split_head_and_permute, 'n_head')). Use a raw module path component instead."
            )
    parts: Dict[str, Any] = {}
    if heads is not None:
        parts["heads"] = heads
        if width is not None:  # the reference's head entries give the per-head width; ours is the full width
            per_head = width
            width = lambda c: per_head(c) * heads(c)  # noqa: E731
    if third is not None:
        if width is None:
            def missing(config: Any, what: str = f"{cls.__name__}[{name!r}]") -> Any:
                raise ConfigError(f"{what} splits a fused output: give its width in pv.type_to_dimension_mapping.")

            parts["slice"] = missing
        else:
            parts["slice"] = lambda c, i=third[0], w=width: (i * w(c), (i + 1) * w(c))
    return Component(module=module, hook=_CONST_TO_HOOK[entry[1]], width=width, **parts)


_REPLACED: Dict[str, Optional[Architecture]] = {}  # class name -> registry entry before the user's


def _register_user_architecture(cls: type) -> None:
    modules = type_to_module_mapping._user.get(cls)
    if modules is None:
        if cls.__name__ in _REPLACED:  # the user's table is gone: restore what was there
            original = _REPLACED.pop(cls.__name__)
            _BY_NAME.pop(f"user:{cls.__name__}", None)
            if original is None:
                _BY_CLASS.pop(cls.__name__, None)
            else:
                _BY_CLASS[cls.__name__] = original
        return
    _REPLACED.setdefault(cls.__name__, _BY_CLASS.get(cls.__name__))
    dims = type_to_dimension_mapping._user.get(cls, {})
    components = {name: _user_component(cls, name, entry, dims) for name, entry in modules.items()}
    register_architecture(
        Architecture(
            name=f"user:{cls.__name__}",
            model_types=(),
            class_names=(cls.__name__,),
            num_layers=attr("num_hidden_layers", "n_layer", "num_layers"),
            components=components,
            base_paths=("",),
            description=f"Set through pv.type_to_module_mapping[{cls.__name__}].",
        ),
        replace=True,
    )
