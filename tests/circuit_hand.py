"""Hand-written edge patches for the circuit tests: plain torch hooks on the transformers modules.

Node outputs are read by hand (a head's output is its slice of the output projection's input times
its columns of the projection's weight, bias excluded; an MLP's output is the MLP module's output;
``input`` is what enters layer 0), and a receiver gets ``delta`` added to the stream it reads, its
norm recomputed by hand, nothing else changed. LLaMA's heads are recomputed by hand (rotary, causal
softmax) so that one query head can get its own keys or values under grouped-query attention; Gemma2's
too (its norms, query scaling and soft-capping), with its post-sublayer norms read by hand.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

Metric = Callable[[torch.Tensor], torch.Tensor]


def _run(model, ids, hooks: List) -> torch.Tensor:
    try:
        return model(input_ids=ids, use_cache=False).logits[:, -1]
    finally:
        for h in hooks:
            h.remove()


def _arg0(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_arg0(args, kwargs, new):
    if args:
        return (new,) + tuple(args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def _parse(receiver: str):
    """'a1.h2<k>' -> ('head', 1, 2, 'k'); 'a1.h2' -> ('head', 1, 2, 'qkv'); 'm1' -> ('mlp', 1); 'logits'."""
    if receiver == "logits":
        return ("logits",)
    if receiver.startswith("m"):
        return ("mlp", int(receiver[1:]))
    name, _, letter = receiver.partition("<")
    layer, head = name.split(".")
    return ("head", int(layer[1:]), int(head[1:]), letter.rstrip(">") or "qkv")


class Gpt2Hand:
    def __init__(self, model) -> None:
        self.m, self.tr = model, model.transformer
        c = model.config
        self.d, self.H = c.n_embd, c.n_head
        self.hd = self.d // self.H

    def outputs(self, ids) -> Dict[str, torch.Tensor]:
        seen: Dict[str, torch.Tensor] = {}
        hooks = [self.tr.h[0].register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("input", _arg0(a, k)[0].detach()), with_kwargs=True)]
        for l, block in enumerate(self.tr.h):
            hooks.append(block.attn.c_proj.register_forward_pre_hook(lambda m, a, l=l: seen.__setitem__(f"z{l}", a[0][0].detach())))
            hooks.append(block.mlp.register_forward_hook(lambda m, a, o, l=l: seen.__setitem__(f"m{l}", o[0].detach())))
        with torch.no_grad():
            _run(self.m, ids, hooks)
            return self._split(seen)

    def _split(self, seen: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {"input": seen["input"]}
        for l, block in enumerate(self.tr.h):
            W = block.attn.c_proj.weight  # Conv1D: [in, out]
            z = seen.pop(f"z{l}")
            for h in range(self.H):
                s = slice(h * self.hd, (h + 1) * self.hd)
                out[f"a{l}.h{h}"] = z[:, s] @ W[s]
            out[f"m{l}"] = seen[f"m{l}"]
        return out

    def patched(self, ids, receiver: str, delta: torch.Tensor, probe: bool = False):
        """Last-position logits with ``delta`` ``[T, d]`` added to the stream ``receiver`` reads."""
        return self.patched_many(ids, {receiver: delta})

    def patched_many(self, ids, deltas: Dict[str, torch.Tensor], shift: Optional[Dict[str, torch.Tensor]] = None):
        """Last-position logits with ``deltas[receiver]`` added to the stream each receiver reads (the stream
        itself unchanged), and ``shift[node]`` added to the stream where node ``node`` writes it (every later
        reader sees it): ``input`` at layer 0's input, ``a{l}`` at the attention's output, ``m{l}`` at the MLP's."""
        hooks, store = [], {}
        for node, add in (shift or {}).items():
            if node == "input":
                hooks.append(self.tr.h[0].register_forward_pre_hook(
                    lambda m, a, k, add=add: _with_arg0(a, k, _arg0(a, k) + add), with_kwargs=True))
            else:
                module = self.tr.h[int(node[1:])].attn if node[0] == "a" else self.tr.h[int(node[1:])].mlp
                hooks.append(module.register_forward_hook(
                    lambda m, a, o, add=add: (o[0] + add,) + tuple(o[1:]) if isinstance(o, tuple) else o + add))
        heads: Dict[int, List] = {}
        for receiver, delta in deltas.items():
            kind = _parse(receiver)
            if kind[0] == "logits":
                hooks.append(self.tr.ln_f.register_forward_pre_hook(lambda m, a, delta=delta: (a[0] + delta,)))
            elif kind[0] == "mlp":
                block = self.tr.h[kind[1]]
                ln, key = block.ln_2, f"x2.{kind[1]}"
                hooks.append(ln.register_forward_pre_hook(lambda m, a, key=key: store.__setitem__(key, a[0])))
                hooks.append(block.mlp.register_forward_pre_hook(lambda m, a, ln=ln, key=key, delta=delta: (
                    F.layer_norm(store[key] + delta, (self.d,), ln.weight, ln.bias, ln.eps),)))
            else:
                heads.setdefault(kind[1], []).append((kind[2], kind[3], delta))
        for l, items in heads.items():
            block = self.tr.h[l]
            ln, proj, key = block.ln_1, block.attn.c_attn, f"x1.{l}"
            hooks.append(ln.register_forward_pre_hook(lambda m, a, key=key: store.__setitem__(key, a[0])))

            def post(m, a, o, ln=ln, proj=proj, key=key, items=items):
                o = o.clone()
                for h, letters, delta in items:
                    new = F.layer_norm(store[key] + delta, (self.d,), ln.weight, ln.bias, ln.eps) @ proj.weight + proj.bias
                    for letter in letters:
                        off = "qkv".index(letter) * self.d + h * self.hd
                        o[..., off:off + self.hd] = new[..., off:off + self.hd]
                return o
            hooks.append(proj.register_forward_hook(post))
        return _run(self.m, ids, hooks)


