"""Projection heads mapping tower features into the shared embedding space."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

__all__ = ["HeadSpec", "build_head"]

HEAD_KINDS = ("linear", "mlp", "identity")


@dataclass
class HeadSpec:
    """How a tower's features are projected to the embedding space."""

    kind: str = "linear"  # linear | mlp (Linear-GELU-Linear) | identity (tower width must equal embed_dim)
    hidden_dim: int | None = None  # mlp hidden width; defaults to the input width
    dropout: float = 0.0  # dropout on the head input
    bias: bool = False  # CLIP's projections have no bias

    def __post_init__(self) -> None:
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head kind must be one of {HEAD_KINDS}, got {self.kind!r}")


def as_head_spec(spec: HeadSpec | Mapping | None) -> HeadSpec:
    """Normalise a spec given as a dataclass, a mapping (Hydra / jsonargparse) or ``None`` (linear)."""
    if spec is None:
        return HeadSpec()
    return spec if isinstance(spec, HeadSpec) else HeadSpec(**spec)


def build_head(spec: HeadSpec, in_dim: int, out_dim: int) -> nn.Module:
    """Build the head described by ``spec`` for ``in_dim -> out_dim``."""
    drop = [nn.Dropout(spec.dropout)] if spec.dropout > 0 else []
    if spec.kind == "identity":
        if in_dim != out_dim:
            raise ValueError(f"identity head needs in_dim == out_dim, got {in_dim} -> {out_dim}")
        return nn.Sequential(*drop) if drop else nn.Identity()
    if spec.kind == "linear":
        return nn.Sequential(*drop, nn.Linear(in_dim, out_dim, bias=spec.bias))
    hidden = spec.hidden_dim or in_dim
    return nn.Sequential(
        *drop, nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim, bias=spec.bias)
    )
