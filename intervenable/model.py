"""``IntervenableModel``: wrap any PyTorch model and run it with interventions."""
from __future__ import annotations

import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .config import IntervenableConfig, RepresentationConfig, as_config
from .engine import CallPlan, CallState, Slot, add_setter, getter, setter
from .errors import ConfigError, InputError, SourceCountError, warn_user
from .hooks import HookSet
from .inputs import SharedSource, batch_size, call_model, last_real_positions, repeat_rows
from .interventions.base import Capabilities, Intervention
from .io import SerializationMixin
from .model_params import ParameterMixin
from .preflight import at_call_site, check_batches, check_call, check_partition
from .sites.resolve import resolve_component
from .sites.site import Site
from .slots import InterventionDict, build_intervention, place_on_site_device, representation_key
from .units import (Locations, expand_last, normalise_parallel, normalise_serial, normalise_serial_base_only,
                    normalise_subspaces, uses_last)

if TYPE_CHECKING:
    from .generation import GenerationPlan


@dataclass
class IntervenableModelOutput:
    """Outputs of an intervened forward (``return_dict=True``)."""

    original_outputs: Any = None
    intervened_outputs: Any = None
    collected_activations: Optional[List[torch.Tensor]] = None
    latents: Dict[str, Any] = field(default_factory=dict)


