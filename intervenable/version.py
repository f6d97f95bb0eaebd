"""The package's version, in a module of its own so that any layer can read it without importing the package.

It also holds the one helper for the rare behaviour that is clearer to key on the installed
transformers' version than to detect (read from its metadata: transformers is not imported).
"""
import re
from functools import lru_cache
from importlib import metadata
from typing import Tuple

__version__ = "0.1.0"


def _release(text: str) -> Tuple[int, ...]:
    """``"4.45.1"`` -> ``(4, 45, 1)``; pre-release and local parts are ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", text.split("+")[0])[:3])


@lru_cache(maxsize=None)
def _installed_transformers() -> Tuple[int, ...]:
    return _release(metadata.version("transformers"))


def transformers_older_than(version: str) -> bool:
    """True when the installed transformers' release is below ``version`` (e.g. ``"4.46"``)."""
    return _installed_transformers() < _release(version)
