"""Bad input of every kind gets the right reason, and the good rows next to it survive."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clipforge.data.collate import ImageTextCollator
from clipforge.data.dataset import ImageTextDataset
from clipforge.data.errors import ImageLoadError
from clipforge.data.images import DefaultImageTransform, load_image
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from tests.unit.test_data_fixtures import CharTokenizer, image_bytes, pixel, png_header_only, write_image


def _reason(ref, **kwargs) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(ref, **kwargs)
    return info.value.reason


def test_caption_hygiene_keeps_good_rows(tmp_path):
    lines = [
        json.dumps({"image": "good1.jpg", "caption": "fine caption"}).encode(),
        json.dumps({"image": "empty.jpg", "caption": "   \t "}).encode(),
        b'{"image": "bytes.jpg", "caption": "bad \xff\xfe bytes", "alt": "a valid alt text"}',
        b'{"image": "malformed.jpg", "caption": ',
        json.dumps({"image": "long.jpg", "caption": "x" * 2001}).encode(),
        json.dumps({"image": "mixed.jpg", "caption": "", "alt": " kept "}).encode(),
        b"",
        json.dumps({"image": "good2.jpg", "caption": "another fine caption"}).encode(),
    ]
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    records, errors = read_records(DatasetSpec(path=str(path), caption_fields=["caption", "alt"]))
    assert [(r.key, r.captions) for r in records] == [
        ("good1", ["fine caption"]),
        ("bytes", ["a valid alt text"]),
        ("mixed", ["kept"]),
        ("good2", ["another fine caption"]),
    ]
    assert sorted((e.key, e.reason) for e in errors) == [
        ("bytes", "non_utf8_caption"),
        ("empty", "empty_caption"),
        ("empty", "no_valid_caption"),
        ("line:4", "malformed_json"),
        ("long", "caption_too_long"),
        ("long", "no_valid_caption"),
        ("mixed", "empty_caption"),
    ]
    assert {e.source for e in errors if e.key == "line:4"} == {f"{path}:4"}
    assert {e.source for e in errors if e.key == "bytes"} == {f"{path}:3"}
    records, _ = read_records(
        DatasetSpec(path=str(path), caption_fields=["caption", "alt"]), max_caption_chars=5000
    )
    assert "long" in [r.key for r in records]


def test_image_error_reasons(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not an image\n" * 20)
    full = image_bytes(size=(64, 64))
    (tmp_path / "trunc.jpg").write_bytes(full[: len(full) // 2])
    write_image(str(tmp_path / "big.png"), size=(100, 100))
    assert _reason(str(tmp_path / "missing.jpg")) == "missing_file"
    assert _reason(str(tmp_path / "zero.jpg")) == "zero_byte"
    assert _reason(b"") == "zero_byte"
    assert _reason(str(tmp_path / "text.jpg")) == "unreadable"
    assert _reason(str(tmp_path / "trunc.jpg")) == "truncated"
    assert _reason(str(tmp_path / "big.png"), max_pixels=5_000) == "too_many_pixels"
    assert load_image(str(tmp_path / "big.png"), max_pixels=10_000).size == (100, 100)
    # header-only files: the size is refused before any pixel is decoded (PIL's bomb warning/error included)
    assert _reason(png_header_only(str(tmp_path / "h1.png"), 10_000, 10_000)) == "too_many_pixels"
    assert _reason(png_header_only(str(tmp_path / "h2.png"), 60_000, 60_000)) == "too_many_pixels"
    assert (
        _reason(png_header_only(str(tmp_path / "h3.png"), 300, 200), max_pixels=50_000) == "too_many_pixels"
    )


def test_mode_conversions(tmp_path):
    cmyk = load_image(write_image(str(tmp_path / "cmyk.jpg"), (0, 255, 255, 0), mode="CMYK"))
    assert cmyk.mode == "RGB" and pixel(cmyk)[0] > 200 and pixel(cmyk)[1] < 60
    grey = load_image(write_image(str(tmp_path / "grey.png"), 77, mode="L"))
    assert grey.mode == "RGB" and pixel(grey) == (77, 77, 77)
    rgba = load_image(write_image(str(tmp_path / "rgba.png"), (255, 0, 0, 0), mode="RGBA"))
    assert pixel(rgba) == (255, 255, 255)  # fully transparent -> white background, not black or red
    half = load_image(write_image(str(tmp_path / "half.png"), (0, 0, 0, 128), mode="RGBA"))
    assert all(abs(v - 127) <= 2 for v in pixel(half))
    la = load_image(write_image(str(tmp_path / "la.png"), (0, 0), mode="LA"))
    assert pixel(la) == (255, 255, 255)
    palette = Image.new("P", (8, 8), 3)
    palette.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 0, 200, 0] + [0] * 756)
    palette.save(tmp_path / "p.png")
    assert pixel(load_image(str(tmp_path / "p.png"))) == (0, 200, 0)
    arr16 = np.full((6, 6), 32896, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(arr16).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    assert pixel(load_image(str(tmp_path / "grey16.png"))) == (128, 128, 128)
    arr16[:] = 65535
    Image.fromarray(arr16).save(tmp_path / "white16.png")
    assert pixel(load_image(str(tmp_path / "white16.png"))) == (255, 255, 255)
    f_img = Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32), "F")
    f_img.save(tmp_path / "f.tiff")
    assert pixel(load_image(str(tmp_path / "f.tiff"))) == (128, 128, 128)


def test_bad_images_in_a_batch(tmp_path):
    """Dataset + collator: every bad image is an error entry with its reason; the good rows form the batch."""
    write_image(str(tmp_path / "good_a.jpg"))
    write_image(str(tmp_path / "good_b.png"), (0, 0, 255))
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    full = image_bytes(size=(64, 64))
    (tmp_path / "trunc.jpg").write_bytes(full[: len(full) // 2])
    write_image(str(tmp_path / "big.png"), size=(120, 120))
    write_image(str(tmp_path / "cmyk.jpg"), (0, 0, 0, 0), mode="CMYK")
    names = [
        "good_a.jpg",
        "zero.jpg",
        "text.jpg",
        "missing.jpg",
        "trunc.jpg",
        "big.png",
        "cmyk.jpg",
        "good_b.png",
    ]
    rows = [{"image": n, "caption": f"caption of {n}"} for n in names]
    (tmp_path / "seed.json").write_text(json.dumps(rows))
    records, errors = read_records(DatasetSpec(path=str(tmp_path / "seed.json")))
    assert errors == [] and len(records) == len(names)
    ds = ImageTextDataset(records, DefaultImageTransform(8), all_captions=True, max_image_pixels=10_000)
    batch = ImageTextCollator(CharTokenizer(), all_captions=True)([ds[i] for i in range(len(ds))])
    assert batch["key"] == ["good_a", "cmyk", "good_b"]
    assert batch["image"].shape == (3, 3, 8, 8)
    assert batch["errors"] == [
        {"key": "zero", "reason": "zero_byte"},
        {"key": "text", "reason": "unreadable"},
        {"key": "missing", "reason": "missing_file"},
        {"key": "trunc", "reason": "truncated"},
        {"key": "big", "reason": "too_many_pixels"},
    ]
    assert batch["captions"] == ["caption of good_a.jpg", "caption of cmyk.jpg", "caption of good_b.png"]
    assert batch["text"]["input_ids"].shape[0] == 3
