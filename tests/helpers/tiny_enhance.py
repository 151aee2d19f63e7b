"""Tiny AITQE-format checkpoints (``VisionLanguageModel``: 1-block timm ViT + 2-layer Llama, byte tokenizer).

``save_tiny_aitqe(path)`` saves random weights; with ``answers`` the model is first fitted (a few hundred CPU
steps, seconds) to write a fixed answer per caption word, so scoring and rewriting can be checked end to end
against known outputs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

TINY_VISION = {
    "model_name": "vit_tiny_patch16_224",
    "image_size": 32,
    "model_args": {"img_size": 32, "patch_size": 16, "depth": 1, "embed_dim": 16, "num_heads": 1},
}
TINY_LLM = {
    "model_type": "llama",
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
}


def tiny_vlm_spec():
    from clipforge.models.vlm import CausalLMSpec, TimmPatchVision, VLMSpec

    return VLMSpec(TimmPatchVision(**TINY_VISION), CausalLMSpec(config=dict(TINY_LLM), tokenizer="bytes"))


def fit_answers(vlm, answers: Mapping[str, str], steps: int = 300, lr: float = 3e-3, seed: int = 0) -> None:
    """Train ``vlm`` so that the official prompt of caption ``c`` (any image) is answered with ``answers[c]``."""
    import torch
    import torch.nn.functional as F

    from clipforge.tasks.enhance.prompt import build_prompt

    torch.manual_seed(seed)
    captions = list(answers)
    inputs = vlm.build_inputs([build_prompt(c) for c in captions], [answers[c] for c in captions])
    opt = torch.optim.Adam([p for p in vlm.parameters() if p.requires_grad], lr=lr)
    vlm.train()
    for _ in range(steps):
        images = torch.randn(len(captions), 3, 32, 32)
        logits = vlm(images, inputs["input_ids"], inputs["attention_mask"])
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten(), ignore_index=-100
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    vlm.eval()


def save_tiny_aitqe(path, answers: Mapping[str, str] | None = None, steps: int = 300) -> str:
    """Save a tiny AITQE-format folder to ``path`` (fitted to ``answers`` if given) and return it."""
    import torch

    from clipforge.models.vlm import VisionLanguageModel

    torch.manual_seed(0)
    vlm = VisionLanguageModel.build(tiny_vlm_spec())
    if answers:
        fit_answers(vlm, answers, steps)
    vlm.save_pretrained(os.fspath(path))
    return os.fspath(path)
