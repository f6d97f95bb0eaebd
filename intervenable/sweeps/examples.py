"""A dataset's examples, parsed once: lists (one entry per example, a single value broadcast) or rows.

Rows are mappings with ``prompt`` / ``clean`` / ``source`` (the clean prompt), ``corrupted`` /
``base`` (the corrupted prompt, the one that is run and patched), ``subject``, ``target`` (or
``answer``), ``foil``, ``marks`` (named positions, e.g. ``{"S1": 3, "END": 12}``) and ``seed``;
other keys are kept in ``Example.meta``. Anything that iterates over rows works: a list of
dicts, a ``datasets.Dataset``, a pandas frame (its records), the lines of a JSONL file (JSON
object strings), a generator. ``examples(...)`` is the one parser every dataset sweep uses.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch

from ..errors import InputError

FIELDS = ("clean", "corrupted", "subject", "target", "foil", "marks", "seed")
ALIASES = {"prompt": "clean", "clean": "clean", "source": "clean", "base": "corrupted", "corrupted": "corrupted",
           "subject": "subject", "target": "target", "answer": "target", "foil": "foil", "marks": "marks",
           "seed": "seed"}


@dataclass(frozen=True)
class Example:
    """One example: its clean prompt, corrupted prompt (None: noise on ``subject``), target, foil, marks."""

    clean: Any
    corrupted: Any = None
    subject: Any = None
    target: Any = None
    foil: Any = None
    marks: Optional[Dict[str, int]] = None
    seed: Optional[int] = None
    meta: Dict[str, Any] = field(default_factory=dict)


class Examples(Sequence):
    """The parsed examples of a dataset call, in order (``len``, indexing, iteration)."""

    def __init__(self, items: Sequence[Example]) -> None:
        self._items = list(items)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i):  # type: ignore[override]
        return self._items[i]

    def __iter__(self) -> Iterator[Example]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Examples({len(self)} examples)"


def _json_object(line: Any) -> Optional[dict]:
    if not isinstance(line, str) or not line.lstrip().startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def is_rows(data: Any) -> bool:
    """Whether ``data`` is an iterable of rows (mappings or JSON object lines) rather than a prompt."""
    if hasattr(data, "to_dict") and hasattr(data, "columns") and hasattr(data, "iterrows"):  # a pandas DataFrame
        return True
    if data is None or isinstance(data, (str, bytes, torch.Tensor, Mapping)) or hasattr(data, "keys"):
        return False
    if hasattr(data, "shape"):  # numpy arrays: token ids
        return False
    if isinstance(data, (list, tuple)):
        return len(data) > 0 and all(isinstance(r, Mapping) or _json_object(r) is not None for r in data)
    return hasattr(data, "__iter__")  # a generator, a datasets.Dataset, an open JSONL file


def _many_prompts(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 2 and value.shape[0] > 1
    if isinstance(value, (list, tuple)) and value:
        return all(isinstance(v, (str, list, tuple, torch.Tensor, Mapping)) for v in value)
    return False


def is_dataset(first: Any, second: Any = None) -> bool:
    """Whether a sweep's prompt arguments describe several examples (lists or rows)."""
    return is_rows(first) or _many_prompts(first) or _many_prompts(second)


def _per_example(name: str, value: Any) -> bool:
    """Whether a keyword value gives one entry per example (else it is broadcast)."""
    if name in ("clean", "corrupted"):
        return _many_prompts(value)
    if name == "subject":
        return isinstance(value, list) and all(v is None or isinstance(v, (str, tuple, list)) for v in value)
    if name == "marks":
        return isinstance(value, (list, tuple))
    if isinstance(value, torch.Tensor):
        return value.dim() == 1 and value.numel() > 1
    return isinstance(value, (list, tuple))


def _split(name: str, value: Any) -> List[Any]:
    if isinstance(value, torch.Tensor):
        return [value[i:i + 1] if name in ("clean", "corrupted") else value[i] for i in range(value.shape[0])]
    return list(value)


