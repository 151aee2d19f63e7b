"""Declarative freezing: which parts of a model train (torchtune's ``TrainableParams`` habit)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import nn

__all__ = ["TrainableSpec", "apply_trainable"]

MODES = ("frozen", "full")


@dataclass
class TrainableSpec:
    """Training mode per part: ``frozen`` (no gradients, eval-mode norms) or ``full``. Heads always train."""

    vision: str = "full"
    text: str = "full"

    def __post_init__(self) -> None:
        for part in ("vision", "text"):
            if getattr(self, part) not in MODES:
                raise ValueError(f"trainable.{part} must be one of {MODES}, got {getattr(self, part)!r}")


def as_trainable(spec: TrainableSpec | Mapping | None) -> TrainableSpec:
    """Normalise a spec given as a dataclass, a mapping or ``None`` (everything trains)."""
    if spec is None:
        return TrainableSpec()
    return spec if isinstance(spec, TrainableSpec) else TrainableSpec(**spec)


def apply_trainable(module: nn.Module, mode: str) -> None:
    """Set ``requires_grad`` of every parameter of ``module`` for ``mode`` (``frozen`` also sets eval mode)."""
    frozen = mode == "frozen"
    for p in module.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        module.eval()
