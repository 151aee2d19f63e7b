"""Next-token cross-entropy on answer tokens only: the loss of vision-language fine-tuning (``VLMSFTModule``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE_INDEX", "AnswerLoss", "answer_window"]

IGNORE_INDEX = -100
"""Label of positions without loss (prompt, image, padding); ``F.cross_entropy``'s default ``ignore_index``."""


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions need logits: from the first position that predicts a labelled token."""
    targets = (labels[:, 1:] != IGNORE_INDEX).any(0).nonzero()
    return labels.shape[1] - int(targets[0]) if len(targets) else 1


class AnswerLoss(nn.Module):
    """Next-token cross-entropy averaged over labelled tokens (labels :data:`IGNORE_INDEX` elsewhere).

    ``logits`` may cover only the last ``k`` positions of the sequence (``logits_to_keep``); they are aligned with
    the labels from the right.
    """

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        targets = labels[:, labels.shape[1] - k + 1 :]
        return F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX
        )
