"""CLIP's symmetric InfoNCE loss over a global (all-gathered) negative pool, with a learnable temperature."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipforge.losses.gather import gather_features, rank_and_world

__all__ = ["ClipLoss"]


class ClipLoss(nn.Module):
    """Symmetric InfoNCE (image→text and text→image cross-entropy, averaged) with a learnable logit scale.

    The scale lives in log space (``logit_scale``; CLIP initialises it at ``log(1 / 0.07)``) and is used as
    ``exp(clamp(logit_scale, max=max_logit_scale))``. Clamping inside ``forward`` makes the gradient semantics
    explicit: while the parameter sits above the cap the logits are those of the cap and the parameter receives
    exactly zero gradient. :meth:`clamp_` additionally clamps the stored value in place to ``[0, max]`` (open_clip's
    post-optimizer-step habit, also LLM2CLIP's), so it cannot drift far above the cap.

    Distributed behaviour (``torch.distributed`` initialised, world size ``W > 1``, every rank holding ``n``
    pairs; the global batch is ``N = W * n``):

    * ``gather=True, local_loss=False`` (default): both sides are all-gathered *with gradients* and every rank
      computes the full ``N x N`` logits, so the loss value is identical on all ranks and equals the
      single-process loss on the global batch. Because the all-gather backward sums the ``W`` identical
      gradients, DDP's gradient *averaging* yields exactly the single-process gradient.
    * ``gather=True, local_loss=True``: each rank computes only its ``n`` rows against the ``N`` gathered
      columns (labels offset by ``rank * n``); the per-rank losses differ, their mean over ranks equals the
      single-process loss, and DDP's averaged gradient equals the single-process gradient. Memory is ``n x N``
      instead of ``N x N`` (open_clip's ``--local-loss``; the LLM2CLIP recipe uses it).
    * ``gather=False``: local batch only (``n - 1`` negatives per row).

    Features must be L2-normalised by the caller. Labels are rebuilt on every call (an ``arange``, cheap).

    Args:
        init_logit_scale: initial value of the log-space scale (``log(1 / 0.07)`` → scale 14.3).
        max_logit_scale: upper bound of the log-space scale (``log(100)``).
        learnable_scale: ``False`` stores the scale as a (persistent) buffer instead of a parameter.
        gather: use the global negative pool across data-parallel ranks.
        local_loss: compute only this rank's rows of the global logits (see above).
    """

    def __init__(
        self,
        init_logit_scale: float = math.log(1 / 0.07),
        max_logit_scale: float = math.log(100),
        learnable_scale: bool = True,
        gather: bool = True,
        local_loss: bool = False,
    ) -> None:
        super().__init__()
        self.max_logit_scale = float(max_logit_scale)
        self.gather = gather
        self.local_loss = local_loss
        value = torch.tensor(float(init_logit_scale))
        if learnable_scale:
            self.logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("logit_scale", value)

    def scale(self) -> Tensor:
        """The multiplicative logit scale ``exp(clamp(logit_scale, max=max_logit_scale))`` (keeps the graph)."""
        return torch.clamp(self.logit_scale, max=self.max_logit_scale).exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored log-scale in place to ``[0, max_logit_scale]`` (call after each optimizer step)."""
        self.logit_scale.clamp_(0.0, self.max_logit_scale)

    def forward(self, image_features: Tensor, text_features: Tensor) -> dict[str, Tensor]:
        """Compute the loss for aligned pairs (row ``i`` of both inputs is a positive pair).

        Args:
            image_features: ``(n, D)`` L2-normalised image embeddings of this rank.
            text_features: ``(n, D)`` L2-normalised text embeddings of this rank.

        Returns:
            ``{"contrastive_loss": scalar, "logit_scale": detached multiplicative scale}``.

        Raises:
            ValueError: if the two batches differ in size.
        """
        if image_features.shape[0] != text_features.shape[0]:
            raise ValueError(
                f"image and text batches differ: {image_features.shape[0]} vs {text_features.shape[0]}"
            )
        scale = self.scale()
        n = image_features.shape[0]
        rank, world = rank_and_world()
        if self.gather and world > 1:
            all_images = gather_features(image_features, with_grad=True)
            all_texts = gather_features(text_features, with_grad=True)
            if self.local_loss:
                logits_per_image = image_features @ all_texts.T
                logits_per_text = text_features @ all_images.T
                labels = torch.arange(n, device=image_features.device) + rank * n
            else:
                logits_per_image = all_images @ all_texts.T
                logits_per_text = logits_per_image.T
                labels = torch.arange(world * n, device=image_features.device)
        else:
            logits_per_image = image_features @ text_features.T
            logits_per_text = logits_per_image.T
            labels = torch.arange(n, device=image_features.device)
        # at least fp32 logits: a scale of 100 times fp16/bf16 cosines would lose most of their resolution
        dtype = torch.promote_types(logits_per_image.dtype, torch.float32)
        loss = (
            F.cross_entropy(scale * logits_per_image.to(dtype), labels)
            + F.cross_entropy(scale * logits_per_text.to(dtype), labels)
        ) / 2
        return {"contrastive_loss": loss, "logit_scale": scale.detach()}
