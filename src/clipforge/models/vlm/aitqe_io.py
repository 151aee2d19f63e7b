"""The AITQE folder layout of a :class:`~clipforge.models.vlm.model.VisionLanguageModel`: save and load.

Folder layout, the one of the released ``HymanH/AITQE`` checkpoint (:func:`save_folder`, :func:`load_folder`; the
model's ``save_pretrained`` / ``from_pretrained``):

* ``config.json``: the LLM's config keys at top level plus ``model_type: mm``, ``language_model_name_or_path``,
  ``vision_model_name_or_path``, ``mm_projector_type: mlp``, ``image_aspect_ratio: square``,
  ``image_tile_tokens``, ``pesudo_img_size``, ``pesudo_patch_size`` (sic), ``visual_hidden_dim``,
  ``pooling_kernel``, ``image_token_index``, ``pad_token_index``, ``eos_token_index``, ``IGNORE_INDEX``. Ours add
  ``text_model_type`` (absent = ``qwen2``), ``vision_tower`` (the tower's own config, so a folder is self-contained;
  absent = a SigLIP read from ``vision_model_name_or_path``) and ``image_placeholder``. ``vision_model_name_or_path``
  is written for the official code, which builds its SigLIP from it and keeps patch 0 only when the name contains
  "siglip": a tower's own name when it says "siglip", else the absolute path of ``siglip_vision/`` (see
  :func:`official_vision_name`).
* ``siglip_vision/`` (SigLIP towers not named "siglip"): the tower's ``config.json`` and
  ``preprocessor_config.json``, no weights.
* ``model.safetensors`` (or shards + index): ``model.*`` (the causal LM), ``vision_model.vision_model.*`` (SigLIP)
  or ``vision_model.model.*`` (timm), ``mm_projector.{0,2}.*`` and ``image_newline`` (present in the official
  model, unused by its forward pass and by ours).
* the tokenizer files, with ``vocab.json`` / ``merges.txt`` for the official ``use_fast=False`` load
  (:func:`save_tokenizer`).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, cast

from clipforge.models.lora import merged_state_dict
from clipforge.models.projector import build_projector
from clipforge.models.vlm.spec import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from clipforge.models.vlm.towers import SiglipPatchVision, folder_vision
from clipforge.models.vlm.weights import load_weights, no_init, parse_dtype

if TYPE_CHECKING:
    from clipforge.models.vlm.model import VisionLanguageModel

__all__ = [
    "MM_KEYS",
    "SIGLIP_FOLDER",
    "check_mm_config",
    "folder_config",
    "load_folder",
    "official_vision_name",
    "save_folder",
    "save_tokenizer",
]

SIGLIP_FOLDER = "siglip_vision"
"""Sub-folder of a saved model holding its SigLIP config and image processor for the official code (see
:func:`official_vision_name`)."""

MM_KEYS = (
    "architectures",
    "model_type",
    "auto_map",
    "transformers_version",
    "_name_or_path",
    "language_model_name_or_path",
    "vision_model_name_or_path",
    "mm_projector_type",
    "image_aspect_ratio",
    "image_token_index",
    "pad_token_index",
    "eos_token_index",
    "IGNORE_INDEX",
    "image_tile_tokens",
    "pesudo_img_size",
    "pesudo_patch_size",
    "visual_hidden_dim",
    "pooling_kernel",
    "image_pattern",
    "text_model_type",
    "vision_tower",
    "image_placeholder",
)
"""The ``config.json`` keys of the multimodal wrapper (the rest of the file is the LLM's own config)."""


def load_folder(
    cls: type[VisionLanguageModel],
    path: str,
    dtype: str | None = None,
    vision_model_name_or_path: str | None = None,
    attn_implementation: str | None = None,
) -> VisionLanguageModel:
    """Load a folder in the AITQE layout (ours or the released ``HymanH/AITQE``); ``from_pretrained`` of the model.

    Args:
        cls: the model class to build.
        path: the folder.
        dtype: weight dtype; ``None`` = the one in ``config.json`` (float32 if absent).
        vision_model_name_or_path: a local copy of the SigLIP checkpoint that a released folder's
            ``vision_model_name_or_path`` names (its config and preprocessor config are read; weights come
            from ``path``) — instead of editing ``config.json`` as the official README suggests.
        attn_implementation: the LLM's attention implementation.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        fields = json.load(f)
    mm = {k: fields.pop(k) for k in MM_KEYS if k in fields}
    check_mm_config(mm)
    vision = folder_vision(mm, vision_model_name_or_path)
    if vision.num_tokens != mm.get("image_tile_tokens", vision.num_tokens):
        raise ValueError(
            f"{path}: image_tile_tokens={mm['image_tile_tokens']} but {vision!r} gives {vision.num_tokens}"
        )
    weight_dtype = parse_dtype(dtype or fields.get("dtype") or fields.get("torch_dtype") or "float32")
    llm_config = AutoConfig.for_model(mm.get("text_model_type", "qwen2"), **fields)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with no_init(True):
        llm = AutoModelForCausalLM.from_config(llm_config, dtype=weight_dtype, **kwargs)
    hidden = llm.get_input_embeddings().embedding_dim
    projector = build_projector(mm.get("mm_projector_type", "mlp"), vision.feature_dim, hidden).to(
        weight_dtype
    )
    tokenizer = AutoTokenizer.from_pretrained(path, config=llm_config)  # not config.json's "mm" type
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    vlm = cls(
        vision.build(weight_dtype, empty=True),
        projector,
        llm,
        tokenizer,
        vision,
        mm.get("language_model_name_or_path") or "",
        mm.get("image_placeholder", "<image>"),
        mm.get("eos_token_index"),
    )
    load_weights(vlm, path)
    return vlm


def official_vision_name(vlm: VisionLanguageModel, path: str | None = None) -> str:
    """``vision_model_name_or_path`` of a folder saved at ``path``.

    The official model builds its SigLIP config and image processor from this name and drops patch 0 of the
    tower's output unless the name contains "siglip" (``modeling_mm.py``). A SigLIP tower whose name says
    "siglip" (a hub id such as ``google/siglip-so400m-patch14-384``, a folder named so) keeps its name;
    any other SigLIP tower (config-only, or a folder named otherwise) gets the absolute path of the saved
    folder's own :data:`SIGLIP_FOLDER` (written by :func:`save_folder`), so the official code keeps
    every patch, as clipforge does. Non-SigLIP towers (``timm:<name>``), which the official code cannot
    build, keep their name. The entry is for the official code only: :func:`load_folder` rebuilds the
    tower from ``vision_tower``.
    """
    name = vlm.vision.name_or_path or ""
    if not isinstance(vlm.vision, SiglipPatchVision) or "siglip" in name.lower() or path is None:
        return name
    return os.path.abspath(os.path.join(path, SIGLIP_FOLDER))


def folder_config(vlm: VisionLanguageModel, path: str | None = None) -> dict:
    """The ``config.json`` of :func:`save_folder` (``path``: where it is saved, see :func:`official_vision_name`)."""
    llm = vlm.model.config.to_dict()
    for k in ("architectures", "model_type", "_name_or_path", "transformers_version", "auto_map"):
        llm.pop(k, None)
    vision = vlm.vision
    return {
        "architectures": ["MMForCausalLM"],
        "model_type": "mm",
        **llm,
        "language_model_name_or_path": vlm.language_model_name_or_path,
        "vision_model_name_or_path": official_vision_name(vlm, path),
        "mm_projector_type": "mlp",
        "image_aspect_ratio": "square",
        "image_token_index": IMAGE_TOKEN_INDEX,
        "pad_token_index": vlm.tokenizer.pad_token_id,
        "eos_token_index": vlm.eos_token_id,
        "IGNORE_INDEX": IGNORE_INDEX,
        "image_tile_tokens": vlm.num_image_tokens,
        "pesudo_img_size": vision.image_size,
        "pesudo_patch_size": vision.patch_size,
        "visual_hidden_dim": vision.feature_dim,
        "pooling_kernel": 1,
        "text_model_type": vlm.model.config.model_type,
        "vision_tower": vision.to_config(),
        "image_placeholder": vlm.image_placeholder,
    }


def save_folder(vlm: VisionLanguageModel, path: str, max_shard_size: str = "5GB") -> str:
    """Write the folder (``config.json``, safetensors weights with LoRA adapters merged, tokenizer and, for a
    SigLIP tower not named "siglip", :data:`SIGLIP_FOLDER`); returns ``path``. The live model is not
    changed."""
    from huggingface_hub import save_torch_state_dict

    os.makedirs(path, exist_ok=True)
    state, seen = {}, set()
    for key, value in merged_state_dict(vlm).items():
        ident = (value.device, value.untyped_storage().data_ptr(), value.storage_offset(), value.shape)
        if ident not in seen:  # tied weights (embeddings = LM head) are stored once, re-tied on load
            seen.add(ident)
            state[key] = value
    save_torch_state_dict(state, path, max_shard_size=max_shard_size)
    config = folder_config(vlm, path)
    own_siglip = os.path.abspath(os.path.join(path, SIGLIP_FOLDER))
    if config["vision_model_name_or_path"] == own_siglip:  # official_vision_name: SigLIP towers only
        cast(SiglipPatchVision, vlm.vision).save_official(own_siglip)
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    save_tokenizer(vlm.tokenizer, path)
    return path


def _byte_level_bpe_class(backend_state: dict) -> str | None:
    """The transformers-4.x slow class that tokenizes like this ``tokenizers`` byte-level BPE, if any:
    ``GPT2Tokenizer`` (a bare ``ByteLevel`` pre-tokenizer with GPT-2's pattern, no normalizer) or
    ``Qwen2Tokenizer`` (NFC, Qwen2's split pattern, then ``ByteLevel`` without its own pattern)."""
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre, norm = backend_state.get("pre_tokenizer") or {}, backend_state.get("normalizer")
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
        return "GPT2Tokenizer" if norm is None else None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else []
    if (
        len(steps) == 2
        and steps[0].get("type") == "Split"
        and steps[0].get("pattern", {}).get("Regex") == PRETOKENIZE_REGEX
        and steps[1].get("type") == "ByteLevel"
        and not steps[1].get("use_regex", True)
        and (norm or {}).get("type") == "NFC"
    ):
        return "Qwen2Tokenizer"
    return None


def save_tokenizer(tokenizer, path: str) -> None:
    """``tokenizer.save_pretrained(path)``, plus what transformers 4.x's slow loader needs for a byte-level BPE
    (the official AITQE inference calls ``AutoTokenizer.from_pretrained(path, use_fast=False)`` under
    transformers 4.41): ``vocab.json`` and ``merges.txt``, the added tokens as ``added_tokens_decoder`` (so their
    ids do not depend on the order a loader adds them in), ``additional_special_tokens`` and a
    ``tokenizer_class`` 4.x knows — v5's generic ``TokenizersBackend`` becomes the slow class that tokenizes
    alike (:func:`_byte_level_bpe_class`). Other tokenizers are saved as they are.
    """
    tokenizer.save_pretrained(path)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = json.loads(backend.to_str()) if backend is not None else {}
    if state.get("model", {}).get("type") != "BPE":
        return
    slow = _byte_level_bpe_class(state)
    if slow is None:
        return
    assert backend is not None  # a BPE state came from it
    backend.model.save(
        path
    )  # vocab.json, merges.txt (the model's own vocabulary; added tokens are listed below)
    config_file = os.path.join(path, "tokenizer_config.json")
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    config.setdefault(
        "added_tokens_decoder",
        {
            str(i): {
                "content": t.content,
                "lstrip": t.lstrip,
                "normalized": t.normalized,
                "rstrip": t.rstrip,
                "single_word": t.single_word,
                "special": t.special,
            }
            for i, t in sorted(tokenizer.added_tokens_decoder.items())
        },
    )
    extra = config.get("extra_special_tokens")
    if isinstance(extra, list) and extra:
        config.setdefault("additional_special_tokens", list(extra))
    if config.get("tokenizer_class") in (None, "TokenizersBackend", "PreTrainedTokenizerFast"):
        config["tokenizer_class"] = slow
    with open(config_file, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, ensure_ascii=False)


def check_mm_config(mm: dict) -> None:
    for key, allowed in (
        ("mm_projector_type", "mlp"),
        ("image_aspect_ratio", "square"),
        ("pooling_kernel", 1),
    ):
        if mm.get(key, allowed) != allowed:
            raise ValueError(
                f"config.json: {key}={mm[key]!r} is not supported (only {allowed!r}, as in AITQE)"
            )