def _rms(norm, x):
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


class LlamaHand:
    def __init__(self, model) -> None:
        self.m, self.base = model, model.model
        c = model.config
        self.d, self.H, self.KV = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
        self.hd = getattr(c, "head_dim", None) or self.d // self.H
        self.scaling, self.softcap = self.hd ** -0.5, None

    def norm(self, ln, x):
        return _rms(ln, x)

    def mlp_norm(self, layer):
        return layer.post_attention_layernorm

    def head_term(self, layer, l, z_h, h, seen):
        """What head ``h``'s value mix ``z_h`` adds to the stream: its columns of the output projection."""
        W = layer.self_attn.o_proj.weight  # Linear: [out, in]
        return z_h @ W[:, h * self.hd:(h + 1) * self.hd].T

    def record(self, layer, l, seen):
        """Hooks reading what layer ``l``'s heads and MLP add (into ``seen``)."""
        return [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__(f"z{l}", a[0][0].detach())),
                layer.mlp.register_forward_hook(lambda m, a, o: seen.__setitem__(f"m{l}", o[0].detach()))]

    def outputs(self, ids) -> Dict[str, torch.Tensor]:
        seen: Dict[str, torch.Tensor] = {}
        hooks = [self.base.layers[0].register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__("input", _arg0(a, k)[0].detach()), with_kwargs=True)]
        for l, layer in enumerate(self.base.layers):
            hooks += self.record(layer, l, seen)
        with torch.no_grad():
            _run(self.m, ids, hooks)
            return self._split(seen)

    def _split(self, seen: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        out = {"input": seen["input"]}
        for l, layer in enumerate(self.base.layers):
            z = seen[f"z{l}"]
            for h in range(self.H):
                out[f"a{l}.h{h}"] = self.head_term(layer, l, z[:, h * self.hd:(h + 1) * self.hd], h, seen)
            out[f"m{l}"] = seen[f"m{l}"]
        return out

    def head_by_hand(self, layer, x, cos, sin, h, deltas: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Query head ``h``'s value mix ``[T, hd]``, its q / k / v computed from ``x + deltas[letter]``."""
        attn, ln = layer.self_attn, layer.input_layernorm
        g = h // (self.H // self.KV)
        rows = {"q": (attn.q_proj, h), "k": (attn.k_proj, g), "v": (attn.v_proj, g)}
        vec = {}
        for letter, (proj, i) in rows.items():
            n = self.norm(ln, x + deltas.get(letter, 0))
            vec[letter] = n @ proj.weight[i * self.hd:(i + 1) * self.hd].T  # [T, hd]
        q, k = _rotate(vec["q"], cos, sin), _rotate(vec["k"], cos, sin)
        T = x.shape[0]
        scores = q @ k.mT * self.scaling
        if self.softcap is not None:
            scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        return scores.softmax(-1) @ vec["v"]

    def patched(self, ids, receiver: str, delta: torch.Tensor, probe: bool = False, check: Optional[list] = None):
        kind = _parse(receiver)
        hooks, store = [], {}
        if kind[0] == "logits":
            hooks.append(self.base.norm.register_forward_pre_hook(lambda m, a: (a[0] + delta,)))
        elif kind[0] == "mlp":
            layer = self.base.layers[kind[1]]
            ln = self.mlp_norm(layer)
            hooks.append(ln.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0])))
            hooks.append(layer.mlp.register_forward_pre_hook(lambda m, a: (self.norm(ln, store["x"] + delta),)))
        else:
            _, l, h, letters = kind
            layer = self.base.layers[l]
            hooks.append(layer.input_layernorm.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0])))
            hooks.append(layer.self_attn.register_forward_pre_hook(
                lambda m, a, k: store.update(pe=k["position_embeddings"]) if k.get("position_embeddings") else None,
                with_kwargs=True))
            own = getattr(layer.self_attn, "rotary_emb", None)  # transformers 4.45's Gemma2: rotary in the attention
            if own is not None:  # called only when the attention is given no position_embeddings
                hooks.append(own.register_forward_hook(lambda m, a, o: store.__setitem__("pe", o)))

            def pre(m, a):
                cos, sin = store["pe"]
                z = a[0].clone()
                mine = self.head_by_hand(layer, store["x"][0], cos[0], sin[0], h, {c: delta[0] for c in letters})
                if check is not None:
                    same = self.head_by_hand(layer, store["x"][0], cos[0], sin[0], h, {})
                    check.append((same, z[0, :, h * self.hd:(h + 1) * self.hd].detach().clone()))
                z[0, :, h * self.hd:(h + 1) * self.hd] = mine
                return (z,)
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(pre))
        return _run(self.m, ids, hooks)


