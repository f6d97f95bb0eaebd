"""``HookSet``: the one place where intervenable registers PyTorch hooks.

Every handle we create is kept, and ``remove()`` (called from ``finally`` or
``__exit__``) removes exactly those handles, in reverse order. Hooks that the
user or another library registered are never touched.
"""
from __future__ import annotations

from typing import Any, Callable, List

from torch import nn
from torch.utils.hooks import RemovableHandle


class HookSet:
    """A set of hooks owned by one intervened call. Use as a context manager."""

    def __init__(self) -> None:
        self._handles: List[RemovableHandle] = []

    def add(self, module: nn.Module, hook: str, fn: Callable[..., Any], prepend: bool = False) -> RemovableHandle:
        """Register ``fn`` on ``module``'s ``"input"`` (pre-hook) or ``"output"`` (forward hook).

        Both are registered ``with_kwargs=True``: input hooks get
        ``(module, args, kwargs)``, output hooks ``(module, args, kwargs, output)``.
        """
        if hook == "input":
            handle = module.register_forward_pre_hook(fn, with_kwargs=True, prepend=prepend)
        elif hook == "output":
            handle = module.register_forward_hook(fn, with_kwargs=True, prepend=prepend)
        else:  # pragma: no cover - internal
            raise ValueError(f"hook kind must be 'input' or 'output', not {hook!r}")
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        """Remove every hook this set registered (and nothing else)."""
        while self._handles:
            self._handles.pop().remove()

    def absorb(self, other: "HookSet") -> None:
        """Take ownership of ``other``'s hooks (they are then removed with this set)."""
        self._handles.extend(other._handles)
        other._handles = []

    def __len__(self) -> int:
        return len(self._handles)

    def __enter__(self) -> "HookSet":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
