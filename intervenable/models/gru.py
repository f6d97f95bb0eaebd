"""A GRU unrolled over time, as in the reference library: one cell module called once per step.

``GRUModel.cells[l]`` is a ``GRUCell``; for every time step ``t`` and layer
``l`` the model calls ``cells[l](x_t, h_{t-1})`` with ``x_t`` of shape
``[batch, h_dim]`` (the embedding at ``t`` for layer 0, the new state of layer
``l-1`` otherwise) and ``h_{t-1}`` this layer's previous state. So a forward
hook on ``cells[l]`` fires ``seq_len`` times per forward, in time order, and
sees 2-D ``[batch, h_dim]`` tensors. ``hidden_states`` (the output) stacks the
last layer's states ``[batch, seq_len, h_dim]``; ``all_layer_states`` every
layer's, ``[n_layer, batch, seq_len, h_dim]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Tuple

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput, SequenceClassifierOutput
from transformers.utils import ModelOutput

from .mlp import classification_loss


class GRUConfig(PretrainedConfig):
    """Configuration of the GRU (reference field names)."""

    model_type = "gru"

    def __init__(
        self,
        include_emb: bool = False,
        vocab_size: int = 50_257,
        max_position_embeddings: int = 512,
        n_layer: int = 2,
        h_dim: int = 512,
        n_labels: int = 2,
        include_bias: bool = True,
        pdrop: float = 0.3,
        problem_type: str = "single_label_classification",
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.include_emb = include_emb
        self.vocab_size = vocab_size
        self.max_position_embeddings = max_position_embeddings
        self.n_layer = n_layer
        self.h_dim = h_dim
        self.n_labels = n_labels
        self.include_bias = include_bias
        self.pdrop = pdrop
        self.initializer_range = initializer_range
        super().__init__(problem_type=problem_type, **kwargs)


class GRUCell(nn.Module):
    """One GRU step: ``h' = u * h + (1 - u) * n`` with reset ``r``, update ``u`` and new ``n`` gates."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__()
        self.h_dim = config.h_dim
        self.x2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.h2h = nn.Linear(config.h_dim, 3 * config.h_dim, bias=config.include_bias)
        self.reset_act = nn.Sigmoid()
        self.update_act = nn.Sigmoid()
        self.new_act = nn.Tanh()
        std = 1.0 / self.h_dim**0.5
        for w in self.parameters():
            nn.init.uniform_(w, -std, std)

    def forward(self, current_states: torch.Tensor, hidden_states: Optional[torch.Tensor] = None) -> torch.Tensor:
        if hidden_states is None:
            hidden_states = current_states.new_zeros(current_states.shape[0], self.h_dim)
        x_reset, x_upd, x_new = self.x2h(current_states).chunk(3, -1)
        h_reset, h_upd, h_new = self.h2h(hidden_states).chunk(3, -1)
        reset_gate = self.reset_act(x_reset + h_reset)
        update_gate = self.update_act(x_upd + h_upd)
        new_gate = self.new_act(x_new + reset_gate * h_new)
        return update_gate * hidden_states + (1 - update_gate) * new_gate


@dataclass
class GRUModelOutput(ModelOutput):
    """Field order as in the reference (``output[0]`` is ``last_hidden_state``); ``all_layer_states`` is ours."""

    last_hidden_state: Optional[torch.Tensor] = None  # [batch, h_dim], last layer, last step
    hidden_states: Optional[torch.Tensor] = None  # [batch, seq, h_dim], last layer
    all_layer_states: Optional[torch.Tensor] = None  # [n_layer, batch, seq, h_dim]


class GRUPreTrainedModel(PreTrainedModel):
    config_class = GRUConfig
    base_model_prefix = "gru"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)