def _gemma_rms(norm, x):
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + norm.eps)) * (1.0 + norm.weight.float())


class Gemma2Hand(LlamaHand):
    """Gemma2: ``(1 + w)`` RMSNorms, query scaling by ``query_pre_attn_scalar``, attention soft-capping,
    the MLP read through ``pre_feedforward_layernorm``, and each sublayer's output normed before it is
    added. A head's output is its projection term through ``post_attention_layernorm`` at the scale of
    the whole attention output of that run (RMSNorm is linear at a fixed scale, so the heads' terms sum
    to what the attention adds); an MLP's output is ``post_feedforward_layernorm``'s."""

    def __init__(self, model) -> None:
        super().__init__(model)
        c = model.config
        self.scaling, self.softcap = c.query_pre_attn_scalar ** -0.5, c.attn_logit_softcapping

    def norm(self, ln, x):
        return _gemma_rms(ln, x)

    def mlp_norm(self, layer):
        return layer.pre_feedforward_layernorm

    def head_term(self, layer, l, z_h, h, seen):
        post, whole = layer.post_attention_layernorm, seen[f"A{l}"]
        scale = torch.rsqrt(whole.float().pow(2).mean(-1, keepdim=True) + post.eps)
        return super().head_term(layer, l, z_h, h, seen) * scale * (1.0 + post.weight)

    def record(self, layer, l, seen):
        return [layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__(f"z{l}", a[0][0].detach())),
                layer.post_attention_layernorm.register_forward_pre_hook(
                    lambda m, a: seen.__setitem__(f"A{l}", a[0][0].detach())),
                layer.post_feedforward_layernorm.register_forward_hook(
                    lambda m, a, o: seen.__setitem__(f"m{l}", o[0].detach()))]
