"""Streaming webdataset sources: local / http / S3 (moto on loopback) shards, splitting over readers, bad shards."""

from __future__ import annotations

import collections
import io
import tarfile

import pytest

from clipforge.data.datamodule import ImageTextDataModule
from clipforge.data.specs import DatasetSpec
from clipforge.data.streaming import is_streaming, iter_shard, read_stream_records, shard_urls
from tests.helpers.streams import (
    http_server,
    keys_of,
    make_shards,
    s3_server,
    sample_members,
    tar_bytes,
    write_shards,
)


def _keys(dm: ImageTextDataModule, epoch: int = 0) -> tuple[list[str], list[dict]]:
    dm.trainer = None
    dataset = dm.datasets["train"][0]
    keys, errors = [], []
    loader = dm.train_dataloader()
    dataset.set_epoch(epoch)
    loader._on_iter = lambda: None  # epoch set by hand: no trainer
    for batch in loader:
        dm.on_after_batch_transfer(batch, 0)
        keys += batch["key"]
        errors += batch["errors"]
    return keys, errors


def _datamodule(path: str, **kwargs) -> ImageTextDataModule:
    options = dict(batch_size=4, drop_last=False, shuffle_buffer=6, holdout_fraction=0.0)
    options.update(kwargs)
    dm = ImageTextDataModule(train={"path": path}, **options)
    dm.connect(tokenizer=None, image_transform=lambda im: __import__("torch").zeros(3, 2, 2))
    dm.setup("fit")
    return dm


def test_streaming_is_chosen_for_remote_and_compressed_sources():
    assert is_streaming(DatasetSpec(path="s3://b/shard-{0..3}.tar"))
    assert is_streaming(DatasetSpec(path="pipe:curl -s http://x/a.tar"))
    assert is_streaming(DatasetSpec(path="/data/shard-{0..3}.tar.gz"))
    assert not is_streaming(DatasetSpec(path="/data/shard-{0..3}.tar"))
    assert is_streaming(DatasetSpec(path="/data/shard-{0..3}.tar", streaming=True))
    assert not is_streaming(DatasetSpec(path="demo"))
    assert shard_urls(DatasetSpec(path="s3://b/s-{00..02}.tar")) == [f"s3://b/s-0{i}.tar" for i in range(3)]


@pytest.mark.parametrize("workers", [0, 2])
def test_local_gz_shards_stream_every_key_once_per_epoch(tmp_path, workers):
    shards = make_shards(5, 7)
    write_shards(tmp_path, shards)
    dm = _datamodule(str(tmp_path / "shard-{00000..00004}.tar.gz"), num_workers=workers)
    keys0, errors = _keys(dm, 0)
    keys1, _ = _keys(dm, 1)
    assert collections.Counter(keys0) == collections.Counter(keys_of(shards)) == collections.Counter(keys1)
    assert keys0 != keys1  # reshuffled per epoch
    assert errors == []
    again, _ = _keys(dm, 0)
    assert again == keys0  # the order is a function of (seed, epoch)


def test_shards_split_over_ranks_and_workers_without_overlap(tmp_path):
    shards = make_shards(7, 3, gz=False)
    write_shards(tmp_path, shards)
    seen: list[str] = []
    for rank in range(2):
        dm = ImageTextDataModule(
            train={"path": str(tmp_path), "streaming": True}, batch_size=2, drop_last=False, shuffle_buffer=4
        )
        dm.connect(image_transform=lambda im: __import__("torch").zeros(3, 2, 2))
        dm.setup("fit")
        ds = dm.datasets["train"][0]
        ds.world = (2, rank)
        keys, _ = _keys(dm, 3)
        seen += keys
    assert collections.Counter(seen) == collections.Counter(keys_of(shards))


