"""Layer-wise learning-rate decay (BEiT / EVA-CLIP / LLM2CLIP ``--visual-ld``) on top of the shared param groups.

LLM2CLIP fine-tunes the pretrained vision tower with ``visual-ld 0.85``: parameters of layer ``i`` of a
tower with ``L`` blocks get ``lr x decay ** (L + 1 - i)``, where layer 0 is the stem (patch / position / class
embeddings), block ``k`` (0-based) is layer ``k + 1`` and everything else of the tower (final norm, pooling) is
layer ``L + 1`` (scale 1). Parameters outside the tower (heads, adapter, logit scale) keep scale 1.

Blocks are found with timm's ``group_matcher`` (ViT, EVA, EfficientNet, ConvNeXt... all define one; the first
submodule that has one is used, so tower wrappers work): its ``stem`` pattern is layer 0, every distinct index
tuple its ``blocks`` patterns capture is one block in order (EfficientNet's ``blocks.<stage>.<block>`` gives one
layer per sub-block), and entries with a fixed ordinal (``(r'^norm', (99999,))``) belong to the "everything else"
layer. Modules without a matcher (open_clip towers)
fall back to ``resblocks|blocks|layers.<n>`` for blocks and ``conv1|class_embedding|positional_embedding|
ln_pre|patch_embed|pos_embed|cls_token`` for the stem.

Weight decay follows :func:`clipforge.utils.optim.param_groups` (no decay on 1-D tensors, norms, biases and
scales): each returned group carries ``weight_decay=0.0`` where that rule says so and an ``lr_scale``;
:func:`apply_lr_scales` multiplies each group's learning rate after the optimiser is built, so any optimiser
builder (``torch.optim.AdamW`` partials) and any scheduler (which reads the scaled ``lr`` as ``initial_lr``) work
unchanged.

Design notes: docs/design/llm2clip.md#stage-2-optimisation.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from clipforge.utils.optim import param_groups

__all__ = ["apply_lr_scales", "layer_decay_param_groups", "layer_ids"]

_FALLBACK_BLOCKS = re.compile(r"^(?:.*\.)?(?:resblocks|blocks|layers)\.(\d+)\.")
_FALLBACK_STEM = re.compile(
    r"^(?:.*\.)?(?:conv1|class_embedding|positional_embedding|ln_pre|patch_embed|pos_embed|cls_token|"
    r"embeddings)(?:\.|$)"
)


def _matcher(module: nn.Module) -> tuple[str, list[re.Pattern], list[tuple[re.Pattern, object]]] | None:
    """``(prefix, stem patterns, [(block pattern, fixed ordinal or None)])`` of the first (sub)module with a timm
    ``group_matcher`` (a tower spec's wrapper holds the timm model as a child); ``prefix`` is its name + ``.``."""
    found = next(((n, m) for n, m in module.named_modules() if hasattr(m, "group_matcher")), None)
    if found is None:
        return None
    name, owner = found
    spec = owner.group_matcher(coarse=False)
    if not isinstance(spec, dict):
        return None
    stem = spec.get("stem")
    stems = [re.compile(stem)] if isinstance(stem, str) else []
    blocks = spec.get("blocks") or []
    if isinstance(blocks, str):
        blocks = [(blocks, None)]
    return (name + "." if name else ""), stems, [(re.compile(p), fixed) for p, fixed in blocks]


def _kind(name: str, matcher) -> object:
    """``"stem"``, a block index tuple, or ``"rest"`` for one parameter name."""
    if matcher is None:
        m = _FALLBACK_BLOCKS.match(name)
        if m:
            return (int(m.group(1)),)
        return "stem" if _FALLBACK_STEM.match(name) else "rest"
    prefix, stems, blocks = matcher
    if not name.startswith(prefix):
        return "rest"
    name = name[len(prefix) :]
    if any(p.match(name) for p in stems):
        return "stem"
    for pattern, fixed in blocks:
        m = pattern.match(name)
        if m:
            return tuple(int(g) for g in m.groups() if g is not None) if fixed is None else "rest"
    return "rest"


def layer_ids(tower: nn.Module) -> tuple[dict[str, int], int]:
    """Layer id of every parameter of ``tower``: 0 = stem, 1..L = blocks in order, L + 1 = the rest.

    Returns:
        ``({param_name: layer_id}, L)``.
    """
    matcher = _matcher(tower)
    kinds = {name: _kind(name, matcher) for name, _ in tower.named_parameters()}
    order = {idx: i + 1 for i, idx in enumerate(sorted({k for k in kinds.values() if isinstance(k, tuple)}))}
    num_blocks = len(order)
    ids = {
        n: 0 if k == "stem" else order[k] if isinstance(k, tuple) else num_blocks + 1
        for n, k in kinds.items()
    }
    return ids, num_blocks


def layer_decay_param_groups(module: nn.Module, tower: nn.Module, decay: float) -> list[dict]:
    """Parameter groups of ``module`` with layer-wise lr scales for the parameters of its submodule ``tower``.

    Args:
        module: the whole model (only trainable parameters are grouped).
        tower: the submodule whose layers decay (e.g. the vision trunk); must be inside ``module``.
        decay: per-layer factor (``1.0`` = no decay: every scale is 1).

    Returns:
        Groups ``{"params", "lr_scale", ["weight_decay": 0.0]}``: one per (scale, decay/no-decay) pair, in the
        order of first appearance.

    Raises:
        ValueError: ``decay`` outside ``(0, 1]`` or ``tower`` not a submodule of ``module``.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer decay must be in (0, 1], got {decay}")
    prefix = next((n for n, m in module.named_modules() if m is tower), None)
    if prefix is None:
        raise ValueError("the decayed tower is not a submodule of the model")
    ids, num_blocks = layer_ids(tower)
    scale_of = {
        id(p): decay ** (num_blocks + 1 - ids[n]) for n, p in tower.named_parameters() if p.requires_grad
    }
    no_decay = {id(p) for p in param_groups(module)[1]["params"]}
    groups: dict[tuple[float, bool], dict] = {}
    for _, p in module.named_parameters():
        if not p.requires_grad:
            continue
        key = (scale_of.get(id(p), 1.0), id(p) in no_decay)
        if key not in groups:
            groups[key] = {"params": [], "lr_scale": key[0], **({"weight_decay": 0.0} if key[1] else {})}
        groups[key]["params"].append(p)
    return list(groups.values())


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Multiply each group's ``lr`` by its ``lr_scale`` (call once, right after building the optimiser)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
    return optimizer
