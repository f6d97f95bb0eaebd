"""``save_to``: a dataset sweep's results written as they complete, and resumed from.

The folder holds ``call.json`` (what was asked: the sweep, its options, the model, a digest of
each example) and one file per finished example: ``example-000012.safetensors`` (its
``SweepResult``) or ``example-000012.error.json`` (why it could not run). Each file is written
under a temporary name, flushed, and renamed into place (``os.replace`` is atomic), so a killed
run leaves only complete files (and temporaries, which the rerun removes); a rerun with the same
call loads them and runs the rest. A
folder written by a different call is refused, naming the first difference.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import InputError
from ..io.atomic import remove_temporaries, replace_file
from .examples import Example
from .result import SweepResult

CALL = "call.json"


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, dict) or hasattr(value, "keys"):
        return {str(k): _jsonable(value[k]) for k in value.keys()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', type(value).__name__)}"
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return repr(value)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(_jsonable(value), sort_keys=True).encode()).hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> Dict[str, str]:
    """The model's class, config and a digest of its weights (a sample of each parameter, cheap)."""
    config = getattr(model, "config", None)
    cfg = config.to_dict() if hasattr(config, "to_dict") else {}
    cfg = {k: v for k, v in cfg.items() if k not in ("_name_or_path", "transformers_version", "torch_dtype", "dtype")}
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        h.update(name.encode())
        h.update(json.dumps([float(x) for x in flat[:64].float().cpu()] + [float(flat.float().sum())]).encode())
    return {"class": type(model).__name__, "config": _digest(cfg), "weights": h.hexdigest()[:16]}


def call_record(kind: str, model: nn.Module, examples: List[Example], options: Dict[str, Any],
                tokenizer: Any) -> Dict[str, Any]:
    """What identifies a dataset call: everything that changes its results."""
    tok = None
    if tokenizer is not None:
        tok = {"class": type(tokenizer).__name__, "vocab": _digest(sorted(tokenizer.get_vocab().items()))
               if hasattr(tokenizer, "get_vocab") else ""}
    return {"kind": kind, "options": _jsonable(options), "model": model_fingerprint(model), "tokenizer": tok,
            "examples": [_digest([e.clean, e.corrupted, e.subject, e.target, e.foil, e.marks, e.seed])
                         for e in examples]}


def _difference(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    for key in ("kind", "model", "tokenizer"):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
    oo, no = old.get("options", {}), new.get("options", {})
    for key in sorted(set(oo) | set(no)):
        if oo.get(key) != no.get(key):
            return f"option {key}: {oo.get(key)!r} there, {no.get(key)!r} now"
    oe, ne = old.get("examples", []), new.get("examples", [])
    if len(oe) != len(ne):
        return f"number of examples: {len(oe)} there, {len(ne)} now"
    for i, (a, b) in enumerate(zip(oe, ne)):
        if a != b:
            return f"example {i} differs"
    return None


def _write_atomic(folder: str, name: str, write: Callable[[str], Any], owned: bool = True) -> None:
    """``io.atomic.replace_file``; when this process alone writes ``name`` (``owned``: an example's file, one
    rank per example) the temporaries a killed writer of it left are removed first, so a resumed folder
    holds only complete files."""
    if owned:
        remove_temporaries(folder, [name])
    replace_file(folder, name, write)


class ResultStore:
    """The ``save_to`` folder of one dataset call: finished examples in, finished examples out."""

    def __init__(self, folder: Union[str, os.PathLike], record: Dict[str, Any], write: bool = True) -> None:
        self.folder = os.path.abspath(os.path.expanduser(os.fspath(folder)))
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise InputError(f"save_to={os.fspath(folder)!r} exists and is not a folder: give a folder path.")
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, CALL)
        if os.path.exists(path):
            try:
                old = json.loads(open(path, encoding="utf-8").read())
            except (OSError, ValueError) as exc:
                raise InputError(f"save_to {self.folder!r}: its {CALL} cannot be read ({exc}); give another folder.") from None
            diff = _difference(old, record)
            if diff:
                raise InputError(f"save_to {self.folder!r} holds the results of a different call ({diff}): give another "
                                 "folder, or delete this one to start over.")
        elif write:
            # every rank may write the same call.json at once: none removes another's temporary file
            _write_atomic(self.folder, CALL, lambda tmp: open(tmp, "w", encoding="utf-8").write(json.dumps(record)),
                          owned=False)

    def _name(self, index: int, error: bool) -> str:
        return f"example-{index:06d}" + (".error.json" if error else ".safetensors")

    def load(self, n: int) -> Tuple[Dict[int, SweepResult], Dict[int, str]]:
        """The examples already finished: (results, errors) by index."""
        done: Dict[int, SweepResult] = {}
        errors: Dict[int, str] = {}
        for i in range(n):
            path = os.path.join(self.folder, self._name(i, False))
            if os.path.exists(path):
                done[i] = SweepResult.load(path)
                continue
            err = os.path.join(self.folder, self._name(i, True))
            if os.path.exists(err):
                errors[i] = json.loads(open(err, encoding="utf-8").read())["error"]
        return done, errors

    def put(self, index: int, result: SweepResult) -> None:
        _write_atomic(self.folder, self._name(index, False), result.save)

    def put_error(self, index: int, message: str) -> None:
        _write_atomic(self.folder, self._name(index, True),
                      lambda tmp: open(tmp, "w", encoding="utf-8").write(json.dumps({"error": message})))