class GRUModel(GRUPreTrainedModel):
    """An ``n_layer`` GRU unrolled step by step over ``cells``."""

    def __init__(self, config: GRUConfig) -> None:
        super().__init__(config)
        if config.include_emb:
            self.wte = nn.Embedding(config.vocab_size, config.h_dim)
            self.wpe = nn.Embedding(config.max_position_embeddings, config.h_dim)
        self.cells = nn.ModuleList([GRUCell(config) for _ in range(config.n_layer)])
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        hidden_states: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Any:
        """``(hidden_states [batch, seq, h_dim], last_hidden_state [batch, h_dim])`` unless ``return_dict``.

        ``hidden_states`` (the argument) is the initial state ``[n_layer, batch, h_dim]``;
        ``output_hidden_states`` is accepted for the reference's signature (the states
        over time are always returned).
        """
        if inputs_embeds is None:
            if input_ids is None or not self.config.include_emb:
                raise ValueError("GRUModel needs inputs_embeds (or input_ids with include_emb=True).")
            inputs_embeds = self.wte(input_ids)
        if position_ids is not None and self.config.include_emb:
            inputs_embeds = inputs_embeds + self.wpe(position_ids)
        batch, seq_len = inputs_embeds.shape[:2]
        n_layer = len(self.cells)
        if hidden_states is None:
            hidden_states = inputs_embeds.new_zeros(n_layer, batch, self.config.h_dim)
        state = [hidden_states[l] for l in range(n_layer)]
        per_layer = [[] for _ in range(n_layer)]
        for t in range(seq_len):
            x = inputs_embeds[:, t]
            for l, cell in enumerate(self.cells):
                state[l] = cell(x, state[l])
                per_layer[l].append(state[l])
                x = state[l]
        all_states = torch.stack([torch.stack(s, dim=1) for s in per_layer])
        if not return_dict:
            return (all_states[-1], state[-1])
        return GRUModelOutput(last_hidden_state=state[-1], hidden_states=all_states[-1], all_layer_states=all_states)


class GRUForClassification(GRUPreTrainedModel):
    """GRU + linear ``score`` (``config.n_labels`` outputs) on the state at the last non-padded step.

    Returns ``([loss,] logits, last_hidden_state)`` unless ``return_dict=True``, as the reference does.
    """

    def __init__(self, config: GRUConfig) -> None:
        super().__init__(config)
        self.n_labels = config.n_labels
        self.gru = GRUModel(config)
        self.score = nn.Linear(config.h_dim, config.n_labels, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        labels: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Any:
        out = self.gru(input_ids, position_ids, inputs_embeds, return_dict=True)
        states = out.hidden_states
        if attention_mask is None:
            last = torch.full((states.shape[0],), states.shape[1] - 1, device=states.device)
        else:
            last = attention_mask.sum(-1).long() - 1
        logits = self.score(states[torch.arange(states.shape[0], device=states.device), last])
        loss = None
        if labels is not None:
            self.config.problem_type, loss = classification_loss(self.config.problem_type, self.n_labels, logits, labels)
        if not return_dict:
            output = (logits, out.last_hidden_state)
            return ((loss,) + output) if loss is not None else output
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=states)


class GRULMHeadModel(GRUPreTrainedModel):
    """GRU + ``lm_head`` at every step (next-token loss when ``labels`` are given).

    Returns ``([loss,] logits, last_hidden_state)`` unless ``return_dict=True``.
    """

    def __init__(self, config: GRUConfig) -> None:
        super().__init__(config)
        self.n_labels = config.n_labels
        self.gru = GRUModel(config)
        self.lm_head = nn.Linear(config.h_dim, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        labels: Optional[torch.LongTensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Any:
        out = self.gru(input_ids, position_ids, inputs_embeds, return_dict=True)
        logits = self.lm_head(out.hidden_states)
        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        if not return_dict:
            output = (logits, out.last_hidden_state)
            return ((loss,) + output) if loss is not None else output
        return CausalLMOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


def _tokenizer(tokenizer_name: Optional[str], cache_dir: Optional[str]) -> Any:
    if tokenizer_name is None:
        return None
    from .hf import load_tokenizer

    return load_tokenizer(tokenizer_name, cache_dir)


def create_gru(config: GRUConfig, tokenizer_name: Optional[str] = None, cache_dir: Optional[str] = None) -> Tuple[GRUConfig, Any, GRUModel]:
    """``(config, tokenizer_or_None, GRUModel(config))``."""
    return config, _tokenizer(tokenizer_name, cache_dir), GRUModel(config)


def create_gru_lm(config: GRUConfig, tokenizer_name: Optional[str] = None, cache_dir: Optional[str] = None) -> Tuple[GRUConfig, Any, GRULMHeadModel]:
    """``(config, tokenizer_or_None, GRULMHeadModel(config))``."""
    return config, _tokenizer(tokenizer_name, cache_dir), GRULMHeadModel(config)


def create_gru_classifier(config: GRUConfig, tokenizer_name: Optional[str] = None, cache_dir: Optional[str] = None) -> Tuple[GRUConfig, Any, GRUForClassification]:
    """``(config, tokenizer_or_None, GRUForClassification(config))``."""
    return config, _tokenizer(tokenizer_name, cache_dir), GRUForClassification(config)
