"""``RetrievalAccumulator``: image/caption embeddings of an evaluation epoch, turned into retrieval metrics.

Plain torch (``torch.distributed`` for the gather), used by every LightningModule that can embed images and
captions (the CLIP baseline, LLM2CLIP). Works under
DDP: each rank holds what its sampler gave it; ``compute()`` gathers all ranks' embeddings and removes the samples
that a distributed sampler repeated to even out the shards (by sample key), so every image counts once.

``compute()`` also checks both sides for collapse (:func:`clipforge.eval.retrieval.is_collapsed`): it logs a
warning and reports ``collapsed`` = 1.0 (else 0.0), which the modules log as ``{val,test}/retrieval/<name>/collapsed``.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

from clipforge.eval.retrieval import embedding_spread, is_collapsed, retrieval_metrics

log = logging.getLogger(__name__)


class RetrievalAccumulator:
    """Embeddings of one evaluation dataset, accumulated batch by batch."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (call at the start of each evaluation epoch)."""
        self.keys: list[str] = []
        self.images: list[torch.Tensor] = []
        self.texts: list[torch.Tensor] = []  # one (n_captions_of_image, D) tensor per image

    def update(
        self,
        keys: list[str],
        image_emb: torch.Tensor,
        text_emb: torch.Tensor,
        caption_image_index: torch.Tensor,
    ) -> None:
        """Add a batch: ``caption_image_index[t]`` is the batch position of caption ``t``'s image."""
        image_emb, text_emb = image_emb.detach().float().cpu(), text_emb.detach().float().cpu()
        index = caption_image_index.cpu()
        for i, key in enumerate(keys):
            self.keys.append(key)
            self.images.append(image_emb[i])
            self.texts.append(text_emb[index == i])

    def __len__(self) -> int:
        return len(self.keys)

    def compute(self, ks: tuple[int, ...] = (1, 5, 10), name: str = "retrieval") -> dict[str, float]:
        """Gather across ranks, de-duplicate by key and return retrieval metrics (percent).

        Args:
            ks: Recall@k cut-offs.
            name: dataset name for the collapse warning.

        Returns:
            :func:`~clipforge.eval.retrieval.retrieval_metrics`' keys, ``num_images``, ``num_captions`` and
            ``collapsed`` (1.0 when the image or the caption embeddings have collapsed, else 0.0); empty when
            nothing was accumulated.
        """
        shards = [(self.keys, self.images, self.texts)]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shards = [None] * dist.get_world_size()
            dist.all_gather_object(shards, (self.keys, self.images, self.texts))
        seen: set[str] = set()
        images, texts, owner = [], [], []
        for keys, imgs, txts in shards:
            for key, img, txt in zip(keys, imgs, txts):
                if key in seen or len(txt) == 0:
                    continue
                seen.add(key)
                owner.extend([len(images)] * len(txt))
                images.append(img)
                texts.append(txt)
        if not images:
            return {}
        image_features, text_features = torch.stack(images), torch.cat(texts)
        metrics = retrieval_metrics(
            image_features, text_features, torch.tensor(owner, dtype=torch.long), ks=ks
        )
        metrics["num_images"], metrics["num_captions"] = float(len(images)), float(len(owner))
        collapsed = [
            side for side, f in (("image", image_features), ("caption", text_features)) if is_collapsed(f)
        ]
        metrics["collapsed"] = float(bool(collapsed))
        if collapsed:
            spread = {
                side: embedding_spread(f)
                for side, f in (("image", image_features), ("caption", text_features))
            }
            details = "; ".join(
                f"{side}: mean pairwise cosine {s['mean_cosine']:.4f}, max per-dim std {s['max_dim_std']:.2e}"
                for side, s in spread.items()
            )
            log.warning(
                "%s: %s embeddings collapsed (%s) - the retrieval metrics of this set are meaningless",
                name,
                " and ".join(collapsed),
                details,
            )
        return metrics
