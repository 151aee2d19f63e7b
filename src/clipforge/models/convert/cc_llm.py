"""The released caption-contrastive LLM (``microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned``) -> an encoder folder.

The release is an LLM2Vec ``LlamaEncoderModel`` (bidirectional ``LlamaModel``) with every LoRA merged: a Hugging
Face folder whose ``config.json`` names ``architectures: [LlamaEncoderModel]`` and an ``auto_map`` to McGill-NLP's
remote code, weights named like ``LlamaModel``'s (``embed_tokens``, ``layers.{i}.*``, ``norm``; a checkpoint saved
from a causal-LM class has them under ``model.``), and the Llama-3 tokenizer. LLM2CLIP reads it with ``LLM2Vec(model,
tokenizer, pooling_mode="mean", max_length=512)`` after forcing ``config._name_or_path`` to
``meta-llama/Meta-Llama-3-8B-Instruct``, so the Llama-3 chat wrapper is applied.

:func:`convert_cc_llm` writes a self-describing encoder folder that :class:`~clipforge.models.llm_encoder.LLMEncoder`
(``from_pretrained``, ``LLMEncoderSpec(name_or_path=<folder>)``, the embedding job) loads without remote code:
the weights (linked, not copied, by default), the tokenizer files, a ``config.json`` without ``auto_map`` and an
``encoder_config.json`` with those settings — bidirectional attention, mean pooling over the caption and
``<|eot_id|>``, the chat wrapper, 512 tokens, bf16. ``clipforge convert cc-llm <release> <out>``.

Design notes: docs/design/llm2clip.md#released-checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil

__all__ = ["LLAMA3_TEMPLATE", "LLM2CLIP_ENCODER_SETTINGS", "convert_cc_llm"]

LLAMA3_TEMPLATE = "<|start_header_id|>user<|end_header_id|>\n\n{text}<|eot_id|>"
"""LLM2Vec's Llama-3 wrapper (``separator`` handling aside: no instruction for captions)."""

LLM2CLIP_ENCODER_SETTINGS = {
    "bidirectional": True,
    "pooling": "mean",
    "instruction": "",
    "instruction_format": "{instruction}; ",
    "template": LLAMA3_TEMPLATE,
    "max_length": 512,
    "dtype": "bfloat16",
}
"""How LLM2CLIP's ``extract_embedding.py`` reads the CC-finetuned LLM."""

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "generation_config.json",
    "chat_template.jinja",
)


def convert_cc_llm(src: str, out: str, link: bool = True, **settings) -> str:
    """Write an encoder folder for a released CC-finetuned LLM folder; returns ``out``.

    Args:
        src: the downloaded release (``config.json``, weight shards, tokenizer).
        out: the encoder folder to write (created).
        link: symlink the weight files instead of copying them (16 GB for Llama-3-8B).
        **settings: overrides of :data:`LLM2CLIP_ENCODER_SETTINGS` (e.g. ``dtype="float32"``, ``max_length=256``).

    Raises:
        FileNotFoundError: ``src`` has no ``config.json`` or no weight file.
        ValueError: the config is not a Llama-family model, or an unknown setting is given.
    """
    unknown = set(settings) - set(LLM2CLIP_ENCODER_SETTINGS)
    if unknown:
        raise ValueError(f"unknown encoder settings: {sorted(unknown)}")
    config_path = os.path.join(src, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{src}: no config.json (download the whole release folder)")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("model_type") != "llama":
        raise ValueError(
            f"{src}: model_type {config.get('model_type')!r}; the CC-finetuned releases are Llama"
        )
    weights = sorted(f for f in os.listdir(src) if f.endswith(_WEIGHT_SUFFIXES))
    if not any(f.endswith((".safetensors", ".bin")) for f in weights):
        raise FileNotFoundError(f"{src}: no .safetensors / .bin weight files")
    os.makedirs(out, exist_ok=True)
    # the weights load into transformers' own LlamaModel: the remote-code pointer and class name go
    config.pop("auto_map", None)
    config["architectures"] = ["LlamaModel"]
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    for name in weights:
        target = os.path.join(out, name)
        if os.path.lexists(target):
            os.remove(target)
        if link:
            os.symlink(os.path.abspath(os.path.join(src, name)), target)
        else:
            shutil.copy2(os.path.join(src, name), target)
    for name in _TOKENIZER_FILES:
        if os.path.isfile(os.path.join(src, name)):
            shutil.copy2(os.path.join(src, name), os.path.join(out, name))
    encoder_config = {**LLM2CLIP_ENCODER_SETTINGS, **settings, "source": os.path.abspath(src)}
    with open(os.path.join(out, "encoder_config.json"), "w", encoding="utf-8") as f:
        json.dump(encoder_config, f, indent=2)
    return out
