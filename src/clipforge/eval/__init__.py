"""Evaluation protocols (plain torch, no Lightning): retrieval Recall@k and ImageNet-style zero-shot accuracy."""

from clipforge.eval.retrieval import long_text_r1, retrieval_metrics, retrieval_ranks
from clipforge.eval.zero_shot import (
    build_zero_shot_classifier,
    imagenet_classnames,
    imagenet_templates,
    zero_shot_accuracy,
)

__all__ = [
    "build_zero_shot_classifier",
    "imagenet_classnames",
    "imagenet_templates",
    "long_text_r1",
    "retrieval_metrics",
    "retrieval_ranks",
    "zero_shot_accuracy",
]
