"""More pretrained-model helpers of the reference library: OLMo, LLaVA, BLIP, GPT-OSS, Backpack GPT-2.

Same signatures and return values as the reference's ``create_*`` functions,
with the offline rules of ``hf.resolve_source`` (a local folder or the local
cache first; a clear ``InputError`` instead of a hang without a network).
``transformers`` modelling code is imported only when a function is called.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from ..errors import InputError
from .hf import _create, _optional_tokenizer, resolve_source


def _model_class(class_name: str, family: str) -> Any:
    """``transformers.<class_name>``, or an ``InputError`` naming the missing family."""
    import transformers

    try:
        return getattr(transformers, class_name)
    except (AttributeError, ImportError) as err:
        raise InputError(
            f"This transformers ({transformers.__version__}) has no {class_name}, needed for {family}: "
            f"upgrade transformers (pip install -U transformers). ({err})"
        ) from err


def create_olmo(
    name: str = "allenai/OLMo-7B-0424-hf",
    cache_dir: Optional[str] = None,
    dtype: Any = torch.bfloat16,
    config: Any = None,
    revision: str = "main",
) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, OLMo causal LM)``: pretrained in ``dtype``, or randomly initialised from ``config``."""
    _model_class("OlmoForCausalLM", "OLMo")
    if config is not None:
        from transformers import AutoModelForCausalLM

        return config, _optional_tokenizer(name, cache_dir), AutoModelForCausalLM.from_config(config)
    return _create(name, cache_dir, "AutoModelForCausalLM", dtype=dtype, revision=revision)


def create_gpt_oss(name: str = "openai/gpt-oss-20b", cache_dir: Optional[str] = None, access_token: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, GPT-OSS causal LM)`` from a hub name or local folder."""
    _model_class("GptOssForCausalLM", "GPT-OSS")
    extra = {"token": access_token} if access_token is not None else {}
    return _create(name, cache_dir, "AutoModelForCausalLM", **extra)


def create_llava(name: str = "llava-hf/llava-1.5-7b-hf", cache_dir: Optional[str] = None, dtype: Any = torch.bfloat16) -> Tuple[Any, Any, Any, Any]:
    """``(config, tokenizer, LlavaForConditionalGeneration, image_processor)`` as in the reference (four values)."""
    _model_class("LlavaForConditionalGeneration", "LLaVA")
    from transformers import AutoProcessor, AutoTokenizer

    config, _, model = _create(name, cache_dir, "LlavaForConditionalGeneration", dtype=dtype, tokenizer=False)
    kwargs = resolve_source(name, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(name, use_fast=False, **kwargs)
    processor = AutoProcessor.from_pretrained(name, **kwargs)
    return config, tokenizer, model, processor


def _blip(name: str, cache_dir: Optional[str], class_name: str) -> Tuple[Any, Any, Any]:
    _model_class(class_name, "BLIP")
    from transformers import BlipProcessor

    config, _, model = _create(name, cache_dir, class_name, tokenizer=False)
    processor = BlipProcessor.from_pretrained(name, **resolve_source(name, cache_dir))
    return config, processor, model


def create_blip(name: str = "Salesforce/blip-vqa-base", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, processor, BlipForQuestionAnswering)`` from a hub name or local folder."""
    return _blip(name, cache_dir, "BlipForQuestionAnswering")


def create_blip_itm(name: str = "Salesforce/blip-itm-base-coco", cache_dir: Optional[str] = None) -> Tuple[Any, Any, Any]:
    """``(config, processor, BlipForImageTextRetrieval)`` from a hub name or local folder."""
    return _blip(name, cache_dir, "BlipForImageTextRetrieval")


def create_backpack_gpt2(name: str = "stanfordnlp/backpack-gpt2", cache_dir: Optional[str] = None, trust_remote_code: bool = False) -> Tuple[Any, Any, Any]:
    """``(config, tokenizer, Backpack GPT-2)`` using the model repository's own code.

    intervenable does not ship a Backpack model class (the reference ships one).
    Loading runs code from the model repository, so it must be asked for:
    ``trust_remote_code=True``. Components are then raw module paths (e.g.
    ``"backpack.sense_network.output"``), as in the reference's tutorial.
    """
    if not trust_remote_code:
        raise InputError(
            "create_backpack_gpt2 loads the Backpack model with the code in its model repository "
            f"({name!r}); intervenable does not ship a Backpack class. Pass trust_remote_code=True to "
            "allow running that code."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = resolve_source(name, cache_dir)
    model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained("gpt2", **resolve_source("gpt2", cache_dir))
    return model.config, tokenizer, model.eval()
