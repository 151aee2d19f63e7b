"""Faults that lost or silently swapped data: cut and repeated tar members, colliding output names, two writers
in one folder, a resumed run's metrics. Each test builds the faulty input and checks that every good row survives
and every bad one is an error record with its own reason."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from clipforge.cli.data import inspect_source
from clipforge.cli.data import main as data_main
from clipforge.data.images import load_image
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from tests.unit.test_data_fixtures import image_bytes, make_tar, pixel

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]


def _samples(n: int = 4) -> dict[str, bytes]:
    members = {}
    for i in range(n):
        members[f"{i:03d}.jpg"] = image_bytes(COLORS[i % len(COLORS)], size=(48, 48))
        members[f"{i:03d}.txt"] = f"caption {i}".encode()
    return members


def _offsets(path: str) -> dict[str, tuple[int, int]]:
    """member name -> (header offset, data offset) of a tar."""
    with tarfile.open(path) as tf:
        return {m.name: (m.offset, m.offset_data) for m in tf}


def _cut(tmp_path, name: str, at: int) -> str:
    full = make_tar(str(tmp_path / "full.tar"), _samples())
    data = open(full, "rb").read()
    path = tmp_path / name
    path.write_bytes(data[:at])
    return str(path)


@pytest.mark.parametrize(
    "where, complete, cut_key",
    [
        ("inside_image", ["000", "001"], "002"),  # 002.jpg's data is cut
        ("inside_caption", ["000", "001"], "002"),  # 002.txt's data is cut (its image is whole)
        ("inside_header", ["000", "001", "002"], None),  # 003.jpg's header is cut: its name is gone
        ("after_last_member", ["000", "001", "002", "003"], None),  # only the end-of-archive blocks are gone
    ],
)
def test_truncated_tar_keeps_every_complete_sample(tmp_path, where, complete, cut_key):
    off = _offsets(make_tar(str(tmp_path / "probe.tar"), _samples()))
    at = {
        "inside_image": off["002.jpg"][1] + 300,
        "inside_caption": off["002.txt"][1] + 3,
        "inside_header": off["003.jpg"][0] + 100,
        "after_last_member": off["003.txt"][1] + 512,
    }[where]
    path = _cut(tmp_path, "shard-000.tar", at)
    records, errors = read_records(DatasetSpec(path=path))
    assert [(r.key, r.captions) for r in records] == [(k, [f"caption {int(k)}"]) for k in complete]
    for r in records:  # every kept image is whole and its own
        assert pixel(load_image(r.image)) == pytest.approx(COLORS[int(r.key)], abs=8)
    assert [e.reason for e in errors] == ["truncated_tar"]
    if cut_key:
        assert errors[0].key == cut_key and errors[0].source.startswith(f"{path}#{cut_key}.")
    else:
        assert errors[0].source.startswith(f"{path}@")
    counts = inspect_source(path, None, "auto", check_images=True)
    assert counts == {"rows": len(complete), "captions": len(complete), "errors": {"truncated_tar": 1}}


def test_truncated_tar_among_good_shards_through_the_inspect_command(tmp_path, capsys):
    make_tar(str(tmp_path / "shard-000.tar"), _samples())
    second = {k.replace("00", "10", 1): v for k, v in _samples().items()}
    off = _offsets(make_tar(str(tmp_path / "probe.tar"), second))
    data = open(tmp_path / "probe.tar", "rb").read()
    (tmp_path / "probe.tar").unlink()
    (tmp_path / "shard-001.tar").write_bytes(data[: off["102.jpg"][1] + 10])
    data_main(["inspect", str(tmp_path), "--check-images"])
    out = json.loads(capsys.readouterr().out)
    assert out == {"rows": 6, "captions": 6, "errors": {"truncated_tar": 1}}


def test_repeated_member_key_keeps_the_first_sample(tmp_path):
    """A tar holding sample 001 twice (another image, another caption): the first stays, the second is an error."""
    path = str(tmp_path / "dup.tar")
    with tarfile.open(path, "w") as tf:
        for name, data in [
            *_samples(2).items(),
            ("001.jpg", image_bytes((255, 255, 255), size=(48, 48))),
            ("001.txt", b"the impostor"),
            ("001.json", b'{"url": "http://impostor"}'),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    records, errors = read_records(DatasetSpec(path=path))
    assert [(r.key, r.captions) for r in records] == [("000", ["caption 0"]), ("001", ["caption 1"])]
    assert pixel(load_image(records[1].image)) == pytest.approx(COLORS[1], abs=8)
    assert "url" not in records[1].meta  # nothing of the second copy is merged into the first
    assert [(e.key, e.reason, e.source) for e in errors] == [("001", "duplicate_key", f"{path}#001.jpg")]


def _predict_module(records):
    """What ``predict_image_paths`` reads: ``trainer.datamodule.datasets["predict"][i].records``."""
    from types import SimpleNamespace

    dm = SimpleNamespace(datasets={"predict": [SimpleNamespace(records=records)]})
    trainer = SimpleNamespace(datamodule=dm)
    return SimpleNamespace(_trainer=trainer, trainer=trainer)


def test_enhance_image_files_of_colliding_keys_stay_apart(tmp_path):
    """Keys that one escaping rule maps to the same name (``a/b``, ``a_b``, ``a?b``) get their own image files,
    on the first run and on a rerun that reuses the files already written."""
    from clipforge.data.records import Record
    from clipforge.tasks.enhance.outputs import predict_image_paths

    keys = ["a/b", "a_b", "a?b", "A_B"]
    records = [
        Record(k, image_bytes(c, size=(16, 16), fmt="PNG"), ["x"]) for k, c in zip(keys, COLORS, strict=True)
    ]
    for _ in range(2):  # the rerun finds the files and must point each key at its own
        paths = predict_image_paths(_predict_module(records), str(tmp_path))
        assert len(set(paths.values())) == len(keys)
        for key, color in zip(keys, COLORS, strict=True):
            assert paths[key].startswith(str(tmp_path / "images") + "/")
            assert pixel(load_image(paths[key])) == color, key
