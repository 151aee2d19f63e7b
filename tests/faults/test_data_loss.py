"""Faults that lost or silently swapped data: cut and repeated tar members, colliding output names, two writers
in one folder, a resumed run's metrics. Each test builds the faulty input and checks that every good row survives
and every bad one is an error record with its own reason."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import tarfile
import time

import pytest
import torch

from clipforge.cli.data import inspect_source
from clipforge.cli.data import main as data_main
from clipforge.data.images import load_image
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.utils.hydra import compose
from tests.helpers.echo_module import fingerprint
from tests.smoke.test_generate_resume import ROOT, _cmd, _env
from tests.unit.test_data_fixtures import image_bytes, make_tar, pixel, write_image

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


def _photos(root, n: int):
    """``n`` photos of distinct sizes and a JSONL source naming them (what the echo generation module reads)."""
    rows = []
    for i in range(n):
        write_image(str(root / f"p{i}.png"), COLORS[i % len(COLORS)], size=(8 + i, 6 + i))
        rows.append({"key": f"p{i}", "image": f"p{i}.png", "caption": f"caption {i}"})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _child_env(tmp_path) -> dict:
    """The generation test environment, with this checkout's sources first (as in the test process)."""
    env = _env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    return env


def _generate_in_process(photos, out):
    """``clipforge-generate`` with the echo module, in this process (the same overrides as ``_cmd``)."""
    from clipforge.cli.generate import generate

    overrides = [a for a in _cmd(photos, out)[3:] if not a.startswith("hydra.run.dir=")]
    overrides[0] = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"
    return generate(compose(overrides, "generate", output_dir=str(out)))


def test_a_second_live_writer_is_refused_and_a_killed_one_does_not_block_its_rerun(tmp_path, capsys):
    photos, out = _photos(tmp_path / "photos", 12), tmp_path / "run"
    first = subprocess.Popen(  # the first job: 6 batches of 2 rows, 3 s each, 3 rows per shard
        _cmd(photos, out, "model.delay=3.0"),
        env=_child_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not list((out / "shards").glob("shard-*.jsonl")):
            assert first.poll() is None, "the first job ended early"
            time.sleep(0.05)
        capsys.readouterr()
        with pytest.raises(SystemExit) as refused:
            _generate_in_process(photos, out)
        err = capsys.readouterr().err
        assert refused.value.code == 2 and "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and str(out / "shards") in lines[0] and f"pid {first.pid}" in lines[0]
        assert first.poll() is None  # the first job goes on
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    assert len(list((out / "shards").glob("shard-*.jsonl"))) < 4, "the kill must land mid-job"
    _generate_in_process(photos, out)  # the killed job's lock is stale: the rerun resumes
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["key"] for r in rows] == [f"p{i}" for i in range(12)]
    for r in rows:
        assert {k: r[k] for k in ("size", "checksum")} == fingerprint(
            load_image(str(photos / f"{r['key']}.png"))
        )
    assert (out / "errors.jsonl").read_text() == ""
    assert not [p for p in os.listdir(out / "shards") if p.endswith(".tmp")]


def test_two_writers_of_one_shard_never_share_a_temporary_file(tmp_path):
    """A second writer finishes the same shard while the first is half-way through its rows: the shard on disk
    is one writer's rows, whole, and no temporary file is left."""
    from clipforge.data.shards import read_shard, write_shard

    path = str(tmp_path / "shard-00000.jsonl")
    mine = [{"key": f"k{i}", "who": "first", "pad": "x" * 6000} for i in range(4)]
    theirs = [{"key": f"k{i}", "who": "second"} for i in range(4)]

    class Midway(list):
        def __iter__(self):
            for i, row in enumerate(list.__iter__(self)):
                if i == 2:
                    write_shard(theirs, path, "jsonl", torch.float32)
                yield row

    write_shard(Midway(mine), path, "jsonl", torch.float32)
    assert read_shard(path) == mine  # the last rename wins, whole
    assert os.listdir(tmp_path) == ["shard-00000.jsonl"]


def test_resuming_a_finished_run_keeps_its_training_metrics(tmp_path):
    """A run killed after its final epoch (here: finished) resumed from last.ckpt has nothing left to train; its
    metrics.json still holds the train/* metrics, with the values of the uninterrupted run. The source has missing
    images and each epoch draws 8 of its 12 rows, so the epoch-level train/data_errors differs between epochs."""
    from clipforge.cli.train import train

    photos = _photos(tmp_path / "photos", 12)
    rows = [json.loads(line) for line in (photos / "data.jsonl").read_text().splitlines()]
    for i in (1, 2, 9, 10):
        rows[i]["image"] = f"gone{i}.png"
    (photos / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tiny = [
        "experiment=clip_demo",
        "debug=tiny_clip",
        "trainer.max_epochs=2",
        f"data.train.path={photos / 'data.jsonl'}",
        "data.holdout_fraction=0",
        f"data.val.path={photos / 'data.jsonl'}",
    ]
    first, again = tmp_path / "first", tmp_path / "again"
    train(compose([*tiny, "logger=csv"], output_dir=str(first)))
    before = json.loads((first / "metrics.json").read_text())
    assert {"train/contrastive_loss", "train/data_errors", "train/logit_scale"} <= set(before)
    with open(first / "csv" / "metrics.csv") as f:
        per_epoch = [float(r["train/data_errors"]) for r in csv.DictReader(f) if r["train/data_errors"]]
    assert len(per_epoch) == 2 and per_epoch[0] != per_epoch[1] == before["train/data_errors"]
    last = first / "checkpoints" / "last.ckpt"
    _, objects = train(compose([*tiny, f"ckpt_path={last}"], output_dir=str(again)))
    assert objects["trainer"].current_epoch == 2  # nothing was trained again
    after = json.loads((again / "metrics.json").read_text())
    assert after == pytest.approx(before)
