"""The architecture registry: abstract component names -> module paths, per model family.

A family is one file in ``sites/archs/`` that builds an ``Architecture`` and
calls ``register_architecture`` on it. The registry is keyed by the model's
``config.model_type`` and by class name, so every head class of a family
(``GPT2Model``, ``GPT2LMHeadModel``, ``GPT2ForSequenceClassification``) shares
one table: paths are relative to the family's base model.

A family may also describe its layer stack for the fast sweep path
(``Architecture.stack``, a ``LayerStack``); ``sweeps/fast.py`` only reads it.
The contract of a stack description:

* The layers are the family's ``block_output`` modules. The fast path calls
  them itself, one at a time, on hidden states ``[rows, q, width]`` of
  positions ``start..T-1`` taken from the corrupted run (the input of layer
  ``l`` as the model's own forward produced it: embeddings, position
  embeddings added at the input, scaling, all already applied). Anything a
  layer does inside itself (parallel residual, soft-capped attention, mixture
  of experts, QK norms, local attention buffers) needs no description.
* Each call gets ``attention_mask``: an additive float mask
  ``[1, 1, q, k]`` over key positions ``0..T-1`` (causal, limited to the
  last ``window(config, layer)`` keys when a sliding window is described;
  ``None`` for a bidirectional stack); ``position_ids`` ``[1, q]`` when the
  layer takes them; ``position_embeddings=rotary(hidden, position_ids)`` when
  ``rotary`` names the model's rotary module (with ``rotary_in_layers``, a model
  without that module is an older layout whose layers compute rotary themselves
  from ``position_ids``: GPT-J before transformers 5.24, Gemma, Mistral, OLMo, Phi-3 before 4.46); the key/value cache under the
  layer's cache keyword (``cache``, ``past_key_values``, ``past_key_value`` or
  ``layer_past``, found from its signature unless ``cache_arg`` is given),
  holding the corrupted keys/values of positions ``< start``; and
  ``layer_kwargs(config)``, fixed extra arguments (Falcon: ``alibi=None``).
* After the last layer, the last position's hidden state goes through the
  ``final`` modules (paths relative to the base model, applied in order, a
  missing or ``None`` module skipped: final norm, OPT's ``project_out``),
  then the ``head`` modules (paths relative to the whole model, applied in
  order, missing ones skipped; when none exists:
  ``model.get_output_embeddings()``), then
  soft-capping ``cap * tanh(logits / cap)`` when ``logit_softcap(config)`` is
  set (Gemma2).
* ``bidirectional=True`` (encoders): no key/value prefix, since every
  position sees every other; a patched row recomputes all positions from its
  first patched layer on, and only the layers below it are skipped.
* ``unsupported(config)``: a non-empty reason when a variant of the family is
  not described (Falcon with ALiBi); the general path is used then.

Before a fast sweep runs, the description is checked against the model's own
forward (logits of the corrupted run's last two positions recomputed through
the description over the cached prefix); on a mismatch the sweep warns and
uses the general path. A family without a description uses the general path (said once).

A stack description may also say how the layers write the residual stream (``LayerStack.residual``, a
``Residual``), read through ``sites/residual.py`` by the cache toolkit (logit lens, residual
decomposition, direct logit attribution) and by circuits (edges between the stream's writers and
readers). With ``x`` the input of layer ``l`` (its ``block_input``), ``A`` what the attention adds
and ``M`` what the MLP adds to the stream:

* sequential (``parallel(config)`` false): ``mid = x + A``, ``out = mid + M``, with the attention
  reading ``x`` and the MLP reading ``mid``;
* parallel (GPT-J, Phi, GPT-NeoX with ``use_parallel_residual``): ``out = x + A + M``, both reading
  ``x``.

``A`` and ``M`` are the family's ``attention_output`` / ``mlp_output`` unless ``Residual.attention`` /
``Residual.mlp`` give other components (Gemma2 and OLMo2 norm the sublayers' outputs before adding
them). ``attention_norm`` / ``mlp_norm`` name the norm between the stream and each sublayer (empty:
the sublayer reads the stream itself, as OLMo2's do). The attention output projection is the module of
the family's ``head_attention_value_output`` (its input: the heads' value mixes, concatenated).
``unsupported(config)`` gives the reason when a variant does not decompose (post-norm OPT).
``sublayer_norm`` (a ``Norm``) is the arithmetic of the norms that Gemma2 and OLMo2 put on each
sublayer's output before adding it: then ``A`` / ``M`` are those norms' outputs (the modules of
``Residual.attention`` / ``Residual.mlp``), the MLP's own input is the family's ``mlp_input``, and a
head's share of ``A`` is its output-projection term through the attention's norm with the scale of
the whole attention output (frozen: linear, so the shares add up to ``A``); ``kv_groups`` names the attention module's attribute that holds
the query heads per key/value head (``layers.{layer}.self_attn.num_key_value_groups``), which circuits
set to 1 while they give each query head its own keys and values (ungrouped grouped-query attention).

``Residual.final_norm`` (a ``Norm``) states the final norm's arithmetic, for read-outs that freeze its
scale (direct logit attribution): ``y = (offset + w) * P(x) / sqrt(mean(P(x)^2) + eps) + b``, with ``P``
the centring ``x - mean(x)`` for a LayerNorm and the identity for an RMSNorm; ``w`` and ``b`` are the
module's parameters named by ``weight`` / ``bias`` (empty: none), ``eps`` the module attribute naming
its epsilon (or a number when the module keeps none). ``tests/test_residual_stream.py`` checks it
against the module.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from torch import nn

ConfigFn = Callable[[Any], Any]


@dataclass(frozen=True)
class Component:
    """One abstract component of a family.

    ``module``: path template relative to the base model, with ``{layer}``
    (and ``{moe_key}`` for mixture-of-experts) placeholders.
    ``width``: the activation's width from the model config.
    ``heads``: head count for head views; ``slice``: ``(start, end)`` of the last
    dimension for fused projections; ``output_index``: element of a tuple output.
    ``groups``: for fused projections laid out per group (GPT-NeoX, Falcon), the
    last dimension is ``groups`` equal chunks and ``slice`` is taken inside each.
    ``num_layers``: layer count of this component's stack when it differs from
    the family's (encoder / decoder, text / vision). ``hint``: appended to the
    error when the module is missing (e.g. a conversion step the user must run).
    ``alternatives``: the same module's path in another module layout of the family (older
    transformers: Mixtral's ``block_sparse_moe``, LLaVA's ``vision_tower.vision_model``), tried in
    order when ``module`` is missing; ``module`` is the newest layout's path.
    """

    module: str
    hook: str = "output"
    width: Optional[ConfigFn] = None
    heads: Optional[ConfigFn] = None
    slice: Optional[ConfigFn] = None
    output_index: int = 0
    writable: bool = True
    head_layout: str = "split"
    groups: Optional[ConfigFn] = None
    num_layers: Optional[ConfigFn] = None
    hint: str = ""
    alternatives: Tuple[str, ...] = ()

    def paths(self) -> Tuple[str, ...]:
        """Every layout's path template, the newest first."""
        return (self.module,) + tuple(self.alternatives)


