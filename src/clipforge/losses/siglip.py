"""SigLIP's pairwise sigmoid loss with learnable scale and bias (Zhai et al., 2023)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipforge.losses.gather import gather_features, rank_and_world

__all__ = ["SigLipLoss"]


class SigLipLoss(nn.Module):
    """Pairwise sigmoid loss: every image-text pair is an independent binary classification.

    For this rank's ``n`` images ``x_i`` and the texts ``y_j`` of the negative pool::

        loss = -1/n * sum_i sum_j log sigmoid(z_ij * (s * <x_i, y_j> + b)),   s = exp(logit_scale)

    with ``z_ij = +1`` when ``y_j`` is ``x_i``'s own caption (the *global* diagonal) and ``-1`` otherwise.

    Distributed (``gather=True``, world size ``W > 1``, ``n`` pairs per rank, ``N = W * n``): the texts are
    all-gathered with gradients and each rank scores its ``n`` images against all ``N`` texts, the positive of
    local image ``i`` being column ``rank * n + i``. Summed over ranks this covers every one of the ``N x N``
    pairs exactly once, i.e. it is the "all-gather" variant of big_vision's sigmoid loss (open_clip's ring /
    neighbour-exchange implementation computes the same sum chunk by chunk with less memory).

    Normalisation — why ``1 / n`` (local batch): the single-process loss on the global batch is
    ``L = -1/N * sum_{all N x N pairs}``. Each rank's loss is ``L_r = -1/n * sum_{its n x N pairs}``, so
    ``mean_r L_r = -1/(W n) * sum_{all pairs} = L``. DDP averages gradients over ranks, and the all-gather
    backward routes every rank's text gradient back to the text's owner (summed), so the averaged gradient is
    ``d(mean_r L_r) = dL``: training with ``W`` ranks matches one process on the global batch. Normalising by
    ``N`` instead would shrink the effective learning rate by ``W``.

    Features must be L2-normalised by the caller. The scale is not clamped (SigLIP does not need it).

    Args:
        init_logit_scale: initial log-space scale (``log(10)``, SigLIP's recommendation).
        init_logit_bias: initial bias (``-10``: starts the model close to the prior that pairs are negatives).
        gather: score local images against all ranks' texts; ``False`` uses the local batch only.
    """

    def __init__(
        self,
        init_logit_scale: float = math.log(10),
        init_logit_bias: float = -10.0,
        gather: bool = True,
    ) -> None:
        super().__init__()
        self.gather = gather
        self.logit_scale = nn.Parameter(torch.tensor(float(init_logit_scale)))
        self.logit_bias = nn.Parameter(torch.tensor(float(init_logit_bias)))

    def forward(self, image_features: Tensor, text_features: Tensor) -> dict[str, Tensor]:
        """Compute the loss for aligned pairs (row ``i`` of both inputs is a positive pair).

        Args:
            image_features: ``(n, D)`` L2-normalised image embeddings of this rank.
            text_features: ``(n, D)`` L2-normalised text embeddings of this rank.

        Returns:
            ``{"contrastive_loss": scalar, "logit_scale": detached exp(logit_scale), "logit_bias": detached bias}``.

        Raises:
            ValueError: if the two batches differ in size.
        """
        if image_features.shape[0] != text_features.shape[0]:
            raise ValueError(
                f"image and text batches differ: {image_features.shape[0]} vs {text_features.shape[0]} "
                "(caption_sampling=multi_positive needs model/loss=clip)"
            )
        n = image_features.shape[0]
        rank, world = rank_and_world()
        if self.gather and world > 1:
            texts = gather_features(text_features, with_grad=True)
            offset = rank * n
        else:
            texts, offset = text_features, 0
        scale = self.logit_scale.exp()
        cosines = image_features @ texts.T
        # at least fp32 logits (fp16/bf16 features under autocast), never a downcast of fp64 inputs
        logits = scale * cosines.to(torch.promote_types(cosines.dtype, torch.float32)) + self.logit_bias
        signs = torch.full_like(logits, -1.0)
        rows = torch.arange(n, device=logits.device)
        signs[rows, rows + offset] = 1.0
        loss = -F.logsigmoid(signs * logits).sum() / n
        return {
            "contrastive_loss": loss,
            "logit_scale": scale.detach(),
            "logit_bias": self.logit_bias.detach(),
        }
