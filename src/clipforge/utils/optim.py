"""Optimiser parameter groups and learning-rate schedules shared by every stage."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["WarmupCosine", "optimizer_config", "param_groups", "resolve_scheduler"]

_NO_DECAY_NAMES = ("bias", "norm", "ln_", ".ln", "bn", "logit_scale", "logit_bias", "embeddings.position")


def param_groups(module: nn.Module) -> list[dict]:
    """Trainable parameters split into a weight-decay group and a no-decay group.

    No decay for 1-D tensors (biases, norm weights, scales) and names that mark norms, biases or the contrastive
    temperature/bias (open_clip's ``exclude`` rule). The optimiser's own ``weight_decay`` applies to group 0.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        low = name.lower()
        (no_decay if p.ndim < 2 or any(s in low for s in _NO_DECAY_NAMES) else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine(LambdaLR):
    """Linear warm-up then cosine decay to ``min_lr_ratio`` x the base learning rate, stepped per optimiser step.

    Args:
        optimizer: the wrapped optimiser.
        warmup_steps: steps of linear warm-up from 0.
        total_steps: length of the schedule; ``-1`` = the trainer's ``estimated_stepping_batches`` (filled in by
            the LightningModule through :func:`resolve_scheduler`).
        min_lr_ratio: final learning rate as a fraction of the base one.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_steps: int = 0,
        total_steps: int = -1,
        min_lr_ratio: float = 0.0,
    ) -> None:
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, self._factor)

    def _factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / max(1, self.warmup_steps)
        total = max(self.total_steps, self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def resolve_scheduler(scheduler, trainer) -> object:
    """Fill in a schedule length left to the trainer (``total_steps=-1``)."""
    if isinstance(scheduler, WarmupCosine) and scheduler.total_steps < 0:
        scheduler.total_steps = int(trainer.estimated_stepping_batches)
    return scheduler


def optimizer_config(optimizer: torch.optim.Optimizer, module) -> object:
    """What every clipforge module's ``configure_optimizers`` returns.

    Args:
        optimizer: the built optimizer.
        module: the LightningModule: its ``scheduler_builder`` (``optimizer -> LR scheduler``, its ``scheduler``
            argument, or ``None``) and, only with a scheduler, its ``trainer`` (which fills in a schedule length
            left to it, :func:`resolve_scheduler`).

    Returns:
        ``optimizer`` alone without a scheduler, else Lightning's dict with the scheduler stepped every
        optimizer step.
    """
    if module.scheduler_builder is None:
        return optimizer
    scheduler = resolve_scheduler(module.scheduler_builder(optimizer), module.trainer)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