def _never(config: Any) -> bool:
    return False


@dataclass(frozen=True)
class Norm:
    """A norm's arithmetic (see the module docstring): LayerNorm (``centred``) or RMSNorm."""

    centred: bool = True  # LayerNorm subtracts the mean first; RMSNorm does not
    eps: Any = "eps"  # the module attribute holding epsilon, or the value itself (a number)
    weight: str = "weight"  # the module's scale parameter ("": none)
    bias: str = "bias"  # the module's shift parameter ("": none)
    offset: float = 0.0  # Gemma scales by (1 + weight)


@dataclass(frozen=True)
class Residual:
    """How a family's layers write the residual stream (see the module docstring)."""

    attention: Optional[Component] = None  # what the attention adds; None: the table's attention_output
    mlp: Optional[Component] = None  # what the MLP adds; None: the table's mlp_output
    attention_norm: str = ""  # path template of the norm between the stream and the attention ("": none)
    mlp_norm: str = ""  # path template of the norm between the stream and the MLP ("": none)
    parallel: Callable[[Any], bool] = _never
    unsupported: Optional[Callable[[Any], str]] = None
    #: the arithmetic of the norm each sublayer's output passes before it is added (Gemma2, OLMo2; the
    #: modules of ``attention`` / ``mlp``); None: the outputs are added as they are
    sublayer_norm: Optional[Norm] = None
    #: path template of the attention module's attribute holding the query heads per key/value head
    #: (grouped-query attention): circuits set it to 1 while they feed one key/value per query head
    kv_groups: str = ""
    final_norm: Optional[Norm] = None  # the final norm's arithmetic (None: not described)


