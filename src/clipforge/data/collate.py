"""``ImageTextCollator``: dataset items -> a batch dict; tokenization happens here (docs/design/data.md)."""

from __future__ import annotations

from collections.abc import Callable

import torch

Tokenizer = Callable[[list[str]], dict[str, torch.Tensor]]
"""``tokenizer(texts) -> {"input_ids": LongTensor[N, L], "attention_mask": LongTensor[N, L]}``."""


def _empty_text() -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.zeros(0, 0, dtype=torch.long),
        "attention_mask": torch.zeros(0, 0, dtype=torch.long),
    }


class ImageTextCollator:
    """Stack images, gather captions, tokenize, and pass bad rows on as ``errors``.

    Batch keys: ``key`` (list[str]), ``image`` (``Tensor[B, 3, H, W]``, or a list when the image transform returns
    PIL images; absent for text-only data), ``caption`` (one per row), ``meta`` (list of dicts), ``text``
    (tokenized captions, when a tokenizer is set), ``text_embedding`` (cached caption
    embeddings aligned with the captions handed out, when the dataset has them),
    ``errors`` (list of ``{"key", "reason"}`` for rows left out). With ``all_captions``: ``captions`` (every
    caption of the batch, flattened row by row), ``caption_image_index`` (``LongTensor``: batch position of each
    caption's row) and ``text`` tokenizes ``captions``. A batch whose rows are all errors is still a valid batch
    with ``B = 0`` (``image`` of shape ``(0, 3, 0, 0)``).

    Args:
        tokenizer: callable ``list[str] -> {"input_ids", "attention_mask"}``; ``None`` = no ``text`` key.
        all_captions: evaluation / prediction mode (every caption of every row).
    """

    def __init__(self, tokenizer: Tokenizer | None = None, all_captions: bool = False) -> None:
        self.tokenizer, self.all_captions = tokenizer, all_captions

    def __call__(self, items: list[dict]) -> dict:
        good = [it for it in items if "error" not in it]
        batch: dict = {
            "key": [it["key"] for it in good],
            "caption": [it["caption"] for it in good],
            "meta": [it.get("meta", {}) for it in good],
            "errors": [{"key": it["key"], "reason": it["error"]} for it in items if "error" in it],
        }
        if any("image" in it for it in good):
            images = [it["image"] for it in good]
            # tensors are stacked; PIL images (captioners and VLM processors take them raw) stay a list
            batch["image"] = torch.stack(images) if torch.is_tensor(images[0]) else images
        elif not good and batch["errors"]:  # only image rows can fail: keep the image key with B = 0
            batch["image"] = torch.zeros(0, 3, 0, 0)
        texts = batch["caption"]
        if self.all_captions:
            texts = [c for it in good for c in it["captions"]]
            index = [i for i, it in enumerate(good) for _ in it["captions"]]
            batch["captions"] = texts
            batch["caption_image_index"] = torch.tensor(index, dtype=torch.long)
        if good and all("text_embedding" in it for it in good):
            # cached caption embeddings, one per caption handed out: [B, D] in training, [N_captions, D] else
            batch["text_embedding"] = torch.cat(
                [e if e.dim() == 2 else e[None] for e in (it["text_embedding"] for it in good)]
            )
        if self.tokenizer is not None:
            batch["text"] = dict(self.tokenizer(texts)) if texts else _empty_text()
        return batch
