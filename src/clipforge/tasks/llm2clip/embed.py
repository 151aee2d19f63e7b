"""CaptionEmbedModule: a frozen LLM caption encoder over every caption of a dataset (the stage-2 embedding cache).

Run by ``clipforge generate`` (``trainer.predict``) with the ``ShardWriter`` in ``pt`` format: one row per sample,
``{"key", "captions", "text_embedding": Tensor[n_captions, D]}`` (rows aligned with ``captions``; stored as float16
or float32 by the writer's ``dtype``), resumable shard by shard. The data layer joins the shards to records by key
and caption (``data.<split>.text_embeddings``); a caption without an embedding is an error record there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from clipforge.models.llm_encoder import LLMEncoder, LLMEncoderSpec
from clipforge.tasks.llm2clip import LLMEncoderModule

__all__ = ["CaptionEmbedModule"]


class CaptionEmbedModule(LLMEncoderModule):
    """Embeds every caption of every predict row with a frozen :class:`LLMEncoder` (no instruction: LLM2CLIP's
    ``extract_embedding.py`` encodes the bare captions).

    Batch keys (``ImageTextCollator(all_captions=True)``): ``key``, ``captions``, ``caption_image_index`` and
    ``text`` (tokenized by this module's ``tokenizer``, with ``embed_mask``). Not trainable.

    Args:
        llm_encoder: the encoder, typically the stage-1 folder (``name_or_path: <run>/encoder``; its
            ``encoder_config.json`` settings are read there) or an HF id such as
            ``microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned``.
        normalize: L2-normalise the embeddings (LLM2CLIP stores them unnormalised; the adapter normalises).
        micro_batch_size: captions per forward pass. A batch's captions are sorted by length and cut into micro-
            batches whose padding is trimmed, so short captions do not pay for the longest one of the batch
            (LLM2Vec's length-sorted ``encode``; embeddings are unchanged: positions are per sequence).
    """

    def __init__(
        self, llm_encoder: LLMEncoderSpec | Mapping, normalize: bool = False, micro_batch_size: int = 32
    ) -> None:
        super().__init__(llm_encoder)
        self.save_hyperparameters(logger=False)

    def prepare_encoder(self, encoder: LLMEncoder) -> LLMEncoder:
        """Frozen and in eval mode (the datamodule's collator tokenizes captions with its tokenizer)."""
        encoder.requires_grad_(False)
        return encoder.eval()

    @torch.no_grad()
    def predict_step(self, batch: Mapping, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """One row per ``batch["key"]``: its captions and their embeddings ``(n_captions, D)`` (float32)."""
        keys, captions = batch["key"], batch.get("captions", [])
        if captions:
            embeddings = self._embed(batch["text"])
            if self.hparams.normalize:
                embeddings = F.normalize(embeddings, dim=-1)
            embeddings, index = embeddings.cpu(), batch["caption_image_index"].cpu()
        else:
            embeddings, index = torch.zeros(0, self.encoder.feature_dim), torch.zeros(0, dtype=torch.long)
        rows = []
        for i, key in enumerate(keys):
            mine = (index == i).nonzero().flatten().tolist()
            rows.append(
                {"key": key, "captions": [captions[j] for j in mine], "text_embedding": embeddings[mine]}
            )
        return {"rows": rows}

    def _embed(self, text: Mapping) -> torch.Tensor:
        """Embeddings of tokenized captions, computed in length-sorted micro-batches with trimmed padding."""
        mask = text["attention_mask"]
        embed_mask = text.get("embed_mask", mask)
        order = mask.sum(1).argsort(descending=True)
        out = torch.empty(mask.shape[0], self.encoder.feature_dim, device=mask.device)
        for chunk in order.split(self.hparams.micro_batch_size):
            width = int(mask[chunk].sum(1).max())  # right padding: columns past the longest are padding only
            out[chunk] = self.encoder(
                text["input_ids"][chunk, :width], mask[chunk, :width], embed_mask[chunk, :width]
            )
        return out

    def on_predictions_merged(self, rows: list[dict], output_dir: str) -> dict:
        """Write ``encoder.json`` (the spec that made the cache) and return counts for ``summary.json``."""
        spec = dataclasses.asdict(self.encoder_spec)
        with open(os.path.join(output_dir, "encoder.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
        return {
            "captions": sum(len(r["captions"]) for r in rows),
            "embedding_dim": self.encoder.feature_dim,
            "encoder": self.encoder_spec.name_or_path,
        }
