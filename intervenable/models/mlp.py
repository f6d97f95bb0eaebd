"""A small MLP classifier, as in the reference library's tutorials.

``MLPModel.h[i]`` are blocks ``dropout(act(ff1(x)))``; ``MLPForClassification``
adds a linear ``score`` head. Inputs are ``inputs_embeds`` of shape
``[batch, h_dim]`` or ``[batch, positions, h_dim]`` (or ``input_ids`` when
``include_emb=True``). As in the reference, forwards return tuples unless
``return_dict=True``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from typing import Any, Optional, Tuple

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput


class MLPConfig(PretrainedConfig):
    """Configuration of the MLP, with the reference's fields and meanings.

    ``num_classes``: outputs of the classifier's ``score`` head.
    ``include_emb``: token (``wte``) and position (``wpe``) embeddings for ``input_ids``.
    ``squeeze_output``: ``logits.squeeze(1)`` (drops a length-1 position axis).
    ``problem_type``: the loss with ``labels`` (``None`` infers it from the labels, as
    Hugging Face classifiers do). ``num_labels`` is Hugging Face's generic field and,
    as in the reference, does not size the head.
    """

    model_type = "mlp"

    def __init__(
        self,
        include_emb: bool = False,
        vocab_size: int = 50_257,
        max_position_embeddings: int = 512,
        n_layer: int = 2,
        h_dim: int = 512,
        num_classes: int = 2,
        activation_function: str = "gelu",
        pdrop: float = 0.3,
        problem_type: Optional[str] = "single_label_classification",
        include_bias: bool = True,
        squeeze_output: bool = True,
        **kwargs: Any,
    ) -> None:
        self.include_emb = include_emb
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.n_layer = n_layer
        self.h_dim = h_dim
        self.num_classes = num_classes
        self.activation_function = activation_function
        self.pdrop = pdrop
        self.include_bias = include_bias
        self.squeeze_output = squeeze_output
        if "num_labels" in kwargs and kwargs["num_labels"] != num_classes:
            warnings.warn(
                f"MLPConfig(num_labels={kwargs['num_labels']}) does not size the classifier: as in the "
                f"reference, num_classes does (now {num_classes}). Pass num_classes={kwargs['num_labels']}.",
                stacklevel=2,
            )
        super().__init__(problem_type=problem_type, **kwargs)


@dataclass
class MLPModelOutput(ModelOutput):
    """``last_hidden_state``: the last block's output; ``hidden_states``: the input and every block's output."""

    last_hidden_state: Optional[torch.Tensor] = None
    hidden_states: Optional[Tuple[torch.Tensor, ...]] = None


def classification_loss(problem_type: Optional[str], num_classes: int, logits: torch.Tensor, labels: torch.Tensor) -> Tuple[str, torch.Tensor]:
    """``(problem_type, loss)`` as Hugging Face sequence classifiers compute it (type inferred when ``None``)."""
    if problem_type is None:
        if num_classes == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_classes == 1:
            return problem_type, nn.functional.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return problem_type, nn.functional.mse_loss(logits, labels.to(logits.dtype))
    if problem_type == "single_label_classification":
        return problem_type, nn.functional.cross_entropy(logits.reshape(-1, num_classes), labels.reshape(-1))
    if problem_type == "multi_label_classification":
        return problem_type, nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    raise ValueError(
        f"problem_type must be 'regression', 'single_label_classification', 'multi_label_classification' "
        f"or None; got {problem_type!r}."
    )


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
    """The stack of MLP blocks ``h[0..n_layer-1]``.

    Returns a tuple ``(last_hidden_state[, hidden_states])`` unless
    ``return_dict=True`` (then an ``MLPModelOutput``), as the reference does.
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        self.h_dim = config.h_dim
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
        return_dict: Optional[bool] = None,
    ) -> Any:
        if inputs_embeds is None:
            if input_ids is None or not self.config.include_emb:
                raise ValueError("MLPModel needs inputs_embeds (or input_ids with include_emb=True).")
            inputs_embeds = self.wte(input_ids)
        hidden = inputs_embeds
        if position_ids is not None and self.config.include_emb:
            hidden = hidden + self.wpe(position_ids)
        hidden = self.dropout(hidden)
        states: Optional[Tuple[torch.Tensor, ...]] = () if output_hidden_states else None
        for block in self.h:
            if states is not None:
                states += (hidden,)
            hidden = block(hidden)
        if states is not None:
            states += (hidden,)
        if not return_dict:
            return (hidden, states) if states is not None else (hidden,)
        return MLPModelOutput(last_hidden_state=hidden, hidden_states=states)


class MLPForClassification(MLPPreTrainedModel):
    """``MLPModel`` + a linear ``score`` head with ``config.num_classes`` outputs.

    Logits are ``score(last_hidden_state)``, ``.squeeze(1)`` when
    ``config.squeeze_output``. Returns ``([loss,] logits[, hidden_states])``
    unless ``return_dict=True`` (then a ``SequenceClassifierOutput``).
    """

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        self.num_classes = config.num_classes
        self.squeeze_output = config.squeeze_output
        self.mlp = MLPModel(config)
        self.score = nn.Linear(config.h_dim, config.num_classes, bias=config.include_bias)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Any:
        outputs = self.mlp(input_ids, position_ids, inputs_embeds, output_hidden_states, True)
        logits = self.score(outputs.last_hidden_state)
        if self.squeeze_output:
            logits = logits.squeeze(1)
        loss = None
        if labels is not None:
            self.config.problem_type, loss = classification_loss(self.config.problem_type, self.num_classes, logits, labels)
        if not return_dict:
            out = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


def create_mlp_classifier(config: MLPConfig, tokenizer_name: Optional[str] = None, cache_dir: Optional[str] = None) -> Tuple[MLPConfig, Any, MLPForClassification]:
    """``(config, tokenizer_or_None, MLPForClassification(config))`` (reference signature)."""
    tokenizer = None
    if tokenizer_name is not None:
        from .hf import load_tokenizer

        tokenizer = load_tokenizer(tokenizer_name, cache_dir)
    return config, tokenizer, MLPForClassification(config)
