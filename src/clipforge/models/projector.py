"""The projector between a vision tower's patch features and an LLM's token embeddings."""

from __future__ import annotations

from torch import nn

__all__ = ["PROJECTOR_TYPES", "build_projector"]

PROJECTOR_TYPES = ("mlp",)
"""Values of ``mm_projector_type`` (the AITQE checkpoint's only one)."""


def build_projector(kind: str, in_dim: int, out_dim: int) -> nn.Sequential:
    """``mlp``: ``Linear(in_dim, out_dim) -> GELU -> Linear(out_dim, out_dim, bias=False)``.

    The layer order (state-dict names ``0.weight``, ``0.bias``, ``2.weight``) is the one of AITQE's
    ``mm_projector``, so its weights load without renaming.

    Args:
        kind: projector type, one of :data:`PROJECTOR_TYPES`.
        in_dim: width of the vision features.
        out_dim: hidden size of the LLM.
    """
    if kind not in PROJECTOR_TYPES:
        raise ValueError(f"mm_projector_type must be one of {PROJECTOR_TYPES}, got {kind!r}")
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim, bias=False))
