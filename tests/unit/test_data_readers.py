"""Every reader on a small fixture written at test time, plus the real COCO files of the shared data dir."""

from __future__ import annotations

import json
import os

import pytest

from clipforge.data.errors import DataConfigError
from clipforge.data.images import load_image
from clipforge.data.readers import detect_format, read_records
from clipforge.data.records import HFImageRef, TarMemberRef
from clipforge.data.specs import DatasetSpec, as_spec
from tests.helpers.shared_data import COCO_DEV, COCO_TEXT, require
from tests.unit.test_data_fixtures import image_bytes, make_tar, pixel, write_image


def _by_key(records):
    return {r.key: r for r in records}


def test_seed_json_merges_rows_of_one_image(tmp_path):
    write_image(str(tmp_path / "a.jpg"))
    rows = [
        {"image": "a.jpg", "caption": "a red square"},
        {"image": "b.jpg", "caption": ["a blue square", "blue"], "source": "web"},
        {"image": "a.jpg", "caption": "red again"},
    ]
    (tmp_path / "seed.json").write_text(json.dumps(rows))
    spec = DatasetSpec(path=str(tmp_path / "seed.json"))
    assert detect_format(spec) == "json"
    records, errors = read_records(spec)
    assert [r.key for r in records] == ["a", "b"]
    assert records[0].captions == ["a red square", "red again"]
    assert records[0].image == str(tmp_path / "a.jpg") and records[0].meta == {}
    assert records[1].captions == ["a blue square", "blue"] and records[1].meta == {"source": "web"}
    assert errors == []


