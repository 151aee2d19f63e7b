"""EmbeddingWriter: writes ``predict_step`` embeddings as atomic per-rank, per-batch shards."""

from __future__ import annotations

import os

import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class EmbeddingWriter(BasePredictionWriter):
    """Save each predict batch's keys, captions and embeddings as ``<dirpath>/part-r{rank}-b{batch:06d}.pt``.

    A shard is written to a temporary name and renamed, so a killed job never leaves a half-written shard.

    Args:
        dirpath: output folder.
        dtype: storage dtype of the embeddings (``float16`` halves the size).
    """

    def __init__(self, dirpath: str, dtype: str = "float32") -> None:
        super().__init__(write_interval="batch")
        self.dirpath, self.dtype = dirpath, getattr(torch, dtype)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ):
        os.makedirs(self.dirpath, exist_ok=True)
        out = {
            k: (
                v.detach().to("cpu", self.dtype)
                if isinstance(v, torch.Tensor) and v.is_floating_point()
                else v
            )
            for k, v in prediction.items()
        }
        path = os.path.join(
            self.dirpath, f"part-r{trainer.global_rank}-d{dataloader_idx}-b{batch_idx:06d}.pt"
        )
        torch.save(out, path + ".tmp")
        os.replace(path + ".tmp", path)
