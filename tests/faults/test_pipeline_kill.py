"""kill -9 of ``clipforge-pipeline`` in a generation step (after its first shard) and again in a training step;
the reruns continue and end with the same lineage and held-out metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.tiny_pipeline import (
    pipeline_command,
    pipeline_env,
    read_lines,
    tiny_overrides,
    tiny_source,
)


def _state(run: Path) -> dict:
    try:
        return json.loads((run / "state.json").read_text())["steps"]
    except (OSError, ValueError, KeyError):
        return {}


# one row per recap shard and a pause after each (the Throttle callback: outputs unchanged), in the reference run
# too (the same config): after the first of eight shards the job has seven left and at least 2 s to run, so the kill
# lands inside it however the machine's load shifts the poll below (unthrottled, an idle machine finished first)
ONE_ROW_SHARDS = (
    "pipeline.recap.overrides=['debug=tiny_recap_label_llm','data.predict_shard_rows=1',"
    "'+callbacks.throttle={_target_:tests.helpers.faults.Throttle,seconds:0.3}']"
)


def _run(source: Path, logs: Path) -> None:
    proc = subprocess.run(
        pipeline_command(*tiny_overrides(source, logs, ONE_ROW_SHARDS)),
        env=pipeline_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def _kill_when(source: Path, logs: Path, ready) -> None:
    """Start the pipeline and SIGKILL its process group as soon as ``ready(run_dir)`` holds."""
    run = logs / "pipeline" / "tiny"
    proc = subprocess.Popen(
        pipeline_command(*tiny_overrides(source, logs, ONE_ROW_SHARDS)),
        env=pipeline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 900
    try:
        while not ready(run):
            assert proc.poll() is None, "the pipeline ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _metrics(run: Path) -> dict:
    arms = json.loads((run / "comparison.json").read_text())["arms"]
    return {arm: [(r["fold"], r["seed"], r["metrics"]) for r in v["runs"]] for arm, v in arms.items()}


def test_kill_9_in_generation_and_training_then_rerun_equals_uninterrupted(tmp_path):
    source = tiny_source(tmp_path / "src")
    _run(source, tmp_path / "reference")
    reference = tmp_path / "reference" / "pipeline" / "tiny"

    logs = tmp_path / "killed"
    run = logs / "pipeline" / "tiny"
    recap_shards = run / "steps" / "recap" / "shards"
    # 1: in the recap job, after its first of eight output shards
    _kill_when(source, logs, lambda r: len(list(recap_shards.glob("shard-*.jsonl"))) >= 1)
    assert _state(run)["recap"]["status"] == "running"
    # 2: in a training arm, as soon as it starts
    _kill_when(source, logs, lambda r: _state(r).get("train/raw/fold1_s0", {}).get("status") == "running")
    state = _state(run)
    assert state["recap"]["status"] == "done" and state["train/raw/fold1_s0"]["status"] == "running"
    _run(source, logs)

    assert all(s["status"] == "done" for s in _state(run).values())
    rows = read_lines(run / "steps" / "recap" / "predictions.jsonl")
    assert sorted(r["key"] for r in rows) == [f"k{i}" for i in range(8)]  # none lost, none duplicated
    assert read_lines(run / "lineage.jsonl") == read_lines(reference / "lineage.jsonl")
    got, want = _metrics(run), _metrics(reference)
    assert got.keys() == want.keys()
    for name in want:
        for (f1, s1, m1), (f2, s2, m2) in zip(got[name], want[name]):
            assert (f1, s1) == (f2, s2) and m1.keys() == m2.keys()
            assert all(m1[k] == pytest.approx(m2[k], abs=1e-4) for k in m2), name
