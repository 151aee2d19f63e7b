"""LLM2CLIP's embedding sidecars (``X_text_embeddings.tar`` beside ``X.tar``): a cache in the official layout loads
as it is, and the embedding job's ``pt`` cache written as sidecars reads back the same way the official code does."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
import torch

from clipforge.data.datamodule import ImageTextDataModule
from clipforge.data.embeddings import read_sidecar_embeddings, sidecar_of, write_sidecar_tars
from clipforge.data.shards import write_shard
from tests.helpers.streams import png, tar_bytes

COLUMNS = ["shortsv_captions", "longsv_captions"]
KEYS = [f"{i:09d}" for i in range(6)]
D = 5


def _vectors() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    return {k: [rng.standard_normal(D).astype(np.float32) for _ in COLUMNS] for k in KEYS}


def _image_shard(path) -> None:
    members = []
    for i, k in enumerate(KEYS):
        members += [(f"{k}.jpg", png(i)), (f"{k}.shortsv_captions.txt", f"short {i}".encode())]
        members += [(f"{k}.longsv_captions.txt", f"a much longer caption of image {i}".encode())]
    path.write_bytes(tar_bytes(members))


def _official_cache(path, vectors) -> None:
    """Members ``{key}.{column}``, raw float32 bytes, in the image shard's order (what the official reader takes)."""
    members = [(f"{k}.{c}", v.tobytes()) for k in KEYS for c, v in zip(COLUMNS, vectors[k])]
    path.write_bytes(tar_bytes(members))


def _read_like_the_official_code(image_tar: str, column_tar: str) -> dict[str, list[np.ndarray]]:
    """LLM2CLIP's ``add_column`` + ``get_text``: zip the two tars sample by sample (keys must match), then
    ``np.frombuffer(..., float32)`` each column."""
    import webdataset as wds

    images = wds.tarfile_samples([dict(url=image_tar)])
    columns = wds.tarfile_samples([dict(url=column_tar)])
    out = {}
    for sample, extra in zip(images, columns):
        assert extra["__key__"] == sample["__key__"]
        out[sample["__key__"]] = [np.frombuffer(extra[c], dtype=np.float32) for c in COLUMNS]
    return out


def _datamodule(folder, embeddings: str) -> ImageTextDataModule:
    dm = ImageTextDataModule(
        train={"path": str(folder), "caption_fields": COLUMNS, "text_embeddings": embeddings},
        batch_size=2,
        holdout_fraction=0.0,
        caption_policy={"sampling": "first"},
    )
    dm.connect(image_transform=lambda im: torch.zeros(3, 2, 2))
    dm.setup("fit")
    return dm


def test_official_layout_cache_loads_and_equals(tmp_path):
    vectors = _vectors()
    _image_shard(tmp_path / "00000.tar")
    _official_cache(tmp_path / "00000_text_embeddings.tar", vectors)
    official = _read_like_the_official_code(
        str(tmp_path / "00000.tar"), str(tmp_path / "00000_text_embeddings.tar")
    )
    assert list(official) == KEYS
    dm = _datamodule(tmp_path, str(tmp_path))  # the sidecar sits beside the shard: not read as samples
    ds = dm.datasets["train"][0]
    assert [r.key for r in ds.records] == KEYS
    for i, rec in enumerate(ds.records):
        assert rec.captions == [f"short {i}", f"a much longer caption of image {i}"]
        expected = torch.from_numpy(np.stack(official[rec.key]))
        assert torch.equal(ds.text_embeddings[rec.key], expected)
    assert dm.index_errors == []
    batch = next(iter(dm.train_dataloader()))
    assert batch["text_embedding"].shape == (2, D)


def test_written_sidecars_are_read_by_the_official_code_and_by_ours(tmp_path):
    vectors = _vectors()
    images = tmp_path / "images"
    images.mkdir()
    _image_shard(images / "00000.tar")
    # the embedding job's rows, in another order than the shard and missing one key
    rows = [
        {"key": k, "captions": ["c0", "c1"], "text_embedding": torch.from_numpy(np.stack(vectors[k]))}
        for k in reversed(KEYS[:-1])
    ]
    (tmp_path / "cache").mkdir()
    write_shard(rows, str(tmp_path / "cache" / "shard-00000.pt"), "pt", torch.float32)
    paths, errors = write_sidecar_tars(
        str(tmp_path / "cache"), [str(images / "00000.tar")], COLUMNS, str(tmp_path / "side")
    )
    assert paths == [sidecar_of(str(images / "00000.tar"), str(tmp_path / "side"))]
    assert [(e.key, e.reason) for e in errors] == [(KEYS[-1], "missing_text_embedding")]
    with tarfile.open(paths[0]) as tf:
        assert [m.name for m in tf.getmembers()] == [f"{k}.{c}" for k in KEYS[:-1] for c in COLUMNS]
    table = read_sidecar_embeddings(paths)
    for k in KEYS[:-1]:
        for c, v in zip(COLUMNS, vectors[k]):
            assert np.array_equal(table[k][c].numpy(), v)
    # the image shard without the key the cache lacks, read the official way against the written sidecar
    trimmed = tmp_path / "trimmed.tar"
    with tarfile.open(images / "00000.tar") as src, tarfile.open(trimmed, "w") as dst:
        for m in src.getmembers():
            if not m.name.startswith(KEYS[-1]):
                dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
    official = _read_like_the_official_code(str(trimmed), paths[0])
    assert {k: [x.tolist() for x in v] for k, v in official.items()} == {
        k: [x.tolist() for x in vectors[k]] for k in KEYS[:-1]
    }


@pytest.mark.parametrize("missing", ["longsv_captions"])
def test_a_missing_column_is_an_error_record(tmp_path, missing):
    vectors = _vectors()
    _image_shard(tmp_path / "00000.tar")
    members = [(f"{k}.{c}", v.tobytes()) for k in KEYS for c, v in zip(COLUMNS, vectors[k]) if c != missing]
    (tmp_path / "00000_text_embeddings.tar").write_bytes(tar_bytes(members))
    dm = _datamodule(tmp_path, str(tmp_path / "*_text_embeddings.tar"))
    ds = dm.datasets["train"][0]
    assert all(len(r.captions) == 1 for r in ds.records)
    assert [e.reason for e in dm.index_errors] == ["missing_text_embedding"] * len(KEYS)
