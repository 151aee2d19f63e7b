"""Pooling of token states ``(B, L, D)`` into one vector per sequence."""

from __future__ import annotations

import torch

POOLINGS = ("mean", "cls", "last")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool token states over the attended positions.

    Args:
        hidden: token states ``(B, L, D)``.
        attention_mask: ``(B, L)``, 1 for real tokens; padding may be on either side.
        how: ``mean`` over attended tokens, ``cls`` (position 0), or ``last`` (last attended token).

    Returns:
        ``(B, D)`` pooled states.
    """
    mask = attention_mask.to(hidden.dtype)
    if how == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        # index of the last attended position, valid for left and right padding alike
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, -1).max(1).values.clamp_min(0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"unknown pooling {how!r}; expected one of {POOLINGS}")
