"""Bad input of every kind, in every format that can hold it: each bad row gets its own reason, the job goes on.

The image reasons first (each failure mode its own reason, told apart from the file itself, not from the wording
of the decoder's message), then a corpus of bad rows built here and read through every supported source format.
"""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile

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


# -- the corpus: every kind of bad row, in every source format that can hold it -------------------------------
#
# Each format gets good rows (odd image modes included: they must be converted, not rejected) and one row per
# applicable bad kind. The expected outcome is derived from the corpus alone: which keys come out of the
# datamodule, and which (key, reason) pairs are recorded, at index time or when the image is loaded.

LONG = "x" * 2001
NON_UTF8 = "@@non-utf8@@"  # placeholder, written as the raw bytes b"bad \xff\xfe" in text formats
NON_UTF8_BYTES = b"bad \xff\xfe caption"


def _image(mode: str, color, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (20, 14), color).save(buf, format=fmt)
    return buf.getvalue()


def _grey16() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((14, 20), 40000, dtype=np.uint16)).save(buf, format="PNG")
    return buf.getvalue()


def _header_only_png(width: int, height: int) -> bytes:
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _good_images() -> dict[str, tuple[bytes, str]]:
    """key -> (encoded image, extension): every one must come out, converted to RGB."""
    return {
        "good_rgb": (_image("RGB", (200, 30, 30), "JPEG"), "jpg"),
        "good_cmyk": (_image("CMYK", (0, 255, 255, 0), "JPEG"), "jpg"),
        "good_grey": (_image("L", 77, "PNG"), "png"),
        "good_alpha": (_image("RGBA", (255, 0, 0, 0), "PNG"), "png"),
        "good_palette": (_image("P", 3, "PNG"), "png"),
        "good_16bit": (_grey16(), "png"),
    }


