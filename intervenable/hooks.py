"""``HookSet``: the one place where intervenable registers PyTorch hooks.

Every handle we create is kept, and ``remove()`` (called from ``finally`` or
``__exit__``) removes exactly those handles, in reverse order. Hooks that the
user or another library registered are never touched.

Order matters: hooks added with ``first=True`` (our setters) run before any
other hook on the module, in the order they were added, so that whatever
reads the module's output afterwards (transformers' own ``output_hidden_states``
recorder, a user's hook, our getters) sees the intervened value.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """A set of hooks owned by one intervened call. Use as a context manager."""

    def __init__(self) -> None:
        self._handles: List[RemovableHandle] = []
        self._chains: Dict[Tuple[int, str], List[Callable[..., Any]]] = {}
        self._where: List[str] = []  # one "ModuleType.kind" per handle, for repr

    def add(self, module: nn.Module, hook: str, fn: Callable[..., Any], prepend: bool = False, first: bool = False) -> None:
        """Register ``fn`` on ``module``'s ``"input"`` (pre-hook) or ``"output"`` (forward hook).

        Both are registered ``with_kwargs=True``: input hooks get
        ``(module, args, kwargs)``, output hooks ``(module, args, kwargs, output)``.
        ``first=True`` runs ``fn`` before every other hook of the module (see above).
        """
        if first:
            key = (id(module), hook)
            chain = self._chains.get(key)
            if chain is None:
                chain = self._chains[key] = []
                self._register(module, hook, _input_chain(chain) if hook == "input" else _output_chain(chain), True)
            chain.append(fn)
            return
        self._register(module, hook, fn, prepend)

    def _register(self, module: nn.Module, hook: str, fn: Callable[..., Any], prepend: bool) -> None:
        if hook == "input":
            handle = module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend)
        elif hook == "output":
            handle = module.register_forward_hook(fn, with_kwargs=True, prepend=prepend)
        else:  # pragma: no cover - internal
            raise ValueError(f"hook kind must be 'input' or 'output', not {hook!r}")
        self._handles.append(handle)
        self._where.append(f"{type(module).__name__}.{hook}")

    def remove(self) -> None:
        """Remove every hook this set registered (and nothing else)."""
        while self._handles:
            self._handles.pop().remove()
        self._where.clear()
        self._chains.clear()

    def absorb(self, other: "HookSet") -> None:
        """Take ownership of ``other``'s hooks (they are then removed with this set)."""
        self._handles.extend(other._handles)
        self._where.extend(other._where)
        other._handles, other._where = [], []
        for key, chain in other._chains.items():
            # ``chain`` is the list other's dispatcher runs: adopt it so later additions join it.
            self._chains.setdefault(key, chain)
        other._chains = {}

    def __len__(self) -> int:
        return len(self._handles)

    def __repr__(self) -> str:
        if not self._handles:
            return "HookSet(empty)"
        counts: Dict[str, int] = {}
        for where in self._where:
            counts[where] = counts.get(where, 0) + 1
        parts = ", ".join(f"{w} x{n}" if n > 1 else w for w, n in counts.items())
        return f"HookSet({len(self._handles)} hooks: {parts})"

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def _output_chain(chain: List[Callable[..., Any]]) -> Callable[..., Any]:
    """One forward hook running ``chain`` in order, each seeing the previous one's output."""

    def run(module, args, kwargs, output):
        changed = False
        for fn in chain:
            new = fn(module, args, kwargs, output)
            if new is not None:
                output, changed = new, True
        return output if changed else None

    return run


def _input_chain(chain: List[Callable[..., Any]]) -> Callable[..., Any]:
    """One forward pre-hook running ``chain`` in order, each seeing the previous one's inputs."""

    def run(module, args, kwargs):
        changed = False
        for fn in chain:
            new = fn(module, args, kwargs)
            if new is not None:
                (args, kwargs), changed = new, True
        return (args, kwargs) if changed else None

    return run
