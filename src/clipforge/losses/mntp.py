"""The MNTP objective (LLM2Vec / LLM2CLIP stage 1a): token ``i`` predicted from the hidden state at ``i - 1``.

The masking that asks the tokens is :func:`clipforge.tasks.llm2clip.mntp.mntp_mask`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mntp_loss"]


def mntp_loss(
    hidden: torch.Tensor, lm_head: torch.nn.Module, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of predicting ``labels[:, i]`` from ``hidden[:, i - 1]``; returns ``(loss, accuracy)``.

    Only the asked positions go through the LM head (a vocabulary-wide projection of every position would dominate
    the step). With no asked position the loss is an exact zero that still back-propagates.
    """
    target = labels[:, 1:]
    asked = target != -100
    if not bool(asked.any()):
        zero = hidden.sum() * 0.0
        return zero, zero.detach()
    logits = lm_head(hidden[:, :-1][asked]).float()
    loss = F.cross_entropy(logits, target[asked])
    accuracy = (logits.argmax(-1) == target[asked]).float().mean().detach()
    return loss, accuracy