def _bad_images() -> dict[str, tuple[bytes, str, str]]:
    """key -> (encoded bytes, extension, reason) of images that exist but cannot be used."""
    jpeg, png = _noisy("JPEG"), _noisy("PNG")
    return {
        "zero_bytes": (b"", "jpg", "zero_byte"),
        "not_an_image": (b"<html>an error page</html>\n" * 10, "jpg", "unreadable"),
        "bad_segment": (_segment_claims_too_much(jpeg), "jpg", "corrupt_image"),
        "bad_scan": (_broken_scan(jpeg), "jpg", "corrupt_image"),
        "cut_jpeg": (jpeg[: len(jpeg) // 2], "jpg", "truncated"),
        "cut_png": (png[: len(png) // 2], "png", "truncated"),
        "huge_header": (_header_only_png(20_000, 20_000), "png", "too_many_pixels"),
    }


FILE_KINDS = {  # key -> reason of image paths that are no usable file
    "missing": "missing_file",
    "dangling_link": "missing_file",
    "a_folder": "not_a_file",
    "a_pipe": "not_a_file",
    "link_loop": "symlink_loop",
}
CAPTION_KINDS = {  # key -> (caption value, reason); the row has no other caption, so it is also no_valid_caption
    "blank_caption": ("  \t ", "empty_caption"),
    "long_caption": (LONG, "caption_too_long"),
    "non_utf8_caption": (NON_UTF8, "non_utf8_caption"),
    "number_caption": (42, "bad_caption_type"),
}


class Corpus:
    """The expected outcome of one source: ``good`` keys, ``errors`` (key, reason) pairs, ``records`` (keys the
    reader keeps: the good ones and those whose image fails only when loaded)."""

    def __init__(self) -> None:
        self.good: list[str] = []
        self.errors: list[tuple[str, str]] = []
        self.records: list[str] = []

    def ok(self, key: str) -> None:
        self.good.append(key)
        self.records.append(key)

    def bad_at_load(self, key: str, reason: str) -> None:
        self.records.append(key)
        self.errors.append((key, reason))

    def bad(self, key: str, *reasons: str) -> None:
        self.errors += [(key, r) for r in reasons]


def _faulty_files(img) -> None:
    """The paths of FILE_KINDS in ``img``: nothing, a dangling link, a folder, a FIFO, a symlink loop."""
    (img / "a_folder.jpg").mkdir()
    os.mkfifo(img / "a_pipe.jpg")
    os.symlink(img / "nowhere.jpg", img / "dangling_link.jpg")
    os.symlink(img / "link_loop2.jpg", img / "link_loop.jpg")
    os.symlink(img / "link_loop.jpg", img / "link_loop2.jpg")


def _image_files(root) -> dict[str, str]:
    """Write the good and bad image files and the FILE_KINDS paths under ``root/img``; key -> relative path."""
    img = root / "img"
    img.mkdir(parents=True)
    paths = {}
    for key, (data, ext) in _good_images().items():
        (img / f"{key}.{ext}").write_bytes(data)
        paths[key] = f"img/{key}.{ext}"
    for key, (data, ext, _) in _bad_images().items():
        (img / f"{key}.{ext}").write_bytes(data)
        paths[key] = f"img/{key}.{ext}"
    _faulty_files(img)
    for key in FILE_KINDS:
        paths[key] = f"img/{key}.jpg"
    return paths


def _rows(root, with_types: bool = True) -> tuple[list[dict], Corpus]:
    """Row-format rows (``key``, ``image``, ``caption``) of every kind and their expected outcome.

    ``with_types``: include the rows whose cells have the wrong type (a number as caption or image), which
    columnar formats cannot hold."""
    corpus = Corpus()
    paths = _image_files(root)
    rows = []
    for key in _good_images():
        rows.append({"key": key, "image": paths[key], "caption": f"a photo: {key}"})
        corpus.ok(key)
    for key, (_, _, reason) in _bad_images().items():
        rows.append({"key": key, "image": paths[key], "caption": f"a photo: {key}"})
        corpus.bad_at_load(key, reason)
    for key, reason in FILE_KINDS.items():
        rows.append({"key": key, "image": paths[key], "caption": f"a photo: {key}"})
        corpus.bad_at_load(key, reason)
    for key, (value, reason) in CAPTION_KINDS.items():
        if isinstance(value, int) and not with_types:
            continue
        rows.append({"key": key, "image": paths["good_rgb"], "caption": value})
        corpus.bad(key, reason, "no_valid_caption")
    rows.append({"key": "no_caption", "image": paths["good_rgb"]})
    corpus.bad("no_caption", "no_valid_caption")
    rows.append({"key": "null_image", "image": None, "caption": "an image that is not there"})
    corpus.bad("null_image", "no_image")
    rows.append({"key": "remote_image", "image": "https://example.invalid/a.jpg", "caption": "not fetched"})
    corpus.bad("remote_image", "remote_image")
    if with_types:
        rows.append({"key": "number_image", "image": 7, "caption": "an image cell that is a number"})
        corpus.bad("number_image", "bad_image_type")
    rows.append({"key": "good_rgb", "image": paths["good_grey"], "caption": "the same key, another image"})
    corpus.bad("good_rgb", "duplicate_key")
    return rows, corpus


def _raw_json(obj) -> bytes:
    return (
        json.dumps(obj)
        .replace(f'"{NON_UTF8}"', '"' + NON_UTF8_BYTES.decode("latin-1") + '"')
        .encode("latin-1")
    )


def _jsonl(root) -> tuple[str, Corpus]:
    rows, corpus = _rows(root)
    lines = [_raw_json(r) for r in rows]
    lines.insert(3, b'{"key": "cut", "image": "img/good_rgb.jpg", "capt')
    corpus.bad("line:4", "malformed_json")
    lines.insert(5, b'["a", "list", "not", "a", "row"]')
    corpus.bad("line:6", "bad_row")
    lines.insert(7, b"")  # blank lines are skipped silently
    (root / "data.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return str(root / "data.jsonl"), corpus


def _seed_json(root) -> tuple[str, Corpus]:
    rows, corpus = _rows(root)
    rows.insert(2, "a bare string, not a row")
    corpus.bad("row:2", "bad_row")
    partly = {"key": "partly_blank", "image": "img/good_rgb.jpg", "caption": ["   ", "the kept caption"]}
    rows.append(partly)
    corpus.ok("partly_blank")
    corpus.bad("partly_blank", "empty_caption")
    (root / "data.json").write_bytes(_raw_json(rows))
    return str(root / "data.json"), corpus


def _coco(root) -> tuple[str, Corpus]:
    rows, corpus = _rows(root)
    ids = {}  # COCO keys are image ids: rename the expected keys
    images, annotations = [], []
    for r in rows:
        if r["key"] in ids:  # the duplicate-key row: COCO has one entry per image id
            continue
        ids[r["key"]] = len(ids) + 1
        entry = {"id": ids[r["key"]], "width": 20, "height": 14}
        if r["image"] is not None:
            entry["file_name"] = r["image"]
        images.append(entry)
        if "caption" in r:
            annotations.append({"id": len(annotations), "image_id": ids[r["key"]], "caption": r["caption"]})
    ids["partly_blank"] = len(ids) + 1
    images.append({"id": ids["partly_blank"], "file_name": "img/good_rgb.jpg"})
    for caption in ("   ", "the kept caption"):
        annotations.append({"id": len(annotations), "image_id": ids["partly_blank"], "caption": caption})
    annotations.append({"id": len(annotations), "image_id": 999, "caption": "an annotation of no image"})
    expected = Corpus()
    rename = {k: str(v) for k, v in ids.items()}
    expected.good = [rename[k] for k in corpus.good] + [rename["partly_blank"]]
    expected.records = [rename[k] for k in corpus.records] + [rename["partly_blank"]]
    expected.errors = [(rename[k], r) for k, r in corpus.errors if r != "duplicate_key"]
    expected.errors += [(rename["partly_blank"], "empty_caption"), ("999", "unknown_image_id")]
    (root / "coco.json").write_bytes(_raw_json({"images": images, "annotations": annotations}))
    return str(root / "coco.json"), expected


def _parquet(root) -> tuple[str, Corpus]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, corpus = _rows(root, with_types=False)

    def cell(value):
        if value is None:
            return None
        return NON_UTF8_BYTES if value == NON_UTF8 else value.encode("utf-8")

    table = pa.table(
        {
            "key": [r["key"] for r in rows],
            "image": pa.array([r["image"] for r in rows], type=pa.string()),
            "caption": pa.array([cell(r.get("caption")) for r in rows], type=pa.binary()),
        }
    )
    pq.write_table(table, root / "data.parquet", row_group_size=7)  # several row groups
    return str(root / "data.parquet"), corpus


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _wds(root) -> tuple[str, Corpus]:
    corpus = Corpus()
    folder = root / "shards"
    folder.mkdir()
    with tarfile.open(folder / "shard-000.tar", "w") as tf:
        for key, (data, ext) in _good_images().items():
            _add(tf, f"{key}.{ext}", data)
            _add(tf, f"{key}.txt", f"a photo: {key}".encode())
            corpus.ok(key)
        for key, (data, ext, reason) in _bad_images().items():
            _add(tf, f"{key}.{ext}", data)
            _add(tf, f"{key}.txt", f"a photo: {key}".encode())
            corpus.bad_at_load(key, reason)
        good = _good_images()["good_rgb"][0]
        for key, text in (
            ("blank_caption", b"  \t "),
            ("long_caption", LONG.encode()),
            ("non_utf8_caption", NON_UTF8_BYTES),
        ):
            _add(tf, f"{key}.jpg", good)
            _add(tf, f"{key}.txt", text)
            corpus.bad(key, CAPTION_KINDS[key][1], "no_valid_caption")
        _add(tf, "no_caption.jpg", good)
        corpus.bad("no_caption", "no_valid_caption")
        _add(tf, "no_image.txt", b"a caption without its image")
        corpus.bad("no_image", "no_image")
        _add(tf, "bad_meta.jpg", good)
        _add(tf, "bad_meta.txt", b"a photo with broken metadata")
        _add(tf, "bad_meta.json", b'{"url": "http://x", ')
        corpus.ok("bad_meta")
        corpus.bad("bad_meta", "malformed_json")
        _add(tf, "good_rgb.jpg", _good_images()["good_grey"][0])  # the sample written twice
        _add(tf, "good_rgb.txt", b"the same key, another image")
        corpus.bad("good_rgb", "duplicate_key")
    # a shard cut inside its third sample
    with tarfile.open(folder / "probe.tar", "w") as tf:
        for key in ("cut_ok_a", "cut_ok_b", "cut_lost"):
            _add(tf, f"{key}.jpg", good)
            _add(tf, f"{key}.txt", f"a photo: {key}".encode())
    data = (folder / "probe.tar").read_bytes()
    with tarfile.open(folder / "probe.tar") as tf:
        cut = next(m for m in tf if m.name == "cut_lost.jpg").offset_data + 100
    (folder / "probe.tar").unlink()
    (folder / "shard-001.tar").write_bytes(data[:cut])
    corpus.ok("cut_ok_a")
    corpus.ok("cut_ok_b")
    corpus.bad("cut_lost", "truncated_tar")
    # a shard whose second header is garbage
    with tarfile.open(folder / "probe.tar", "w") as tf:
        _add(tf, "mid_ok.jpg", good)
        _add(tf, "mid_ok.txt", b"a photo before the damage")
        end = tf.offset
        _add(tf, "mid_lost.jpg", good)
    data = bytearray((folder / "probe.tar").read_bytes())
    (folder / "probe.tar").unlink()
    data[end : end + 512] = np.random.default_rng(0).integers(1, 255, 512, dtype=np.uint8).tobytes()
    (folder / "shard-002.tar").write_bytes(bytes(data))
    corpus.ok("mid_ok")
    corpus.bad(f"shard-002.tar@{end}", "corrupt_tar")
    (folder / "shard-003.tar").write_bytes(b"<html>not a tar</html>" * 40)
    corpus.bad("shard-003.tar@0", "unreadable_tar")
    return str(folder), corpus


def _hf(root) -> tuple[str, Corpus]:
    import datasets

    corpus = Corpus()
    keys, images, captions = [], [], []

    def row(key, image, caption):
        keys.append(key)
        images.append(image)
        captions.append(caption)

    for key, (data, _) in _good_images().items():
        row(key, {"bytes": data, "path": None}, f"a photo: {key}")
        corpus.ok(key)
    for key, (data, _, reason) in _bad_images().items():
        row(key, {"bytes": data, "path": None}, f"a photo: {key}")
        corpus.bad_at_load(key, reason)
    row("null_image", None, "a row whose image cell is empty")
    corpus.bad_at_load("null_image", "no_image")
    good = _good_images()["good_rgb"][0]
    for key in ("blank_caption", "long_caption"):
        row(key, {"bytes": good, "path": None}, CAPTION_KINDS[key][0])
        corpus.bad(key, CAPTION_KINDS[key][1], "no_valid_caption")
    row("no_caption", {"bytes": good, "path": None}, None)
    corpus.bad("no_caption", "no_valid_caption")
    row("good_rgb", {"bytes": _good_images()["good_grey"][0], "path": None}, "the same key, another image")
    corpus.bad("good_rgb", "duplicate_key")
    features = datasets.Features(
        key=datasets.Value("string"), image=datasets.Image(), caption=datasets.Value("string")
    )
    ds = datasets.Dataset.from_dict({"key": keys, "image": images, "caption": captions}, features=features)
    ds.save_to_disk(str(root / "saved"))  # embeds the image bytes: the path kinds do not apply here
    return str(root / "saved"), corpus


FORMATS = {
    "jsonl": _jsonl,
    "seed_json": _seed_json,
    "coco": _coco,
    "parquet": _parquet,
    "wds": _wds,
    "hf": _hf,
}


def test_the_corpus_has_at_least_twenty_kinds_of_bad_rows():
    kinds = set(_bad_images()) | set(FILE_KINDS) | set(CAPTION_KINDS)
    kinds |= {"no_caption", "null_image", "remote_image", "number_image", "duplicate_key", "partly_blank"}
    kinds |= {
        "malformed_json_line",
        "bad_row",
        "unknown_image_id",
        "no_image_member",
        "malformed_json_member",
    }
    kinds |= {"truncated_tar", "corrupt_tar", "unreadable_tar"}
    assert len(kinds) >= 20


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_every_good_row_comes_out_and_every_bad_row_is_recorded(fmt, tmp_path, capsys):
    """The datamodule reads every row (index-time errors, then a full epoch of batches with load-time errors)
    and ``clipforge-data inspect --check-images`` counts the same: nothing raises, nothing good is lost."""
    from collections import Counter

    from clipforge.cli.data import main as data_main
    from clipforge.data.datamodule import ImageTextDataModule
    from tests.unit.test_data_fixtures import FakeTrainer

    path, corpus = FORMATS[fmt](tmp_path)
    dm = ImageTextDataModule(
        train={"path": path},
        val={"path": ""},
        holdout_fraction=0.0,
        batch_size=8,
        drop_last=False,
        caption_policy={"sampling": "first"},
    )
    dm.trainer = FakeTrainer()
    dm.setup("fit")
    seen, errors = [], [(e.key, e.reason) for e in dm.index_errors_by_split["train"]]
    for batch in dm.train_dataloader():
        assert len(batch["caption"]) == len(batch["key"])
        if batch["key"]:
            assert batch["image"].shape == (len(batch["key"]), 3, 8, 8)
        seen += batch["key"]
        errors += [(e["key"], e["reason"]) for e in batch.get("errors", [])]
    assert sorted(seen) == sorted(corpus.good)
    assert Counter(errors) == Counter(corpus.errors)
    capsys.readouterr()
    data_main(["inspect", path, "--check-images"])
    counts = json.loads(capsys.readouterr().out)
    assert counts == {
        "rows": len(corpus.records),
        "captions": len(corpus.records),
        "errors": dict(sorted(Counter(r for _, r in corpus.errors).items())),
    }
