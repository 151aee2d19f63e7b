"""benchmarks/bench_retrieval.py runs end to end at a toy size and its two evaluators agree."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_retrieval_matches_clip_benchmark_at_toy_size(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "bench_retrieval.py"),
        "--sizes",
        "300",
        "--repeats",
        "1",
    ]
    cmd += ["--two-matmul-repeats", "1", "--memory-cap-gb", "8", "--json", str(out)]
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300)
    (record,) = json.loads(out.read_text())["sizes"]
    assert record["captions"] == 1500
    ours, peer, two = record["clipforge"], record["clip_benchmark"], record["clipforge_two_matmul"]
    assert ours["status"] == peer["status"] == two["status"] == "ok"
    assert (
        set(ours["recalls"])
        == set(peer["recalls"])
        == {f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)}
    )
    for key, value in ours["recalls"].items():
        assert abs(value - peer["recalls"][key]) < 1e-4, key
        assert abs(value - two["recalls"][key]) < 1e-9, key
    assert 0 < ours["recalls"]["t2i_R@1"] < 100  # the noise level makes the comparison non-trivial