class IntervenableModel(SerializationMixin, ParameterMixin, nn.Module):
    """A model wrapped with interventions; itself an ``nn.Module``.

    ``IntervenableModel(config, model)`` where ``config`` is an
    ``IntervenableConfig``, a ``RepresentationConfig``, a dict or a list of
    them. The model's parameters are frozen (``disable_model_gradients``);
    call ``enable_model_gradients()`` to train them too. As in the reference,
    ``as_adaptor=True`` passes the hooked module's input (at the units) as
    ``args=``, plus its keyword arguments as ``kwargs=``; ``use_fast=True``
    applies row 0 of ``subspaces`` to the whole batch.
    """

    def __init__(self, config: Any, model: nn.Module, backend: str = "native", **kwargs: Any) -> None:
        super().__init__()
        self.as_adaptor = bool(kwargs.get("as_adaptor", False))
        self.use_fast = bool(kwargs.get("use_fast", False))
        self._warned_skipped: set = set()  # keys already named in a "did not run" warning
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
        self.config: IntervenableConfig = as_config(config)
        self.model = model
        self.mode = self.config.mode
        self.interventions = InterventionDict()
        self.representations: "OrderedDict[str, RepresentationConfig]" = OrderedDict()
        self.sites: "OrderedDict[str, Site]" = OrderedDict()
        self._slots: List[Slot] = []
        # key -> "link#<intervention_link_key>" for linked sites, as the reference names them
        # (pyreft's print_trainable_parameters counts a linked intervention once through it).
        self._intervention_reverse_link: Dict[str, str] = {}
        links: Dict[Any, nn.Module] = {}
        counter: Dict[str, int] = {}
        for i, rep in enumerate(self.config.representations):
            key = representation_key(rep, counter)
            site = resolve_component(model, rep.component, rep.layer, rep.moe_key)
            self._check_unit(rep, site)
            if rep.intervention_link_key is not None and rep.intervention_link_key in links:
                intervention = links[rep.intervention_link_key]
            else:
                intervention = build_intervention(self.config.intervention_spec(i), rep, site)
                check_partition(intervention, model, site, key)
                if isinstance(intervention, Intervention):
                    intervention.check_site(model, site)
                if rep.intervention_link_key is not None:
                    links[rep.intervention_link_key] = intervention
            if rep.intervention_link_key is not None:
                self._intervention_reverse_link[key] = f"link#{rep.intervention_link_key}"
            place_on_site_device(intervention, site)
            if self.use_fast and hasattr(intervention, "use_fast"):
                intervention.use_fast = True
            slot = Slot(key, i, site, rep.unit, intervention, rep, Capabilities.of(intervention), self.as_adaptor)
            if slot.caps.uses_module_input and isinstance(intervention, Intervention):
                slot.input_site = intervention.input_site(model, site)
            self._warn_head_pos(rep, site, slot)
            if not site.writable and not slot.is_collect:
                raise ConfigError(
                    f"{rep.component!r} at {site.describe()} can be read but not written (changing it does "
                    "not change the model's computation): use CollectIntervention there."
                )
            self.interventions[key] = intervention
            self.representations[key] = rep
            self.sites[key] = site
            self._slots.append(slot)
        self.sorted_keys: List[str] = [s.key for s in self._slots]
        self._intervention_group = self._build_groups()
        self.disable_model_gradients()

    # -- training (see training.py) ---------------------------------------------
    def train_alignment(self, train_dataloader: Any, compute_loss: Any, compute_metrics: Any = None,
                        inputs_collator: Any = None, **kwargs: Any) -> Any:
        """Interchange intervention training, as the reference's ``train_alignment``."""
        from .training import train_alignment

        return train_alignment(self, train_dataloader, compute_loss, compute_metrics, inputs_collator, **kwargs)

    def eval_alignment(self, eval_dataloader: Any, compute_metrics: Any, inputs_collator: Any = None, **kwargs: Any) -> Any:
        """Evaluate interchange interventions, as the reference's ``eval_alignment``."""
        from .training import eval_alignment

        return eval_alignment(self, eval_dataloader, compute_metrics, inputs_collator, **kwargs)

    # -- construction helpers ---------------------------------------------------
    @staticmethod
    def _check_unit(rep: RepresentationConfig, site: Site) -> None:
        if rep.unit in ("h", "h.pos") and not site.has_heads:
            raise ConfigError(
                f"Unit {rep.unit!r} selects attention heads, but {rep.component!r} has no head view. "
                "Use a head component (head_attention_value_output, head_query_output, ...) or unit 'pos'."
            )

    @staticmethod
    def _warn_head_pos(rep: RepresentationConfig, site: Site, slot: Slot) -> None:
        """A head component written at unit 'pos' patches every head there, silently: say so, and name the fix.

        (The reference reads 'pos' on a head view along its head axis.) Collects are left alone: what they
        return shows the heads.
        """
        if rep.unit == "pos" and site.has_heads and str(rep.component).startswith("head_") and not slot.is_collect:
            warn_user(
                f"{rep.component!r} is split into {site.n_heads} heads, but its unit is 'pos': the intervention "
                "covers every head at the given positions. To choose heads, set \"unit\": \"h\" (heads, every "
                "position) or \"unit\": \"h.pos\" (heads at positions, unit_locations [[heads], [positions]]); "
                "for every head at a position, use the component without 'head_' (e.g. 'attention_value_output')."
            )

    def _build_groups(self) -> "OrderedDict[Any, List[int]]":
        keys = [s.representation.group_key for s in self._slots]
        if all(k is None for k in keys):
            return OrderedDict((i, [i]) for i in range(len(self._slots)))
        if any(k is None for k in keys):
            raise ConfigError("When one representation has a group_key, every representation needs one.")
        groups: "OrderedDict[Any, List[int]]" = OrderedDict()
        for i, key in sorted(enumerate(keys), key=lambda item: (item[1], item[0])):
            groups.setdefault(key, []).append(i)
        return groups

    @property
    def is_model_stateless(self) -> bool:
        """False for the built-in unrolled GRU (a recurrent model), True otherwise, as in the reference."""
        gru = sys.modules.get("intervenable.models.gru")  # not imported: the model cannot be one of its classes
        recurrent = () if gru is None else (gru.GRUModel, gru.GRULMHeadModel, gru.GRUForClassification)
        return not isinstance(self.model, recurrent)

    @property
    def groups(self) -> List[List[str]]:
        """Keys of the interventions in each group, in group order."""
        return [[self._slots[i].key for i in members] for members in self._intervention_group.values()]

    @property
    def model_config(self) -> Any:
        """The wrapped model's ``config`` (None without one), as the reference's attribute of that name;
        tutorials read e.g. ``model_config.vocab_size`` in their losses."""
        return getattr(self.model, "config", None)

    def __str__(self) -> str:
        lines = [f"IntervenableModel(mode={self.mode!r}, model={type(self.model).__name__})"]
        for slot in self._slots:
            lines.append(f"  {slot.key}: {type(slot.intervention).__name__} at {slot.site.describe()} unit={slot.unit}")
        return "\n".join(lines)

    # -- inputs -----------------------------------------------------------------
    def _sources_per_group(self, sources: Optional[Sequence[Any]]) -> List[Any]:
        n = len(self._intervention_group)
        if sources is None:
            return [None] * n
        if not isinstance(sources, (list, tuple)):
            sources = [sources]
        sources = list(sources)
        if len(sources) == 1 and isinstance(sources[0], SharedSource):
            return [sources[0].source] * n  # one object: it runs once for every group
        if len(sources) != n:
            raise SourceCountError(
                f"Got {len(sources)} source{'s' if len(sources) != 1 else ''} for {n} intervention groups "
                f"(groups: {self.groups}): pass one source per group (None skips a group), or "
                "pv.SharedSource(source) to run every group on the same source."
            )
        return sources

    def _source_representations(self, given: Any) -> Dict[str, torch.Tensor]:
        if given is None:
            return {}
        if isinstance(given, torch.Tensor):
            return {key: given for key in self.sorted_keys}
        if isinstance(given, dict):
            unknown = [k for k in given if k not in self.representations]
            if unknown:
                raise InputError(
                    f"source_representations has unknown key {unknown[0]!r}; keys are {self.sorted_keys}."
                )
            return dict(given)
        if isinstance(given, (list, tuple)):
            if len(given) != len(self.sorted_keys):
                raise InputError(
                    f"source_representations lists {len(given)} tensors for {len(self.sorted_keys)} interventions."
                )
            return {key: value for key, value in zip(self.sorted_keys, given) if value is not None}
        raise InputError("source_representations must be a tensor, a list, or a dict keyed by intervention key.")

    def _model_kwargs(self, labels: Any, use_cache: Any) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {}
        if labels is not None:
            kwargs["labels"] = labels
        config = getattr(self.model, "config", None)
        if use_cache is not None and config is not None and hasattr(config, "use_cache"):
            kwargs["use_cache"] = use_cache
        return kwargs

    # -- forward ----------------------------------------------------------------
    @at_call_site
    def forward(
        self,
        base: Any,
        sources: Optional[Sequence[Any]] = None,
        unit_locations: Any = None,
        source_representations: Any = None,
        subspaces: Any = None,
        labels: Any = None,
        output_original_output: bool = False,
        return_dict: Optional[bool] = None,
        use_cache: Optional[bool] = None,
        intervention_additional_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Any:
        """Run ``base`` with the interventions; sources are run first to gather activations.

        Returns ``(original_or_None, intervened)``; with collect interventions
        ``((original_or_None, collected), intervened)``; with
        ``return_dict=True`` an ``IntervenableModelOutput``.
        """
        plan = self._plan(base, sources, unit_locations, source_representations, subspaces,
                          intervention_additional_kwargs)
        groups = list(self._intervention_group.values())
        check_call(self.model, self._slots, groups, self.mode, plan)  # before any forward
        model_kwargs = self._model_kwargs(labels, use_cache)
        original = call_model(self.model, base, model_kwargs) if output_original_output else None
        state = CallState()
        with HookSet() as hooks:
            self._install(hooks, state, plan)
            intervened = call_model(self.model, base, model_kwargs)
        return self._result(original, intervened, state, return_dict)

    def _plan(
        self,
        base: Any,
        sources: Optional[Sequence[Any]],
        unit_locations: Any,
        source_representations: Any,
        subspaces: Any,
        extra: Optional[Dict[str, Any]],
        generation: Optional["GenerationPlan"] = None,
    ) -> CallPlan:
        """Normalise one call's arguments into a ``CallPlan`` (batches checked before they are read)."""
        per_group = self._sources_per_group(sources)
        batch = check_batches(self.model, base, per_group)
        if uses_last(unit_locations):
            unit_locations = self._expand_last(unit_locations, base, per_group)
        return CallPlan(
            base=base,
            batch=batch,
            sources=per_group,
            unit_locations=unit_locations,
            locations=self._locations(unit_locations, per_group, batch),
            provided=self._source_representations(source_representations),
            subspaces=normalise_subspaces(subspaces, len(self._slots), batch),
            extra=extra,
            generation=generation,
        )

    def _expand_last(self, unit_locations: Any, base: Any, per_group: List[Any]) -> Any:
        """``"last"`` locations as each row's last real token: the base's rows, and each group's source's."""
        group_of = {i: g for g, members in enumerate(self._intervention_group.values()) for i in members}
        source_last = [None if per_group[group_of[i]] is None
                       else last_real_positions(per_group[group_of[i]], f"the source of group {group_of[i]}")
                       for i in range(len(self._slots))]
        return expand_last(unit_locations, [s.unit for s in self._slots], any(s is not None for s in per_group),
                           last_real_positions(base, "the base"), source_last)

    def _locations(self, unit_locations: Any, per_group: List[Any], batch: int) -> Any:
        """``unit_locations`` in the canonical form the mode reads (see ``CallPlan.locations``)."""
        units = [s.unit for s in self._slots]
        groups = list(self._intervention_group.values())
        has_sources = any(s is not None for s in per_group)
        if self.mode == "parallel":
            return normalise_parallel(unit_locations, units, batch, has_sources)
        if not has_sources:
            # No source runs to chain: every group acts on the base run, at its base locations
            # ({"base": ...} or the base side of the serial keys). The reference skips them all.
            return normalise_serial_base_only(unit_locations, groups, units, batch)
        return normalise_serial(unit_locations, groups, units, batch)

    def _install(self, hooks: HookSet, state: CallState, plan: CallPlan) -> None:
        """Run the sources (getters) and register the setters of one intervened call on ``hooks``."""
        run = self._parallel if self.mode == "parallel" else self._serial
        run(hooks, state, plan)

    def _result(self, original: Any, intervened: Any, state: CallState, return_dict: Optional[bool]) -> Any:
        collected = [state.collected[s.key] for s in self._slots if s.key in state.collected]
        has_collect = any(s.is_collect or s.caps.collects_latents for s in self._slots)
        if return_dict:
            return IntervenableModelOutput(original, intervened, collected if has_collect else None, state.latents)
        if has_collect:
            return (original, collected), intervened
        return original, intervened

    @at_call_site
    def generate(
        self,
        base: Any,
        sources: Optional[Sequence[Any]] = None,
        unit_locations: Any = None,
        source_representations: Any = None,
        intervene_on_prompt: bool = False,
        subspaces: Any = None,
        output_original_output: bool = False,
        intervention_additional_kwargs: Optional[Dict[str, Any]] = None,
        generation_steps: Any = "default",
        return_dict: Optional[bool] = None,
        **generate_kwargs: Any,
    ) -> Any:
        """``model.generate`` with the interventions applied; returns ``(original_or_None, generated)``.

        * ``intervene_on_prompt=False`` (default): intervene on generated tokens only
          (every one, unless ``generation_steps`` says otherwise); ``unit_locations``
          then only select the source units.
        * ``intervene_on_prompt=True``: intervene on the prompt positions given in
          ``unit_locations`` in the prefill, and on the generated tokens chosen by
          ``generation_steps`` (none by default, as in the reference). Without
          ``unit_locations``, every position of every forward call (prompt and
          each generated token), as in the reference.
        * ``generation_steps``: ``"all"``, ``None``, an int ``N`` (the first N
          generated tokens), a list of token indices, or a callable ``j -> bool``.

        Positions are positions of the (left-padded) prompt tensor; negative
        values count from its end. Every ``generate`` keyword (sampling, beams,
        ``max_new_tokens``, ``streamer``, ``return_dict_in_generate``, ...)
        passes through. Collect interventions return one tensor per forward call.
        """
        from .generation import GenerationPlan, generated_only_locations, prompt_length_of, step_selector

        check_batches(self.model, base, self._sources_per_group(sources))
        if generation_steps == "default":
            generation_steps = "all" if not intervene_on_prompt or unit_locations is None else None
        batch = batch_size(base)
        prompt_length = prompt_length_of(base)
        if not intervene_on_prompt:
            unit_locations = generated_only_locations(unit_locations)
        plan = GenerationPlan(prompt_length, batch, intervene_on_prompt, step_selector(generation_steps))
        original = self._generate(base, generate_kwargs) if output_original_output else None
        state = CallState(per_call=True)
        call = self._plan(base, sources, unit_locations, source_representations, subspaces,
                          intervention_additional_kwargs, plan)
        with HookSet() as hooks:
            self._install(hooks, state, call)
            hooks.add(self.model, "input", plan.on_model_call, prepend=True)
            generated = self._generate(base, generate_kwargs)
        return self._result(original, generated, state, return_dict)

    def _generate(self, base: Any, kwargs: Dict[str, Any]) -> Any:
        if isinstance(base, dict) or hasattr(base, "keys"):
            return self.model.generate(**base, **kwargs)
        return self.model.generate(base, **kwargs)

    def _source_for(self, slot: Slot, state: CallState, provided: Dict[str, torch.Tensor], store_key: str) -> Optional[torch.Tensor]:
        if slot.key in provided:
            value = provided[slot.key]
            return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
        return state.activations.get(store_key)

    def _missing_source(self, slot: Slot) -> InputError:
        return InputError(
            f"Intervention {slot.key} ({type(slot.intervention).__name__}) needs a source, but none was given: "
            "pass sources=[...] (one per group), source_representations={key: tensor}, or configure a "
            "constant 'source_representation'. For base-only interventions use e.g. ZeroIntervention."
        )

    def _parallel(self, hooks: HookSet, state: CallState, plan: CallPlan) -> None:
        per_group, provided = plan.sources, plan.provided
        locations: List[Locations] = plan.locations
        # One source forward per distinct source input; getters of every group that reads it.
        runs: "OrderedDict[int, Tuple[Any, List[int]]]" = OrderedDict()
        for g, members in enumerate(self._intervention_group.values()):
            source = per_group[g]
            wanted = [i for i in members if self._slots[i].reads_source and self._slots[i].key not in provided]
            if source is None or not wanted:
                continue
            runs.setdefault(id(source), (source, []))[1].extend(wanted)
        for source, members in runs.values():
            rows = plan.batch if batch_size(source) == 1 else None  # a 1-row source broadcasts over the base
            with HookSet() as source_hooks:
                for i in members:
                    slot = self._slots[i]
                    units = locations[i].source if locations[i].source is not None else locations[i].base
                    source_hooks.add(slot.site.module, slot.site.hook, getter(slot, units, state, rows=rows))
                call_model(self.model, source, {})
        self._install_setters(hooks, state, plan, locations)

    def _install_setters(self, hooks: HookSet, state: CallState, plan: CallPlan, locations: List[Locations]) -> None:
        """Setters of every group on the base run; groups without a source are skipped, as in the reference."""
        per_group = plan.sources
        has_sources = any(s is not None for s in per_group)
        skipped: List[str] = []
        for g, members in enumerate(self._intervention_group.values()):
            for i in members:
                slot = self._slots[i]
                src = self._source_for(slot, state, plan.provided, slot.key)
                if src is None and slot.needs_source:
                    if per_group[g] is None:
                        if not has_sources:
                            skipped.append(slot.key)  # no source at all: a run without it, with a warning
                        continue  # this group's source is None on purpose: skip it silently
                    raise self._missing_source(slot)
                add_setter(hooks, slot, setter(slot, locations[i].base, state, src, plan.subspaces[i], plan.extra,
                                               plan.generation), state)
        self._warn_skipped(skipped)

    def _warn_skipped(self, keys: List[str]) -> None:
        """Name, once per model, the interventions that did not run for want of a source."""
        new = [k for k in keys if k not in self._warned_skipped]
        self._warned_skipped.update(new)
        if new:
            warn_user(f"No sources and no source_representations were given, so these interventions did not run: "
                      f"{new}. As in the reference, the forward ran without them; pass sources=[...] or "
                      "source_representations=... to run them.")

    def _serial(self, hooks: HookSet, state: CallState, plan: CallPlan) -> None:
        per_group, provided = plan.sources, plan.provided
        groups = list(self._intervention_group.values())
        if all(s is None for s in per_group):  # base-only locations (see _locations)
            self._install_setters(hooks, state, plan, plan.locations)
            return
        locations = plan.locations
        active = HookSet()  # setters of the latest group, active during the next source run
        try:
            for g, members in enumerate(groups):
                source = per_group[g]
                if source is None:
                    continue  # no source for this group: skipped, as in the reference
                with HookSet() as source_hooks:
                    for j, i in enumerate(members):
                        slot = self._slots[i]
                        if slot.reads_source and slot.key not in provided:
                            source_hooks.add(slot.site.module, slot.site.hook, getter(slot, locations[g][j].source, state))
                    # the previous group's setters fire here; a 1-row source is repeated over the base's rows
                    call_model(self.model, repeat_rows(source, plan.batch) if batch_size(source) == 1 else source, {})
                active.remove()
                for j, i in enumerate(members):
                    slot = self._slots[i]
                    src = self._source_for(slot, state, provided, slot.key)
                    if src is None and slot.needs_source:
                        raise self._missing_source(slot)
                    add_setter(active, slot, setter(slot, locations[g][j].base, state, src, plan.subspaces[i],
                                                    plan.extra, plan.generation), state)
            hooks.absorb(active)  # the last group's setters act on the base run
        finally:
            active.remove()
