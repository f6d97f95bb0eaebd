"""Which positions an intervention touches in each forward call of ``model.generate``.

Generation runs the model many times: a prefill over the prompt, then one
decode step per new token (a forward of length 1 with the KV cache, or of the
whole sequence with ``use_cache=False``). ``GenerationPlan`` works in
*absolute* positions of the growing sequence, so both cases give the same
result:

* prompt positions (``intervene_on_prompt=True``) are the base
  ``unit_locations`` (positions of the padded prompt tensor; negative values
  count from the prompt's end, which is the same token for every row of a
  left-padded batch), or every prompt position when none are given;
* generated token ``j`` sits at absolute position ``P + j`` (``P`` the prompt
  length) and is intervened on when ``steps(j)`` is true. Token ``j`` is the
  input of decode step ``j``, so the intervention changes the model's state
  from that token on (the token itself was already chosen).

Every forward call sees the window ``[start, start + L)`` of absolute
positions, with ``start = P + call_index - L``; the plan returns the
positions inside the window, relative to it. Beam search and
``num_return_sequences`` repeat each row; indices and sources are repeated
to match.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Union

import torch

from .errors import InputError, LocationError
from .units import Units

StepSelector = Union[None, str, int, Iterable[int], Callable[[int], bool]]


def step_selector(steps: StepSelector) -> Callable[[int], bool]:
    """Normalise ``generation_steps``: None (none), "all", N (first N), a set of steps, or a callable."""
    if steps is None:
        return lambda j: False
    if isinstance(steps, str):
        if steps != "all":
            raise InputError(f"generation_steps={steps!r}: use 'all', an int N (the first N), a list of steps, or a callable.")
        return lambda j: True
    if isinstance(steps, bool):
        return (lambda j: True) if steps else (lambda j: False)
    if isinstance(steps, int):
        return lambda j: j < steps
    if callable(steps):
        return lambda j: bool(steps(j))
    chosen = {int(s) for s in steps}
    return lambda j: j in chosen


def _input_length(args: tuple, kwargs: dict) -> int:
    for name in ("input_ids", "inputs_embeds", "decoder_input_ids"):
        value = kwargs.get(name)
        if isinstance(value, torch.Tensor):
            return int(value.shape[1])
    for value in args:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return int(value.shape[1])
    raise InputError("Cannot tell the length of a generation step: the model was called without input_ids or inputs_embeds.")


@dataclass
class GenerationPlan:
    """Absolute-position schedule of the interventions during one ``generate`` call."""

    prompt_length: int
    batch: int
    intervene_on_prompt: bool
    steps: Callable[[int], bool]
    call_index: int = -1
    window_start: int = 0
    window_length: int = 0
    collected_per_call: bool = True
    _prompt_positions: dict = field(default_factory=dict)

    # -- driven by a forward pre-hook on the wrapped model ---------------------
    def on_model_call(self, module: Any, args: tuple, kwargs: dict) -> None:
        self.call_index += 1
        length = _input_length(args, kwargs)
        self.window_length = length
        self.window_start = self.prompt_length + self.call_index - length
        if self.window_start < 0:
            raise InputError(
                "Unexpected generation call: a step longer than the sequence so far. Generation strategies "
                "that call the model several times per token (assisted decoding) are not supported."
            )

    # -- used by setters ---------------------------------------------------------
    def prompt_positions(self, units: Units) -> Optional[torch.Tensor]:
        """Absolute prompt positions ``[batch, n]`` of ``units`` (None = the whole prompt)."""
        key = id(units)
        if key not in self._prompt_positions:
            positions = units.positions
            if positions is not None:
                bad = (positions < -self.prompt_length) | (positions >= self.prompt_length)
                if bool(bad.any()):
                    raise LocationError(
                        f"Position {int(positions[bad][0])} is outside the prompt of length {self.prompt_length}. "
                        "In generate, unit_locations address prompt positions (negative values count from the "
                        "prompt's end)."
                    )
                positions = torch.where(positions < 0, positions + self.prompt_length, positions)
            self._prompt_positions[key] = positions
        return self._prompt_positions[key]

    def units_for_call(self, units: Units, rows: int) -> Optional[Units]:
        """Units of this call's window, relative to it; None when nothing is intervened on."""
        start, length = self.window_start, self.window_length
        repeat = rows // self.batch if rows % self.batch == 0 else None
        if repeat is None:
            raise InputError(f"A generation step has {rows} rows, not a multiple of the batch of {self.batch}.")
        parts: List[torch.Tensor] = []
        if self.intervene_on_prompt and start < self.prompt_length:
            prompt = self.prompt_positions(units)
            if prompt is None:
                prompt = torch.arange(self.prompt_length).expand(self.batch, -1)
            inside = (prompt >= start) & (prompt < start + length)
            if bool(inside.any()):
                if not bool(inside.all()):
                    raise LocationError(
                        "Prompt positions span two forward calls of generate; this happens only with chunked "
                        "prefill, which is not supported."
                    )
                parts.append(prompt - start)
        generated = [
            p - start
            for p in range(max(start, self.prompt_length), start + length)
            if self.steps(p - self.prompt_length)
        ]
        if generated:
            parts.append(torch.tensor(generated, dtype=torch.long).expand(self.batch, -1))
        if not parts:
            return None
        positions = torch.cat(parts, dim=1)
        heads = units.heads
        if repeat > 1:
            positions = positions.repeat_interleave(repeat, dim=0)
            heads = None if heads is None else heads.repeat_interleave(repeat, dim=0)
        return Units(positions=positions, heads=heads)

    def source_for_call(self, source: Optional[torch.Tensor], call_units: Units, rows: int,
                        every_position: bool = False) -> Optional[torch.Tensor]:
        """The source units for ``call_units``: as gathered when the counts match, or one unit broadcast.

        ``every_position``: the intervention applies at every position (no base positions were
        given) and the source was read at every position of the source input; each intervened
        position then reads the source at the same absolute position, and generated tokens past the
        source's end read its last position.
        """
        if source is None or source.dim() < 2:
            return source
        repeat = rows // self.batch
        if source.shape[0] == self.batch and repeat > 1:
            source = source.repeat_interleave(repeat, dim=0)
        pos_dim = source.dim() - 2  # [b, n, d] -> 1; [b, h, n, d] -> 2
        n_call = call_units.positions.shape[1]
        n_src = source.shape[pos_dim]
        if n_src == n_call and not every_position:
            return source
        if n_src == 1:
            return source  # broadcast over every intervened position
        if every_position:
            absolute = (call_units.positions[0] + self.window_start).clamp(max=n_src - 1).to(source.device)
            return source.index_select(pos_dim, absolute)
        raise LocationError(
            f"The source gives {n_src} units but this generation step intervenes on {n_call} positions: "
            "give one source unit per intervened prompt position, or a single unit to apply at every position."
        )


def prompt_length_of(base: Any) -> int:
    """The prompt length of a ``generate`` input (``input_ids`` / ``inputs_embeds`` or a 2-D tensor)."""
    for name in ("input_ids", "inputs_embeds"):
        value = base.get(name) if hasattr(base, "get") else None
        if isinstance(value, torch.Tensor):
            return int(value.shape[1])
    if isinstance(base, torch.Tensor) and base.dim() >= 2:
        return int(base.shape[1])
    raise InputError("generate needs input_ids or inputs_embeds in the base input.")


def generated_only_locations(unit_locations: Any) -> Any:
    """Without prompt interventions, base positions are the new tokens: only 0 (the reference's form) is accepted."""
    if unit_locations is None or not isinstance(unit_locations, dict):
        return unit_locations if unit_locations is None else {"sources->base": (unit_locations, None)}
    if "base" in unit_locations:
        value = unit_locations["base"]
        if value not in (0, [0], [[[0]]]):
            raise InputError(
                "With intervene_on_prompt=False the interventions act on each generated token, so base "
                "positions cannot be chosen. To intervene on prompt positions pass intervene_on_prompt=True."
            )
        return None
    return unit_locations
