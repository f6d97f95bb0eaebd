"""Batched patching sweeps: causal tracing (ROME) and activation patching, in few forwards.

``causal_trace`` and ``patching_sweep`` cache the clean run once and pack many
patched runs into the batch dimension; for GPT-2- and LLaMA-style decoders a
fast path also reuses the corrupted run's states below each patch (see
``fast.py`` and docs/sweeps.md). ``attribution_patching`` estimates a patching
sweep from gradients (``attribution.py``, docs/attribution.md). Each takes one prompt (pair) or a
dataset (lists or rows, parsed by ``examples``) and then returns a ``DatasetResult``.
"""
from .api import causal_trace, patching_sweep
from .attribution import attribution_patching
from .dataset_result import DatasetResult
from .examples import Example, Examples, examples, read_jsonl
from .result import SweepResult
from .spec import Write, window_layers

__all__ = ["attribution_patching", "causal_trace", "DatasetResult", "Example", "Examples", "examples",
           "patching_sweep", "read_jsonl", "SweepResult", "Write", "window_layers"]
