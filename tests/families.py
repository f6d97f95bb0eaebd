"""Which model families the installed transformers provides, declared per release.

Tests parametrized over families keep only those present (``present``); ``test_families_provided``
checks that the families missing here are exactly the ones declared to arrive in a later release,
so that none disappears silently.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set, Tuple

import transformers

from intervenable.version import transformers_older_than

#: family -> (its config class, the transformers release that added it)
INTRODUCED: Dict[str, Tuple[str, str]] = {
    "olmo2": ("Olmo2Config", "4.47"),
    "qwen3": ("Qwen3Config", "4.51"),
    "gpt_oss": ("GptOssConfig", "4.55"),
}


def present(family: str) -> bool:
    """Whether the installed transformers has ``family`` (families not in INTRODUCED always are)."""
    return family not in INTRODUCED or hasattr(transformers, INTRODUCED[family][0])


def provided(families: Iterable[str]) -> List[str]:
    """``families`` without those the installed transformers lacks, in their order."""
    return [f for f in families if present(f)]


def missing() -> Set[str]:
    return {f for f in INTRODUCED if not present(f)}


def expected_missing() -> Set[str]:
    """The declared expectation: the families added after the installed release."""
    return {f for f, (_, release) in INTRODUCED.items() if transformers_older_than(release)}