@dataclass(frozen=True)
class LayerStack:
    """How the fast sweep path runs a family's layers ``l..L`` on cached states (see the module docstring)."""

    final: Tuple[str, ...] = ()
    head: Tuple[str, ...] = ()
    rotary: str = ""
    rotary_in_layers: bool = False
    window: Optional[Callable[[Any, int], Optional[int]]] = None
    layer_kwargs: Optional[Callable[[Any], Dict[str, Any]]] = None
    logit_softcap: Optional[ConfigFn] = None
    bidirectional: bool = False
    cache_arg: str = ""
    unsupported: Optional[Callable[[Any], str]] = None
    residual: Optional[Residual] = None


@dataclass(frozen=True)
class Architecture:
    """A model family's table of components (and, optionally, its stack description for the fast sweep path)."""

    name: str
    model_types: Tuple[str, ...]
    num_layers: ConfigFn
    components: Mapping[str, Component]
    class_names: Tuple[str, ...] = ()
    # Candidate paths of the base model inside wrapper classes, tried in order;
    # empty means "use model.base_model".
    base_paths: Tuple[str, ...] = field(default=())
    description: str = ""
    stack: Optional[LayerStack] = None
    # True where the family adds learned absolute position embeddings numbered 0..T-1 whatever the padding
    # (GPT-2, GPT-Neo, BERT): a left-padded batch then needs ``position_ids`` from its attention mask, as
    # ``generate`` passes them (see inputs.padded_position_ids). Rotary families are unchanged by a shift of
    # every position, and OPT / RoBERTa number their positions from the padding themselves.
    positions_from_mask: bool = False


_BY_NAME: Dict[str, Architecture] = {}
_BY_MODEL_TYPE: Dict[str, Architecture] = {}
_BY_CLASS: Dict[str, Architecture] = {}


def register_architecture(arch: Architecture, replace: bool = False) -> Architecture:
    """Register a family (called once from its file in ``sites/archs``).

    A second family with a name already registered is refused unless ``replace=True`` (which
    swaps the old entry out everywhere: its model types and class names).
    """
    old = _BY_NAME.get(arch.name)
    if old is not None:
        if not replace:
            raise ValueError(
                f"An architecture named {arch.name!r} is already registered (model types {list(old.model_types)}). "
                "Pass replace=True to replace it, or give the new family another name."
            )
        for table in (_BY_MODEL_TYPE, _BY_CLASS):
            for key in [k for k, v in table.items() if v is old]:
                del table[key]
    _BY_NAME[arch.name] = arch
    for model_type in arch.model_types:
        _BY_MODEL_TYPE[model_type] = arch
    for class_name in arch.class_names:
        _BY_CLASS[class_name] = arch
    return arch


def registered_architectures() -> Tuple[Architecture, ...]:
    return tuple(_BY_NAME.values())


def find_architecture(model: nn.Module) -> Optional[Architecture]:
    """The registered family of ``model``, or None (raw module paths still work)."""
    arch = _BY_CLASS.get(type(model).__name__)
    if arch is not None:
        return arch
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if isinstance(model_type, str):
        return _BY_MODEL_TYPE.get(model_type)
    return None


# -- small builders used by the family files -----------------------------------
def attr(*names: str, default: Any = None) -> ConfigFn:
    """A config reader returning the first attribute that is set."""

    def read(config: Any) -> Any:
        for name in names:
            value = getattr(config, name, None)
            if value is not None:
                return value
        if default is not None:
            return default(config) if callable(default) else default
        raise AttributeError(f"config has none of {names}")

    return read


def sub(name: str, fn: ConfigFn) -> ConfigFn:
    """A config reader applied to a sub-config (``text_config``, ``vision_config``)."""

    def read(config: Any) -> Any:
        inner = getattr(config, name, None)
        if inner is None:
            raise AttributeError(f"config has no {name!r}")
        return fn(inner)

    return read


def out(module: str, width: ConfigFn, **kwargs: Any) -> Component:
    """A component read at a module's output."""
    return Component(module=module, hook="output", width=width, **kwargs)


def inp(module: str, width: ConfigFn, **kwargs: Any) -> Component:
    """A component read at a module's input."""
    return Component(module=module, hook="input", width=width, **kwargs)
