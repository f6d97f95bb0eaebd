"""One forward of a model with its residual stream split into edges: record node outputs, patch edges,
probe receivers.

Every receiver of the graph reads ``stream + D`` (``+ probe`` when gradients are wanted), where the
stream is the model's own and ``D`` is what an ``Injection`` adds for that receiver in each row; a
receiver nobody changes runs the model's own computation untouched, so an unpatched run is the
model's forward exactly. Hook points, all from the family's residual description (sites/residual.py):

* ``input``: the input of layer 0 (recorded; ``input_value`` replaces it, for EAP-IG's path);
* a head's input: the stream entering the attention (the attention norm's input). When some of a
  layer's head receivers change, the norm and the q / k / v projections are recomputed on one copy
  of the stream per changed receiver, ``norm(x + D)``, and each copy's output replaces only its own
  head's (and letter's) slice of the projection outputs. Grouped-query attention is ungrouped in
  such a layer (each query head gets its own keys and values, as TransformerLens'
  ``ungroup_grouped_query_attention``), through the family's ``kv_groups`` attribute, restored after;
* an MLP's input: the MLP module's input becomes ``mlp_norm(x + D)``;
* ``logits``: the input of the final norm;
* a head's output: its slice of the output projection's input through the projection, minus the
  projection's bias (which belongs to no head: it is a constant of the stream, the same in every
  run, never patched or ablated); where the family norms the attention's output before adding it
  (Gemma2), that term through the norm at the scale of the whole attention output of the same row;
  an MLP's output: what the MLP adds to the stream (after its output norm, if any).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Optional, Tuple, Union

import torch
from torch import nn

from ..engine import read_input, write_input
from ..errors import ComponentError
from ..hooks import HookSet
from ..sites.residual import NormArithmetic
from ..sites.resolve import resolve_component
from ..sites.site import Site, extract, replace as replace_value
from ..sweeps.runner import logits_kwargs, logits_of
from .graph import GraphLayout, describe

#: The attention's key/value head count, which transformers 4.45 (not 5.x) splits keys and values by:
#: ungrouping sets it to the query heads' count, beside the family's ``kv_groups`` attribute.
_KV_HEADS = "num_key_value_heads"


@dataclass(frozen=True)
class LayerWiring:
    layer: int
    attn_norm: nn.Module
    mlp_norm: nn.Module
    mlp_in: Site
    mlp_out: Site
    heads: Site
    out_proj: nn.Module
    qkv: Tuple[Tuple[nn.Module, Tuple[Tuple[str, Site], ...]], ...]  # projection module -> its (letter, site)s
    kv_groups: Optional[Tuple[nn.Module, str]]
    group: int  # query heads per key/value head (1: no grouping)
    attn_post: Optional[NormArithmetic] = None  # the norm on the attention's output (Gemma2), as arithmetic
    attn_write: Optional[nn.Module] = None  # that norm's module (its input: the whole attention output)


@dataclass(frozen=True)
class Wiring:
    """Where the graph's nodes and receivers live in one model."""

    layout: GraphLayout
    layers: Tuple[LayerWiring, ...]
    stream0: Site
    final: nn.Module
    linear: Dict[int, torch.Tensor] = field(default_factory=dict)  # projections' linear parts, per call


