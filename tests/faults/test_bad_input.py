"""Bad input of every kind, in every format that can hold it: each bad row gets its own reason, the job goes on.

The image reasons first (each failure mode its own reason, told apart from the file itself, not from the wording
of the decoder's message), then a corpus of bad rows built here and read through every supported source format.
"""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from PIL import Image

from clipforge.data.errors import ImageLoadError
from clipforge.data.images import load_image


def _reason(ref) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(ref)
    return info.value.reason


def _noisy(fmt: str = "JPEG", size: tuple = (64, 48), seed: int = 0) -> bytes:
    """An encoded image of random pixels (its compressed data is long enough to cut and corrupt)."""
    arr = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _segment_claims_too_much(jpeg: bytes) -> bytes:
    """A complete JPEG (SOI ... EOI, nothing missing) whose quantisation-table segment claims 65,520 bytes."""
    i = jpeg.index(b"\xff\xdb")
    return jpeg[: i + 2] + struct.pack(">H", 0xFFF0) + jpeg[i + 4 :]


def _broken_scan(jpeg: bytes) -> bytes:
    """A complete JPEG whose entropy-coded data holds a stray start-of-frame marker."""
    sos = jpeg.index(b"\xff\xda")
    data = bytearray(jpeg)
    at = sos + (len(jpeg) - sos) // 2
    data[at : at + 2] = b"\xff\xc0"
    return bytes(data)


def test_corrupt_truncated_and_unreadable_are_told_apart(tmp_path):
    jpeg, png = _noisy("JPEG"), _noisy("PNG")
    assert jpeg.endswith(b"\xff\xd9")
    cases = {
        "quant_table_too_long.jpg": (_segment_claims_too_much(jpeg), "corrupt_image"),
        "broken_scan.jpg": (_broken_scan(jpeg), "corrupt_image"),
        "cut_jpeg.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "cut_jpeg_header.jpg": (jpeg[: jpeg.index(b"\xff\xda")], "truncated"),
        "cut_png.png": (png[: len(png) // 2], "truncated"),
        "zeroed_png.png": (png[:60] + bytes(200) + png[260:], "corrupt_image"),
        "text.jpg": (b"this is not an image\n" * 20, "unreadable"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert _reason(str(tmp_path / name)) == reason, name
        assert _reason(data) == reason, f"{name} as bytes"


def test_directory_symlink_loop_and_dangling_link_have_their_own_reasons(tmp_path):
    (tmp_path / "folder.jpg").mkdir()
    os.symlink(tmp_path / "loop_b.jpg", tmp_path / "loop_a.jpg")
    os.symlink(tmp_path / "loop_a.jpg", tmp_path / "loop_b.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    assert _reason(str(tmp_path / "folder.jpg")) == "not_a_file"
    assert _reason(str(tmp_path / "pipe.jpg")) == "not_a_file"  # never opened: reading a FIFO would block
    assert _reason(str(tmp_path / "loop_a.jpg")) == "symlink_loop"
    assert _reason(str(tmp_path / "dangling.jpg")) == "missing_file"
    assert _reason(str(tmp_path / "absent.jpg")) == "missing_file"
