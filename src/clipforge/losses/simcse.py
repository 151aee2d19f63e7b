"""Supervised SimCSE with hard negatives (LLM2Vec's ``HardNegativeNLLLoss``, the LLM2CLIP caption-contrastive loss)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clipforge.losses.gather import gather_features, rank_and_world

__all__ = ["SimCSELoss"]


class SimCSELoss(nn.Module):
    """Query→document cross-entropy over scaled cosine similarities, one direction only.

    For ``N`` queries ``q``, their positives ``d+`` and (optionally) one hard negative each ``d-``, the documents
    are ``[d+_1 .. d+_N, d-_1 .. d-_N]`` and the loss is ``CE(scale * cos(q, documents), labels = 0..N-1)``: every
    other query's positive and every hard negative is a negative. ``scale`` is fixed (LLM2CLIP: 50, i.e. a
    temperature of 0.02).

    Distributed (``W > 1`` ranks with ``n`` triplets each): queries, positives and negatives are all-gathered with
    gradients, so the documents are the global ``[d+ (W n); d- (W n)]``. ``local_loss=False`` (LLM2Vec) computes the
    full ``W n`` rows on every rank (identical loss everywhere, equal to the single-process loss on the global
    batch); ``local_loss=True`` computes this rank's ``n`` rows only (labels offset by ``rank * n``; the mean over
    ranks is the global loss). Either way DDP's averaged gradient is the single-process gradient.

    Args:
        scale: multiplier of the cosine similarities (inverse temperature).
        gather: use the negatives of every rank.
        local_loss: compute only this rank's query rows (see above).
    """

    def __init__(self, scale: float = 50.0, gather: bool = True, local_loss: bool = False) -> None:
        super().__init__()
        self.scale, self.gather, self.local_loss = float(scale), gather, local_loss

    def forward(self, query: Tensor, positive: Tensor, negative: Tensor | None = None) -> dict[str, Tensor]:
        """Loss of aligned triplets (row ``i`` of each input belongs together); inputs need not be normalised.

        Returns:
            ``{"contrastive_loss": scalar, "top1": detached fraction of the scored queries whose best document is
            their positive}``.

        Raises:
            ValueError: if the batches differ in size.
        """
        n = query.shape[0]
        if positive.shape[0] != n or (negative is not None and negative.shape[0] != n):
            sizes = [query.shape[0], positive.shape[0], None if negative is None else negative.shape[0]]
            raise ValueError(f"query / positive / negative batches differ: {sizes}")
        # cosines in at least fp32: a scale of 50 on bf16 similarities would keep two significant digits
        dtype = torch.promote_types(query.dtype, torch.float32)
        q = F.normalize(query.to(dtype), dim=-1)
        docs = [F.normalize(positive.to(dtype), dim=-1)]
        if negative is not None:
            docs.append(F.normalize(negative.to(dtype), dim=-1))
        rank, world = rank_and_world()
        offset = 0
        if self.gather and world > 1:
            all_q = gather_features(q, with_grad=True)
            docs = [gather_features(d, with_grad=True) for d in docs]
            if self.local_loss:
                offset = rank * n
            else:
                q = all_q
        scores = self.scale * q @ torch.cat(docs).T
        labels = torch.arange(q.shape[0], device=q.device) + offset
        loss = F.cross_entropy(scores, labels)
        top1 = (scores.argmax(1) == labels).float().mean().detach()
        return {"contrastive_loss": loss, "top1": top1}
