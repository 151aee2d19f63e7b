"""Synthetic image-text pairs for fast tests and smoke runs (open_clip's ``--dataset-type synthetic``).

Image ``i`` is a small noisy square of one colour on a background of another, both drawn deterministically
from ``(seed, i)``; its captions name the colours, so a tiny model can actually learn something, and
``meta["label"]`` (the square's colour) supports zero-shot checks.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from clipforge.data.records import Record, SyntheticRef

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (240, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
_NAMES = list(COLORS)


def _layout(index: int, seed: int, size: int) -> tuple[str, str, int, int, int]:
    rng = np.random.default_rng([seed, index])
    fg, bg = rng.choice(len(_NAMES), size=2, replace=False)
    side = int(rng.integers(size // 3, size // 2 + 1))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    return _NAMES[fg], _NAMES[bg], x, y, side


def synthetic_records(n: int = 64, seed: int = 0, size: int = 32) -> list[Record]:
    """``n`` records ``synthetic_00000`` ... with three captions each and ``meta = {label, background, index}``."""
    out = []
    for i in range(n):
        fg, bg, *_ = _layout(i, seed, size)
        article = "an" if fg[0] in "aeiou" else "a"
        captions = [f"{article} {fg} square on a {bg} background", f"{fg} square", f"synthetic image {i}"]
        out.append(
            Record(
                f"synthetic_{i:05d}",
                SyntheticRef(i, seed, size),
                captions,
                {"label": fg, "background": bg, "index": i},
            )
        )
    return out


def render(ref: SyntheticRef) -> Image.Image:
    """The RGB image of a ``SyntheticRef`` (same pixels for the same ref, in any process)."""
    fg, bg, x, y, side = _layout(ref.index, ref.seed, ref.size)
    noise = np.random.default_rng([ref.seed, ref.index, 1]).integers(-12, 13, size=(ref.size, ref.size, 3))
    arr = np.empty((ref.size, ref.size, 3), dtype=np.int64)
    arr[:] = COLORS[bg]
    arr[y : y + side, x : x + side] = COLORS[fg]
    return Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8), "RGB")
