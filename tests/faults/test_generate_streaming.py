"""``clipforge generate`` over streamed shards (http on loopback): one output shard per input shard, keys equal to
the input's, and a rerun skips the finished shards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clipforge.data.shards import read_shard
from tests.helpers.streams import http_server, make_shards, write_shards

ROOT = (
    Path(__file__).resolve().parents[2]
)  # (slow: two job runs, ~25 s; the plan itself: test_data_streaming)


def _keys(data: bytes) -> list[str]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
        return [m.name.split(".")[0] for m in tf.getmembers() if m.name.endswith(".txt")]


@pytest.mark.slow
def test_embedding_job_writes_one_shard_per_streamed_input_shard(tmp_path):
    shards = make_shards(3, 4)
    write_shards(tmp_path / "in", shards)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "HF_HUB_OFFLINE": "1"}
    with http_server(tmp_path / "in") as base:
        args = [
            sys.executable,
            "-m",
            "clipforge.cli.generate",
            "experiment=llm2clip_embed_demo",
            "debug=tiny_llm2clip_embed_demo",
            f"data.predict.path='{base}/shard-{{00000..00002}}.tar.gz'",
            "data.predict.limit=null",
            f"paths.output_dir={out}",
        ]
        first = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stderr[-3000:]
        written = sorted(p.name for p in (out / "shards").glob("*.pt"))
        assert written == [f"shard-{i:05d}.pt" for i in range(3)]
        for name, data in shards.items():
            rows = read_shard(str(out / "shards" / (name[: -len(".tar.gz")] + ".pt")))
            assert [r["key"] for r in rows] == _keys(data)
            assert all(torch.is_tensor(r["text_embedding"]) for r in rows)
        stamp = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.pt")}
        os.remove(out / "shards" / "shard-00001.pt")
        again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.pt")}
    assert set(after) == set(stamp)
    assert (
        after["shard-00000.pt"] == stamp["shard-00000.pt"]
        and after["shard-00002.pt"] == stamp["shard-00002.pt"]
    )
