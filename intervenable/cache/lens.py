"""The residual-stream toolkit on an ``ActivationCache``: logit lens, decomposition, head results, DLA.

Everything is read through ``sites/residual.py`` (the family's read-out, stream writers, output
projections and final norm arithmetic), so no family is named here. Results are float32.

The final norm, two ways (``scale=``):

* ``"recompute"``: each element of a stack is treated as a residual state of its own and normed
  with its own scale (and the norm's bias): the logit lens, right for accumulated residuals.
* ``"frozen"``: each element is a *part* of the final residual ``x`` (a decomposition): it is
  centred when the norm is a LayerNorm, multiplied by ``x``'s scale ``1 / sqrt(mean(P(x)^2) + eps)``
  and by the norm's weight, and gets no bias. Being linear, the frozen parts sum to ``norm(x)``
  minus the bias; the bias is its own term in ``logit_attrs``. Recomputing the scale per part (the
  TransformerLens ``recompute_ln`` trap, backwards) would break that sum, so the caller says which.
"""
from __future__ import annotations

from typing import Any, List, Optional, Protocol, Sequence, Tuple, Union

import torch
from torch import nn

from ..errors import ComponentError, ConfigError, InputError, ShapeError
from ..sites.residual import ResidualStream, final_norm, residual_stream
from .request import RESIDUAL_COMPONENTS



class CacheView(Protocol):
    """What the toolkit reads of an ``ActivationCache`` (store.py, whose methods call these functions:
    the toolkit sits below the cache object and never imports it)."""

    def __contains__(self, key: object) -> bool: ...

    def __getitem__(self, key: Any) -> torch.Tensor: ...

    def _model(self) -> nn.Module: ...

SCALES = ("recompute", "frozen")


def _stream(cache: CacheView) -> ResidualStream:
    return residual_stream(cache._model())


def _need(cache: CacheView, component: str, layer: int, what: str) -> torch.Tensor:
    if (component, layer) not in cache:
        default = (" (the default components include it)" if component in RESIDUAL_COMPONENTS else
                   f" next to the defaults, {list(RESIDUAL_COMPONENTS)}")
        raise ComponentError(
            f"{what} needs {component!r} at layer {layer}, which this cache does not hold: run "
            f"run_with_cache(model, inputs, components=[..., {component!r}]){default}.")
    return cache[component, layer].float()


def _upto(stream: ResidualStream, layer: Optional[int]) -> int:
    n = len(stream.layers)
    if layer is None:
        return n
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer <= n:
        raise ConfigError(f"layer must be in 0..{n} (the stream entering that layer; {n}: the final residual); got {layer!r}.")
    return layer % (n + 1) if layer < 0 else layer


def logit_lens(cache: CacheView, layers: Optional[Sequence[int]] = None, include_embed: bool = False) -> torch.Tensor:
    stream = _stream(cache)
    layers = list(range(len(stream.layers))) if layers is None else list(layers)
    states = [_need(cache, "block_input", 0, "logit_lens(include_embed=True)")] if include_embed else []
    states += [_need(cache, "block_output", layer, "logit_lens") for layer in layers]
    out = stream.readout
    with torch.no_grad():
        return torch.stack([_readout_logits(out, s) for s in states])


def _readout_logits(out: Any, resid: torch.Tensor) -> torch.Tensor:
    dtype = next((p.dtype for m in out.final + out.head for p in m.parameters()), resid.dtype)
    return out.logits(resid.to(dtype)).float()


def accumulated_resid(cache: CacheView, layer: Optional[int], apply_ln: Union[bool, str],
                      return_labels: bool) -> Any:
    stream = _stream(cache)
    upto = _upto(stream, layer)
    parts = [_need(cache, "block_input", 0, "accumulated_resid")]
    labels = ["embed"]
    for l in range(upto):
        parts.append(_need(cache, "block_output", l, "accumulated_resid"))
        labels.append(f"{l}_post")
    stack = torch.stack(parts)
    if apply_ln is not False:
        if apply_ln is True:
            raise ConfigError("apply_ln=True is ambiguous: say apply_ln='recompute' (each residual normed with its "
                              "own scale, the logit lens) or apply_ln='frozen' (the final residual's scale).")
        stack = apply_ln_to_stack(cache, stack, apply_ln)
    return (stack, labels) if return_labels else stack