def wire(model: nn.Module, layout: GraphLayout) -> Wiring:
    """Resolve every hook point of ``layout`` on ``model`` (errors name the family and what is missing)."""
    stream = describe(model)
    layers = []
    for lr in stream.layers:
        sites = {letter: resolve_component(model, f"head_{name}_output", lr.layer)
                 for letter, name in (("q", "query"), ("k", "key"), ("v", "value"))}
        H, kv = int(sites["q"].n_heads), int(sites["k"].n_heads)
        if H != layout.n_heads or H % kv:
            raise ComponentError(f"{stream.family!r} layer {lr.layer}: {H} query heads and {kv} key/value heads do "
                                 f"not fit the graph's {layout.n_heads} heads.")
        group = H // kv
        if group > 1 and (lr.kv_groups is None or sites["k"].slice is not None or sites["v"].slice is not None):
            raise ComponentError(
                f"{stream.family!r} uses grouped-query attention ({kv} key/value heads for {H} query heads); per-head "
                "key/value inputs need separate k/v projections and the family's Residual.kv_groups attribute "
                "(sites/archs/), which this family does not describe.")
        by_module: Dict[int, Tuple[nn.Module, List[Tuple[str, Site]]]] = {}
        for letter, site in sites.items():
            by_module.setdefault(id(site.module), (site.module, []))[1].append((letter, site))
        layers.append(LayerWiring(
            lr.layer, lr.attention_norm, lr.mlp_norm, lr.mlp_input, lr.mlp, lr.heads, lr.out_proj,
            tuple((m, tuple(items)) for m, items in by_module.values()), lr.kv_groups, group,
            lr.attention_post, lr.attention.module if lr.attention_post is not None else None))
    ro = stream.readout
    final = ro.final[0] if ro.final else ro.head[0]
    return Wiring(layout, tuple(layers), stream.layers[0].stream, final)


def linear_part(module: nn.Module, cache: Dict[int, torch.Tensor], width: int, like: torch.Tensor) -> torch.Tensor:
    """``[1, width, out]``: the linear part of an affine projection (``module(e_i) - module(0)`` per basis
    vector), computed once per call and checked on a random input (ComponentError if not affine)."""
    key = id(module)
    if key not in cache:
        with torch.no_grad():
            eye = torch.eye(width, dtype=like.dtype, device=like.device).unsqueeze(0)
            zero = module.forward(torch.zeros(1, 1, width, dtype=like.dtype, device=like.device))
            J = module.forward(eye) - zero
            probe = torch.randn(1, 3, width, generator=torch.Generator().manual_seed(0)).to(like)
            want = module.forward(probe)
            got = zero + probe @ J[0]
            if not torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()) + 1e-6):
                raise ComponentError(f"{type(module).__name__} is not an affine projection, so a head's input cannot be "
                                     "split through it; circuits need linear q / k / v and output projections.")
        cache[key] = J
    return cache[key]


class Injection:
    """What each row adds to the receivers' inputs. ``active(receivers)``: those some row changes;
    ``deltas(receivers, run)``: ``[rows, T, len(receivers), d]``."""

    needs_diffs = False

    def active(self, receivers: List[int]) -> List[int]:  # pragma: no cover - interface
        raise NotImplementedError

    def deltas(self, receivers: List[int], run: "EdgeRun") -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError


class RowDeltas(Injection):
    """Row ``b`` adds ``coef[b, r] * delta[b]`` to receiver ``r`` (exact edge patching: one-hot ``coef``)."""

    def __init__(self, delta: torch.Tensor, coef: torch.Tensor) -> None:
        self.delta, self.coef = delta, coef
        self._any = (coef != 0).any(0).tolist()

    def active(self, receivers: List[int]) -> List[int]:
        return [r for r in receivers if self._any[r]]

    def deltas(self, receivers: List[int], run: "EdgeRun") -> torch.Tensor:
        c = self.coef[:, receivers].to(self.delta)
        return c[:, None, :, None] * self.delta[:, :, None, :]


class EdgeMask(Injection):
    """Receiver ``r`` of row ``b`` gets ``sum_u mask[b, r, u] * (ablated_u - current_u)``: ablated edges read
    the ablation value of their node, the others its value in this very run (circuit evaluation)."""

    needs_diffs = True

    def __init__(self, mask: torch.Tensor, ablated: Optional[torch.Tensor], layout: GraphLayout) -> None:
        self.mask, self.ablated, self.layout = mask, ablated, layout
        self._any = (mask != 0).any(2).any(0).tolist()

    def active(self, receivers: List[int]) -> List[int]:
        return [r for r in receivers if self._any[r]]

    def deltas(self, receivers: List[int], run: "EdgeRun") -> torch.Tensor:
        prev = int(self.layout.upstream[receivers].max())
        m = self.mask[:, receivers, :prev].to(run.diff)
        return torch.einsum("btnd,brn->btrd", run.diff[:, :, :prev], m)