def test_jsonl_two_caption_columns_and_provenance(tmp_path):
    os.makedirs(tmp_path / "imgs")
    lines = [
        {
            "key": "k1",
            "image": "1.jpg",
            "caption": "short one",
            "long_caption": "a long one",
            "url": "u1",
            "lic": 1,
        },
        {"key": "k2", "image": "2.jpg", "caption": "short two", "long_caption": None, "url": "u2", "lic": 2},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    spec = DatasetSpec(
        path=str(tmp_path / "d.jsonl"),
        image_root=str(tmp_path / "imgs"),
        caption_fields=["caption", "long_caption"],
    )
    records, errors = read_records(spec)
    assert [r.key for r in records] == ["k1", "k2"]
    assert records[0].captions == ["short one", "a long one"]
    assert records[1].captions == ["short two"]  # a null cell is a missing caption, not an error
    assert records[0].meta == {"key": "k1", "url": "u1", "lic": 1}
    assert records[0].image == str(tmp_path / "imgs" / "1.jpg")
    assert errors == []


def test_parquet_binary_captions_and_provenance(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "key": ["p0", "p1", "p2"],
            "image": [image_bytes((10, 200, 10)), image_bytes(), image_bytes()],
            "caption": ["green", "red", "  "],
            "alt": pa.array([b"alt zero", b"\xff\xfe broken", b"alt two"], type=pa.binary()),
            "source": ["laion", "cc3m", "cc12m"],
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    spec = DatasetSpec(path=str(tmp_path / "d.parquet"), caption_fields=["caption", "alt"])
    assert detect_format(spec) == "parquet"
    records, errors = read_records(spec)
    recs = _by_key(records)
    assert list(recs) == ["p0", "p1", "p2"]
    assert recs["p0"].captions == ["green", "alt zero"]
    assert recs["p1"].captions == ["red"]
    assert recs["p2"].captions == ["alt two"]
    assert recs["p0"].meta == {"key": "p0", "source": "laion"}
    assert pixel(load_image(recs["p0"].image))[1] > 150
    assert sorted((e.key, e.reason) for e in errors) == [("p1", "non_utf8_caption"), ("p2", "empty_caption")]
    assert errors[0].source.startswith(str(tmp_path / "d.parquet") + "#")


def _coco(tmp_path):
    data = {
        "images": [
            {"id": 1, "file_name": "000001.jpg", "width": 24, "height": 16},
            {"id": 2, "file_name": "000002.jpg", "width": 24, "height": 16},
            {"id": 3, "file_name": "000003.jpg", "width": 24, "height": 16},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "one a"},
            {"id": 11, "image_id": 2, "caption": "two a"},
            {"id": 12, "image_id": 1, "caption": " one b "},
            {"id": 13, "image_id": 3, "caption": ""},
            {"id": 14, "image_id": 99, "caption": "orphan"},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return str(tmp_path / "ann.json")


def test_coco_groups_by_image_id(tmp_path):
    path = _coco(tmp_path)
    os.makedirs(tmp_path / "imgs")
    spec = DatasetSpec(path=path, image_root=str(tmp_path / "imgs"))
    assert detect_format(spec) == "coco"
    records, errors = read_records(spec)
    assert [(r.key, r.captions) for r in records] == [("1", ["one a", "one b"]), ("2", ["two a"])]
    assert records[0].image == str(tmp_path / "imgs" / "000001.jpg")
    assert records[0].meta == {"image_id": 1, "file_name": "000001.jpg", "width": 24, "height": 16}
    assert sorted((e.key, e.reason) for e in errors) == [
        ("3", "empty_caption"),
        ("3", "no_valid_caption"),
        ("99", "unknown_image_id"),
    ]


def test_coco_text_only(tmp_path):
    records, _ = read_records(DatasetSpec(path=_coco(tmp_path), text_only=True))
    assert [r.key for r in records] == ["1", "2"] and all(r.image is None for r in records)


def test_karpathy_json(tmp_path):
    rows = [
        {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": [f"cap {i}" for i in range(5)]},
        {
            "image": "val2014/COCO_val2014_000000000073.jpg",
            "caption": ["x", "y", "", "z", "w"],
            "split": "test",
        },
    ]
    (tmp_path / "coco_karpathy_test.json").write_text(json.dumps(rows))
    os.makedirs(tmp_path / "coco")
    spec = DatasetSpec(path=str(tmp_path / "coco_karpathy_test.json"), image_root=str(tmp_path / "coco"))
    assert detect_format(spec) == "karpathy"
    records, errors = read_records(spec)
    assert [r.key for r in records] == ["COCO_val2014_000000000042", "COCO_val2014_000000000073"]
    assert records[0].captions == [f"cap {i}" for i in range(5)]
    assert records[1].captions == ["x", "y", "z", "w"] and records[1].meta == {"split": "test"}
    assert records[0].image == str(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg")
    assert [(e.key, e.reason) for e in errors] == [("COCO_val2014_000000000073", "empty_caption")]


def _shards(tmp_path):
    meta = lambda k: json.dumps({"key": k, "url": f"http://x/{k}", "status": "success"}).encode()  # noqa: E731
    make_tar(
        str(tmp_path / "shard-000.tar"),
        {
            "000.jpg": image_bytes((250, 0, 0)),
            "000.txt": b"red square",
            "000.json": meta("000"),
            "001.png": image_bytes((0, 250, 0), fmt="PNG"),
            "001.txt": b"green square",
            "001.json": meta("001"),
        },
    )
    make_tar(
        str(tmp_path / "shard-001.tar"),
        {
            "002.jpg": image_bytes((0, 0, 250)),
            "002.txt": b"blue square",
            "003.jpg": image_bytes(),
            "003.txt": b"   ",
        },
    )
    make_tar(
        str(tmp_path / "long-000.tar"),
        {
            "000.long_caption.txt": b"a long caption of a red square",
            "000.emb.npy": b"\x93NUMPY fake",
            "001.long_caption.txt": b"a long caption of a green square",
            "001.emb.npy": b"\x93NUMPY fake",
            "003.long_caption.txt": b"a long caption of a red square again",
            "003.emb.npy": b"\x93NUMPY fake",
        },
    )


def test_wds_shards_with_sidecar(tmp_path):
    _shards(tmp_path)
    spec = DatasetSpec(
        path=str(tmp_path / "shard-{000..001}.tar"),
        sidecars=[str(tmp_path / "long-*.tar")],
        caption_fields=["txt", "long_caption"],
    )
    assert detect_format(spec) == "wds"
    records, errors = read_records(spec)
    recs = _by_key(records)
    assert list(recs) == ["000", "001", "002", "003"]  # 002 lacks its sidecar columns but keeps its row
    assert recs["000"].captions == ["red square", "a long caption of a red square"]
    assert recs["002"].captions == ["blue square"]
    assert recs["003"].captions == ["a long caption of a red square again"]
    assert recs["000"].meta["url"] == "http://x/000" and recs["000"].meta["shard"] == "shard-000.tar"
    assert set(recs["000"].meta["emb.npy"]) == {"tar", "offset", "size"}
    assert isinstance(recs["001"].image, TarMemberRef)
    assert pixel(load_image(recs["001"].image))[1] > 200 and pixel(load_image(recs["002"].image))[2] > 200
    assert sorted((e.key, e.reason, e.source.rsplit("#", 1)[1]) for e in errors) == [
        ("002", "missing_sidecar", "emb.npy"),
        ("002", "missing_sidecar", "long_caption.txt"),
        ("003", "empty_caption", "003"),
    ]
    # the folder works too, and without selecting the sidecar text it lands in meta
    records, _ = read_records(DatasetSpec(path=str(tmp_path), sidecars=[str(tmp_path / "long-000.tar")]))
    assert _by_key(records)["000"].meta["long_caption.txt"] == "a long caption of a red square"


def test_hf_saved_dataset_with_image_feature(tmp_path):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    ds = datasets.Dataset.from_dict(
        {
            "image": [Image.new("RGB", (8, 8), (250, 0, 0)), Image.new("L", (8, 8), 40)],
            "caption": ["a red image", "a dark image"],
            "key": ["h0", "h1"],
            "source": ["a", "b"],
        },
        features=datasets.Features(
            image=datasets.Image(),
            caption=datasets.Value("string"),
            key=datasets.Value("string"),
            source=datasets.Value("string"),
        ),
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    spec = DatasetSpec(path=str(tmp_path / "saved"))
    assert detect_format(spec) == "hf"
    records, errors = read_records(spec)
    assert [(r.key, r.captions, r.meta) for r in records] == [
        ("h0", ["a red image"], {"key": "h0", "source": "a"}),
        ("h1", ["a dark image"], {"key": "h1", "source": "b"}),
    ]
    assert isinstance(records[0].image, HFImageRef) and errors == []
    assert pixel(load_image(records[0].image)) == (250, 0, 0)
    assert pixel(load_image(records[1].image)) == (40, 40, 40)


def test_hf_load_dataset_from_csv(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    write_image(str(tmp_path / "c0.jpg"))
    (tmp_path / "d.csv").write_text("image,caption,key\nc0.jpg,a red square,c0\nc1.jpg,,c1\n")
    records, errors = read_records(DatasetSpec(path=str(tmp_path / "d.csv"), format="hf"))
    assert [(r.key, r.captions, r.image) for r in records] == [
        ("c0", ["a red square"], str(tmp_path / "c0.jpg"))
    ]
    assert [(e.key, e.reason) for e in errors] == [("c1", "no_valid_caption")]


def test_missing_path_names_field_and_path(tmp_path):
    missing = str(tmp_path / "nope" / "x.json")
    with pytest.raises(DataConfigError, match=r"data\.train\.path: no such file: .*nope/x\.json") as info:
        read_records(DatasetSpec(path=missing), where="data.train")
    assert isinstance(info.value, FileNotFoundError) and "\n" not in str(info.value)
    (tmp_path / "ok.json").write_text("[]")
    with pytest.raises(DataConfigError, match=r"data\.val\.image_root: no such folder: .*imgs_missing"):
        read_records(
            DatasetSpec(path=str(tmp_path / "ok.json"), image_root=str(tmp_path / "imgs_missing")),
            where="data.val",
        )
    with pytest.raises(DataConfigError, match="shards-missing"):
        read_records(DatasetSpec(path=str(tmp_path / "shards-missing-{0..3}.tar")))


def test_spec_validation():
    with pytest.raises(
        ValueError, match="auto, json, jsonl, parquet, coco, karpathy, wds, hf, demo, synthetic"
    ):
        DatasetSpec(path="x", format="csv")
    spec = as_spec({"path": "x.json", "caption_fields": "long", "val_keys": [1, 2]})
    assert spec.caption_fields == ["long"] and spec.val_keys == ["1", "2"] and as_spec(spec) is spec
    assert as_spec(None) is None and spec.display_name == "x"
    assert (
        DatasetSpec(path="synthetic").builtin == "synthetic"
        and DatasetSpec(format="demo").display_name == "demo"
    )


def test_real_coco_dev():
    coco_dev = require(*COCO_DEV)
    spec = DatasetSpec(
        path=str(coco_dev / "annotations" / "captions_train2017.json"), image_root=str(coco_dev / "train2017")
    )
    records, errors = read_records(spec)
    assert len(records) == 130 and sum(len(r.captions) for r in records) == 650 and errors == []
    assert all(len(r.captions) == 5 for r in records)
    assert all(os.path.isfile(r.image) for r in records)
    assert load_image(records[0].image).mode == "RGB"


def test_real_coco_text_groups():
    records, errors = read_records(DatasetSpec(path=str(require(*COCO_TEXT)), text_only=True))
    sizes = [len(r.captions) for r in records]
    assert len(records) == 4000 and sum(sizes) == 20009 and errors == []
    assert min(sizes) >= 4 and max(sizes) >= 6 and all(r.image is None for r in records)