def test_truncated_and_unreadable_shards_are_recorded_and_skipped(tmp_path):
    good = tar_bytes(sample_members("a0", 0) + sample_members("a1", 1))
    b_keys = [f"b{i:02d}" for i in range(30)]
    cut = tar_bytes([m for i, k in enumerate(b_keys) for m in sample_members(k, 10 + i)], gz=True)
    (tmp_path / "s-0.tar.gz").write_bytes(__import__("gzip").compress(good))
    (tmp_path / "s-1.tar.gz").write_bytes(cut[: len(cut) * 2 // 3])
    (tmp_path / "s-2.tar.gz").write_bytes(b"not a tar at all")
    bad_caption = tar_bytes(sample_members("c0", 5, caption="") + sample_members("c1", 6), gz=True)
    (tmp_path / "s-3.tar.gz").write_bytes(bad_caption)
    records, errors = read_stream_records(DatasetSpec(path=str(tmp_path / "s-{0..3}.tar.gz")))
    reasons = collections.Counter(e.reason for e in errors)
    assert reasons["truncated_tar"] == 1 and reasons["unreadable_tar"] == 1
    assert reasons["no_valid_caption"] == 1 and reasons["empty_caption"] == 1
    kept = [r.key for r in records]
    assert kept[:2] == ["a0", "a1"] and "c1" in kept and "c0" not in kept
    kept_b = [k for k in kept if k.startswith("b")]
    assert (
        0 < len(kept_b) < len(b_keys) and kept_b == b_keys[: len(kept_b)]
    )  # complete samples before the cut
    # the same rules in the training stream: errors reach the batches (the data-error log)
    dm = _datamodule(str(tmp_path / "s-{0..3}.tar.gz"), shuffle_buffer=1)
    keys, batch_errors = _keys(dm)
    assert sorted(keys) == sorted(kept)
    assert collections.Counter(e["reason"] for e in batch_errors) == reasons


def test_duplicate_member_is_an_error_not_an_exception():
    data = tar_bytes(sample_members("k", 0) + [("k.txt", b"again")] + sample_members("m", 1))
    errors: list = []
    with tarfile.open(fileobj=io.BytesIO(data)):
        pass
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(data)
        f.flush()
        samples = list(iter_shard(f.name, errors))
    assert [s[0] for s in samples] == ["k", "m"]
    assert [(e.key, e.reason) for e in errors] == [("k", "duplicate_key")]


def test_http_and_s3_sources_read_the_keys_written(tmp_path):
    shards = make_shards(3, 4)
    write_shards(tmp_path, shards)
    expected = collections.Counter(keys_of(shards))
    with http_server(tmp_path) as base:
        dm = _datamodule(f"{base}/shard-{{00000..00002}}.tar.gz")
        assert collections.Counter(_keys(dm)[0]) == expected
    with s3_server("bucket", shards):
        dm = _datamodule("s3://bucket/shard-{00000..00002}.tar.gz")
        keys, errors = _keys(dm)
        assert collections.Counter(keys) == expected and errors == []
        records, errors = read_stream_records(DatasetSpec(path="s3://bucket/shard-{00000..00003}.tar.gz"))
        assert collections.Counter(r.key for r in records) == expected
        assert [(e.key, e.reason) for e in errors] == [
            ("shard-00003.tar.gz@0", "unreadable_tar")
        ]  # no object


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_the_state_dict_neither_repeats_nor_skips(tmp_path, workers):
    """Stop an epoch after 3 batches, restore the datamodule's state in a new one (as from a checkpoint): the rest of
    the epoch is exactly what the uninterrupted epoch had left."""
    shards = make_shards(6, 5)
    write_shards(tmp_path, shards)
    path = str(tmp_path / "shard-{00000..00005}.tar.gz")
    full = _datamodule(path, num_workers=workers, drop_last=True)
    reference, _ = _keys(full, 1)
    first = _datamodule(path, num_workers=workers, drop_last=True)
    dataset, seen = first.datasets["train"][0], []
    dataset.set_epoch(1)
    for i, batch in enumerate(_raw_loader(first)):
        first.on_after_batch_transfer(batch, 0)
        seen += batch["key"]
        if i == 2:
            break
    state = first.state_dict()
    assert state["stream"]["epoch"] == 1 and sum(state["stream"]["consumed"].values()) == 12
    second = _datamodule(path, num_workers=workers, drop_last=True)
    second.load_state_dict(state)
    second.datasets["train"][0].set_epoch(1)
    rest = []
    for batch in second.train_dataloader():
        rest += batch["key"]
    assert collections.Counter(seen + rest) == collections.Counter(reference)
    assert len(set(seen) & set(rest)) == 0


def _raw_loader(dm: ImageTextDataModule):
    loader = dm.train_dataloader()
    loader._on_iter = lambda: None
    return loader


def test_predict_plan_of_a_streamed_source_is_one_shard_per_input_shard(tmp_path):
    shards = make_shards(3, 4)
    write_shards(tmp_path, shards)
    dm = ImageTextDataModule(
        predict={"path": str(tmp_path / "shard-{00000..00002}.tar.gz")}, predict_shard_rows=5
    )
    dm.connect(image_transform=lambda im: __import__("torch").zeros(3, 2, 2))
    dm.setup("predict")
    plan = dm.predict_plan()
    assert [s.name for s in plan] == ["shard-00000", "shard-00001", "shard-00002"]
    for shard, (name, data) in zip(plan, shards.items()):
        assert list(shard.keys) == keys_of({name: data})
    assert [s.start for s in plan] == [0, 4, 8]
