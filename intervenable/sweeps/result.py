"""``SweepResult``: a sweep's scores with labelled axes; pandas, plots, and data-only saving."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from ..errors import InputError

_META_KEYS = ("components", "layers", "positions", "heads", "tokens", "metric", "target", "kind", "subject", "info",
              "latents")


@dataclass
class SweepResult:
    """Scores ``values[component, layer, position(, head | latent)]`` of a patching sweep or causal trace.

    ``latents``: the SAE latent ids of the last axis of a feature sweep (``pv.feature_patching``).

    ``info`` holds the clean and corrupted scores (``clean_score``, ``corrupted_score``), the path
    used (``fast`` or ``general``), the batch size, the number of forwards and the time taken.
    """

    values: torch.Tensor
    components: List[str]
    layers: List[int]
    positions: List[int]
    tokens: List[str]
    metric: str = "prob"
    target: Optional[int] = None
    kind: str = "patching_sweep"
    heads: Optional[List[int]] = None
    subject: Optional[Tuple[int, int]] = None
    info: Dict[str, Any] = field(default_factory=dict)
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)
    latents: Optional[List[int]] = None

    # -- reading -----------------------------------------------------------------
    @property
    def axes(self) -> Tuple[str, ...]:
        return ("component", "layer", "position") + (("head",) if self.heads else ("latent",) if self.latents else ())

    @property
    def clean_score(self) -> float:
        return float(self.info.get("clean_score", float("nan")))

    @property
    def corrupted_score(self) -> float:
        return float(self.info.get("corrupted_score", float("nan")))

    def __getitem__(self, component: Union[str, int]) -> torch.Tensor:
        """The ``[layer, position(, head)]`` scores of one component (by name or index)."""
        if isinstance(component, str):
            if component not in self.components:
                raise KeyError(f"No component {component!r} in this result; it has {self.components}.")
            component = self.components.index(component)
        return self.values[component]

    def best(self, component: Union[str, int, None] = None) -> Dict[str, Any]:
        """Where the score is highest: component, layer, position, token (and head), value."""
        comps = [component] if component is not None else self.components
        best: Dict[str, Any] = {}
        for comp in comps:
            v = self[comp]
            idx = [int(i) for i in torch.unravel_index(torch.argmax(v), v.shape)]
            value = float(v[tuple(idx)])
            if not best or value > best["value"]:
                name = comp if isinstance(comp, str) else self.components[comp]
                best = {"component": name, "layer": self.layers[idx[0]], "position": self.positions[idx[1]],
                        "token": self.tokens[idx[1]], "value": value}
                if self.heads:
                    best["head"] = self.heads[idx[2]]
                elif self.latents:
                    best["latent"] = self.latents[idx[2]]
        return best

    def summary(self) -> str:
        """A few lines: clean / corrupted scores and where restoring helps most."""
        text = self.info.get("target_text")
        target = "" if self.target is None else (f" of {text!r} (token {self.target})" if text is not None
                                                 else f" of token {self.target}")
        method = f" ({self.info['method']})" if self.info.get("method") else ""
        lines = [f"{self.kind}{method}: metric {self.metric}{target}",
                 f"  clean {self.clean_score:.4f}, corrupted {self.corrupted_score:.4f}"]
        for comp in self.components:
            b = self.best(comp)
            lines.append(f"  {comp}: best {b['value']:.4f} at layer {b['layer']}, position {b['position']} "
                         f"({b['token']!r})" + (f", head {b['head']}" if "head" in b else "")
                         + (f", latent {b['latent']}" if "latent" in b else ""))
        if "exact" in self.tensors:
            lines += self._verified_lines()
        return "\n".join(lines)

    def _verified_lines(self, limit: int = 10) -> List[str]:
        """Estimate beside exact value for the cells an attribution sweep verified (``tensors["exact"]``)."""
        exact = self.tensors["exact"]
        cells = [[int(i) for i in c] for c in torch.nonzero(~torch.isnan(exact)).tolist()]
        cells.sort(key=lambda c: -abs(float(self.values[tuple(c)]) - self.corrupted_score))
        lines = [f"  verified {len(cells)} cells by exact patching: max |estimate - exact| "
                 f"{float(self.info.get('verify_max_abs_error', float('nan'))):.4f}"]
        for c in cells[:limit]:
            where = (f"{self.components[c[0]]} layer {self.layers[c[1]]}, position {self.positions[c[2]]} "
                     f"({self.tokens[c[2]]!r})" + (f", head {self.heads[c[3]]}" if self.heads else "")
                     + (f", latent {self.latents[c[3]]}" if self.latents else ""))
            lines.append(f"    {where}: estimate {float(self.values[tuple(c)]):.4f}, exact {float(exact[tuple(c)]):.4f}")
        return lines

    def __repr__(self) -> str:
        dims = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape))
        return f"SweepResult({self.kind}, {dims}, metric={self.metric!r})"

    def to_pandas(self) -> Any:
        """A long-format DataFrame: one row per cell (component, layer, position, token[, head], value)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("SweepResult.to_pandas() needs pandas, an optional dependency: "
                              "pip install 'intervenable[pandas]' (or pip install pandas).") from None
        records = []
        for idx in torch.cartesian_prod(*[torch.arange(n) for n in self.values.shape]).reshape(-1, self.values.dim()).tolist():
            rec = {"component": self.components[idx[0]], "layer": self.layers[idx[1]],
                   "position": self.positions[idx[2]], "token": self.tokens[idx[2]]}
            if self.heads:
                rec["head"] = self.heads[idx[3]]
            elif self.latents:
                rec["latent"] = self.latents[idx[3]]
            rec["value"] = float(self.values[tuple(idx)])
            records.append(rec)
        return pd.DataFrame.from_records(records)

    # -- drawing and saving --------------------------------------------------------
    def plot(self, path: Union[str, Path, None] = None, title: Optional[str] = None) -> Any:
        """A heatmap per component (tokens down, layers across); saved to ``path`` when given."""
        from ..plot import plot_sweep

        return plot_sweep(self, path=path, title=title)

    def _meta(self) -> Dict[str, Any]:
        meta = {k: getattr(self, k) for k in _META_KEYS}
        meta["subject"] = list(self.subject) if self.subject is not None else None
        meta["info"] = {k: v for k, v in self.info.items() if isinstance(v, (int, float, str, bool, type(None)))}
        return meta

    def save(self, path: Union[str, Path]) -> Path:
        """Save by extension: ``.png``/``.pdf``/``.svg`` (heatmap), ``.pt``, ``.json`` or ``.safetensors`` (data)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ext = path.suffix.lower()
        if ext in (".png", ".pdf", ".svg"):
            self.plot(path)
        elif ext == ".pt":
            torch.save({"values": self.values, "meta": json.dumps(self._meta()), **self.tensors}, path)
        elif ext == ".json":
            path.write_text(json.dumps({"values": self.values.tolist(), **self._meta()}, indent=1))
        elif ext == ".safetensors":
            from ..io.common import write_safetensors

            write_safetensors(str(path), {"values": self.values.contiguous(),
                                          **{k: v.contiguous() for k, v in self.tensors.items()}},
                              metadata={"meta": json.dumps(self._meta())})
        else:
            raise InputError(f"Cannot save a sweep as {ext or 'a file without extension'!r}: use .png, .pdf, .svg, "
                             ".pt, .json or .safetensors.")
        return path

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SweepResult":
        """Load a result saved as ``.pt`` (tensors only, ``weights_only``), ``.json`` or ``.safetensors``."""
        path = Path(path)
        ext = path.suffix.lower()
        tensors: Dict[str, torch.Tensor] = {}
        if ext == ".pt":
            data = torch.load(path, weights_only=True)
            values, meta = data.pop("values"), json.loads(data.pop("meta"))
            tensors = data
        elif ext == ".json":
            meta = json.loads(path.read_text())
            values = torch.tensor(meta.pop("values"))
        elif ext == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["meta"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            values = tensors.pop("values")
        else:
            raise InputError(f"Cannot load a sweep from {ext!r}: use .pt, .json or .safetensors.")
        meta["subject"] = tuple(meta["subject"]) if meta.get("subject") is not None else None
        return cls(values=values, tensors=tensors, **meta)
