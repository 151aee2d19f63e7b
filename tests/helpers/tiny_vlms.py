"""Tiny random-weight captioner models of the real architecture classes, saved to disk like a user's folder.

- :func:`save_tiny_llava`: ``LlavaForConditionalGeneration`` (CLIP vision + Llama) + ``LlavaProcessor``;
- :func:`save_tiny_qwen2_vl`: ``Qwen2VLForConditionalGeneration`` + ``Qwen2VLProcessor`` with Qwen2-VL's chat template;
- :func:`save_tiny_qwen_vl_remote`: a remote-code folder (``auto_map`` + its own ``modeling_qwen.py``,
  ``configuration_qwen.py``, ``tokenization_qwen.py`` from ``tests/helpers/tiny_qwen_vl/``) with Qwen-VL's
  interface: image paths inside ``<img>...</img>``, ``tokenizer.eod_id``;
- :func:`save_tiny_chat_llama`: a 2-layer Llama with SmolLM2's chat template (the label-conditioned LLM);
- :func:`save_tiny_classifier`: a tiny timm ViT with 1000 classes, as a state-dict file.
"""

from __future__ import annotations

import json
import os
import shutil

from tests.helpers.tiny_hf import CORPUS, TINY_DECODER, byte_level_bpe, save_causal_lm

PROMPT_WORDS = [
    "Describe in English: Express emotional or artistic response:",
    "system user assistant You are a helpful assistant. USER: ASSISTANT:",
    "Write one short sentence describing a photo that shows:",
]

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}"
    "{% endfor %}{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
QWEN2_VL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bpe(specials: list[str], bos: str | None = None, **tokens):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on the tiny corpus and the prompt words."""
    return byte_level_bpe(CORPUS + PROMPT_WORDS, 400, specials, bos, **tokens)


WIDE_DECODER = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2)
"""Overrides of the tiny decoders for vLLM's CPU attention, which needs a head size of at least 64 (256 / 4)."""


def save_tiny_llava(path, text: dict | None = None) -> str:
    """A tiny LLaVA-1.5 (CLIP ViT vision tower, layer -2 features without CLS, MLP projector, Llama LM).

    ``text`` overrides fields of the Llama config (e.g. :data:`WIDE_DECODER`)."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = _bpe(
        ["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        bos="<s>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=8,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=32,
    )
    text_config = LlamaConfig(
        vocab_size=len(tok),
        **{**TINY_DECODER, **(text or {})},
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=16,
    )
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    processor.save_pretrained(path)
    return os.fspath(path)


def llava_hub_layout(path) -> str:
    """Rewrite a saved LLaVA's weight names into the layout of the hub's ``llava-hf`` checkpoints.

    transformers 5 saves the CLIP tower as ``vision_tower.<...>``; the hub checkpoints (and vLLM's loader) name it
    ``vision_tower.vision_model.<...>``. transformers loads both layouts."""
    from safetensors.torch import load_file, save_file

    file = os.path.join(os.fspath(path), "model.safetensors")
    weights = load_file(file)
    renamed = {
        ("vision_tower.vision_model." + k.removeprefix("vision_tower."))
        if k.startswith("vision_tower.") and not k.startswith("vision_tower.vision_model.")
        else k: v
        for k, v in weights.items()
    }
    save_file(renamed, file, metadata={"format": "pt"})
    return os.fspath(path)


def save_tiny_qwen2_vl(path, text: dict | None = None) -> str:
    """A tiny Qwen2-VL (dynamic resolution: images of different sizes give prompts of different lengths).

    ``text`` overrides fields of the text config (e.g. :data:`WIDE_DECODER`; M-RoPE's sections follow the head
    size)."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ]
    tok = _bpe(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    sizes = {
        "min_pixels": 16 * 16,
        "max_pixels": 64 * 64,
        "patch_size": 8,
        "merge_size": 2,
        "temporal_patch_size": 2,
    }
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**sizes),
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(**sizes),
        chat_template=QWEN2_VL_TEMPLATE,
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    shape = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1}
    shape.update(text or {})
    half = (
        shape["hidden_size"] // shape["num_attention_heads"] // 2
    )  # M-RoPE: (temporal, height, width) of it
    mrope = [half // 4, half - half // 4 - (half - half // 4) // 2, (half - half // 4) // 2]
    cfg = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            **shape,
            "num_hidden_layers": 2,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": shape["hidden_size"],  # the merger's output: the text model's width
            "num_heads": 2,
            "patch_size": 8,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "mlp_ratio": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(cfg).save_pretrained(path)
    processor.save_pretrained(path)
    return os.fspath(path)


REMOTE_FILES = ("configuration_qwen.py", "modeling_qwen.py", "tokenization_qwen.py")


def save_tiny_qwen_vl_remote(path) -> str:
    """A remote-code model folder with Qwen-VL's interface (loaded with ``trust_remote_code=True``)."""
    import torch
    from safetensors.torch import save_file

    from tests.helpers.tiny_qwen_vl.configuration_qwen import QWenConfig
    from tests.helpers.tiny_qwen_vl.modeling_qwen import QWenLMHeadModel

    os.makedirs(path, exist_ok=True)
    here = os.path.join(os.path.dirname(__file__), "tiny_qwen_vl")
    for name in REMOTE_FILES:
        shutil.copy(os.path.join(here, name), os.path.join(path, name))
    torch.manual_seed(0)
    model = QWenLMHeadModel(QWenConfig())
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors")
    )
    config = {
        **model.config.to_dict(),
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    tokenizer_config = {
        "tokenizer_class": "QWenTokenizer",
        "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
        "image_span": 256,
    }
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config, f, indent=2)
    return os.fspath(path)


def save_tiny_chat_llama(path) -> str:
    """A 2-layer Llama (SmolLM2's class) whose tokenizer carries SmolLM2's chat template."""
    tok = _bpe(
        ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tok.chat_template = SMOLLM2_TEMPLATE
    return save_causal_lm(
        path,
        tok,
        "llama",
        0,
        **TINY_DECODER,
        max_position_embeddings=256,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )


TINY_CLASSIFIER = {
    "model_name": "vit_tiny_patch16_224",
    "model_args": {"img_size": 32, "patch_size": 16, "depth": 1, "embed_dim": 16, "num_heads": 1},
}


def save_tiny_classifier(path) -> str:
    """A 1-block timm ViT with an ImageNet-sized (1000-way) head, saved as a state-dict file; returns the file."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model(
        TINY_CLASSIFIER["model_name"], pretrained=False, **TINY_CLASSIFIER["model_args"]
    )
    file = os.path.join(os.fspath(path), "classifier.pth")
    os.makedirs(os.fspath(path), exist_ok=True)
    torch.save(model.state_dict(), file)
    return file
