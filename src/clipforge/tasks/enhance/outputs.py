"""Writing datasets from generation jobs: image paths of the predict set, atomic JSONL files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable

import lightning as L

__all__ = ["predict_image_paths", "write_jsonl"]


def predict_image_paths(module: L.LightningModule, output_dir: str) -> dict[str, str | None]:
    """Sample key -> image file of the attached datamodule's predict set.

    Images that are not files (encoded bytes, tar members, HF cells, synthetic images) are written once to
    ``<output_dir>/images/<key>.png`` so that a JSONL written by the job can point at every image; an image that
    cannot be read maps to ``None``.
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
        path = os.path.join(output_dir, "images", re.sub(r"[^\w.-]", "_", record.key) + ".png")
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
