"""Tiny random-weight vision + projector + LLM parts of the real architecture classes (SigLIP, Qwen2, Llama).

Towers are saved with ``save_pretrained`` and loaded back through the same paths users hit; ``write_released_aitqe``
writes a folder the way the official AITQE code (transformers 4.41 ``MMForCausalLM.save_pretrained``) lays it out,
from modules built here independently of ``clipforge.models.vlm``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image
from torch import nn

from tests.helpers.tiny_hf import save_causal_lm

SIGLIP = {
    "image_size": 32,
    "patch_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
LLM = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 256,
}


def tiny_spec(model_type: str = "qwen2", vision: str = "siglip", dtype: str = "float32"):
    """A ``VLMSpec`` of random tiny parts built from configs (byte-level tokenizer), nothing on disk."""
    from clipforge.models.vlm import CausalLMSpec, SiglipPatchVision, TimmPatchVision, VLMSpec

    tower = (
        SiglipPatchVision(config=SIGLIP)
        if vision == "siglip"
        else TimmPatchVision(
            "vit_tiny_patch16_224",
            image_size=32,
            model_args={"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2},
        )
    )
    return VLMSpec(
        tower, CausalLMSpec(config={"model_type": model_type, **LLM}, tokenizer="bytes"), dtype=dtype
    )


def tiny_images(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of different sizes."""
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (24 + 7 * i, 40 - 3 * i, 3), dtype=np.uint8)) for i in range(n)
    ]


def save_tiny_siglip(path) -> str:
    """A random 2-layer ``SiglipVisionModel`` + ``SiglipImageProcessor`` (32 px) folder."""
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(1)
    SiglipVisionModel(SiglipVisionConfig(**SIGLIP)).save_pretrained(path)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return os.fspath(path)


def save_tiny_causal_lm(path, model_type: str = "qwen2", tie_word_embeddings: bool = False) -> str:
    """A random 2-layer causal LM folder (``AutoModelForCausalLM``) with the byte-level tokenizer."""
    from clipforge.models.vlm import byte_level_tokenizer

    tok = byte_level_tokenizer()
    return save_causal_lm(
        path,
        tok,
        model_type,
        2,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **LLM,
    )


QWEN2_CORPUS = [
    "Evaluate the caption: a cat on a sofa\nif score is low, give a short description of the image.\n"
    "Respond using a dictionary structure.",
    "a dog on a mat\n\nthe image shows 12 cats and 3 dogs.\n\n",
    '{"path": "image", "source": "localpath", "file_type": "I"}',
]


def save_tiny_qwen2_tokenizer(path) -> str:
    """A ``Qwen2Tokenizer`` folder: Qwen2's pre-tokenization (NFC, its split regex, byte level) with a few hundred
    BPE merges learnt on AITQE-like text, so that ``"\n\n"`` is one token and ``"\n"`` another, as in Qwen2's
    own vocabulary; ChatML specials (``<|endoftext|>`` pads, ``<|im_end|>`` ends). Saved by ``save_pretrained``
    (``tokenizer.json`` only)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(QWEN2_CORPUS * 20, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.save_pretrained(path)
    return os.fspath(path)


def write_released_aitqe(path, siglip_dir: str) -> dict:
    """A folder in the released ``HymanH/AITQE`` layout, built without ``clipforge.models.vlm``.

    ``config.json`` has the official ``MMConfig`` keys (Qwen2 fields at top level, transformers-4.41 style
    ``rope_theta``/``torch_dtype``; ``vision_model_name_or_path`` is the hub id, as released); the weights are the
    official module tree: ``model.*`` (``Qwen2ForCausalLM``), ``vision_model.vision_model.*`` (transformers-4.41
    ``SiglipVisionModel``), ``mm_projector.{0,2}.*``, ``image_newline``.

    Returns:
        the reference modules: ``llm``, ``vision`` (``SiglipVisionModel``), ``projector``, ``tokenizer``.
    """
    from safetensors.torch import save_file
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionModel

    from clipforge.models.vlm import byte_level_tokenizer

    torch.manual_seed(3)
    os.makedirs(path, exist_ok=True)
    tok = byte_level_tokenizer()
    qwen_fields = {
        "vocab_size": len(tok),
        **LLM,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "use_sliding_window": False,
        "sliding_window": 4096,
        "max_window_layers": 28,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
    }
    llm = Qwen2ForCausalLM(Qwen2Config(**qwen_fields)).eval()
    vision = SiglipVisionModel.from_pretrained(siglip_dir).eval()
    projector = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32, bias=False))
    state = {f"model.{k}": v for k, v in llm.state_dict().items()}
    state |= {f"vision_model.vision_model.{k}": v for k, v in vision.state_dict().items()}
    state |= {f"mm_projector.{k}": v for k, v in projector.state_dict().items()}
    state["image_newline"] = torch.randn(32)
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(path, "model.safetensors"))
    config = {
        "_name_or_path": "AITQE",
        "architectures": ["MMForCausalLM"],
        "model_type": "mm",
        **qwen_fields,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "pretraining_tp": 1,
        "attention_bias": False,
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "language_model_name_or_path": "Qwen/Qwen2-7B",
        "vision_model_name_or_path": "google/siglip-so400m-patch14-384",
        "mm_projector_type": "mlp",
        "image_aspect_ratio": "square",
        "image_token_index": 151646,
        "pad_token_index": tok.pad_token_id,
        "eos_token_index": tok.eos_token_id,
        "IGNORE_INDEX": -100,
        "image_tile_tokens": 16,
        "pesudo_img_size": 32,
        "pesudo_patch_size": 8,
        "visual_hidden_dim": 32,
        "pooling_kernel": 1,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tok.save_pretrained(path)
    return {"llm": llm, "vision": vision, "projector": projector, "tokenizer": tok}
