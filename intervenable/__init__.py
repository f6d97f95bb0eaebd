"""intervenable: causal interventions on the internal states of PyTorch models.

API-compatible with pyvene: ``import intervenable as pv``.

Every public name is imported on first use (module ``__getattr__``), so
``import intervenable`` and ``intervenable --help`` do not pay for torch,
transformers' modeling code, matplotlib or the sweeps until a name that needs
them is touched. ``pv.X`` and ``from intervenable import X`` work as usual.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Tuple

from .lazy import lazy_exports
from .reference_paths import install as _install_reference_paths

from .version import __version__

_install_reference_paths()  # pyvene.models.* deep imports under the pyvene alias (reference_paths.py)

# public name -> the module that defines it (relative to this package)
_EXPORTS: Dict[str, Tuple[str, ...]] = {
    ".config": ("IntervenableConfig", "RepresentationConfig"),
    ".errors": ("ComponentError", "ConfigError", "InputError", "IntervenableError", "LocationError", "ShapeError",
                "SourceCountError", "SubspaceError"),
    ".inputs": ("SharedSource",),
    ".hooks": ("HookSet",),
    ".cache": ("ActivationCache", "CachedActivations", "cache_to_disk", "generate_with_cache", "load_cache",
               "run_with_cache"),
    ".causal_model": ("CausalModel", "hierarchical_equality_model"),
    ".interventions": (
        "AdditionIntervention", "AutoencoderIntervention", "BoundlessRotatedSpaceIntervention",
        "JumpReLUAutoencoderIntervention", "LoraIntervention", "LoRAIntervention", "LoreftIntervention",
        "LowRankRotatedSpaceIntervention", "NoreftIntervention", "PCARotatedSpaceIntervention",
        "RotatedSpaceIntervention", "SigmoidMaskIntervention", "SigmoidMaskRotatedSpaceIntervention",
        "BasisAgnosticIntervention", "CollectIntervention", "ConstantSourceIntervention",
        "DistributedRepresentationIntervention", "Intervention", "InterventionOutput", "LambdaIntervention",
        "LocalistRepresentationIntervention", "NoiseIntervention", "SharedWeightsTrainableIntervention",
        "SkipIntervention", "SourcelessIntervention", "SubtractionIntervention", "TrainableIntervention",
        "VanillaIntervention", "ZeroIntervention", "get_intervention_class", "register_intervention",
        "registered_interventions",
    ),
    ".io": ("SerializationError",),
    ".model": ("IntervenableModel", "IntervenableModelOutput"),
    ".models": (
        "GRUConfig", "MLPConfig", "create_gpt2", "create_gpt2_lm", "create_gpt_neo", "create_gpt_neox",
        "create_gru", "create_gru_classifier", "create_gru_lm", "create_llama", "create_mlp_classifier",
        "create_backpack_gpt2", "create_blip", "create_blip_itm", "create_gpt_oss", "create_llava", "create_olmo",
    ),
    ".basic_utils": (
        "GET_LOC", "build_intervenable_model", "closeness_to_permutation_loss", "count_parameters",
        "create_directory", "embed_to_distrib", "format_token", "get_batch_size", "get_list_depth",
        "get_type_from_string", "harmonic_sigmoid_boundary", "lsm", "random_permutation_matrix", "set_seed",
        "sigmoid_boundary", "sm", "top_vals",
    ),
    ".type_mappings": ("type_to_dimension_mapping", "type_to_module_mapping"),
    ".sites.archs.mixtral": ("split_experts",),
    ".sites": ("Architecture", "Component", "LayerStack", "Site", "list_components", "register_architecture",
               "resolve_component"),
    ".sweeps": ("DatasetResult", "SweepResult", "attribution_patching", "causal_trace", "patching_sweep"),
    ".saes": ("SAE", "SAEIntervention", "feature_attribution", "feature_patching", "load_sae"),
    ".circuits": ("Circuit", "FaithfulnessResult", "edge_attribution_patching", "faithfulness"),
    ".training": ("eval_alignment", "train_alignment"),
}

_WHERE: Dict[str, str] = {name: module for module, names in _EXPORTS.items() for name in names}

__all__: List[str] = sorted(_WHERE) + ["__version__"]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE)


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .basic_utils import *  # noqa: F401,F403
    from .causal_model import CausalModel, hierarchical_equality_model  # noqa: F401
    from .config import IntervenableConfig, RepresentationConfig  # noqa: F401
    from .errors import (ComponentError, ConfigError, InputError, IntervenableError,  # noqa: F401
                         LocationError, ShapeError, SourceCountError, SubspaceError)
    from .cache import (ActivationCache, CachedActivations, cache_to_disk, generate_with_cache,  # noqa: F401
                        load_cache, run_with_cache)
    from .hooks import HookSet  # noqa: F401
    from .inputs import SharedSource  # noqa: F401
    from .interventions import *  # noqa: F401,F403
    from .io import SerializationError  # noqa: F401
    from .model import IntervenableModel, IntervenableModelOutput  # noqa: F401
    from .models import *  # noqa: F401,F403
    from .sites import (Architecture, Component, LayerStack, Site, list_components,  # noqa: F401
                        register_architecture, resolve_component)
    from .sites.archs.mixtral import split_experts  # noqa: F401
    from .sweeps import DatasetResult, SweepResult, attribution_patching, causal_trace, patching_sweep  # noqa: F401
    from .saes import SAE, SAEIntervention, feature_attribution, feature_patching, load_sae  # noqa: F401
    from .circuits import Circuit, FaithfulnessResult, edge_attribution_patching, faithfulness  # noqa: F401
    from .training import eval_alignment, train_alignment  # noqa: F401
    from .type_mappings import type_to_dimension_mapping, type_to_module_mapping  # noqa: F401
