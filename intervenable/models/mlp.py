"""A small MLP classifier, as in the reference library's tutorials.

``MLPModel.h[i]`` are blocks ``dropout(act(ff1(x)))``; ``MLPForClassification``
adds a linear ``score`` head. Inputs are ``inputs_embeds`` of shape
``[batch, h_dim]`` or ``[batch, positions, h_dim]`` (or ``input_ids`` when
``include_emb=True``).
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput


class MLPConfig(PretrainedConfig):
    """Configuration of the MLP (reference field names)."""

    model_type = "mlp"

    def __init__(
        self,
        include_emb: bool = False,
        vocab_size: int = 50_257,
        max_position_embeddings: int = 512,
        n_layer: int = 2,
        h_dim: int = 512,
        num_labels: int = 2,
        activation_function: str = "gelu",
        pdrop: float = 0.3,
        problem_type: str = "single_label_classification",
        include_bias: bool = True,
        squeeze_output: bool = True,
        **kwargs: Any,
    ) -> None:
        self.include_emb = include_emb
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.n_layer = n_layer
        self.h_dim = h_dim
        self.activation_function = activation_function
        self.pdrop = pdrop
        self.include_bias = include_bias
        self.squeeze_output = squeeze_output
        super().__init__(num_labels=num_labels, problem_type=problem_type, **kwargs)


class MLPBlock(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.ff1 = nn.Linear(config.h_dim, config.h_dim, bias=config.include_bias)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.pdrop)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.act(self.ff1(hidden_states)))


class MLPPreTrainedModel(PreTrainedModel):
    config_class = MLPConfig
    base_model_prefix = "mlp"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class MLPModel(MLPPreTrainedModel):
    """The stack of MLP blocks ``h[0..n_layer-1]``."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        if config.include_emb:
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.h_dim)
        self.dropout = nn.Dropout(config.pdrop)
        self.h = nn.ModuleList([MLPBlock(config) for _ in range(config.n_layer)])
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = True,
    ) -> Any:
        if inputs_embeds is None:
            if input_ids is None or not self.config.include_emb:
                raise ValueError("MLPModel needs inputs_embeds (or input_ids with include_emb=True).")
            inputs_embeds = self.wte(input_ids)
        hidden = inputs_embeds
        if position_ids is not None and self.config.include_emb:
            hidden = hidden + self.wpe(position_ids)
        hidden = self.dropout(hidden)
        states: Tuple[torch.Tensor, ...] = ()
        for block in self.h:
            if output_hidden_states:
                states += (hidden,)
            hidden = block(hidden)
        if output_hidden_states:
            states += (hidden,)
        if not return_dict:
            return (hidden, states) if output_hidden_states else (hidden,)
        return BaseModelOutput(last_hidden_state=hidden, hidden_states=states or None)


class MLPForClassification(MLPPreTrainedModel):
    """``MLPModel`` + a linear ``score`` head; logits squeezed over a length-1 position axis."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        self.mlp = MLPModel(config)
        self.score = nn.Linear(config.h_dim, config.num_labels, bias=config.include_bias)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = True,
    ) -> Any:
        outputs = self.mlp(input_ids, position_ids, inputs_embeds, output_hidden_states, True)
        logits = self.score(outputs.last_hidden_state)
        if self.config.squeeze_output and logits.dim() == 3 and logits.shape[1] == 1:
            logits = logits.squeeze(1)
        loss = None
        if labels is not None:
            if self.config.problem_type == "regression":
                loss = nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
            elif self.config.problem_type == "multi_label_classification":
                loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
            else:
                loss = nn.functional.cross_entropy(logits.reshape(-1, self.config.num_labels), labels.reshape(-1))
        if not return_dict:
            out = (logits,) + ((outputs.hidden_states,) if output_hidden_states else ())
            return ((loss,) + out) if loss is not None else out
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def create_mlp_classifier(config: MLPConfig, tokenizer_name: Optional[str] = None, cache_dir: Optional[str] = None) -> Tuple[MLPConfig, Any, MLPForClassification]:
    """``(config, tokenizer_or_None, MLPForClassification(config))`` (reference signature)."""
    tokenizer = None
    if tokenizer_name is not None:
        from .hf import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_name, cache_dir)
    return config, tokenizer, MLPForClassification(config)
