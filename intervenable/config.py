"""Configuration objects: ``RepresentationConfig`` and ``IntervenableConfig``.

Both accept every form the reference library accepts (namedtuple, positional
list, dict, single object or list) and are validated once, here, so that the
engine only ever sees well-formed representations.
"""
from __future__ import annotations

from collections import namedtuple
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
from transformers import PretrainedConfig

from .errors import ConfigError, closest
from .version import configs_name_dtype

REPRESENTATION_FIELDS = (
    "layer",
    "component",
    "unit",
    "max_number_of_units",
    "low_rank_dimension",
    "intervention_type",
    "intervention",
    "subspace_partition",
    "group_key",
    "intervention_link_key",
    "moe_key",
    "source_representation",
    "hidden_source_representation",
    "latent_dim",
)

_RepresentationBase = namedtuple(
    "RepresentationConfig",
    REPRESENTATION_FIELDS,
    defaults=(0, "block_output", "pos", 1, None, None, None, None, None, None, None, None, None, None),
)

UNITS = ("pos", "h", "h.pos", "t")
MODES = ("parallel", "serial")


class RepresentationConfig(_RepresentationBase):
    """Where and how to intervene: one site of the model.

    Fields and defaults are those of the reference library, positional or by
    keyword: ``layer=0, component="block_output", unit="pos",
    max_number_of_units=1`` and optional ``low_rank_dimension,
    intervention_type, intervention, subspace_partition, group_key,
    intervention_link_key, moe_key, source_representation,
    hidden_source_representation, latent_dim``.
    """

    __slots__ = ()

    @classmethod
    def from_any(cls, value: Any) -> "RepresentationConfig":
        """Build from a RepresentationConfig, a dict, or a positional list/tuple."""
        if isinstance(value, RepresentationConfig):
            return value
        placed = getattr(value, "as_representation", None)
        if callable(placed):  # an intervention that knows its own site (pv.SAEIntervention)
            return cls.from_any(placed())
        if isinstance(value, Mapping) and "component" not in value and callable(
                getattr(value.get("intervention"), "as_representation", None)):
            return cls.from_any({**value["intervention"].as_representation(), **value})
        if isinstance(value, tuple) and hasattr(value, "_asdict"):  # a foreign namedtuple
            return cls.from_any(dict(value._asdict()))
        if isinstance(value, Mapping):
            unknown = [k for k in value if k not in REPRESENTATION_FIELDS]
            if unknown:
                hint = closest(str(unknown[0]), REPRESENTATION_FIELDS)
                raise ConfigError(
                    f"Unknown representation field {unknown[0]!r}.{hint} "
                    f"Valid fields: {', '.join(REPRESENTATION_FIELDS)}."
                )
            return cls(**dict(value))
        if isinstance(value, (list, tuple)):
            if len(value) > len(REPRESENTATION_FIELDS):
                raise ConfigError(
                    f"A positional representation has at most {len(REPRESENTATION_FIELDS)} fields "
                    f"({', '.join(REPRESENTATION_FIELDS)}); got {len(value)}."
                )
            return cls(*value)
        raise ConfigError(
            f"Cannot read a representation from {type(value).__name__}: pass a "
            "RepresentationConfig, a dict such as {'layer': 6, 'component': 'block_output'}, "
            "or a positional list."
        )

    def validate(self) -> "RepresentationConfig":
        """Check field types; return self so calls can be chained."""
        if not isinstance(self.component, str) or not self.component:
            raise ConfigError(
                f"'component' must be a non-empty string such as 'block_output' or "
                f"'transformer.h[6].mlp.output'; got {self.component!r}."
            )
        if self.layer is not None and (isinstance(self.layer, bool) or not isinstance(self.layer, int)):
            raise ConfigError(f"'layer' must be an int; got {self.layer!r}.")
        if self.unit not in UNITS:
            hint = closest(str(self.unit), UNITS)
            raise ConfigError(f"Unknown unit {self.unit!r}.{hint} Valid units: {', '.join(UNITS)}.")
        n = self.max_number_of_units
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"'max_number_of_units' must be a positive int; got {n!r}.")
        if self.intervention is not None and self.intervention_type is not None:
            raise ConfigError(
                "Give either 'intervention' (a class, an instance or a callable) or "
                "'intervention_type' (a class), not both."
            )
        return self


RepresentationLike = Union[RepresentationConfig, Mapping[str, Any], Sequence[Any]]


def _as_representation_list(representations: Any) -> List[RepresentationConfig]:
    if representations is None:
        return [RepresentationConfig()]
    if isinstance(representations, (RepresentationConfig, Mapping)) or callable(
            getattr(representations, "as_representation", None)) or (
        isinstance(representations, tuple) and hasattr(representations, "_asdict")
    ):
        representations = [representations]
    if not isinstance(representations, (list, tuple)):
        raise ConfigError(
            "'representations' must be a RepresentationConfig, a dict, or a list of them; "
            f"got {type(representations).__name__}."
        )
    if len(representations) == 0:
        raise ConfigError("'representations' is empty: give at least one site to intervene on.")
    if not isinstance(representations[0], (RepresentationConfig, Mapping, list, tuple)) and not callable(
            getattr(representations[0], "as_representation", None)):
        representations = [representations]  # one positional representation, e.g. [1, "block_output"]
    return [RepresentationConfig.from_any(r).validate() for r in representations]


