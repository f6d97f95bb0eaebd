"""``SAE``: a sparse autoencoder or transcoder with SAELens's and Gemma Scope's encode / decode maths.

One module for every architecture SAELens saves (``standard``, ``topk``,
``jumprelu``, ``gated``, ``transcoder``, ``skip_transcoder``,
``jumprelu_transcoder``, ``jumprelu_skip_transcoder``) and for Gemma Scope's ``params.npz`` (a JumpReLU SAE
that does not subtract ``b_dec`` from its input):

* ``encode(x)``: ``x`` normalised as ``normalize_activations`` says
  (``constant_norm_rescale``: scaled to norm ``sqrt(d_in)``; ``layer_norm``:
  centred and divided by the standard deviation), minus ``b_dec`` when
  ``apply_b_dec_to_input``, then ``pre = x W_enc + b_enc`` and the
  architecture's activation (ReLU; the top ``k`` of ``pre``, ReLU'd; ReLU of
  ``pre`` where ``pre > threshold``; a gate ``x W_enc + b_gate > 0`` times
  ``relu(x (W_enc * exp(r_mag)) + b_mag)``);
* ``decode(z)``: ``z W_dec + b_dec``, the input's normalisation undone (SAEs
  only, as in SAELens); ``forward(x)`` adds ``x W_skip^T`` for skip
  transcoders.

Where it acts comes from its metadata: ``layer`` and ``component`` (where it
writes, and for an SAE where it reads), ``input_layer`` / ``input_component``
(where a transcoder reads). ``reference`` says where it was loaded from, so a
saved intervention can name it instead of copying its weights.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError, ShapeError

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated", "transcoder", "skip_transcoder", "jumprelu_transcoder",
                 "jumprelu_skip_transcoder")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
#: parameters of each architecture beyond W_enc, W_dec, b_dec
_EXTRA = {
    "standard": ("b_enc",), "topk": ("b_enc",), "jumprelu": ("b_enc", "threshold"),
    "gated": ("b_gate", "r_mag", "b_mag"), "transcoder": ("b_enc",), "skip_transcoder": ("b_enc", "W_skip"),
    "jumprelu_transcoder": ("b_enc", "threshold"), "jumprelu_skip_transcoder": ("b_enc", "threshold", "W_skip"),
}

Norm = Optional[Tuple[torch.Tensor, torch.Tensor]]  # (scale, shift) of the input: x_n = (x - shift) * scale


class SAE(nn.Module):
    """A sparse autoencoder (or transcoder) with its weights, its maths and its site.

    Build one with ``pv.load_sae`` (SAELens folders, Gemma Scope ``params.npz``, the hub),
    or directly from tensors: ``SAE(W_enc, W_dec, b_enc=..., b_dec=..., threshold=...,
    architecture="jumprelu")``. ``W_enc`` is ``[d_in, d_sae]``, ``W_dec`` ``[d_sae, d_out]``.
    """

    def __init__(self, W_enc: torch.Tensor, W_dec: torch.Tensor, *, architecture: str = "standard",
                 b_enc: Optional[torch.Tensor] = None, b_dec: Optional[torch.Tensor] = None,
                 threshold: Optional[torch.Tensor] = None, b_gate: Optional[torch.Tensor] = None,
                 r_mag: Optional[torch.Tensor] = None, b_mag: Optional[torch.Tensor] = None,
                 W_skip: Optional[torch.Tensor] = None, k: Optional[int] = None,
                 apply_b_dec_to_input: Optional[bool] = None, normalize_activations: str = "none",
                 rescale_acts_by_decoder_norm: bool = False, layer: Optional[int] = None,
                 component: Optional[str] = None, input_layer: Optional[int] = None,
                 input_component: Optional[str] = None, hook_name: Optional[str] = None,
                 hook_name_out: Optional[str] = None, reference: Optional[Dict[str, Any]] = None,
                 metadata: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ConfigError(f"Unknown SAE architecture {architecture!r}: use one of {', '.join(ARCHITECTURES)}.")
        if normalize_activations not in NORMALIZATIONS:
            raise ConfigError(f"Unknown normalize_activations {normalize_activations!r}: use one of "
                              f"{', '.join(NORMALIZATIONS)}.")
        W_enc, W_dec = torch.as_tensor(W_enc), torch.as_tensor(W_dec)
        if W_enc.dim() != 2 or W_dec.dim() != 2 or W_enc.shape[1] != W_dec.shape[0]:
            raise ShapeError(f"W_enc must be [d_in, d_sae] and W_dec [d_sae, d_out]; got {tuple(W_enc.shape)} and "
                             f"{tuple(W_dec.shape)}.")
        self.architecture = architecture
        self.d_in, self.d_sae, self.d_out = int(W_enc.shape[0]), int(W_enc.shape[1]), int(W_dec.shape[1])
        self.is_transcoder = "transcoder" in architecture
        if not self.is_transcoder and self.d_in != self.d_out:
            raise ShapeError(f"An SAE reconstructs its input, so W_dec must be [d_sae, {self.d_in}]; got "
                             f"{tuple(W_dec.shape)} (a transcoder's architecture is 'transcoder').")
        if apply_b_dec_to_input is None:
            apply_b_dec_to_input = not self.is_transcoder
        if apply_b_dec_to_input and self.is_transcoder:
            raise ConfigError("apply_b_dec_to_input is not supported for transcoders (b_dec lives in the output space).")
        if architecture == "topk" and (k is None or int(k) < 1):
            raise ConfigError("A topk SAE needs k, the number of latents kept per token (k >= 1).")
        self.k = None if k is None else int(k)
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self.normalize_activations = normalize_activations
        self.rescale_acts_by_decoder_norm = bool(rescale_acts_by_decoder_norm)
        self.W_enc = nn.Parameter(W_enc.clone(), requires_grad=False)
        self.W_dec = nn.Parameter(W_dec.clone(), requires_grad=False)
        dtype = W_enc.dtype
        given = {"b_enc": b_enc, "threshold": threshold, "b_gate": b_gate, "r_mag": r_mag, "b_mag": b_mag,
                 "W_skip": W_skip}
        self.b_dec = nn.Parameter(torch.zeros(self.d_out, dtype=dtype) if b_dec is None else torch.as_tensor(b_dec).clone(),
                                  requires_grad=False)
        for name in _EXTRA[architecture]:
            shape = (self.d_out, self.d_in) if name == "W_skip" else (self.d_sae,)
            value = given[name]
            if value is None and name in ("threshold", "b_gate", "r_mag", "b_mag", "W_skip"):
                raise ConfigError(f"A {architecture} SAE needs {name} ({list(shape)}).")
            value = torch.zeros(shape, dtype=dtype) if value is None else torch.as_tensor(value).clone()
            if tuple(value.shape) != shape:
                raise ShapeError(f"{name} of this {architecture} SAE must have shape {list(shape)}; got {list(value.shape)}.")
            setattr(self, name, nn.Parameter(value, requires_grad=False))
        if tuple(self.b_dec.shape) != (self.d_out,):
            raise ShapeError(f"b_dec must have shape [{self.d_out}]; got {list(self.b_dec.shape)}.")
        self.layer, self.component = layer, component
        self.input_layer, self.input_component = input_layer, input_component
        self.hook_name, self.hook_name_out = hook_name, hook_name_out
        self.reference = dict(reference) if reference else None
        self.metadata = dict(metadata or {})

    # -- the maths ------------------------------------------------------------------
    def _normalise(self, x: torch.Tensor) -> Tuple[torch.Tensor, Norm]:
        if self.normalize_activations == "constant_norm_rescale":
            scale = (self.d_in ** 0.5) / x.norm(dim=-1, keepdim=True)
            return x * scale, (scale, torch.zeros_like(scale))
        if self.normalize_activations == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + 1e-5), (1.0 / std, mu)  # SAELens undoes it with std, not std + eps
        return x, None

    def pre_activation(self, x: torch.Tensor) -> Tuple[torch.Tensor, Norm]:
        """``(x_n W_enc + b_enc, norm)`` where ``x_n`` is the normalised, ``b_dec``-centred input."""
        x = x.to(self.W_enc.dtype)
        x, norm = self._normalise(x)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        if self.architecture == "gated":
            return x, norm  # two encoders: see encode_with_norm
        return x @ self.W_enc + self.b_enc, norm

    def encode_with_norm(self, x: torch.Tensor) -> Tuple[torch.Tensor, Norm]:
        """Latents ``[..., d_sae]`` of ``x`` ``[..., d_in]``, and the input's normalisation (for ``decode``)."""
        if x.shape[-1] != self.d_in:
            raise ShapeError(f"This SAE reads vectors of width {self.d_in}; got an activation of shape {tuple(x.shape)}. "
                             "Check its site (sae.layer, sae.component) against the model.")
        pre, norm = self.pre_activation(x)
        arch = self.architecture
        if arch == "gated":
            gate = (pre @ self.W_enc + self.b_gate) > 0
            magnitude = torch.relu(pre @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return gate.to(magnitude.dtype) * magnitude, norm
        if arch == "topk":
            if self.rescale_acts_by_decoder_norm:
                pre = pre * self.W_dec.norm(dim=-1)
            values, indices = torch.topk(pre, k=min(self.k, self.d_sae), dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter(-1, indices, values.relu()), norm
        acts = torch.relu(pre)
        if arch.startswith("jumprelu"):
            acts = acts * (pre > self.threshold).to(acts.dtype)
        return acts, norm

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of ``x`` ``[..., d_in]``."""
        return self.encode_with_norm(x)[0]

    def decode(self, z: torch.Tensor, norm: Norm = None) -> torch.Tensor:
        """``z W_dec + b_dec`` ``[..., d_out]``, the input's normalisation undone (``norm`` from
        ``encode_with_norm``; needed only when ``normalize_activations`` rescales at run time)."""
        z = z.to(self.W_dec.dtype)
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            z = z / self.W_dec.norm(dim=-1)
        out = z @ self.W_dec + self.b_dec
        if self.is_transcoder or self.normalize_activations in ("none", "expected_average_only_in"):
            return out
        if norm is None:
            raise ConfigError(
                f"This SAE normalises its input at run time ({self.normalize_activations}), so decode needs that "
                "input's norm: use sae(x), or z, norm = sae.encode_with_norm(x) and sae.decode(z, norm)."
            )
        scale, shift = norm
        return out / scale + shift

    def skip(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """A skip transcoder's ``x W_skip^T`` (None for other architectures)."""
        if not self.architecture.endswith("skip_transcoder"):
            return None
        return x.to(self.W_skip.dtype) @ self.W_skip.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction (transcoders: the predicted output) of ``x``."""
        z, norm = self.encode_with_norm(x)
        out = self.decode(z, norm)
        skip = self.skip(x)
        return out if skip is None else out + skip

    def directions(self) -> torch.Tensor:
        """``[d_sae, d_out]``: what one unit of each latent adds to ``decode`` before any run-time
        de-normalisation (rows of ``W_dec``; divided by their norms for ``rescale_acts_by_decoder_norm``)."""
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            return self.W_dec / self.W_dec.norm(dim=-1, keepdim=True)
        return self.W_dec

    def output_scale(self, norm: Norm) -> Optional[torch.Tensor]:
        """``[..., 1]``: the factor ``decode`` multiplies ``z @ directions()`` by (None: 1), from ``norm``."""
        if norm is None or self.is_transcoder or self.normalize_activations in ("none", "expected_average_only_in"):
            return None
        return 1.0 / norm[0]

    def decode_change(self, dz: torch.Tensor, norm: Norm = None) -> torch.Tensor:
        """``decode(z + dz) - decode(z)`` (linear in ``dz``): what editing the latents by ``dz`` adds."""
        out = dz.to(self.W_dec.dtype) @ self.directions()
        scale = self.output_scale(norm)
        return out if scale is None else out * scale

    # -- description ----------------------------------------------------------------
    def weights(self) -> Dict[str, torch.Tensor]:
        """Every tensor of this SAE by SAELens's names (what a saved intervention stores)."""
        return {name: p.detach() for name, p in self.named_parameters()}

    def settings(self) -> Dict[str, Any]:
        """The JSON data that rebuilds this SAE with ``weights()`` (architecture, options, site)."""
        return {"architecture": self.architecture, "k": self.k, "apply_b_dec_to_input": self.apply_b_dec_to_input,
                "normalize_activations": self.normalize_activations,
                "rescale_acts_by_decoder_norm": self.rescale_acts_by_decoder_norm, "layer": self.layer,
                "component": self.component, "input_layer": self.input_layer,
                "input_component": self.input_component, "hook_name": self.hook_name,
                "hook_name_out": self.hook_name_out}

    @classmethod
    def from_weights(cls, weights: Dict[str, torch.Tensor], settings: Dict[str, Any],
                     reference: Optional[Dict[str, Any]] = None) -> "SAE":
        """Inverse of ``weights()`` / ``settings()``."""
        names = ("b_enc", "b_dec", "threshold", "b_gate", "r_mag", "b_mag", "W_skip")
        if "W_enc" not in weights or "W_dec" not in weights:
            raise ConfigError(f"An SAE needs W_enc and W_dec; the weights hold {sorted(weights)}.")
        return cls(weights["W_enc"], weights["W_dec"], **{n: weights[n] for n in names if n in weights},
                   reference=reference, **settings)

    def extra_repr(self) -> str:
        where = f"layer={self.layer}, component={self.component!r}" if self.component else "site unknown"
        return f"{self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}" + (
            f", d_out={self.d_out}" if self.is_transcoder else "") + f", {where}"
