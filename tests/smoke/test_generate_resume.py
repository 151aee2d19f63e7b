"""The shard writer: kill -9 mid-job then rerun == one uninterrupted run; 2 DDP ranks == 1 process; rows stay
aligned with their images by key when some images fail (the official captioning scripts misalign after one)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipforge.data.shards import read_shards
from tests.helpers.echo_module import fingerprint
from tests.helpers.photos import BAD, write_photo_jsonl

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """14 rows: 12 distinct small photos, one corrupt file and one missing file, as a JSONL source."""
    return write_photo_jsonl(tmp_path_factory.mktemp("photos")).parent


def _cmd(photos: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "clipforge.cli.generate",
        f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]",
        "~experiment",
        "model=echo",
        "~logger",
        f"data.predict.path={photos / 'data.jsonl'}",
        "data.predict_shard_rows=3",
        "data.batch_size=2",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={out}",
        *extra,
    ]


def _env(tmp: Path) -> dict:
    # this checkout's sources first, whatever clipforge the venv has installed
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {**os.environ, "PYTHONPATH": path, "CLIPFORGE_LOG_DIR": str(tmp), "OMP_NUM_THREADS": "1"}


def _run(photos: Path, out: Path, *extra: str) -> None:
    r = subprocess.run(
        _cmd(photos, out, *extra), capture_output=True, text=True, env=_env(out.parent), timeout=300
    )
    assert r.returncode == 0, r.stderr[-3000:]


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    _run(photos, out)
    return out


def test_rows_are_aligned_with_their_images_and_errors_recorded(reference, photos):
    rows = _lines(reference / "predictions.jsonl")
    assert [r["key"] for r in rows] == [f"img-{i:02d}" for i in range(14) if f"img-{i:02d}" not in BAD]
    for r in rows:  # what the model saw for a key is that key's own image (naive reference: reopen the file)
        with Image.open(photos / f"{r['key']}.png") as im:
            assert {k: r[k] for k in ("size", "checksum")} == fingerprint(im.convert("RGB"))
        assert r["caption"] == f"caption of {r['key']}"
    errors = {e["key"]: e["error"] for e in _lines(reference / "errors.jsonl")}
    assert set(errors) == set(BAD)
    # one output shard per input shard of 3 rows; every input row is in exactly one shard
    shards = sorted(p.name for p in (reference / "shards").glob("shard-*.jsonl"))
    assert shards == [f"shard-{i:05d}.jsonl" for i in range(5)]
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["rows"] == 12 and summary["errors"] == 2 and summary["shards"] == 5
    assert summary["mean_width"] == pytest.approx(np.mean([r["size"][0] for r in rows]))


def test_rerun_of_a_finished_job_rebuilds_the_merged_outputs(reference, photos, tmp_path):
    """Every shard written: nothing is recomputed, the merge and the module hook run again from the shards."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out)
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.jsonl")}
    for name in ("predictions.jsonl", "summary.json", "errors.jsonl"):
        (out / name).unlink()
    _run(photos, out)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("shard-*.jsonl")} == shards
    assert (out / "predictions.jsonl").read_text() == (reference / "predictions.jsonl").read_text()
    assert (out / "errors.jsonl").read_text() == (reference / "errors.jsonl").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((reference / "summary.json").read_text()) and "mean_width" in summary


def test_kill_then_rerun_gives_exactly_the_uninterrupted_rows(reference, photos, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _cmd(photos, out, "model.delay=0.4"),
        env=_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and len(list((out / "shards").glob("shard-*.jsonl"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = sorted((out / "shards").glob("shard-*.jsonl"))
    assert 2 <= len(written) < 5, "the kill must land mid-job"
    assert not (out / "predictions.jsonl").exists()
    before = {p.name: p.read_bytes() for p in written}
    _run(photos, out)
    # finished shards were skipped (byte-identical, not rewritten), and the result equals the uninterrupted run
    assert all((out / "shards" / n).read_bytes() == b for n, b in before.items())
    assert _lines(out / "predictions.jsonl") == _lines(reference / "predictions.jsonl")
    assert _lines(out / "errors.jsonl") == _lines(reference / "errors.jsonl")
    assert read_shards(str(out / "shards")) == read_shards(str(reference / "shards"))


def test_resume_into_a_folder_of_another_plan_is_refused(reference, photos, tmp_path):
    out = tmp_path / "run"
    _run(photos, out)
    r = subprocess.run(
        _cmd(photos, out, "data.predict_shard_rows=4"),
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert r.returncode != 0 and "another input or shard size" in r.stderr


def test_two_ddp_ranks_take_disjoint_shards(reference, photos, tmp_path):
    out = tmp_path / "run"
    _run(photos, out, "trainer=ddp_sim", "trainer.devices=2")
    assert _lines(out / "predictions.jsonl") == _lines(reference / "predictions.jsonl")
    assert _lines(out / "errors.jsonl") == _lines(reference / "errors.jsonl")
