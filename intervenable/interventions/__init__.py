"""Intervention types (WHAT to do at a site), registered by name."""
from .base import (
    BasisAgnosticIntervention,
    ConstantSourceIntervention,
    DistributedRepresentationIntervention,
    Intervention,
    InterventionOutput,
    LocalistRepresentationIntervention,
    SharedWeightsTrainableIntervention,
    SourcelessIntervention,
    TrainableIntervention,
    get_intervention_class,
    intervention_name,
    register_intervention,
    registered_interventions,
)
from .basic import (
    AdditionIntervention,
    CollectIntervention,
    LambdaIntervention,
    NoiseIntervention,
    SkipIntervention,
    SubtractionIntervention,
    VanillaIntervention,
    ZeroIntervention,
)
from .rotations import (
    BoundlessRotatedSpaceIntervention,
    LowRankRotatedSpaceIntervention,
    PCARotatedSpaceIntervention,
    RotatedSpaceIntervention,
    SigmoidMaskIntervention,
    SigmoidMaskRotatedSpaceIntervention,
)
from .autoencoders import AutoencoderIntervention, JumpReLUAutoencoderIntervention
from .adapters import LoraIntervention, LoRAIntervention, LoreftIntervention, NoreftIntervention
