"""Small built-in models of the reference library's tutorials and pretrained-model helpers."""
from .gru import (
    GRUCell,
    GRUConfig,
    GRUForClassification,
    GRULMHeadModel,
    GRUModel,
    create_gru,
    create_gru_classifier,
    create_gru_lm,
)
from .hf import create_gpt2, create_gpt2_lm, create_gpt_neo, create_gpt_neox, create_llama
from .mlp import MLPConfig, MLPForClassification, MLPModel, create_mlp_classifier

__all__ = [
    "GRUCell", "GRUConfig", "GRUForClassification", "GRULMHeadModel", "GRUModel",
    "create_gru", "create_gru_classifier", "create_gru_lm",
    "create_gpt2", "create_gpt2_lm", "create_gpt_neo", "create_gpt_neox", "create_llama",
    "MLPConfig", "MLPForClassification", "MLPModel", "create_mlp_classifier",
]
