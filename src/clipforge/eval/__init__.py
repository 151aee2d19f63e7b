"""Evaluation protocols (plain torch, no Lightning): retrieval Recall@k (and its per-epoch accumulator) and
ImageNet-style zero-shot accuracy.

Every ranking metric counts ties against the model (:func:`pessimistic_ranks`); :func:`is_collapsed` flags
embeddings without spread.
"""

from clipforge.eval.accumulator import RetrievalAccumulator
from clipforge.eval.ranking import pessimistic_ranks
from clipforge.eval.retrieval import (
    embedding_spread,
    is_collapsed,
    long_text_r1,
    retrieval_metrics,
    retrieval_ranks,
)
from clipforge.eval.zero_shot import (
    build_zero_shot_classifier,
    imagenet_classnames,
    imagenet_templates,
    zero_shot_accuracy,
)

__all__ = [
    "RetrievalAccumulator",
    "build_zero_shot_classifier",
    "embedding_spread",
    "imagenet_classnames",
    "imagenet_templates",
    "is_collapsed",
    "long_text_r1",
    "pessimistic_ranks",
    "retrieval_metrics",
    "retrieval_ranks",
    "zero_shot_accuracy",
]
