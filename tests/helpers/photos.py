"""Small photo sources on disk for generation tests: distinct random images, one corrupt file, one missing file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

BAD = {"img-03": "corrupt", "img-08": "missing"}
"""Rows of :func:`write_photo_jsonl` whose image cannot be used (the others are distinct photos)."""


def write_photo_jsonl(root: Path, n: int = 14, bad: Mapping[str, str] = BAD) -> Path:
    """Write ``n`` rows ``{"key", "image", "caption"}`` to ``root/data.jsonl`` with their photos beside it.

    Row ``i`` has key ``img-{i:02d}`` and a random ``(8 + i) x (10 + 2 i)`` photo (seeded), except the keys of
    ``bad``: ``corrupt`` writes a file that is not an image, ``missing`` writes nothing.

    Returns:
        The path of ``data.jsonl``.
    """
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        key, name = f"img-{i:02d}", f"img-{i:02d}.png"
        if bad.get(key) == "corrupt":
            (root / name).write_bytes(b"not an image")
        elif key not in bad:
            arr = rng.integers(0, 255, size=(8 + i, 10 + 2 * i, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / name)
        rows.append({"key": key, "image": name, "caption": f"caption of {key}"})
    path = root / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
