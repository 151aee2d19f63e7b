"""Zero-shot classification with class-name embeddings from the LLM encoder (the builder LLM2CLIP lacks).

LLM2CLIP's ImageNet zero-shot (arXiv 2411.04997; ``training/zero_shot.py`` of ``microsoft/LLM2CLIP``) reads a
pre-computed tensor of *LLM* embeddings — for each class, the 80 OpenAI prompts run through the frozen caption
encoder — maps every prompt through the adapter, L2-normalises, averages over the prompts and renormalises; the
script that builds that tensor was never released. Here:

* :func:`build_class_features` — ``(C, T, D)`` raw encoder embeddings of ``template(classname)`` prompts, class-major
  (the official file's content); :func:`save_class_features` / :func:`load_class_features` keep them with the
  rendered prompts, so the file says exactly what it holds.
* :func:`classifier_from_features` — the official classifier: adapter -> L2 -> mean over templates -> L2, ``(E, C)``.
* :class:`~clipforge.callbacks.llm_zero_shot.CachedClassZeroShotEval` (a callback, in the callbacks layer) —
  :class:`~clipforge.callbacks.zero_shot.ZeroShotEval` fed from such a file: the module needs no text encoder, only
  ``encode_embedding`` (the adapter). With the encoder configured (``model.text``), the plain ``ZeroShotEval``
  already does the same through ``tokenizer`` + ``encode_text``.
* ``clipforge classnames --encoder <folder|id|pypi:alias> --out feats.pt`` (:mod:`clipforge.cli.classnames`)
  writes the file (ImageNet's 1000 classes x OpenAI's 80 templates by default, or a class list file, one name per
  line).

Design notes: docs/design/llm2clip.md#evaluation-protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforge.utils.zero_shot_metadata import Template, render_template

__all__ = [
    "build_class_features",
    "classifier_from_features",
    "load_class_features",
    "render_prompts",
    "save_class_features",
]


def render_prompts(classnames: Sequence[str], templates: Sequence[Template]) -> list[list[str]]:
    """``[C][T]`` prompts: ``template(classname)`` (callables) or ``template.format(classname)`` (strings)."""
    return [[render_template(t, c) for t in templates] for c in classnames]


@torch.no_grad()
def build_class_features(
    encode: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
) -> Tensor:
    """Raw text-encoder embeddings ``(C, T, D)`` (float32, CPU) of every class's prompts.

    Args:
        encode: ``list[str] -> (N, D)`` embeddings (e.g. ``LLMEncoder.encode``; no adapter, no normalisation).
        classnames: class names in label order.
        templates: prompt templates (callables or ``{}`` format strings).
        batch_size: prompts per ``encode`` call.

    Raises:
        ValueError: no classes / templates, or an encoder output of the wrong shape.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    prompts = [p for row in render_prompts(classnames, templates) for p in row]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        emb = encode(batch)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"encode returned shape {tuple(emb.shape)} for {len(batch)} prompts")
        chunks.append(emb.detach().float().cpu())
    return torch.cat(chunks).reshape(len(classnames), len(templates), -1)


@torch.no_grad()
def classifier_from_features(features: Tensor, project: Callable[[Tensor], Tensor]) -> Tensor:
    """LLM2CLIP's zero-shot weights ``(E, C)``: ``normalize(mean_t normalize(project(features[c, t])))``.

    Args:
        features: ``(C, T, D)`` raw encoder embeddings (:func:`build_class_features`).
        project: the adapter, ``(N, D) -> (N, E)`` (normalised or not: each prompt is normalised here).
    """
    c, t, d = features.shape
    projected = F.normalize(project(features.reshape(c * t, d)).float(), dim=-1).reshape(c, t, -1)
    return F.normalize(projected.mean(1), dim=-1).T.contiguous()


def save_class_features(
    path: str, features: Tensor, classnames: Sequence[str], templates: Sequence[Template], encoder: str = ""
) -> str:
    """Write ``{"features", "classnames", "prompts", "encoder"}`` with ``torch.save``; returns ``path``."""
    prompts = render_prompts(classnames, templates)
    if features.shape[:2] != (len(classnames), len(templates)):
        raise ValueError(
            f"features {tuple(features.shape)} do not match {len(classnames)} x {len(templates)}"
        )
    torch.save(
        {"features": features, "classnames": list(classnames), "prompts": prompts, "encoder": encoder}, path
    )
    return path


def load_class_features(path: str) -> dict:
    """The dict :func:`save_class_features` wrote."""
    return torch.load(path, map_location="cpu", weights_only=True)
