"""Training and evaluating interventions: interchange intervention training (IIT / DAS).

``train_alignment(pv_model, loader, compute_loss, compute_metrics)`` trains the
interventions of an ``IntervenableModel`` on counterfactual batches (as made by
``CausalModel.generate_counterfactual_dataset``) with Adam and a linear
warm-up/decay schedule, lowering the temperature of boundless / sigmoid-mask
interventions from 50 to 0.1 over training. ``eval_alignment`` averages a metric
over a loader. The base model stays frozen: only ``get_trainable_parameters()``
are optimised.

A batch is a dict with ``input_ids`` (base), ``source_input_ids`` (``[batch,
n_sources, ...]`` or ``[batch, ...]``), ``labels``, and optionally
``subspaces``, ``unit_locations`` or the reference's location keys
(``"source_0->base.0.pos"``, ``"source_0->base.1.pos"``).
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

from .errors import InputError


def _as_model_input(model: torch.nn.Module, value: Any) -> Any:
    """``{"input_ids": x}`` for models whose forward takes ``input_ids``; the tensor itself otherwise."""
    if isinstance(value, Mapping):
        return value
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        params = {}
    if "input_ids" in params:
        return {"input_ids": value}
    return value


def batch_unit_locations(pv_model: Any, inputs: Mapping) -> Optional[Dict[str, Any]]:
    """Unit locations of a batch: ``inputs["unit_locations"]``, the reference's
    ``"source_{i}->base.{0|1}.{unit}"`` keys (parallel mode), or None (every unit)."""
    if "unit_locations" in inputs:
        return inputs["unit_locations"]
    if not any("->" in str(k) for k in inputs):
        return None
    left: List[Any] = []
    right: List[Any] = []
    for i, rep in enumerate(pv_model.representations.values()):
        prefix = f"source_{i}->base"
        parts = rep.unit.split(".")
        try:
            lhs = [inputs[f"{prefix}.0.{p}"] for p in parts]
            rhs = [inputs[f"{prefix}.1.{p}"] for p in parts]
        except KeyError as exc:
            raise InputError(
                f"The batch has reference-style location keys but lacks {exc.args[0]!r}; give "
                f"'{prefix}.0.<unit>' (source) and '{prefix}.1.<unit>' (base) for every intervention."
            ) from None
        left.append(lhs[0] if len(parts) == 1 else lhs)
        right.append(rhs[0] if len(parts) == 1 else rhs)
    as_lists = lambda xs: [x.tolist() if isinstance(x, torch.Tensor) else x for x in xs]
    return {"sources->base": (as_lists(left), as_lists(right))}


def intervened_forward(pv_model: Any, inputs: Mapping) -> Any:
    """One interchange forward of a batch; returns the intervened outputs."""
    if "input_ids" not in inputs or "source_input_ids" not in inputs:
        raise InputError("A training batch needs 'input_ids' (base) and 'source_input_ids' (sources).")
    base_ids = inputs["input_ids"]
    src = inputs["source_input_ids"]
    n_groups = len(pv_model.groups)
    if isinstance(src, torch.Tensor) and isinstance(base_ids, torch.Tensor) and src.dim() == base_ids.dim() + 1:
        sources = [src[:, g] for g in range(min(n_groups, src.shape[1]))]
    else:
        sources = [src]
    base = _as_model_input(pv_model.model, base_ids)
    sources = [_as_model_input(pv_model.model, s) for s in sources]
    _, out = pv_model(base, sources, batch_unit_locations(pv_model, inputs), subspaces=inputs.get("subspaces"))
    return out


def logits_of(outputs: Any) -> torch.Tensor:
    """``outputs.logits`` for Hugging Face outputs, the tensor itself otherwise."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if hasattr(outputs, "logits"):
        return outputs.logits
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise InputError(f"Cannot find logits in a {type(outputs).__name__}; return a tensor or an object with .logits.")


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int):
    """Linear warm-up to the base rate, then linear decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_alignment(
    pv_model: Any,
    train_dataloader: Iterable[Mapping],
    compute_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    compute_metrics: Optional[Callable[[List[torch.Tensor], List[torch.Tensor]], Any]] = None,
    inputs_collator: Optional[Callable[[Any], Mapping]] = None,
    *,
    lr: float = 1e-3,
    epochs: int = 10,
    warm_up_steps: float = 0.1,
    gradient_accumulation_steps: int = 1,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    temperature_start: float = 50.0,
    temperature_end: float = 0.1,
    extra_loss: Optional[Callable[[Any], torch.Tensor]] = None,
    **kwargs: Any,
) -> List[float]:
    """Train the interventions on counterfactual batches; returns the loss of every step.

    ``compute_loss(logits, labels)``; ``compute_metrics([logits], [labels])`` is
    only called for logging. ``extra_loss(pv_model)`` is added to the loss
    (e.g. a boundary-width penalty for boundless DAS).
    """
    loader = list(train_dataloader) if not hasattr(train_dataloader, "__len__") else train_dataloader
    total = max(1, len(loader) * int(epochs))
    warmup = int(warm_up_steps * total) if warm_up_steps < 1 else int(warm_up_steps)
    params = pv_model.get_trainable_parameters()
    if not params and optimizer is None:
        raise InputError("No trainable parameters: use a trainable intervention (e.g. RotatedSpaceIntervention).")
    optimizer = optimizer or torch.optim.Adam(params, lr=lr)
    scheduler = scheduler or linear_schedule(optimizer, warmup, total)
    temps = torch.linspace(temperature_start, temperature_end, total)
    pv_model.model.eval()  # no dropout in the frozen model
    losses: List[float] = []
    step = 0
    for _ in range(int(epochs)):
        for inputs in loader:
            if inputs_collator is not None:
                inputs = inputs_collator(inputs)
            logits = logits_of(intervened_forward(pv_model, inputs))
            loss = compute_loss(logits, inputs["labels"])
            if extra_loss is not None:
                loss = loss + extra_loss(pv_model)
            losses.append(float(loss.detach()))
            (loss / gradient_accumulation_steps).backward()
            if (step + 1) % gradient_accumulation_steps == 0:
                optimizer.step()
                scheduler.step()
                pv_model.zero_grad()
                pv_model.set_temperature(temps[min(step, total - 1)])
            step += 1
    return losses


def eval_alignment(
    pv_model: Any,
    eval_dataloader: Iterable[Mapping],
    compute_metrics: Callable[[List[torch.Tensor], List[torch.Tensor]], Any],
    inputs_collator: Optional[Callable[[Any], Mapping]] = None,
    **kwargs: Any,
) -> Any:
    """Example-weighted average of ``compute_metrics([logits], [labels])`` over the loader
    (a number, or a dict of numbers averaged key by key)."""
    values: List[Any] = []
    weights: List[int] = []
    with torch.no_grad():
        for inputs in eval_dataloader:
            if inputs_collator is not None:
                inputs = inputs_collator(inputs)
            logits = logits_of(intervened_forward(pv_model, inputs))
            values.append(compute_metrics([logits], [inputs["labels"]]))
            weights.append(int(logits.shape[0]))
    if not values:
        raise InputError("eval_alignment got an empty dataloader.")
    total = float(sum(weights))
    if isinstance(values[0], Mapping):
        return {k: sum(float(v[k]) * w for v, w in zip(values, weights)) / total for k in values[0]}
    return sum(float(v) * w for v, w in zip(values, weights)) / total


def collate(examples: List[Mapping]) -> Dict[str, Any]:
    """Stack a list of example dicts (as ``CausalModel`` makes them) into one batch."""
    batch: Dict[str, Any] = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else values
    return batch


def batches(examples: List[Mapping], batch_size: int) -> List[Dict[str, Any]]:
    """Consecutive batches of ``batch_size`` examples, collated."""
    return [collate(examples[i : i + batch_size]) for i in range(0, len(examples), batch_size)]