class IntervenableConfig(PretrainedConfig):
    """A list of representations plus how to run them.

    ``representations``: one or a list of ``RepresentationConfig`` / dict /
    positional list. ``intervention_types``: a class used for every
    representation that names none, or a list with one class per
    representation. ``mode``: ``"parallel"`` (every group reads its source and
    all write into the base run) or ``"serial"`` (each group's intervened
    source feeds the next group).

    As in the reference library it is a ``transformers.PretrainedConfig``
    (``IntervenableModel.config`` is what the HF ``Trainer`` reads:
    ``get_text_config``, ``to_dict``, ``to_json_string``, token ids it aligns).
    Other keyword arguments become attributes; ``model_type``,
    ``intervention_dimensions`` and ``intervention_constant_sources`` are the
    reference's public fields, kept as given. ``to_dict`` describes classes,
    instances and tensors by name: it is a summary for logs, not our save format.
    """

    def __init__(
        self,
        representations: Any = None,
        intervention_types: Any = None,
        mode: str = "parallel",
        sorted_keys: Optional[List[str]] = None,
        model_type: Any = None,
        intervention_dimensions: Optional[List[Any]] = None,
        intervention_constant_sources: Optional[List[Any]] = None,
        **kwargs: Any,
    ) -> None:
        self.representations: List[RepresentationConfig] = _as_representation_list(representations)
        if mode not in MODES:
            raise ConfigError(f"Unknown mode {mode!r}: use 'parallel' or 'serial'.")
        self.mode = mode
        if isinstance(intervention_types, (list, tuple)) and len(intervention_types) != len(self.representations):
            raise ConfigError(
                f"'intervention_types' lists {len(intervention_types)} types for "
                f"{len(self.representations)} representations: give one per representation, or a single type."
            )
        self.intervention_types = intervention_types
        self.sorted_keys = sorted_keys
        self.model_type = model_type
        self.intervention_dimensions = intervention_dimensions
        self.intervention_constant_sources = intervention_constant_sources
        super().__init__(**kwargs)  # unknown keyword arguments become attributes, never interpreted

    # Plain object identity, as before this class was a PretrainedConfig (whose generated
    # equality compares only the base fields, so any two configs would be "equal").
    __eq__ = object.__eq__
    __ne__ = object.__ne__
    __hash__ = object.__hash__

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # transformers 5 turns every PretrainedConfig subclass (pyreft's ReftConfig) into a dataclass,
        # whose generated __eq__ would again compare only the base fields: keep identity unless the
        # subclass defines its own.
        own = {name: name in cls.__dict__ for name in ("__eq__", "__ne__", "__hash__")}
        super().__init_subclass__(**kwargs)
        for name, defined in own.items():
            if not defined:
                setattr(cls, name, getattr(object, name))

    def intervention_spec(self, index: int) -> Any:
        """The 'what' of representation ``index``: an instance, class, callable or None."""
        rep = self.representations[index]
        if rep.intervention is not None:
            return rep.intervention
        if rep.intervention_type is not None:
            return rep.intervention_type
        types = self.intervention_types
        if isinstance(types, (list, tuple)):
            return types[index]
        return types

    def add_intervention(self, representations: Any) -> None:
        """Append one or more representations."""
        self.representations.extend(_as_representation_list(representations))

    def to_dict(self) -> Dict[str, Any]:
        """``PretrainedConfig.to_dict`` with representations and types as JSON data (names for code)."""
        described = object.__new__(type(self))
        described.__dict__.update(self.__dict__)
        described.__dict__.update(
            representations=[{k: _describe(v) for k, v in r._asdict().items()} for r in self.representations],
            intervention_types=_describe(self.intervention_types),
            model_type=_describe(self.model_type),
            sorted_keys=_describe(self.sorted_keys),
        )
        return PretrainedConfig.to_dict(described)

    def __repr__(self) -> str:
        reps = ",\n    ".join(repr(r) for r in self.representations)
        return f"{type(self).__name__}(mode={self.mode!r}, representations=[\n    {reps}\n])"

    __str__ = __repr__


if not configs_name_dtype():  # transformers < 4.56: the config's dtype is only torch_dtype; the reference has both
    IntervenableConfig.dtype = property(lambda self: self.torch_dtype,  # type: ignore[attr-defined]
                                        lambda self, value: setattr(self, "torch_dtype", value),
                                        doc="The config's ``torch_dtype`` (named ``dtype`` from transformers 4.56).")


def _describe(value: Any) -> Any:
    """JSON data for ``to_dict``: classes, instances and functions by qualified name, tensors by shape."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={list(value.shape)}, dtype={str(value.dtype).replace('torch.', '')})"
    kind = value if isinstance(value, type) or callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{getattr(kind, '__module__', '')}.{getattr(kind, '__qualname__', type(kind).__name__)}"


def as_config(config: Any) -> IntervenableConfig:
    """Accept an IntervenableConfig, or a bare representation / list of them."""
    if isinstance(config, IntervenableConfig):
        return config
    return IntervenableConfig(representations=config)

