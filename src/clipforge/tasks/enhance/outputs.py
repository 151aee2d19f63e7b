"""Writing datasets from generation jobs: image paths of the predict set, atomic JSONL files."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an annotation only: writing a JSONL loads no Lightning
    import lightning as L

__all__ = ["image_file_name", "predict_image_paths", "write_jsonl"]


def image_file_name(key: str) -> str:
    """``<readable key>-<16 hex digits of its SHA-256>.png``: one file name per key.

    The readable part replaces every character outside ``[A-Za-z0-9_.-]`` by ``_`` (at most 64 of them), so
    ``a/b``, ``a_b`` and ``a?b`` read alike; the hash of the exact key keeps them apart, on case-insensitive file
    systems too (``A_B`` and ``a_b`` differ in their hashes).
    """
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key)[:64]}-{digest}.png"


def predict_image_paths(module: L.LightningModule, output_dir: str) -> dict[str, str | None]:
    """Sample key -> image file of the attached datamodule's predict set.

    Images that are not files (encoded bytes, tar members, HF cells, synthetic images) are written once to
    ``<output_dir>/images/`` (named by :func:`image_file_name`, one file per key) so that a JSONL written by the job
    can point at every image; a file already there (a rerun) is reused; an image that cannot be read maps to
    ``None``.
    """
    from clipforge.data.errors import ImageLoadError
    from clipforge.data.images import load_image

    datamodule = module.trainer.datamodule if module._trainer is not None else None
    datasets = getattr(datamodule, "datasets", {}).get("predict", [])
    out: dict[str, str | None] = {}
    for record in (r for ds in datasets for r in ds.records):
        if isinstance(record.image, str):
            out[record.key] = os.path.abspath(record.image)
            continue
        path = os.path.join(output_dir, "images", image_file_name(record.key))
        try:
            if not os.path.exists(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                load_image(record.image).save(path + ".tmp.png")
                os.replace(path + ".tmp.png", path)
            out[record.key] = path
        except ImageLoadError:
            out[record.key] = None
    return out


def write_jsonl(rows: Iterable[dict], path: str) -> int:
    """Write ``rows`` as JSON lines (to a temporary name, then renamed); returns the number written."""
    n = 0
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(path + ".tmp", path)
    return n
