"""Circuit discovery: edge attribution patching (EAP, EAP-IG, exact) on the residual stream's edges,
selection and pruning, faithfulness curves (docs/circuits.md)."""
from .circuit import Circuit
from .faithfulness import FaithfulnessResult, faithfulness
from .graph import GraphLayout, layout_of
from .scoring import edge_attribution_patching

__all__ = ["Circuit", "FaithfulnessResult", "GraphLayout", "edge_attribution_patching", "faithfulness", "layout_of"]
