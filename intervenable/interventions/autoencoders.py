"""Interventions in the latent space of an autoencoder (SAEs).

* ``AutoencoderIntervention``: a trainable one-layer ReLU autoencoder
  (``autoencoder.encoder[0]``, ``autoencoder.decoder[0]``); swaps latents of
  the source into the base and decodes. Sees units concatenated
  (``flatten_units = True``), as in the reference.
* ``JumpReLUAutoencoderIntervention``: a JumpReLU SAE with given weights
  (``W_enc [d, k]``, ``W_dec [k, d]``, ``b_enc``, ``b_dec``, ``threshold``);
  sees ``[..., d]`` per unit and returns ``InterventionOutput(output, latent)``; ``from_sae`` builds it
  from an SAE of ``pv.load_sae`` (``pv.SAEIntervention`` keeps the error term instead).
"""
from __future__ import annotations

from typing import Any, List, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from .base import InterventionOutput, TrainableIntervention, register_intervention, subspace_mask, swap
from .rotations import _require_source, require_embed_dim


class AutoencoderLayer(nn.Module):
    """One-layer autoencoder: ``latent = relu(W_e (x - b_d) + b_e)``, ``x' = W_d latent + b_d``."""

    def __init__(self, input_dim: int, latent_dim: int, **kwargs: Any) -> None:
        super().__init__()
        self.input_dim = int(input_dim)
        self.latent_dim = int(latent_dim)
        self.encoder = nn.Sequential(nn.Linear(self.input_dim, self.latent_dim, bias=True), nn.ReLU())
        self.decoder = nn.Sequential(nn.Linear(self.latent_dim, self.input_dim, bias=True))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.encoder[0].weight.dtype)
        return self.encoder(x - self.decoder[0].bias)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decoder(latent)

    def forward(self, base: torch.Tensor, return_latent: bool = False):
        latent = self.encode(base)
        recon = self.decode(latent).to(base.dtype)
        return {"latent": latent, "output": recon} if return_latent else recon


def _latent_index(spec: Any) -> Optional[List[int]]:
    if spec is None:
        return None
    if isinstance(spec, torch.Tensor):
        spec = spec.tolist()
    return [int(spec)] if isinstance(spec, (int, float)) else [int(s) for s in spec]


@register_intervention("AutoencoderIntervention")
class AutoencoderIntervention(TrainableIntervention):
    """Swap chosen latents of a trainable autoencoder (``latent_dim`` required).

    Which latents swap: ``subspaces`` if given, else the latents set with
    ``set_interchange_dim(i or [i, j, ...])``, else all of them.
    """

    flatten_units = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kwargs.get("latent_dim") is None:
            raise ConfigError("AutoencoderIntervention needs latent_dim (the autoencoder's latent width).")
        self.embed_dim = require_embed_dim(self, kwargs)
        self.autoencoder = AutoencoderLayer(self.embed_dim, int(kwargs["latent_dim"]))
        self.interchange_dim = None  # here it means latent indices: see set_interchange_dim
        self.latent_indices: Optional[List[int]] = None

    def set_interchange_dim(self, interchange_dim: Union[int, List[int], torch.Tensor]) -> None:
        """Latent index (or indices) to swap, as in the reference."""
        self.latent_indices = _latent_index(interchange_dim)

    def forward(self, base, source=None, subspaces=None, **kwargs):
        source = _require_source(self, self._source(source))
        base_latent = self.autoencoder.encode(base)
        source_latent = self.autoencoder.encode(source.to(base.device))
        if subspaces is not None:
            mask = subspace_mask(subspaces, self.subspace_partition, base_latent, self.use_fast)
            mixed = torch.where(mask, source_latent, base_latent)
        elif self.latent_indices is not None:
            mixed = base_latent.clone()
            mixed[..., self.latent_indices] = source_latent[..., self.latent_indices]
        else:
            mixed = source_latent
        return self.autoencoder.decode(mixed).to(base.dtype)


