"""``DatasetResult``: one ``SweepResult`` per example, their aligned averages, plots, tables and files."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch

from ..errors import InputError
from .average import aligned_average
from .result import SweepResult

_IMAGE = (".png", ".pdf", ".svg")


@dataclass
class DatasetResult:
    """The results of a sweep over a dataset, in example order.

    ``per_example[i]`` is example ``i``'s ``SweepResult`` (equal to the single call on it), or None
    when it could not run; ``errors[i]`` then says why. ``average(...)`` aligns and averages them.
    """

    per_example: List[Optional[SweepResult]]
    kind: str = "patching_sweep"
    errors: Dict[int, str] = field(default_factory=dict)
    marks: List[Optional[Dict[str, int]]] = field(default_factory=list)
    info: Dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.per_example)

    def __getitem__(self, i: int) -> Optional[SweepResult]:
        return self.per_example[i]

    def __repr__(self) -> str:
        return (f"DatasetResult({self.kind}, {len(self)} examples"
                + (f", {len(self.errors)} failed" if self.errors else "") + ")")

    @property
    def finished(self) -> List[int]:
        """Indices of the examples that have a result."""
        return [i for i, r in enumerate(self.per_example) if r is not None]

    def subset(self, indices: Sequence[int]) -> "DatasetResult":
        """A result with only these examples (renumbered in the given order)."""
        keep = list(indices)
        marks = [self.marks[i] if i < len(self.marks) else None for i in keep]
        errors = {k: self.errors[i] for k, i in enumerate(keep) if i in self.errors}
        return DatasetResult([self.per_example[i] for i in keep], self.kind, errors, marks, dict(self.info))

    def average(self, align: Optional[str] = None, marks: Optional[Sequence[Optional[Mapping[str, int]]]] = None,
                normalise: bool = False) -> SweepResult:
        """Mean over examples as a ``SweepResult`` whose position labels (``tokens``) name the rows.

        ``align``: ``"subject"`` (ROME's six rows), ``"end"`` (the last tokens), ``"marks"`` (named
        positions, the sweep's ``marks=`` or ``marks`` here), or None (the same positions in every
        example; the marks when every example has them). ``normalise=True``: each example as
        ``(patched - corrupted) / (clean - corrupted)`` first (a zero gap is an error naming it).
        ``tensors["stderr"]`` holds the standard error and ``tensors["count"]`` the samples per row.
        """
        if marks is not None and len(marks) != len(self):
            raise InputError(f"marks has {len(marks)} entries for {len(self)} examples: give one per example.")
        stored = self.marks if len(self.marks) == len(self) else [None] * len(self)
        use = list(marks) if marks is not None else None
        if use is None and (align == "marks" or (align is None and stored and all(
                stored[i] for i in self.finished))):
            use = stored
        results = [(i, self.per_example[i]) for i in self.finished]
        return aligned_average(results, align if align != "marks" else None, use, normalise)

    def plot(self, path: Union[str, Path, None] = None, align: Optional[str] = None, normalise: bool = False,
             title: Optional[str] = None) -> Any:
        """The heatmap of ``average(align, normalise=normalise)`` with the row names."""
        return self.average(align, normalise=normalise).plot(path, title=title)

    def summary(self, align: Optional[str] = None, normalise: bool = False) -> str:
        """The counts (ran, resumed from ``save_to``, failed) and the average's summary."""
        avg = self.average(align, normalise=normalise)
        resumed = self.info.get("resumed", 0)
        lines = [f"{self.kind} over {len(self)} examples ({len(self.finished)} ran"
                 + (f", {resumed} of them resumed from save_to" if resumed else "")
                 + (f", {len(self.errors)} failed: {sorted(self.errors)[:10]}" if self.errors else "") + "); "
                 + f"average {avg.info['align']} aligned" + (", normalised" if normalise else "")]
        lines += avg.summary().splitlines()
        return "\n".join(lines)

    def to_pandas(self) -> Any:
        """Long format: one row per example and cell (example, component, layer, position, token[, head], value)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("DatasetResult.to_pandas() needs pandas, an optional dependency: "
                              "pip install 'intervenable[pandas]' (or pip install pandas).") from None
        frames = []
        for i in self.finished:
            frame = self.per_example[i].to_pandas()
            frame.insert(0, "example", i)
            frames.append(frame)
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- files ---------------------------------------------------------------------------
    def _meta(self) -> Dict[str, Any]:
        return {"kind": self.kind, "errors": {str(k): v for k, v in self.errors.items()}, "marks": self.marks,
                "info": {k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool, type(None)))},
                "examples": [r._meta() if r is not None else None for r in self.per_example]}

    def save(self, path: Union[str, Path], align: Optional[str] = None) -> Path:
        """``.png``/``.pdf``/``.svg``: the average's heatmap; ``.json``, ``.pt``, ``.safetensors``: every example."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ext = path.suffix.lower()
        if ext in _IMAGE:
            self.plot(path, align=align)
            return path
        tensors: Dict[str, torch.Tensor] = {}
        for i, r in enumerate(self.per_example):
            if r is not None:
                tensors[f"{i}/values"] = r.values.contiguous()
                tensors.update({f"{i}/{k}": v.contiguous() for k, v in r.tensors.items()})
        meta = json.dumps(self._meta())
        if ext == ".json":
            data = self._meta()
            for i, r in enumerate(self.per_example):
                if r is not None:
                    data["examples"][i]["values"] = r.values.tolist()
            path.write_text(json.dumps(data))
        elif ext == ".pt":
            torch.save({"meta": meta, **tensors}, path)
        elif ext == ".safetensors":
            from ..io.common import write_safetensors

            write_safetensors(str(path), tensors, metadata={"meta": meta})
        else:
            raise InputError(f"Cannot save a dataset result as {ext or 'a file without extension'!r}: use .png, .pdf, "
                             ".svg, .json, .pt or .safetensors.")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "DatasetResult":
        """Load a result saved as ``.json``, ``.pt`` (tensors only, ``weights_only``) or ``.safetensors``."""
        path = Path(path)
        ext = path.suffix.lower()
        tensors: Dict[str, torch.Tensor] = {}
        if ext == ".json":
            meta = json.loads(path.read_text())
            for i, m in enumerate(meta["examples"]):
                if m is not None:
                    tensors[f"{i}/values"] = torch.tensor(m.pop("values"))
        elif ext == ".pt":
            data = torch.load(path, weights_only=True)
            meta = json.loads(data.pop("meta"))
            tensors = data
        elif ext == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["meta"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            raise InputError(f"Cannot load a dataset result from {ext!r}: use .json, .pt or .safetensors.")
        per: List[Optional[SweepResult]] = []
        for i, m in enumerate(meta["examples"]):
            if m is None:
                per.append(None)
                continue
            m = dict(m)
            m["subject"] = tuple(m["subject"]) if m.get("subject") is not None else None
            own = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.split("/", 1)[0] == str(i)}
            per.append(SweepResult(values=own.pop("values"), tensors=own, **m))
        return cls(per, meta["kind"], {int(k): v for k, v in meta["errors"].items()}, meta["marks"], meta["info"])