def decompose_resid(cache: CacheView, layer: Optional[int], return_labels: bool) -> Any:
    stream = _stream(cache)
    upto = _upto(stream, layer)
    parts = [_need(cache, "block_input", 0, "decompose_resid")]
    labels = ["embed"]
    for l in range(upto):
        parts.append(_need(cache, "attention_residual", l, "decompose_resid"))
        parts.append(_need(cache, "mlp_residual", l, "decompose_resid"))
        labels += [f"{l}_attn_out", f"{l}_mlp_out"]
    stack = torch.stack(parts)
    return (stack, labels) if return_labels else stack


def linear_weight(module: nn.Module, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(W, b)`` of a linear (affine) module, ``module(x) = x @ W + b``, with ``W`` ``[width, out]``.

    ``nn.Linear`` is read directly; any other affine module (transformers' ``Conv1D``) is measured by
    applying it to the identity and to zero.
    """
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            w = module.weight.detach().float().T
            b = module.bias.detach().float() if module.bias is not None else torch.zeros(w.shape[1], device=w.device)
            return w, b
        param = next(module.parameters(), None)
        kw = dict(device=param.device, dtype=param.dtype) if param is not None else {}
        bias = module(torch.zeros(1, width, **kw))[0].float()
        rows = [module(torch.eye(width, **kw)[i:i + 1024]).float() - bias for i in range(0, width, 1024)]
        return torch.cat(rows), bias


def head_results(cache: CacheView, layer: Optional[int]) -> torch.Tensor:
    stream = _stream(cache)
    if layer is None:
        return torch.stack([head_results(cache, l) for l in range(len(stream.layers))])
    lr = stream.layers[layer]
    z = _need(cache, "head_attention_value_output", layer, "head_results")  # [b, s, H, hd]
    if z.dim() != 4:
        raise ShapeError(f"head_results expects head_attention_value_output as [batch, seq, heads, head_dim]; "
                         f"got {tuple(z.shape)}.")
    if z.shape[2] != lr.heads.n_heads:
        raise ShapeError(f"head_results needs every head of layer {layer} (the cache holds {z.shape[2]} of "
                         f"{lr.heads.n_heads}): run run_with_cache without heads=.")
    H, hd = z.shape[2], z.shape[3]
    w, _ = linear_weight(lr.out_proj, H * hd)
    return torch.einsum("bshk,hkd->bshd", z, w.to(z.device).view(H, hd, -1))


def _final_scale(cache: CacheView, stream: ResidualStream):
    norm = final_norm(cache._model())
    final = _need(cache, "block_output", len(stream.layers) - 1, "the frozen final norm")
    return norm, norm.scale(final)


def apply_ln_to_stack(cache: CacheView, stack: torch.Tensor, scale: str) -> torch.Tensor:
    """``stack`` ``[n, batch, seq, width]`` through the final norm (see the module docstring for ``scale``)."""
    if scale not in SCALES:
        raise ConfigError(f"scale must be 'recompute' or 'frozen' (see docs/cache.md); got {scale!r}.")
    stream = _stream(cache)
    if scale == "recompute":
        with torch.no_grad():
            return torch.stack([stream.readout.normed(s.to(_param_dtype(stream))).float() for s in stack])
    norm, frozen = _final_scale(cache, stream)
    if stack.shape[1:-1] != frozen.shape[:-1]:
        raise ShapeError(f"The stack's [batch, seq] {tuple(stack.shape[1:-1])} does not match the cache's "
                         f"{tuple(frozen.shape[:-1])}: stack parts of this cache, at its positions.")
    return norm.frozen(stack.float(), frozen)


def _param_dtype(stream: ResidualStream) -> torch.dtype:
    return next((p.dtype for m in stream.readout.final for p in m.parameters()), torch.float32)


def _directions(cache: CacheView, stream: ResidualStream, tokens: Any, incorrect: Any,
                direction: Optional[torch.Tensor], batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per batch row, the unembedding direction ``[batch, width]`` and the head's bias term ``[batch]``."""
    if direction is not None:
        if tokens is not None or incorrect is not None:
            raise InputError("Give tokens (and incorrect_tokens) or direction=, not both.")
        d = torch.as_tensor(direction).float()
        d = d.expand(batch, -1) if d.dim() == 1 else d
        return d, torch.zeros(batch, device=d.device)
    if tokens is None:
        raise InputError("logit_attrs needs tokens (the token whose logit is attributed, per batch row), or "
                         "direction= (a vector in the unembedding's input space).")
    head = stream.readout.head
    if len(head) != 1:
        raise ComponentError("logit_attrs with tokens needs a single linear output head; pass direction= instead.")
    width = _need(cache, "block_output", len(stream.layers) - 1, "logit_attrs").shape[-1]
    w, b = linear_weight(head[0], width)  # [width, vocab]

    def rows(t: Any) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long).reshape(-1)
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise InputError(f"tokens must be one id or one per batch row ({batch}); got {t.numel()}.")
        if bool(((t < 0) | (t >= w.shape[1])).any()):
            raise InputError(f"token ids must be in 0..{w.shape[1] - 1} (the vocabulary); got {t.tolist()}.")
        return t.to(w.device)

    t = rows(tokens)
    d, bias = w[:, t].T, b[t]
    if incorrect is not None:
        u = rows(incorrect)
        d, bias = d - w[:, u].T, bias - b[u]
    return d, bias


def logit_attrs(cache: CacheView, tokens: Any, incorrect: Any, direction: Optional[torch.Tensor],
                heads: bool, position: Optional[int], return_labels: bool) -> Any:
    """Direct logit attribution: ``[components, batch]`` at ``position`` (an index into the cache's
    ``seq`` axis; None: every cached position, ``[components, batch, seq]``).

    The components are ``decompose_resid``'s (with ``heads=True``: each layer's attention split into
    its heads and its output projection's bias), read through the frozen final norm and the
    unembedding direction, plus one ``bias`` term (the final norm's bias and the head's bias along
    the direction). They sum to the logit (or, with ``incorrect_tokens``, the logit difference)
    before any soft-capping (Gemma2's ``final_logit_softcapping`` is applied after the sum).
    """
    stream = _stream(cache)
    parts, labels = decompose_resid(cache, None, True)
    if heads:
        parts, labels = _split_heads(cache, stream, parts, labels)
    norm, scale = _final_scale(cache, stream)
    if position is not None:  # only that position's parts go through the norm
        if isinstance(position, bool) or not isinstance(position, int) or not -parts.shape[2] <= position < parts.shape[2]:
            raise InputError(f"position {position!r} is out of range for the cache's {parts.shape[2]} positions "
                             "(an index into its seq axis; None: every position).")
        parts, scale = parts[:, :, [position]], scale[:, [position]]
    frozen = norm.frozen(parts, scale)  # [n, b, s, d]
    d, head_bias = _directions(cache, stream, tokens, incorrect, direction, parts.shape[1])
    d = d.to(frozen.device)
    attrs = torch.einsum("nbsd,bd->nbs", frozen, d)
    bias = head_bias.to(frozen.device)[:, None].expand(attrs.shape[1:])
    if norm.bias is not None:
        bias = bias + (d @ norm.bias.to(d.device))[:, None]
    attrs = torch.cat([attrs, bias[None]])
    labels = labels + ["bias"]
    if position is not None:
        attrs = attrs[:, :, 0]
    return (attrs, labels) if return_labels else attrs


def _split_heads(cache: CacheView, stream: ResidualStream, parts: torch.Tensor,
                 labels: List[str]) -> Tuple[torch.Tensor, List[str]]:
    """``decompose_resid``'s parts with each attention write replaced by its heads and its bias."""
    from ..sites.resolve import resolve_component

    model = cache._model()
    out, names = [parts[0]], [labels[0]]
    for l, lr in enumerate(stream.layers):
        plain = resolve_component(model, "attention_output", l)
        if lr.attention_post is None and (plain.module_path, plain.hook) != (lr.attention.module_path, lr.attention.hook):
            raise ComponentError(
                f"The {stream.family!r} family's attention writes something other than its output projection's "
                "output and its description gives no norm arithmetic (Residual.sublayer_norm) to split it by head: "
                "use logit_attrs(heads=False) there.")
        res = head_results(cache, l)  # [b, s, H, d]
        _, bias = linear_weight(lr.out_proj, res.shape[2] * _need(cache, "head_attention_value_output", l,
                                                                    "logit_attrs(heads=True)").shape[-1])
        bias = bias.to(res.device).expand_as(res[:, :, 0])
        post = lr.attention_post
        if post is not None:
            # the attention's output is normed before it is added (Gemma2): each head's share is its term
            # through the norm at the scale of the whole output, the bias (and the norm's shift) the rest
            scale = post.scale(res.sum(2) + bias)
            res = post.frozen(res, scale.unsqueeze(2))
            bias = post.frozen(bias, scale) + (post.bias.to(res.device) if post.bias is not None else 0.0)
        out += list(res.permute(2, 0, 1, 3))
        out.append(bias)
        names += [f"L{l}H{h}" for h in range(res.shape[2])] + [f"{l}_attn_bias"]
        out.append(parts[2 + 2 * l])
        names.append(labels[2 + 2 * l])
    return torch.stack(out), names
