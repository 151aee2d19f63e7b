"""A generation module that reports what it was given (image size and pixel checksum per key).

It lets the writer tests check resumption, sharding across ranks and key alignment without a real model: a row
whose values do not match its own image file reveals a misaligned caption.
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np
import torch

from clipforge.utils.transforms import ToRGB


def fingerprint(image) -> dict:
    """What the module writes for an image (tests recompute it from the file)."""
    return {"size": list(image.size), "checksum": int(np.asarray(image, dtype=np.int64).sum())}


class EchoModule(L.LightningModule):
    """``predict_step`` -> one row per image with :func:`fingerprint` and the raw caption.

    Args:
        delay: seconds to sleep per batch (gives a kill test time to strike mid-job).
    """

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def image_transform(self, train: bool):
        return ToRGB()

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        time.sleep(self.delay)
        images = batch.get("image", [])
        return {
            "rows": [
                {"key": k, "caption": c, **fingerprint(im)}
                for k, c, im in zip(batch["key"], batch["caption"], images)
            ]
        }

    def on_predictions_merged(self, rows: list[dict], output_dir: str) -> dict:
        return {"mean_width": float(np.mean([r["size"][0] for r in rows]))}
