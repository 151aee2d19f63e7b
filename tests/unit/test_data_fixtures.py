"""Helpers shared by the data-layer tests: images written at test time, tar shards, a tiny tokenizer and a
LightningModule-like stub. (No tests here; the module name only keeps it inside the data tests' files.) The real
shared data is found by :mod:`tests.helpers.shared_data`."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import zlib

import numpy as np
import torch
from PIL import Image


def write_image(
    path: str, color: tuple = (200, 30, 30), size: tuple = (24, 16), mode: str = "RGB", fmt=None
) -> str:
    """A solid-colour image file (format from the extension unless ``fmt``)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.new(mode, size, color).save(path, format=fmt)
    return path


def image_bytes(color: tuple = (200, 30, 30), size: tuple = (24, 16), fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def png_header_only(path: str, width: int, height: int) -> str:
    """A PNG whose header claims ``width x height`` but holds no pixel data (nothing big is allocated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def make_tar(path: str, members: dict[str, bytes]) -> str:
    """An uncompressed tar with the given members, in insertion order."""
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


class CharTokenizer:
    """``list[str] -> {input_ids, attention_mask}``: bytes as ids, right-padded; picklable for workers."""

    def __init__(self, max_length: int = 16) -> None:
        self.max_length = max_length

    def __call__(self, texts: list[str]) -> dict[str, torch.Tensor]:
        ids = [list(t.encode("utf-8"))[: self.max_length] or [0] for t in texts]
        width = max(len(x) for x in ids)
        input_ids = torch.zeros(len(ids), width, dtype=torch.long)
        mask = torch.zeros(len(ids), width, dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": mask}


class FakeModule:
    """What the datamodule takes from ``trainer.lightning_module``: ``tokenizer`` and ``image_transform(train)``."""

    def __init__(self, size: int = 8) -> None:
        self.tokenizer = CharTokenizer()
        self.size = size

    def image_transform(self, train: bool):
        from clipforge.data.images import DefaultImageTransform

        return DefaultImageTransform(self.size)


class FakeTrainer:
    """Just enough of a Trainer for ``ImageTextDataModule.setup``."""

    def __init__(self, world_size: int = 1, global_rank: int = 0) -> None:
        self.lightning_module = FakeModule()
        self.world_size, self.global_rank = world_size, global_rank


def pixel(img: Image.Image) -> tuple:
    return tuple(int(v) for v in np.asarray(img)[img.height // 2, img.width // 2])


def quiet_trainer(tmp_path, **kwargs):
    """A 2-epoch CPU Trainer without logger, checkpoints, progress bar or summary."""
    import lightning as L

    return L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        **kwargs,
    )