class EdgeRun:
    """Hooks for one forward of ``rows`` copies; ``run(ids)`` returns the last position's logits."""

    def __init__(self, model: nn.Module, wiring: Wiring, *, injection: Optional[Injection] = None,
                 probes: Union[bool, FrozenSet[int]] = False, record: bool = False,
                 input_value: Optional[torch.Tensor] = None) -> None:
        """``probes``: True for a gradient probe on every receiver, or the set of receivers to probe."""
        self.model, self.w, self.lay = model, wiring, wiring.layout
        self.injection, self.want_probes, self.record = injection, probes, record
        self.input_value = input_value
        self.diff: Optional[torch.Tensor] = None
        self.recorded: Optional[torch.Tensor] = None
        self.probes: Dict[Any, torch.Tensor] = {}
        self._xa: Dict[int, torch.Tensor] = {}
        self._xm: Dict[int, torch.Tensor] = {}
        self._split: Dict[int, Any] = {}
        self._heads: Dict[int, torch.Tensor] = {}  # heads' projection terms awaiting the attention norm's scale

    # -- bookkeeping ---------------------------------------------------------------------------
    def _node(self, first: int, cur: torch.Tensor) -> None:
        """Node outputs ``cur`` ``[R, T, n, d]`` for forward indices ``first..first+n``."""
        n = cur.shape[2]
        if self.record:
            if self.recorded is None:
                self.recorded = cur.new_zeros(cur.shape[0], cur.shape[1], self.lay.n_forward, cur.shape[-1])
            self.recorded[:, :, first:first + n] = cur.detach()
        if self.injection is not None and self.injection.needs_diffs:
            if self.diff is None:
                self.diff = cur.new_zeros(cur.shape[0], cur.shape[1], self.lay.n_forward, cur.shape[-1])
            abl = self.injection.ablated
            target = 0 if abl is None else abl[..., first:first + n, :].to(cur)
            self.diff[:, :, first:first + n] = target - cur.detach()

    def _needs_nodes(self) -> bool:
        return self.record or (self.injection is not None and self.injection.needs_diffs)

    def _shift(self, receivers: List[int], x: torch.Tensor, key: Any) -> Optional[torch.Tensor]:
        """``x[:, :, None] + D (+ probe)`` for ``receivers`` ``[R, T, K, d]``, or None when none changes."""
        active = self.injection.active(receivers) if self.injection is not None else []
        probed = self.want_probes is True or any(r in self.want_probes for r in receivers) if self.want_probes else False
        if probed:
            active = receivers
        if not active:
            return None
        out = x.unsqueeze(2).expand(-1, -1, len(active), -1)
        if self.injection is not None and self.injection.active(active):
            out = out + self.injection.deltas(active, self).to(x.dtype)
        if probed:
            probe = torch.zeros_like(out, requires_grad=True)
            self.probes[key] = probe
            out = out + probe
        return active, out

    # -- hooks ---------------------------------------------------------------------------------
    def _input_hook(self, module, args, kwargs):
        site = self.w.stream0
        x = read_input(site, args, kwargs)
        changed = self.input_value is not None
        if changed:
            x = self.input_value.to(x.dtype)
        if self._needs_nodes():
            self._node(0, x.unsqueeze(2))
        return write_input(site, args, kwargs, x) if changed else None

    def _norm_reader(self, lw: LayerWiring, store: Dict[int, torch.Tensor]):
        def pre(module, args, kwargs):
            store[lw.layer] = args[0] if args else next(iter(kwargs.values()))
        return pre

    def _layer_split(self, lw: LayerWiring):
        """For the layer's changed head receivers: (letters, heads, ``norm(x + D + probe) - norm(x)``)."""
        if lw.layer not in self._split:
            lay = self.lay
            start = lw.layer * lay.per_layer
            receivers = list(range(start, start + lay.per_layer - 1))
            x = self._xa[lw.layer]
            shifted = self._shift(receivers, x, ("heads", lw.layer))
            if shifted is None:
                self._split[lw.layer] = None
            else:
                active, copies = shifted
                local = [r - start for r in active]
                letters = [lay.letters[i // lay.n_heads] for i in local]
                heads = [i % lay.n_heads for i in local]
                change = lw.attn_norm.forward(copies) - lw.attn_norm.forward(x).unsqueeze(2)
                self._split[lw.layer] = (letters, heads, change)
                if lw.group > 1:
                    owner, name = lw.kv_groups
                    setattr(owner, name, 1)
                    if hasattr(owner, _KV_HEADS):  # transformers 4.45 splits keys/values by this count
                        setattr(owner, _KV_HEADS, lay.n_heads)
        return self._split[lw.layer]

    def _projection_hook(self, lw: LayerWiring, module: nn.Module, letter_sites: Tuple[Tuple[str, Site], ...]):
        """Each changed receiver's head (and letter) slice of the projection output moves by the projection's
        linear part applied to its copy's change of the normed input (the projections are affine)."""
        first = letter_sites[0][1]

        def post(mod, args, kwargs, output):
            split = self._layer_split(lw)
            if split is None:
                return None
            letters, heads, change = split
            full = extract(first, output)
            R, T = full.shape[0], full.shape[1]
            J = linear_part(module, self.w.linear, change.shape[-1], full)  # [1, d, W]
            for letter, site in letter_sites:
                ks = [i for i, l in enumerate(letters) if l in ("", letter)]
                view = site.to_view(full)
                group = lw.group if letter in ("k", "v") else 1
                if group > 1:
                    view = view.repeat_interleave(group, dim=1)
                    out_site = replace(site, n_heads=view.shape[1], width=view.shape[1] * view.shape[-1])
                else:
                    view = view.clone()
                    out_site = site
                if ks:
                    h = torch.tensor([heads[i] for i in ks], device=full.device)
                    cols = site.to_view(J)[0, h // group]  # [K, d, hd]: each copy's head columns
                    moved = torch.einsum("btkd,kdc->bktc", change[:, :, ks].to(cols.dtype), cols)
                    view[:, h] = view[:, h] + moved.to(view.dtype)
                full = out_site.from_view(full, view) if group == 1 else out_site.from_view(
                    full.new_empty(R, T, view.shape[1] * view.shape[-1]), view)
            return replace_value(first, output, full)
        return post

    def _heads_out_hook(self, lw: LayerWiring):
        def pre(module, args, kwargs):
            if not self._needs_nodes():
                return None
            z = read_input(lw.heads, args, kwargs).detach()
            H = self.lay.n_heads
            R, T, W = z.shape
            with torch.no_grad():
                J = linear_part(lw.out_proj, self.w.linear, W, z)[0].view(H, W // H, -1)  # [H, hd, d]
                outs = torch.einsum("bthc,hcd->bthd", z.view(R, T, H, W // H), J)
            if lw.attn_post is None:
                self._node(self.lay.head_node(lw.layer, 0), outs)
            else:
                self._heads[lw.layer] = outs
            return None
        return pre

    def _attn_post_hook(self, lw: LayerWiring):
        """A head's output where the attention's output is normed before it is added: its projection term
        through the norm at the scale of the whole attention output (the heads' shares sum to the write)."""
        def pre(module, args, kwargs):
            outs = self._heads.pop(lw.layer, None)
            if outs is not None:
                whole = (args[0] if args else next(iter(kwargs.values()))).detach()
                scale = lw.attn_post.scale(whole).unsqueeze(2)  # [R, T, 1, 1]
                self._node(self.lay.head_node(lw.layer, 0), lw.attn_post.frozen(outs, scale).to(outs.dtype))
            return None
        return pre

    def _mlp_in_hook(self, lw: LayerWiring):
        def pre(module, args, kwargs):
            shifted = self._shift([self.lay.mlp_receiver(lw.layer)], self._xm[lw.layer], ("mlp", lw.layer))
            if shifted is None:
                return None
            return write_input(lw.mlp_in, args, kwargs, lw.mlp_norm.forward(shifted[1][:, :, 0]))
        return pre

    def _mlp_out_hook(self, lw: LayerWiring):
        def post(module, args, kwargs, output):
            if self._needs_nodes():
                self._node(self.lay.mlp_node(lw.layer), extract(lw.mlp_out, output).unsqueeze(2))
            return None
        return post

    def _logits_hook(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()))
        shifted = self._shift([self.lay.logits_receiver], x, ("logits",))
        if shifted is None:
            return None
        new = shifted[1][:, :, 0]
        if args:
            return (new,) + tuple(args[1:]), kwargs
        key = next(iter(kwargs))
        return args, {**kwargs, key: new}

    # -- the forward ---------------------------------------------------------------------------
    def run(self, ids: torch.Tensor) -> torch.Tensor:
        saved = []
        for owner, name in (lw.kv_groups for lw in self.w.layers if lw.kv_groups is not None):
            saved += [((owner, attr), getattr(owner, attr)) for attr in (name, _KV_HEADS) if hasattr(owner, attr)]
        try:
            with HookSet() as hooks:
                hooks.add(self.w.stream0.module, "input", self._input_hook)
                for lw in self.w.layers:
                    hooks.add(lw.attn_norm, "input", self._norm_reader(lw, self._xa))
                    hooks.add(lw.mlp_norm, "input", self._norm_reader(lw, self._xm))
                    for module, letter_sites in lw.qkv:
                        hooks.add(module, "output", self._projection_hook(lw, module, letter_sites))
                    hooks.add(lw.out_proj, "input", self._heads_out_hook(lw))
                    if lw.attn_write is not None:
                        hooks.add(lw.attn_write, "input", self._attn_post_hook(lw))
                    hooks.add(lw.mlp_in.module, "input", self._mlp_in_hook(lw))
                    hooks.add(lw.mlp_out.module, "output", self._mlp_out_hook(lw))
                hooks.add(self.w.final, "input", self._logits_hook)
                out = self.model(input_ids=ids, use_cache=False, **logits_kwargs(self.model))
        finally:
            for (owner, name), value in saved:
                setattr(owner, name, value)
        return logits_of(out)[:, -1]

    def probe_grads(self, total: torch.Tensor) -> torch.Tensor:
        """``[R, T, n_receivers, d]``: d total / d (each receiver's input), from the probes."""
        lay = self.lay
        keys = [k for k in ([("heads", l) for l in range(lay.n_layers)] + [("mlp", l) for l in range(lay.n_layers)]
                            + [("logits",)])]
        missing = [k for k in keys if k not in self.probes] if self.want_probes is True else []
        if missing:
            raise ComponentError(f"The receivers {missing} were never reached by the forward pass: the residual "
                                 "description does not match the model's forward.")
        present = [k for k in keys if k in self.probes]
        grads = dict(zip(present, torch.autograd.grad(total, [self.probes[k] for k in present], allow_unused=True)))
        some = self.probes[present[0]]
        R, T, d = some.shape[0], some.shape[1], some.shape[-1]
        parts = []
        for key in keys:
            width = len(lay.letters) * lay.n_heads if key[0] == "heads" else 1
            g = grads.get(key)
            parts.append(some.new_zeros(R, T, width, d) if g is None else g.detach())
        order = [x for l in range(lay.n_layers) for x in (parts[l], parts[lay.n_layers + l])] + [parts[-1]]
        return torch.cat(order, 2)
