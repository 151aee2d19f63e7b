"""Weights of a :class:`~clipforge.models.vlm.model.VisionLanguageModel`: dtype names, skipped initialisation, loading.

A saved folder's weights are loaded into a model allocated without initialisation (:func:`no_init`), strictly
(:func:`load_weights`).
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from torch import nn

__all__ = ["load_weights", "no_init", "parse_dtype"]


def parse_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` named ``name`` (``float32``, ``bfloat16``, ``torch.float16``...).

    Raises:
        ValueError: ``name`` is not a torch dtype.
    """
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={name!r} is not a torch dtype name (float32, bfloat16, float16)")
    return value


def no_init(empty: bool):
    """Skip weight initialisation when the weights are loaded right after construction."""
    if not empty:
        return contextlib.nullcontext()
    from transformers.initialization import no_init_weights

    return no_init_weights()


def load_weights(model: nn.Module, path: str) -> None:
    """Load a folder's safetensors (one file or shards + index) into ``model``, strictly.

    Tensors a checkpoint leaves out must be tied to one it has (an LM head tied to the input embeddings is
    re-tied here); anything else missing or unexpected is an error naming the keys.
    """
    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    own = set(model.state_dict())
    loaded: set[str] = set()
    for name in files:
        shard = load_file(os.path.join(path, name))
        unexpected = sorted(set(shard) - own)
        if unexpected:
            raise ValueError(f"{path}/{name}: unexpected weights {unexpected[:5]} ({len(unexpected)} in all)")
        model.load_state_dict(shard, strict=False)
        loaded |= set(shard)
    llm = getattr(model, "model", None)
    if llm is not None and hasattr(llm, "tie_weights"):
        llm.tie_weights()
    state = model.state_dict()
    have = {state[k].untyped_storage().data_ptr() for k in loaded}
    missing = sorted(k for k in own - loaded if state[k].untyped_storage().data_ptr() not in have)
    if missing:
        raise ValueError(f"{path}: missing weights {missing[:5]} ({len(missing)} in all)")
