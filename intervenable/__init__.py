"""intervenable: causal interventions on the internal states of PyTorch models.

API-compatible with pyvene: ``import intervenable as pv``.
"""
from .config import IntervenableConfig, RepresentationConfig
from .errors import (
    ComponentError,
    ConfigError,
    InputError,
    IntervenableError,
    LocationError,
    ShapeError,
    SubspaceError,
)
from .hooks import HookSet
from .causal_model import CausalModel, hierarchical_equality_model
from .interventions import (
    AdditionIntervention,
    AutoencoderIntervention,
    BoundlessRotatedSpaceIntervention,
    JumpReLUAutoencoderIntervention,
    LoraIntervention,
    LoRAIntervention,
    LoreftIntervention,
    LowRankRotatedSpaceIntervention,
    NoreftIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
    BasisAgnosticIntervention,
    CollectIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    LambdaIntervention,
    LocalistRepresentationIntervention,
    NoiseIntervention,
    SharedWeightsTrainableIntervention,
    SkipIntervention,
    SourcelessIntervention,
    SubtractionIntervention,
    TrainableIntervention,
    VanillaIntervention,
    ZeroIntervention,
    get_intervention_class,
    register_intervention,
    registered_interventions,
)
from .io import SerializationError
from .model import IntervenableModel, IntervenableModelOutput
from .models import (
    GRUConfig,
    MLPConfig,
    create_gpt2,
    create_gpt2_lm,
    create_gpt_neo,
    create_gpt_neox,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
    create_llama,
    create_mlp_classifier,
)
from .sites.archs.mixtral import split_experts
from .sites import (
    Architecture,
    Component,
    Site,
    list_components,
    register_architecture,
    resolve_component,
)
from .sweeps import SweepResult, causal_trace, patching_sweep
from .training import eval_alignment, train_alignment

__version__ = "0.1.0"
