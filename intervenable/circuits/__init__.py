"""Circuit discovery: edge attribution patching (EAP, EAP-IG, exact) on the residual stream's edges,
selection and pruning, faithfulness curves (docs/circuits.md)."""
from .circuit import Circuit

from .graph import GraphLayout, layout_of
from .scoring import edge_attribution_patching

__all__ = ["Circuit", "GraphLayout", "edge_attribution_patching", "layout_of"]
