"""Exceptions raised by intervenable.

Every error names the problem and the fix. They subclass the builtin types a
user would naturally catch (``ValueError``, ``IndexError``, ``KeyError``) so that
generic handlers keep working.
"""
from __future__ import annotations

import difflib
import os
import sys
import warnings
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


class SubspaceError(LocationError):
    """A subspace index (a dimension, or a partition id) is out of range or does not fit the input."""


class ShapeError(IntervenableError, ValueError):
    """Tensors that must fit together do not."""


class InputError(IntervenableError, ValueError):
    """The inputs passed to a forward call are inconsistent."""


class FastPathFallbackWarning(UserWarning):
    """A family described for the fast sweep path did not fit this model, so the sweep used the general path.

    The results are the same, only slower; on a supported transformers it is a bug of the family's
    description (the test suite turns it into an error).
    """


class SourceCountError(InputError, IndexError):
    """The number of sources does not match the number of intervention groups (an ``IndexError`` too, as the
    reference raises for a missing group's source)."""


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


def warn_user(message: str) -> None:
    """A ``UserWarning`` attributed to the first caller outside intervenable and torch (the user's line)."""
    inside = [os.path.dirname(os.path.abspath(__file__))]
    torch_module = sys.modules.get("torch")
    if getattr(torch_module, "__file__", None):
        inside.append(os.path.dirname(os.path.abspath(torch_module.__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(tuple(inside)):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level + 1)
