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
import warnings
from typing import Any, Dict, Optional, Tuple
from urllib.parse import urlparse

import torch

from ..errors import InputError
from ..version import configs_name_dtype

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


def dtype_kwargs(dtype: Any) -> Dict[str, Any]:
    """``from_pretrained``'s keyword for ``dtype``: ``dtype`` where configs have that attribute (transformers
    4.56 on), else ``torch_dtype`` (4.45 would keep an unknown ``dtype`` on the config, unserialisable)."""
    if dtype is None:
        return {}
    return {"dtype" if configs_name_dtype() else "torch_dtype": dtype}


def _create(
    name: str,
    cache_dir: Optional[str],
    model_cls: str,
    dtype: Any = None,
    tokenizer: bool = True,
    eager: bool = False,
    **hub_kwargs: Any,
) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer_or_None, model)`` loaded by ``transformers.<model_cls>.from_pretrained``.

    ``hub_kwargs`` (``revision``, ``token``) go to every ``from_pretrained`` call.
    """
    import transformers

    kwargs = {**resolve_source(name, cache_dir), **hub_kwargs}
    config = transformers.AutoConfig.from_pretrained(name, **kwargs)
    if eager:
        _use_eager_attention(config)
    tok = None
    if tokenizer:
        try:
            tok = transformers.AutoTokenizer.from_pretrained(name, **kwargs)
        except (OSError, ValueError, TypeError, ImportError):
            # A folder with weights only: the model is still usable (transformers 4.x then tries to convert
            # a slow tokenizer that is not there, and may fail on a missing converter such as protobuf).
            tok = None
    model = getattr(transformers, model_cls).from_pretrained(name, config=config, **kwargs, **dtype_kwargs(dtype))
    return config, tok, model.eval()


def _use_eager_attention(config: Any) -> None:
    """Plain (eager) attention, as the reference loads GPT-2: attention weights are computed and returned."""
    if hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"


def _optional_tokenizer(name: Optional[str], cache_dir: Optional[str]) -> Any:
    """The tokenizer of ``name`` for a randomly initialised model, or None (with a warning) when unavailable."""
    if not name:
        return None
    try:
        return load_tokenizer(name, cache_dir)
    except (InputError, OSError, ValueError, TypeError) as err:
        warnings.warn(f"No tokenizer for {name!r} ({err}); returning None in its place.", stacklevel=3)
        return None


def _from_config(model_cls: str, config: Any, name: Optional[str], cache_dir: Optional[str], eager: bool = False) -> Tuple[Any, Any, Any]:
    import transformers

    if eager:
        _use_eager_attention(config)
    return config, _optional_tokenizer(name, cache_dir), getattr(transformers, model_cls)(config)


def create_gpt2(name: str = "gpt2", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPT2Model)`` from a hub name or local folder, with eager attention."""
    return _create(name, cache_dir, "GPT2Model", eager=True)


def create_gpt2_lm(name: str = "gpt2", config: Any = None, cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPT2LMHeadModel)`` with eager attention.

    With ``config``, a randomly initialised model of that config; the tokenizer
    of ``name`` is returned when it is available locally, else None.
    """
    if config is not None:
        return _from_config("GPT2LMHeadModel", config, name, cache_dir, eager=True)
    return _create(name, cache_dir, "GPT2LMHeadModel", eager=True)


def create_llama(
    name: str = "sharpbai/alpaca-7b-merged",
    cache_dir: Optional[str] = None,
    dtype: Any = torch.bfloat16,
    config: Any = None,
) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, LlamaForCausalLM)`` from a hub name or local folder, in ``dtype`` (bf16 as the reference).

    With ``config``, a randomly initialised model of that config (in the default
    dtype); the tokenizer of ``name`` is returned when available locally, else None.
    """
    if config is not None:
        return _from_config("LlamaForCausalLM", config, name, cache_dir)
    return _create(name, cache_dir, "LlamaForCausalLM", dtype=dtype)


def create_gpt_neo(name: str = "roneneldan/TinyStories-33M", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPTNeoForCausalLM)`` from a hub name or local folder."""
    return _create(name, cache_dir, "GPTNeoForCausalLM")


def create_gpt_neox(name: str = "EleutherAI/pythia-70m", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPTNeoXForCausalLM)`` from a hub name or local folder."""
    return _create(name, cache_dir, "GPTNeoXForCausalLM")
