"""``generate_with_cache``: ``model.generate`` with every fed token's activations cached, step by step.

Each forward call of ``generate`` feeds new positions: the prefill feeds the prompt, each decode
step one generated token (with the key/value cache) or the whole sequence again (``use_cache=False``,
of which only the new last position is kept). The kept slices are concatenated along ``seq``, so the
cache covers positions ``0..T-2`` of the returned sequence ``[batch, T]`` (the last generated token is
never fed), as a teacher-forced ``run_with_cache`` of ``sequences[:, :-1]`` would. ``cache.prompt_length``
tells the prompt from the generated tokens; ``cache.step(j)`` is the cache of forward call ``j`` alone
(0: the prefill; ``j >= 1``: generated token ``j - 1``, at position ``prompt_length + j - 1``).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..hooks import HookSet
from ..inputs import check_batched
from ..engine import read_input
from ..sites.site import extract
from .request import CacheSite, Key, resolve_sites
from .run import Recorder, _check_model, _check_reached
from .store import ActivationCache


class StepCache(ActivationCache):
    """A generation's cache: positions ``0..T-2`` of the generated sequences, plus where each step starts."""

    def __init__(self, values: Dict[Key, torch.Tensor], model: nn.Module, prompt_length: int,
                 step_lengths: List[int]) -> None:
        super().__init__(values, model, torch.arange(sum(step_lengths)))
        self.prompt_length = prompt_length
        self.step_lengths = step_lengths

    def step(self, j: int) -> ActivationCache:
        """The activations of forward call ``j`` alone (0: the prefill, ``j >= 1``: generated token ``j - 1``)."""
        n = len(self.step_lengths)
        if not -n <= j < n:
            raise InputError(f"step {j} is out of range: this generation made {n} forward calls (0: the prefill).")
        j %= n
        start = sum(self.step_lengths[:j])
        idx = torch.arange(start, start + self.step_lengths[j])
        return ActivationCache({k: v.narrow(1, start, len(idx)) for k, v in self._values.items()}, self.model, idx)


def _fed_length(args: tuple, kwargs: dict) -> int:
    for value in (kwargs.get("input_ids"), kwargs.get("inputs_embeds"), args[0] if args else None):
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    raise InputError("generate_with_cache could not read how many positions a forward call fed (no input_ids or "
                     "inputs_embeds): this model's generate loop is not supported.")


def generate_with_cache(model: nn.Module, inputs: Any, components: Optional[Sequence[str]] = None, layers: Any = None,
                        heads: Any = None, *, dtype: Optional[torch.dtype] = None, device: Any = None,
                        **generate_kwargs: Any) -> Tuple[Any, StepCache]:
    """``model.generate(**inputs, **generate_kwargs)`` with the activations of every fed token cached.

    Returns ``(generate's output, cache)``; the cache is ``[batch, T - 1, ...]`` per site (see the
    module docstring), equal to ``run_with_cache(model, sequences[:, :-1])``. Beam search (rows
    reordered between steps) and attention weights (a key axis that grows) are refused.
    """
    _check_model(model)
    if int(generate_kwargs.get("num_beams", 1) or 1) > 1:
        raise ConfigError("generate_with_cache does not follow beams (their rows are reordered every step): "
                          "generate with num_beams=1, then run_with_cache on the chosen sequences.")
    ids = inputs.get("input_ids") if isinstance(inputs, dict) or hasattr(inputs, "keys") else inputs
    check_batched(inputs, model, "generate_with_cache")
    sites = resolve_sites(model, components, layers)
    weights = [cs.key for cs in sites if cs.bhsd]
    if weights:
        raise ConfigError(f"generate_with_cache cannot concatenate attention weights across steps ({weights}): "
                          "run_with_cache on the generated sequences reads them.")
    recorder = Recorder(sites, None, heads, dtype, device)
    parts: Dict[Key, List[torch.Tensor]] = {cs.key: [] for cs in sites}
    steps: List[int] = []
    current: Dict[Key, torch.Tensor] = {}

    def on_call(module, args, kwargs):
        fed = _fed_length(args, kwargs)
        seen = sum(steps)
        if seen and fed not in (1, seen + 1):
            raise InputError(f"A generation step fed {fed} positions after {seen}: only one new token per step "
                             "(with or without the key/value cache) is supported.")
        keep = fed if not seen else 1
        steps.append(keep)
        for cs in sites:
            if cs.key in current:
                parts[cs.key].append(current.pop(cs.key))
        state["keep"] = keep

    state: Dict[str, int] = {"keep": 0}

    def reading(cs: CacheSite):
        site = cs.site
        if site.hook == "input":
            def pre(module, args, kwargs):
                current[cs.key] = recorder.select(cs, read_input(site, args, kwargs), keep_last=state["keep"])
            return pre

        def post(module, args, kwargs, output):
            current[cs.key] = recorder.select(cs, extract(site, output), keep_last=state["keep"])
        return post

    with HookSet() as hooks, torch.no_grad():
        hooks.add(model, "input", on_call, prepend=True)
        for cs in sites:
            hooks.add(cs.site.module, cs.site.hook, reading(cs))
        if isinstance(inputs, dict) or hasattr(inputs, "keys"):
            generated = model.generate(**inputs, **generate_kwargs)
        else:
            generated = model.generate(inputs, **generate_kwargs)
    for key, value in current.items():
        parts[key].append(value)
    _check_reached(sites, {k: v[0] for k, v in parts.items() if v})
    values = {cs.key: torch.cat(parts[cs.key], dim=cs.seq_dim) for cs in sites}
    prompt = int(ids.shape[1]) if isinstance(ids, torch.Tensor) else steps[0]
    return generated, StepCache(values, model, prompt, steps)
