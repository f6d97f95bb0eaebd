"""Activation caches: one-pass ``run_with_cache``, the residual-stream toolkit on it, per-step caches of
generation, and activation datasets on disk (``cache_to_disk`` / ``load_cache``). See docs/cache.md."""
from .generate import StepCache, generate_with_cache
from .reader import CachedActivations, load_cache
from .run import run_with_cache
from .store import ActivationCache
from .writer import cache_to_disk

__all__ = ["ActivationCache", "CachedActivations", "StepCache", "cache_to_disk", "generate_with_cache", "load_cache",
           "run_with_cache"]
