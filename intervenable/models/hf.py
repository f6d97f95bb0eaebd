"""Pretrained Hugging Face models by hub name or local folder, never hanging without a network.

``create_gpt2(name="gpt2", cache_dir=None)`` and friends return
``(config, tokenizer, model)`` as in the reference library. A name is looked up
as a local directory first, then in the local Hugging Face cache; only then is
the network tried, after a quick reachability check. With ``HF_HUB_OFFLINE=1``
(or no network) and nothing local, they raise ``InputError`` at once.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Optional, Tuple
from urllib.parse import urlparse

from ..errors import InputError

_TRUE = {"1", "true", "yes", "on"}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in _TRUE


def _cached(name: str, cache_dir: Optional[str]) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub ships with transformers
        return False
    for filename in ("config.json", "tokenizer_config.json"):
        path = try_to_load_from_cache(name, filename, cache_dir=cache_dir)
        if isinstance(path, str):
            return True
    return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.setdefaulttimeout(timeout)
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(None)


def resolve_source(name: str, cache_dir: Optional[str] = None) -> dict:
    """``from_pretrained`` keyword arguments for ``name``, or ``InputError`` when it cannot be had.

    A local folder or a cached hub name loads with ``local_files_only=True``;
    otherwise the hub must be reachable and offline mode off.
    """
    if os.path.isdir(name):
        return {"local_files_only": True}
    if _cached(name, cache_dir):
        return {"local_files_only": True, "cache_dir": cache_dir}
    where = f"cache_dir={cache_dir!r}" if cache_dir else "the default Hugging Face cache"
    if _offline():
        raise InputError(
            f"{name!r} is not a local folder and is not in {where}, and HF_HUB_OFFLINE is set. "
            "Pass a local directory with the model files, download it once with network access, "
            "or unset HF_HUB_OFFLINE."
        )
    if not _hub_reachable():
        raise InputError(
            f"{name!r} is not a local folder and is not in {where}, and the Hugging Face hub cannot be "
            "reached. Pass a local directory with the model files (model.save_pretrained(path)), or "
            "download it once where there is network access; set HF_HUB_OFFLINE=1 to skip this check."
        )
    return {"cache_dir": cache_dir}


def load_tokenizer(name: str, cache_dir: Optional[str] = None) -> Any:
    """``AutoTokenizer.from_pretrained`` with the offline rules of ``resolve_source``."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name, **resolve_source(name, cache_dir))


def _create(name: str, cache_dir: Optional[str], model_cls: str, dtype: Any = None, tokenizer: bool = True) -> Tuple[Any, Any, Any]:
    import transformers

    kwargs = resolve_source(name, cache_dir)
    config = transformers.AutoConfig.from_pretrained(name, **kwargs)
    tok = None
    if tokenizer:
        try:
            tok = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
        except (OSError, ValueError, TypeError):
            tok = None  # a folder with weights only: the model is still usable
    extra = {"dtype": dtype} if dtype is not None else {}
    model = getattr(transformers, model_cls).from_pretrained(name, config=config, **kwargs, **extra)
    return config, tok, model.eval()


def create_gpt2(name: str = "gpt2", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPT2Model)`` from a hub name or local folder."""
    return _create(name, cache_dir, "GPT2Model")


def create_gpt2_lm(name: str = "gpt2", config: Any = None, cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPT2LMHeadModel)``; with ``config`` a randomly initialised model of that config."""
    if config is not None:
        import transformers

        tok = load_tokenizer(name, cache_dir) if name else None
        return config, tok, transformers.GPT2LMHeadModel(config)
    return _create(name, cache_dir, "GPT2LMHeadModel")


def create_llama(name: str = "sharpbai/alpaca-7b-merged", cache_dir: Optional[str] = None, dtype: Any = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, LlamaForCausalLM)`` from a hub name or local folder."""
    return _create(name, cache_dir, "LlamaForCausalLM", dtype=dtype)


def create_gpt_neo(name: str = "roneneldan/TinyStories-33M", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPTNeoForCausalLM)`` from a hub name or local folder."""
    return _create(name, cache_dir, "GPTNeoForCausalLM")


def create_gpt_neox(name: str = "EleutherAI/pythia-70m", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPTNeoXForCausalLM)`` from a hub name or local folder."""
    return _create(name, cache_dir, "GPTNeoXForCausalLM")