@register_intervention("JumpReLUAutoencoderIntervention")
class JumpReLUAutoencoderIntervention(TrainableIntervention):
    """Interchange on a JumpReLU SAE's latents; ``low_rank_dimension`` (or ``latent_dim``) is the SAE width.

    ``encode(x) = (x W_enc + b_enc) * [x W_enc + b_enc > threshold]`` (ReLU'd),
    ``decode(a) = a W_dec + b_dec``. Load weights with ``load_state_dict`` or
    ``from_weights``. Without ``subspaces`` every latent is taken from the
    source; with ``subspaces`` only those latents are. Returns
    ``InterventionOutput(output=decoded, latent=intervened latents)``.
    """

    flatten_units = False

    def __init__(self, **kwargs: Any) -> None:
        kwargs["keep_last_dim"] = True
        super().__init__(**kwargs)
        self.embed_dim = require_embed_dim(self, kwargs)
        width = kwargs.get("low_rank_dimension") or kwargs.get("latent_dim")
        if width is None:
            raise ConfigError(
                "JumpReLUAutoencoderIntervention needs the SAE width: pass low_rank_dimension=<d_sae>."
            )
        width = int(width)
        self.low_rank_dimension = width
        self.interchange_dim = width
        self.W_enc = nn.Parameter(torch.zeros(self.embed_dim, width))
        self.W_dec = nn.Parameter(torch.zeros(width, self.embed_dim))
        self.threshold = nn.Parameter(torch.zeros(width))
        self.b_enc = nn.Parameter(torch.zeros(width))
        self.b_dec = nn.Parameter(torch.zeros(self.embed_dim))

    @classmethod
    def from_weights(cls, W_enc: torch.Tensor, W_dec: torch.Tensor, b_enc: torch.Tensor,
                     b_dec: torch.Tensor, threshold: torch.Tensor, **kwargs: Any) -> "JumpReLUAutoencoderIntervention":
        """An SAE intervention holding copies of the given weights (``W_enc`` is ``[d, d_sae]``)."""
        W_enc = torch.as_tensor(W_enc)
        sae = cls(embed_dim=W_enc.shape[0], low_rank_dimension=W_enc.shape[1], **kwargs)
        sae.load_state_dict(
            {"W_enc": W_enc, "W_dec": torch.as_tensor(W_dec), "b_enc": torch.as_tensor(b_enc),
             "b_dec": torch.as_tensor(b_dec), "threshold": torch.as_tensor(threshold)},
            strict=False,
        )
        return sae

    @classmethod
    def from_sae(cls, sae: Any, **kwargs: Any) -> "JumpReLUAutoencoderIntervention":
        """This intervention (the reference's interchange, no error term) with a loaded SAE's weights
        (``pv.load_sae``): a JumpReLU SAE that does not subtract ``b_dec`` from its input nor normalise it,
        as Gemma Scope's are. For every other SAE, and to keep the error term, use ``pv.SAEIntervention``."""
        arch = getattr(sae, "architecture", None)
        if arch != "jumprelu" or sae.apply_b_dec_to_input or sae.normalize_activations not in (
                "none", "expected_average_only_in"):
            raise ConfigError(
                f"JumpReLUAutoencoderIntervention computes a JumpReLU SAE without input centring or normalisation; "
                f"this SAE is {arch!r} (apply_b_dec_to_input={getattr(sae, 'apply_b_dec_to_input', None)}, "
                f"normalize_activations={getattr(sae, 'normalize_activations', None)!r}). Use pv.SAEIntervention(sae)."
            )
        return cls.from_weights(sae.W_enc.detach(), sae.W_dec.detach(), sae.b_enc.detach(), sae.b_dec.detach(),
                                sae.threshold.detach(), **kwargs)

    def encode(self, input_acts: torch.Tensor) -> torch.Tensor:
        pre = input_acts.to(self.W_enc.dtype) @ self.W_enc + self.b_enc
        return (pre > self.threshold) * torch.relu(pre)

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, base, source=None, subspaces=None, **kwargs):
        source = _require_source(self, self._source(source))
        base_latent = self.encode(base)
        source_latent = self.encode(source.to(base.device))
        latent = swap(base_latent, source_latent, "interchange", subspaces, self.subspace_partition, self.interchange_dim,
                      use_fast=self.use_fast)
        return InterventionOutput(output=self.decode(latent).to(base.dtype), latent=latent)
