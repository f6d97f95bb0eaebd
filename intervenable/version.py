"""The package's version, in a module of its own so that any layer can read it without importing the package.

It also holds the helpers for what differs between transformers releases and is needed in more than
one layer: the installed release (read from its metadata, without importing transformers) for the rare
behaviour clearer to key on a version than to detect, and ``configs_name_dtype``.
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


@lru_cache(maxsize=None)
def configs_name_dtype() -> bool:
    """Whether transformers' configs (and ``from_pretrained``) call it ``dtype`` (4.56 on) or only ``torch_dtype``."""
    import transformers

    return hasattr(transformers.PretrainedConfig(), "dtype")


def transformers_older_than(version: str) -> bool:
    """True when the installed transformers' release is below ``version`` (e.g. ``"4.46"``)."""
    return _installed_transformers() < _release(version)
