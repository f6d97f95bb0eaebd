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
