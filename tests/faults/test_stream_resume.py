"""Streaming training from a loopback S3 server (moto): the user's command trains, every written key is trained
once per epoch, and (``slow``) a run SIGKILLed mid-epoch after a step checkpoint resumes without repeating or
skipping a key (the streaming readers' positions are in the checkpoint). The in-process resume check of the same
state is in tests/unit/test_data_streaming.py."""

from __future__ import annotations

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.streams import key_log, keys_of, make_shards, s3_server

ROOT = Path(__file__).resolve().parents[2]
SHARDS = "s3://bucket/shard-{00000..00009}.tar.gz"
STEP = 10  # the step checkpoint, in epoch 1 (7 batches per epoch)


def _train(out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    args = [
        "experiment=clip_demo",
        "debug=tiny_clip",
        f"data.train.path='{SHARDS}'",
        "data.num_workers=2",
        "data.holdout_fraction=0.25",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=null",
        f"paths.output_dir={out}",
        "+callbacks.step_checkpoint._target_=lightning.pytorch.callbacks.ModelCheckpoint",
        f"+callbacks.step_checkpoint.dirpath={out}/checkpoints",
        "+callbacks.step_checkpoint.filename=step",
        f"+callbacks.step_checkpoint.every_n_train_steps={STEP}",
        "+callbacks.keys._target_=tests.helpers.streams.KeyLog",
        f"+callbacks.keys.path={out}/keys.jsonl",
        "evaluate=false",
        *extra,
    ]
    run_env = {**os.environ, **env, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "clipforge.cli.train", *args],
        cwd=ROOT,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _keys(rows: list[dict], epoch: int | None = None) -> collections.Counter:
    return collections.Counter(k for r in rows if epoch is None or r["epoch"] == epoch for k in r["keys"])


def _check_reference(ref: list[dict], written: collections.Counter) -> None:
    """Every trained key was written, none trained twice in an epoch; the held-out quarter is never trained."""
    for epoch in (0, 1):
        trained = _keys(ref, epoch)
        assert max(trained.values()) == 1 and set(trained) <= set(written)
        assert 0.5 * len(written) < sum(trained.values()) <= len(written)


def test_clip_demo_trains_from_s3_shards(tmp_path):
    """``clipforge train experiment=clip_demo data.train.path='s3://bucket/shard-{00000..00009}.tar.gz'``."""
    shards = make_shards(10, 4)
    with s3_server("bucket", shards) as env:
        done = _train(tmp_path / "run", env)
    assert done.returncode == 0, done.stderr[-3000:]
    _check_reference(key_log(tmp_path / "run" / "keys.jsonl"), collections.Counter(keys_of(shards)))
    assert (tmp_path / "run" / "checkpoints" / "step.ckpt").exists()


@pytest.mark.slow
def test_s3_training_killed_mid_epoch_resumes_without_repeat_or_skip(tmp_path):
    shards = make_shards(10, 4)
    with s3_server("bucket", shards) as env:
        reference = _train(tmp_path / "reference", env)
        assert reference.returncode == 0, reference.stderr[-3000:]
        ref = key_log(tmp_path / "reference" / "keys.jsonl")
        _check_reference(ref, collections.Counter(keys_of(shards)))
        killed = _train(tmp_path / "run", env, f"+callbacks.keys.kill_at_step={STEP}")
        assert killed.returncode == -9, killed.stderr[-3000:]
        before = key_log(tmp_path / "run" / "keys.jsonl")
        assert (
            before[-1]["step"] == STEP and before[-1]["epoch"] == 1
        )  # killed mid-epoch 1, after the checkpoint
        resumed = _train(tmp_path / "run", env, f"ckpt_path={tmp_path}/run/checkpoints/step.ckpt")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = key_log(tmp_path / "run" / "keys.jsonl")[len(before) :]
    assert after and after[0]["epoch"] == 1
    assert _keys(before + after, 1) == _keys(ref, 1)
    assert _keys(before + after) == _keys(ref)
    # the same batches (each reader continues where it stopped; only the interleaving of readers restarts)
    assert sorted(map(tuple, (r["keys"] for r in before + after))) == sorted(
        map(tuple, (r["keys"] for r in ref))
    )
