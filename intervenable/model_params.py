"""Parameters, gradients and devices of an ``IntervenableModel`` (mixed into it).

The base model is frozen by default, so an optimiser over
``get_trainable_parameters()`` trains the interventions only. Linked
interventions (several sites sharing one module) contribute their parameters
once.
"""
from __future__ import annotations

from typing import Any, Iterator, List, Tuple

import torch
from torch import nn


class ParameterMixin:
    """Methods of ``IntervenableModel`` that deal with parameters and devices."""

    interventions: nn.ModuleDict
    model: nn.Module

    def _unique_interventions(self) -> Iterator[Tuple[str, nn.Module]]:
        seen = set()
        for key, module in self.interventions.items():
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield key, module

    def get_trainable_parameters(self) -> List[nn.Parameter]:
        """Parameters of the interventions plus any model parameter that requires grad."""
        return [p for _, p in self.named_parameters()]

    def named_parameters(self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True) -> Iterator[Tuple[str, nn.Parameter]]:  # type: ignore[override]
        """Trainable parameters only: ``"<key>.<name>"`` for interventions, ``"model.<name>"`` for the model."""
        seen = set()
        for key, module in self._unique_interventions():
            for name, param in nn.Module.named_parameters(module, recurse=recurse):
                if param.requires_grad and id(param) not in seen:
                    seen.add(id(param))
                    yield f"{prefix}{key}.{name}", param
        for name, param in nn.Module.named_parameters(self.model, recurse=recurse):
            if param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                yield f"{prefix}model.{name}", param

    def count_parameters(self, include_model: bool = False) -> int:
        """Number of trainable intervention parameters (plus trainable model ones if asked)."""
        total = sum(
            p.numel() for _, m in self._unique_interventions() for p in m.parameters() if p.requires_grad
        )
        if include_model:
            total += sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        return total

    def set_temperature(self, temp: Any) -> None:
        """Set the temperature of every intervention that has one (boundless, sigmoid mask)."""
        for _, module in self._unique_interventions():
            if hasattr(module, "set_temperature"):
                module.set_temperature(temp)

    def enable_model_gradients(self) -> None:
        """Unfreeze the wrapped model (and put it in train mode)."""
        self.model.train()
        for param in self.model.parameters():
            param.requires_grad_(True)
        self.model_has_grad = True

    def disable_model_gradients(self) -> None:
        """Freeze the wrapped model (and put it in eval mode). Done on construction."""
        self.model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.model_has_grad = False

    def disable_intervention_gradients(self) -> None:
        """Freeze every intervention's parameters."""
        for _, module in self._unique_interventions():
            for param in module.parameters():
                param.requires_grad_(False)

    def enable_intervention_gradients(self) -> None:
        """Unfreeze every intervention's parameters."""
        for _, module in self._unique_interventions():
            for param in module.parameters():
                param.requires_grad_(True)

    def set_device(self, device: Any, set_model: bool = True) -> "ParameterMixin":
        """Move the interventions (and the model, unless ``set_model=False``) to ``device``."""
        for _, module in self._unique_interventions():
            module.to(device)
        if set_model:
            self.model.to(device)
        return self

    def get_device(self) -> torch.device:
        """Device of the model's first parameter (CPU for a parameterless model)."""
        for param in self.model.parameters():
            return param.device
        return torch.device("cpu")

    def zero_grad(self, set_to_none: bool = True) -> None:  # type: ignore[override]
        """Clear the gradients of the interventions (and of the model)."""
        for _, module in self._unique_interventions():
            module.zero_grad(set_to_none=set_to_none)
        self.model.zero_grad(set_to_none=set_to_none)

    set_zero_grad = zero_grad
