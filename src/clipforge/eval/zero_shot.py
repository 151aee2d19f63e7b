"""Zero-shot classification: classifier weights from prompts, top-k accuracy.

The ImageNet class names and prompt templates (open_clip's, ``OPENAI_IMAGENET_TEMPLATES`` and
``SIMPLE_IMAGENET_TEMPLATES``) live in the dependency-free :mod:`clipforge.utils.zero_shot_metadata` and are
re-exported here. The classifier follows ``open_clip.zero_shot_classifier.build_zero_shot_classifier`` but takes
any ``encode_text`` callable, so the same code serves CLIP text towers and LLM2CLIP's frozen-LLM + adapter path.

Top-k accuracy uses the ranking metrics' tie rule (:mod:`clipforge.eval.ranking`): an image is correct at ``k``
when fewer than ``k`` *other* classes score ``>=`` its true class. Without ties that is ``logits.topk(k)``
membership (open_clip's and CLIP_benchmark's ``accuracy``); a tie with the true class counts against the model,
so a collapsed model scores 0, not 100.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from clipforge.eval.ranking import pessimistic_ranks
from clipforge.utils.zero_shot_metadata import (
    Template,
    imagenet_classnames,
    imagenet_templates,
    render_template,
)

__all__ = [
    "Template",
    "build_zero_shot_classifier",
    "imagenet_classnames",
    "imagenet_templates",
    "zero_shot_accuracy",
]


@torch.no_grad()
def build_zero_shot_classifier(
    encode_text: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[Template],
    batch_size: int = 256,
    normalize: bool = True,
) -> Tensor:
    """Classifier weights from prompts: per class, average the template embeddings and renormalise.

    For class ``c`` with prompts ``p_1..p_T``: ``w_c = normalize(mean_j f(e(p_j))))`` with ``f`` = L2
    normalisation when ``normalize`` (open_clip's ``encode_text(normalize=True)`` followed by mean and renorm;
    LLM2CLIP's "adapter → L2-norm → mean over templates → renorm") and the identity otherwise (use it when
    ``encode_text`` already normalises, or to average raw embeddings). The final renormalisation always happens.

    Args:
        encode_text: maps a list of prompts to ``(len(prompts), D)`` embeddings (tokenisation included).
        classnames: class names in label order.
        templates: callables ``classname -> prompt`` or format strings with ``{}`` or ``{c}``.
        batch_size: prompts per ``encode_text`` call (prompts are class-major: class 0's templates first).
        normalize: L2-normalise each prompt embedding before averaging.

    Returns:
        ``(D, C)`` float32 weights with unit-norm columns (logits = ``image_features @ weights``).

    Raises:
        ValueError: on empty class names / templates, ``batch_size < 1`` or a wrongly shaped encoder output.
    """
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [render_template(t, c) for c in classnames for t in templates]
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        emb = encode_text(batch)
        if emb.ndim != 2 or emb.shape[0] != len(batch):
            raise ValueError(f"encode_text returned shape {tuple(emb.shape)} for {len(batch)} prompts")
        emb = emb.detach().float()
        chunks.append(F.normalize(emb, dim=-1) if normalize else emb)
    per_prompt = torch.cat(chunks).reshape(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T.contiguous()


@torch.no_grad()
def zero_shot_accuracy(
    image_features: Tensor,
    classifier: Tensor,
    labels: Tensor,
    topk: Sequence[int] = (1, 5),
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Top-k accuracy (percent) of ``image_features @ classifier`` against ``labels``.

    A prediction is correct at ``k`` when fewer than ``k`` *other* classes score ``>=`` the true class (ties count
    against the model, module docstring; identical to ``logits.topk(k)`` membership when there are no ties).
    ``k`` at least the number of classes is therefore always 100 %; the key keeps the requested ``k``.

    Args:
        image_features: ``(N, D)`` image embeddings (L2-normalised; a positive logit scale would not change ranks).
        classifier: ``(D, C)`` weights from :func:`build_zero_shot_classifier`.
        labels: ``(N,)`` integer class indices.
        topk: cut-offs.
        chunk_size: images scored at once.

    Returns:
        ``{"top1": ..., "top5": ...}`` (one ``top{k}`` per requested ``k``).

    Raises:
        ValueError: on mismatched shapes, ``k < 1`` or labels outside ``[0, C)``.
    """
    n, num_classes = image_features.shape[0], classifier.shape[1]
    if image_features.ndim != 2 or classifier.ndim != 2 or image_features.shape[1] != classifier.shape[0]:
        raise ValueError(f"shapes do not match: {tuple(image_features.shape)} @ {tuple(classifier.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if any(k < 1 for k in topk):
        raise ValueError(f"topk must be >= 1, got {tuple(topk)}")
    device = image_features.device
    labels = labels.to(device=device, dtype=torch.long)
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    weights = classifier.to(device).float()
    ranks = torch.empty(n, dtype=torch.long, device=device)
    for start in range(0, n, chunk_size):
        logits = image_features[start : start + chunk_size].float() @ weights
        rows = torch.arange(logits.shape[0], device=device)
        ranks[start : start + chunk_size] = pessimistic_ranks(
            logits, rows, labels[start : start + chunk_size]
        )
    return {f"top{k}": 100.0 * int((ranks < k).sum()) / max(n, 1) for k in topk}
