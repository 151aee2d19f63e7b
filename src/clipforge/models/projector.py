"""The projector between a vision tower's patch features and an LLM's token embeddings."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

__all__ = ["PROJECTOR_TYPES", "build_projector", "init_projector_as_lookup"]

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


@torch.no_grad()
def init_projector_as_lookup(projector: nn.Sequential, embeddings: torch.Tensor, shift: float = 4.0) -> None:
    """Initialise an ``mlp`` projector so that the last ``K`` input features, a probability vector ``p`` over
    ``K`` classes, come out as ``P @ (p @ embeddings)``: the probability-weighted mix of the classes' token
    embeddings ("soft words" the LLM can already read), other input features starting at zero weight.

    GELU has no exact identity, so the first layer adds ``shift`` to every unit (``GELU(z + shift) = z + shift``
    within 4e-3 for ``|z + shift - 4| <= 1`` at the default) and the bias-free second layer is the centring
    ``P = I - 11^T / d``, which removes that constant again (and the embedding's mean over its ``d`` dimensions).

    Args:
        projector: from :func:`build_projector` (``in_dim >= K``, ``out_dim = d``).
        embeddings: ``(K, d)`` class embeddings, e.g. the mean token embedding of each class name.
        shift: pre-activation offset; larger is closer to linear for larger embedding values.
    """
    first, last = cast(nn.Linear, projector[0]), cast(nn.Linear, projector[2])
    k, d = embeddings.shape
    if first.in_features < k or first.out_features != d:
        raise ValueError(f"projector {first.in_features}->{d} cannot take {k} classes of width {d}")
    first.weight.zero_()
    first.weight[:, first.in_features - k :] = embeddings.T.to(first.weight.dtype)
    first.bias.fill_(shift)
    last.weight.copy_(torch.eye(d) - torch.full((d, d), 1.0 / d))
