"""Exceptions raised by intervenable.

Every error names the problem and the fix. They subclass the builtin types a
user would naturally catch (``ValueError``, ``IndexError``, ``KeyError``) so that
generic handlers keep working.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class IntervenableError(Exception):
    """Base class of every error raised by intervenable."""


class ConfigError(IntervenableError, ValueError):
    """The intervention configuration is invalid."""


class ComponentError(IntervenableError, KeyError):
    """A component name or module path does not exist on the model."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that.
        return str(self.args[0]) if self.args else ""


class LocationError(IntervenableError, IndexError):
    """A unit location (position, head) is malformed or out of range."""


class ShapeError(IntervenableError, ValueError):
    """Tensors that must fit together do not."""


class InputError(IntervenableError, ValueError):
    """The inputs passed to a forward call are inconsistent."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """A 'did you mean' suffix listing the closest names, or an empty string."""
    matches = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
