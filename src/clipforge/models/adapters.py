"""Text adapters: map a frozen text encoder's caption embedding into the shared image-text space (LLM2CLIP).

LLM2CLIP's text tower is an adapter on top of the (frozen, usually pre-computed) LLM caption embedding
(``eva_clip/model.py::TextProj`` with ``LinearBlock``)::

    x = normalize(e)                                  # e: the LLM embedding (4096-d for Llama-3-8B)
    for k in 1..num_layers:                           # pre-LN residual MLP blocks, expansion 2, GELU
        x = x + fc2_k(dropout(gelu(fc1_k(norm_k(x)))))
    t = proj(norm(x))                                 # d -> embed_dim, with bias

Kinds (``AdapterSpec.kind``, a ``model/adapter=...`` config option):

* ``textproj`` — the block stack above (``num_layers=0`` keeps ``LayerNorm -> Linear``, the depth ablation's
  "no blocks" row);
* ``linear`` — one ``Linear`` on the normalised embedding;
* ``none`` — the normalised embedding itself (the image side then projects straight into the LLM space, so
  ``embed_dim`` must equal the embedding width).

Parameter names (``blocks.{k}.{norm,fc1,fc2}``, ``norm``, ``proj``) are this project's; the converters in
:mod:`clipforge.models.convert` map the official layouts (``text.text_adaptor.*``, ``text_adapter.adaptor.*``)
onto them.

Design notes: docs/design/llm2clip.md#stage-2-the-adapter.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ADAPTER_KINDS",
    "AdapterSpec",
    "LinearAdapter",
    "NoAdapter",
    "TextProj",
    "as_adapter_spec",
    "build_adapter",
]

ADAPTER_KINDS = ("textproj", "linear", "none")


@dataclass
class AdapterSpec:
    """Which adapter maps the text embedding into the shared space, and its shape."""

    kind: str = "textproj"  # textproj | linear | none
    num_layers: int = 4  # textproj: residual MLP blocks (LLM2CLIP: 4)
    expansion: float = 2.0  # textproj: hidden width = expansion x input width (LLM2CLIP: 2)
    dropout: float = 0.0  # textproj: dropout inside each block (LLM2CLIP: 0)
    bias: bool = True  # bias of the final projection (LLM2CLIP: proj_bias=True)
    normalize_input: bool = True  # L2-normalise the embedding first (LLM2CLIP does)

    def __post_init__(self) -> None:
        if self.kind not in ADAPTER_KINDS:
            raise ValueError(f"adapter kind must be one of {ADAPTER_KINDS}, got {self.kind!r}")
        if self.num_layers < 0:
            raise ValueError(f"adapter num_layers must be >= 0, got {self.num_layers}")
        if self.expansion <= 0:
            raise ValueError(f"adapter expansion must be > 0, got {self.expansion}")


def as_adapter_spec(spec: AdapterSpec | Mapping | None) -> AdapterSpec:
    """Normalise a spec given as a dataclass, a mapping (Hydra / jsonargparse) or ``None`` (LLM2CLIP's TextProj)."""
    if spec is None:
        return AdapterSpec()
    return spec if isinstance(spec, AdapterSpec) else AdapterSpec(**spec)


class _Block(nn.Module):
    """Pre-LN residual MLP: ``x + fc2(dropout(gelu(fc1(norm(x)))))`` (LLM2CLIP's ``LinearBlock``)."""

    def __init__(self, dim: int, expansion: float, dropout: float) -> None:
        super().__init__()
        hidden = int(expansion * dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.drop(F.gelu(self.fc1(self.norm(x)))))


class TextProj(nn.Module):
    """LLM2CLIP's adapter: optional L2 normalisation, ``num_layers`` residual MLP blocks, LayerNorm, Linear.

    Args:
        in_dim: width of the text embedding (the LLM's hidden size).
        out_dim: width of the shared embedding space.
        num_layers: number of residual blocks.
        expansion: hidden width of each block as a multiple of ``in_dim``.
        dropout: dropout inside each block.
        bias: bias of the final projection.
        normalize_input: L2-normalise the input embedding.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_layers: int = 4,
        expansion: float = 2.0,
        dropout: float = 0.0,
        bias: bool = True,
        normalize_input: bool = True,
    ) -> None:
        super().__init__()
        self.normalize_input = normalize_input
        self.blocks = nn.ModuleList(_Block(in_dim, expansion, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(in_dim)
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1) if self.normalize_input else x
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x))


class LinearAdapter(nn.Module):
    """One linear map of the (optionally L2-normalised) embedding."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, normalize_input: bool = True) -> None:
        super().__init__()
        self.normalize_input = normalize_input
        self.proj = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.normalize(x, dim=-1) if self.normalize_input else x)


class NoAdapter(nn.Module):
    """The (optionally L2-normalised) embedding itself: no parameters."""

    def __init__(self, normalize_input: bool = True) -> None:
        super().__init__()
        self.normalize_input = normalize_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.normalize_input else x


def build_adapter(spec: AdapterSpec | Mapping | None, in_dim: int, out_dim: int) -> nn.Module:
    """Build the adapter ``spec`` describes for ``in_dim -> out_dim``.

    Raises:
        ValueError: ``kind="none"`` with ``in_dim != out_dim``.
    """
    spec = as_adapter_spec(spec)
    if spec.kind == "none":
        if in_dim != out_dim:
            raise ValueError(
                f"adapter kind 'none' needs embed_dim == the text embedding width, got {in_dim} -> {out_dim}"
            )
        return NoAdapter(spec.normalize_input)
    if spec.kind == "linear":
        return LinearAdapter(in_dim, out_dim, spec.bias, spec.normalize_input)
    return TextProj(
        in_dim, out_dim, spec.num_layers, spec.expansion, spec.dropout, spec.bias, spec.normalize_input
    )
