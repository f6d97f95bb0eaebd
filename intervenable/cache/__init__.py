"""Activation caches: one-pass ``run_with_cache``, the residual-stream toolkit on it, per-step caches of
generation, and activation datasets on disk (``cache_to_disk`` / ``load_cache``). See docs/cache.md."""
from .generate import StepCache, generate_with_cache
from .run import run_with_cache
from .store import ActivationCache

__all__ = ["ActivationCache", "StepCache", "generate_with_cache", "run_with_cache"]