def _row(i: int, row: Any) -> Dict[str, Any]:
    if not isinstance(row, Mapping):
        parsed = _json_object(row)
        if parsed is None:
            raise InputError(f"Row {i} is not a mapping (or a JSON object line): {str(row)[:80]!r}. Give rows as dicts "
                             "with 'prompt' (or 'base' / 'source'), 'target', 'subject', ...")
        row = parsed
    out: Dict[str, Any] = {"meta": {}}
    given: Dict[str, str] = {}
    for key, value in row.items():
        name = ALIASES.get(str(key))
        if name is None:
            out["meta"][key] = value
            continue
        if name in given:
            raise InputError(f"Row {i} gives its {name} prompt twice ({given[name]!r} and {key!r}): keep one of them."
                             if name in ("clean", "corrupted") else
                             f"Row {i} gives its {name} twice ({given[name]!r} and {key!r}): keep one of them.")
        given[name] = str(key)
        out[name] = value
    return out


def _records(data: Any) -> List[Any]:
    if hasattr(data, "to_dict") and hasattr(data, "columns"):
        return list(data.to_dict("records"))
    return [r for r in data if not (isinstance(r, str) and not r.strip())]  # blank JSONL lines are skipped


def examples(data: Any = None, *, clean: Any = None, corrupted: Any = None, subject: Any = None, target: Any = None,
             foil: Any = None, marks: Any = None, seed: Any = None) -> Examples:
    """Parse a dataset into ``Examples``: ``data`` (rows) and/or keyword lists (one entry per example);
    a keyword given as a single value is broadcast to every example.

    A field may come from the rows or from a keyword, not both. Structural problems (a row
    without a prompt, lists of different lengths, a field given twice) raise ``InputError``
    naming the row; whether a prompt tokenises, contains its subject, etc. is checked per
    example by the sweep (``on_error``).
    """
    keywords = {"clean": clean, "corrupted": corrupted, "subject": subject, "target": target, "foil": foil,
                "marks": marks, "seed": seed}
    rows: Optional[List[Dict[str, Any]]] = None
    if data is not None:
        if not is_rows(data):
            raise InputError("examples(data): data must be rows (dicts, JSON object lines, a datasets.Dataset, a "
                             f"DataFrame); got {type(data).__name__}. Give prompts as examples(clean=[...]) instead.")
        rows = [_row(i, r) for i, r in enumerate(_records(data))]
        if not rows:
            raise InputError("The dataset has no rows: give at least one example.")
    lengths = {name: len(_split(name, v)) for name, v in keywords.items() if v is not None and _per_example(name, v)}
    by = "rows" if rows is not None else next((k for k in ("clean", "corrupted") if k in lengths), None)
    n = len(rows) if rows is not None else (lengths[by] if by is not None else 0)
    if n == 0:
        raise InputError("No examples: give a list of prompts (one per example) or rows of a dataset.")
    for name, k in lengths.items():
        if k != n:
            raise InputError(f"{name} has {k} entries but there are {n} examples (the {by}): give one entry per "
                             "example, or a single value for all.")
    columns: Dict[str, List[Any]] = {}
    for name, value in keywords.items():
        if value is None:
            continue
        if rows is not None:
            clash = [i for i, r in enumerate(rows) if name in r]
            if clash:
                raise InputError(f"{name} is given both in the rows (row {clash[0]}) and as the keyword {name}=...: "
                                 "give it in one place.")
        columns[name] = _split(name, value) if name in lengths else [value] * n
    items = []
    for i in range(n):
        got = dict(rows[i]) if rows is not None else {"meta": {}}
        for name, col in columns.items():
            got[name] = col[i]
        if got.get("clean") is None:
            raise InputError(f"Example {i} has no prompt: give 'prompt' (or 'clean' / 'source'; 'base' is the "
                             "corrupted prompt that is run and patched).")
        if got.get("marks") is not None and not isinstance(got["marks"], Mapping):
            raise InputError(f"Example {i}: marks must map names to positions, e.g. {{'S1': 3, 'END': -1}}; "
                             f"got {got['marks']!r}.")
        items.append(Example(**{k: got.get(k) for k in FIELDS}, meta=got.get("meta", {})))
    return Examples(items)


def read_jsonl(path: Union[str, Path]) -> List[Dict[str, Any]]:
    """The rows of a JSONL file (one JSON object per line; blank lines skipped); errors name the line."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}, line {n}: not valid JSON ({exc.msg}): each line must be one JSON object.") from None
            if not isinstance(value, dict):
                raise InputError(f"{path}, line {n}: a JSON {type(value).__name__}, not an object: each line must be "
                                 'one object such as {"prompt": "...", "target": "..."}.')
            rows.append(value)
    if not rows:
        raise InputError(f"{path} has no rows: give one JSON object per line.")
    return rows
