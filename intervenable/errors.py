"""Exceptions raised by intervenable.

Every error names the problem and the fix. They subclass the builtin types a
user would naturally catch (``ValueError``, ``IndexError``, ``KeyError``) so that
generic handlers keep working.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Iterable, Optional


class IntervenableError(Exception):
    """Base class of every error raised by intervenable."""


class ConfigError(IntervenableError, ValueError):
    """The intervention configuration is invalid."""


class ComponentError(IntervenableError, KeyError):
    """A component name or module path does not exist on the model."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that.
        return str(self.args[0]) if self.args else ""


class LocationError(IntervenableError, IndexError):
    """A unit location (position, head) or subspace dimension is malformed or out of range."""


class ShapeError(IntervenableError, ValueError):
    """Tensors that must fit together do not."""


class InputError(IntervenableError, ValueError):
    """The inputs passed to a forward call are inconsistent."""


def closest(name: str, choices: Iterable[str], n: int = 3, normalise: Optional[Callable[[str], str]] = None) -> str:
    """A 'did you mean' suffix listing the closest names, or an empty string.

    ``normalise`` maps names to the form they are compared in (e.g. lower case without a
    common suffix), so that ``"vanilla"`` finds ``"VanillaIntervention"``.
    """
    choices = list(choices)
    if normalise is None:
        matches = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    else:
        by_form: Dict[str, str] = {}
        for choice in choices:
            by_form.setdefault(normalise(choice), choice)
        matches = [by_form[m] for m in difflib.get_close_matches(normalise(name), list(by_form), n=n, cutoff=0.5)]
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"
