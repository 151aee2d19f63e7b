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
        """Compute the loss; row ``i`` of the images is paired with text rows ``i*m .. i*m + m - 1``.

        With ``m = 1`` (one caption per image) this is CLIP's InfoNCE. With ``m > 1`` captions per image
        (``caption_sampling=multi_positive``) image→text is multi-positive InfoNCE (the softmax mass on any of the
        image's ``m`` captions) and text→image is the usual cross-entropy over images.

        Args:
            image_features: ``(n, D)`` L2-normalised image embeddings of this rank.
            text_features: ``(n * m, D)`` L2-normalised text embeddings of this rank, grouped by image.

        Returns:
            ``{"contrastive_loss": scalar, "logit_scale": detached multiplicative scale}``.

        Raises:
            ValueError: if the text rows are not a multiple ``m >= 1`` of the image rows.
        """
        n, n_txt = image_features.shape[0], text_features.shape[0]
        if n == 0 or n_txt % n or n_txt < n:
            raise ValueError(f"image and text batches differ: {n} images vs {n_txt} texts (need m per image)")
        m, scale = n_txt // n, self.scale()
        rank, world = rank_and_world()
        all_images, all_texts = image_features, text_features
        if self.gather and world > 1:
            all_images = gather_features(image_features, with_grad=True)
            all_texts = gather_features(text_features, with_grad=True)
        local = self.gather and world > 1 and self.local_loss
        img_rows, txt_rows = (image_features, text_features) if local else (all_images, all_texts)
        offset = rank * n if local else 0
        # at least fp32 logits: a scale of 100 times fp16/bf16 cosines would lose most of their resolution
        dtype = torch.promote_types(image_features.dtype, torch.float32)
        logits_per_image = scale * (img_rows @ all_texts.T).to(dtype)
        logits_per_text = scale * (txt_rows @ all_images.T).to(dtype)
        image_ids = torch.arange(img_rows.shape[0], device=image_features.device) + offset
        text_labels = torch.arange(txt_rows.shape[0], device=image_features.device) // m + offset
        if m == 1:
            i2t = F.cross_entropy(logits_per_image, image_ids)
        else:
            positive = (
                torch.arange(all_texts.shape[0], device=image_features.device)[None, :] // m
                == image_ids[:, None]
            )
            pos = logits_per_image.masked_fill(~positive, float("-inf")).logsumexp(dim=1)
            i2t = (logits_per_image.logsumexp(dim=1) - pos).mean()
        loss = (i2t + F.cross_entropy(logits_per_text, text_labels)) / 2
        return {"contrastive_loss": loss, "logit_scale": scale.detach()}
