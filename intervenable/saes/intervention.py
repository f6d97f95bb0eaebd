"""``SAEIntervention``: an SAE (or transcoder) spliced into the model at its site, with its error term.

At each intervened unit the activation ``x`` is encoded, ``z = encode(x)``; the
latents are edited (``ablate``: set to 0, ``clamp``: set to a value, ``steer``:
a value added, a source: the chosen latents taken from the source run's
``encode``), and the activation becomes

* ``x + decode(z') - decode(z)`` with ``keep_error=True`` (the default): the
  reconstruction of the edited latents plus the SAE's error ``x - decode(z)``,
  so the model is unchanged when nothing is edited;
* ``decode(z')`` with ``keep_error=False``: the SAE replaces the activation
  (its reconstruction error then changes the model's output).

A transcoder sits at its output site (what an MLP adds to the stream, or its raw
output) and reads the MLP's own input (``sites.residual.mlp_input``: in Gemma 2
and OLMo 2 another module's, whose input the engine keeps for it); its error node
is the written value minus the transcoder's prediction. The (edited) latents of every call are reported in
``collected_activations`` and ``IntervenableModelOutput.latents`` (a list with one
entry per forward call in ``generate``).
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError, InputError
from ..interventions.base import Intervention, InterventionOutput, register_intervention
from ..interventions.subspaces import subspace_mask
from ..sites.site import Site
from .sae import SAE

Latents = Union[None, int, Iterable[int]]


def _ids(value: Latents, d_sae: int, name: str) -> List[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    ids = [int(value)] if isinstance(value, int) else [int(v) for v in value]
    bad = [i for i in ids if not -d_sae <= i < d_sae]
    if bad:
        raise InputError(f"{name}: latent {bad[0]} is out of range for an SAE of {d_sae} latents (0..{d_sae - 1}).")
    return [i % d_sae for i in ids]


def _values(value: Optional[Mapping[int, float]], d_sae: int, name: str) -> Dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(f"{name} must be a dict {{latent: value}}; got {type(value).__name__}.")
    ids = _ids(list(value), d_sae, name)
    return {i: float(v) for i, v in zip(ids, value.values())}


@register_intervention("SAEIntervention")
class SAEIntervention(Intervention):
    """Splice ``sae`` at its site with its error term; optionally ablate, clamp, steer or patch latents.

    ``ablate``: latents set to 0; ``clamp``: ``{latent: value}``; ``steer``: ``{latent: strength}`` added
    to the latent (``strength * W_dec[latent]`` added to the activation); ``latents``: which latents a
    source replaces (default all; per call, ``subspaces`` choose them per batch row); ``keep_error``:
    see the module docstring. ``save_weights``: a saved model stores the SAE's weights (True) or
    only where it was loaded from (False; the default when ``sae.reference`` is known).
    The site is ``sae.layer`` / ``sae.component`` unless ``layer`` / ``component`` are given.
    """

    flatten_units = False

    def __init__(self, sae: Any = None, ablate: Latents = None, clamp: Optional[Mapping[int, float]] = None,
                 steer: Optional[Mapping[int, float]] = None, keep_error: bool = True, latents: Latents = None,
                 save_weights: Optional[bool] = None, layer: Optional[int] = None,
                 component: Optional[str] = None, **kwargs: Any) -> None:
        kwargs.pop("embed_dim", None)
        super().__init__(**kwargs)
        sae = _as_sae(sae)
        self.save_weights = bool(sae.reference is None) if save_weights is None else bool(save_weights)
        if not self.save_weights and sae.reference is None:
            raise ConfigError("save_weights=False needs an SAE loaded with pv.load_sae (its reference names the file).")
        if self.save_weights:
            self.sae = sae
        else:
            object.__setattr__(self, "sae", sae)  # not a submodule: its weights stay out of state_dict
        self.embed_dim = sae.d_out
        self.layer = sae.layer if layer is None else int(layer)
        self.component = sae.component if component is None else str(component)
        self.keep_error = bool(keep_error)
        self.ablate, self.clamp, self.steer, self.latents = ablate, clamp, steer, latents
        self.uses_module_input = sae.is_transcoder  # a transcoder reads the MLP's input (input_site)
        if sae.is_transcoder:
            _check_transcoder_site(sae, self.layer, self.component)

    # -- the edits: properties, so that a change after construction is checked and saved ----------
    @property
    def ablate(self) -> List[int]:
        """Latents set to 0."""
        return self._ablate

    @ablate.setter
    def ablate(self, value: Latents) -> None:
        self.__dict__["_ablate"] = _ids(value, self.sae.d_sae, "ablate")

    @property
    def clamp(self) -> Dict[int, float]:
        """``{latent: value}``: latents set to a value."""
        return self._clamp

    @clamp.setter
    def clamp(self, value: Optional[Mapping[int, float]]) -> None:
        self.__dict__["_clamp"] = _values(value, self.sae.d_sae, "clamp")

    @property
    def steer(self) -> Dict[int, float]:
        """``{latent: strength}``: added to the latents."""
        return self._steer

    @steer.setter
    def steer(self, value: Optional[Mapping[int, float]]) -> None:
        self.__dict__["_steer"] = _values(value, self.sae.d_sae, "steer")

    @property
    def latents(self) -> Optional[List[int]]:
        """Latents a source replaces (None: all)."""
        return self._latents

    @latents.setter
    def latents(self, value: Latents) -> None:
        self.__dict__["_latents"] = _ids(value, self.sae.d_sae, "latents") or None

    # -- declarations read by the engine ------------------------------------------------
    @property
    def needs_source(self) -> bool:
        return False

    @property
    def reads_source(self) -> bool:
        return not self.sae.is_transcoder

    collects_latents = True  # the latents are reported in collected_activations while the output is written

    # -- where ------------------------------------------------------------------------
    def as_representation(self) -> Dict[str, Any]:
        """The representation dict that places this intervention at its SAE's site."""
        if not self.component:
            from .hook_names import SITE_HINT

            raise ConfigError(f"The SAE does not say where it acts (no hook_name in its metadata): {SITE_HINT}.")
        rep: Dict[str, Any] = {"component": self.component, "intervention": self}
        if self.layer is not None:
            rep["layer"] = self.layer
        return rep

    # -- the computation ----------------------------------------------------------------
    def edits(self) -> bool:
        return bool(self.ablate or self.clamp or self.steer)

    def edit(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` with ``ablate``, ``clamp`` and ``steer`` applied (a copy when anything changes)."""
        if not self.edits():
            return z
        z = z.clone()
        if self.ablate:
            z[..., self.ablate] = 0
        for i, v in self.clamp.items():
            z[..., i] = v
        for i, v in self.steer.items():
            z[..., i] = z[..., i] + v
        return z

    def input_site(self, model: nn.Module, site: Any) -> Optional[Any]:
        """A transcoder reads its MLP's own input (None where that is the hooked module's input)."""
        if not self.sae.is_transcoder:
            return None
        reads = transcoder_reads(model, self.sae, site, "This SAEIntervention")
        return None if reads.module is site.module else reads

    def forward(self, base: torch.Tensor, source: Optional[torch.Tensor] = None, subspaces: Any = None, **kwargs: Any):
        sae = self.sae
        reads = source if sae.is_transcoder else base
        if sae.is_transcoder and reads is None:
            raise ConfigError("A transcoder reads its MLP's input: place it at the MLP's output "
                              "(SAEIntervention(transcoder) does so from its metadata).")
        z, norm = sae.encode_with_norm(reads)
        new = z
        source_units = None if sae.is_transcoder else self._source(source)
        if source_units is not None:
            z_src = sae.encode(source_units.to(device=base.device))
            new = self._swap(z, torch.broadcast_to(z_src, z.shape), subspaces)
        elif subspaces is not None:
            raise InputError("SAEIntervention: subspaces choose which latents a source replaces, but no source was "
                             "given. Pass sources=[...], or use ablate= / clamp= / steer= for edits without one.")
        new = self.edit(new)
        if new is z and self.keep_error:
            out = base  # nothing edited: the model runs exactly as without the SAE
        elif self.keep_error:
            out = base + sae.decode_change(new - z, norm).to(base.dtype)
        else:
            out = sae.decode(new, norm)
            skip = sae.skip(reads)
            out = (out if skip is None else out + skip).to(base.dtype)
        return InterventionOutput(output=out, latent=new)

    def _swap(self, z: torch.Tensor, z_src: torch.Tensor, subspaces: Any) -> torch.Tensor:
        if subspaces is not None:
            return torch.where(subspace_mask(subspaces, None, z, self.use_fast), z_src, z)
        if self.latents is None:
            return z_src
        out = z.clone()
        out[..., self.latents] = z_src[..., self.latents]
        return out

    # -- devices and saving ----------------------------------------------------------------
    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> "SAEIntervention":
        super()._apply(fn, *args, **kwargs)
        if "sae" not in self._modules:
            self.sae._apply(fn, *args, **kwargs)
        return self

    def config_dict(self) -> Dict[str, Any]:
        """Constructor arguments as JSON data: the SAE by reference, or its settings and sizes (weights saved)."""
        sae = self.sae
        if self.save_weights:
            spec: Dict[str, Any] = {"settings": sae.settings(), "d_in": sae.d_in, "d_sae": sae.d_sae, "d_out": sae.d_out,
                                    "reference": sae.reference}
        else:
            spec = {"reference": sae.reference}
        return {"sae": spec, "ablate": list(self.ablate), "clamp": {str(k): v for k, v in self.clamp.items()},
                "steer": {str(k): v for k, v in self.steer.items()}, "keep_error": self.keep_error,
                "latents": self.latents, "save_weights": self.save_weights, "layer": self.layer,
                "component": self.component}


def _as_sae(spec: Any) -> SAE:
    """An ``SAE`` from an ``SAE``, or from the JSON a saved ``SAEIntervention`` wrote."""
    if isinstance(spec, SAE):
        return spec
    if isinstance(spec, Mapping) and "settings" in spec:
        d_in, d_sae, d_out = int(spec["d_in"]), int(spec["d_sae"]), int(spec["d_out"])
        settings = dict(spec["settings"])
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_out), "b_enc": (d_sae,), "b_dec": (d_out,),
                  "threshold": (d_sae,), "b_gate": (d_sae,), "r_mag": (d_sae,), "b_mag": (d_sae,),
                  "W_skip": (d_out, d_in)}
        return SAE.from_weights({k: torch.zeros(s) for k, s in shapes.items()}, settings,
                                reference=spec.get("reference"))  # the weights follow from the saved state
    if isinstance(spec, Mapping) and "reference" in spec:
        from .loading import load_sae_from_reference

        return load_sae_from_reference(spec["reference"])
    raise ConfigError(f"SAEIntervention needs an SAE (pv.load_sae(...)); got {type(spec).__name__}.")


def transcoder_reads(model: nn.Module, sae: SAE, site: Site, where: str) -> Site:
    """The ``Site`` (hook "input") a transcoder written at ``site`` reads: the MLP's own input of its layer
    (``sites.residual.mlp_input``), as ``site``'s module's own input where it is that module's (and for a raw
    module path, where the user placed it). ``ConfigError`` when its width is not the transcoder's ``d_in``."""
    from ..sites.residual import mlp_input

    own = Site(module=site.module, module_path=site.module_path, hook="input", component=site.component + ":input",
               layer=site.layer, width=sae.d_in)
    if site.layer is None:
        return own
    reads = mlp_input(model, site.layer)
    if reads.width is not None and reads.width != sae.d_in:
        raise ConfigError(f"{where} is a transcoder reading vectors of width {sae.d_in}, but the MLP input it reads "
                          f"({reads.describe()}) has width {reads.width}: check its layer against the model.")
    return own if reads.module is site.module else reads


def _check_transcoder_site(sae: SAE, layer: Optional[int], component: Optional[str]) -> None:
    """A transcoder is placed at an MLP's output and reads that MLP's input (the engine's module input)."""
    if component not in ("mlp_output", "mlp_residual") or sae.input_component not in (None, "mlp_input") or (
            sae.input_layer is not None and sae.input_layer != layer):
        raise ConfigError(
            f"This transcoder reads {sae.hook_name!r} and writes {sae.hook_name_out!r}; we splice transcoders that "
            "read an MLP's input and write that MLP's output (hook names blocks.L.ln2.hook_normalized -> "
            "blocks.L.hook_mlp_out). Give layer=L, component='mlp_output' if that is where it belongs."
        )
