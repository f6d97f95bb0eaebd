"""Small built-in models of the reference library's tutorials and pretrained-model helpers.

Names are imported on first use: the MLP and GRU subclass transformers'
``PreTrainedModel``, whose import costs seconds, so ``import intervenable``
must not pull them in.
"""
from __future__ import annotations

from typing import Dict, List

from ..lazy import lazy_exports

_WHERE: Dict[str, str] = {
    **dict.fromkeys(("GRUCell", "GRUConfig", "GRUForClassification", "GRULMHeadModel", "GRUModel",
                     "create_gru", "create_gru_classifier", "create_gru_lm"), ".gru"),
    **dict.fromkeys(("create_gpt2", "create_gpt2_lm", "create_gpt_neo", "create_gpt_neox", "create_llama"), ".hf"),
    **dict.fromkeys(("create_backpack_gpt2", "create_blip", "create_blip_itm", "create_gpt_oss", "create_llava",
                     "create_olmo"), ".hub_families"),
    **dict.fromkeys(("MLPConfig", "MLPForClassification", "MLPModel", "create_mlp_classifier"), ".mlp"),
}

__all__: List[str] = list(_WHERE)


# pv.models.constants (CONST_OUTPUT_HOOK, as in the reference) is found as a submodule
__getattr__, __dir__ = lazy_exports(__name__, _WHERE)
