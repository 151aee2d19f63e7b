"""Streaming webdataset shards: time to first batch vs the index-based reader, and images/s vs plain webdataset.

    python benchmarks/bench_streaming.py [--shards 1000 --per-shard 1000 --root /tmp/bench_streaming \\
        --throughput-shards 40 --repeats 3 --json bench_streaming.json]

Data: ``--shards`` synthetic uncompressed shards of ``--per-shard`` samples (``{key}.jpg``: an 8x8 PNG, one of 64
distinct ones; ``{key}.txt``: a caption), written once under ``--root`` and reused by later runs.

1. Time to first batch (batch 256, 2 dataloader workers, fresh process per measurement so nothing is cached in
   memory but the page cache): ``ImageTextDataModule`` + ``setup`` + ``next(iter(train_dataloader()))`` with
   ``streaming: true`` (our streaming reader) vs ``streaming: false`` (the index-based reader, which scans every
   member header of every shard first).
2. Decoded + transformed images/s over the first ``--throughput-shards`` shards, 2 workers, batch 256, the same
   transform (PIL decode -> 32x32 bilinear resize -> float tensor), shuffle buffer 1000 in both:
   our streaming loader (``ImageTextDataModule``, tokenizer off) vs a plain ``webdataset.WebDataset`` pipeline
   (``.shuffle(1000).decode("pil").to_tuple("jpg", "txt").map_tuple(transform, str).batched(256)`` in a
   ``WebLoader``). Each repeat runs one full pass; the median is reported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def transform(image):  # noqa: ANN001, ANN201 - PIL -> Tensor, top level so workers can pickle it
    import numpy as np
    import torch
    from PIL import Image

    arr = np.asarray(image.convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


def write_data(root: Path, shards: int, per_shard: int) -> list[str]:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    done = root / f"done-{shards}x{per_shard}"
    paths = [str(root / f"shard-{s:05d}.tar") for s in range(shards)]
    if done.exists():
        return paths
    rng = np.random.default_rng(0)
    images = []
    for _ in range(64):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
        images.append(buf.getvalue())
    t0 = time.perf_counter()
    for s, path in enumerate(paths):
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
            for i in range(per_shard):
                key = f"{s:05d}{i:05d}"
                for name, data in ((f"{key}.jpg", images[i % 64]), (f"{key}.txt", f"photo {s} {i}".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    done.write_text(f"{time.perf_counter() - t0:.1f} s\n")
    return paths


def _datamodule(path: str, streaming: bool, workers: int, batch: int):  # noqa: ANN202
    from clipforge.data.datamodule import ImageTextDataModule

    dm = ImageTextDataModule(
        train={"path": path, "streaming": streaming},
        batch_size=batch,
        num_workers=workers,
        holdout_fraction=0.0,
        shuffle_buffer=1000,
    )
    dm.connect(tokenizer=None, image_transform=transform)
    return dm


def first_batch(path: str, streaming: bool, workers: int, batch: int) -> float:
    t0 = time.perf_counter()
    dm = _datamodule(path, streaming, workers, batch)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert len(b["key"]) == batch
    return time.perf_counter() - t0


def ours(urls: list[str], workers: int, batch: int) -> tuple[int, float]:
    dm = _datamodule("", True, workers, batch)
    dm.specs["train"][0].path = urls[0]
    dm.setup("fit")
    dataset = dm.datasets["train"][0]
    dataset.urls = list(urls)
    t0, n = time.perf_counter(), 0
    for b in dm.train_dataloader():
        n += len(b["key"])
    return n, time.perf_counter() - t0


def plain_webdataset(urls: list[str], workers: int, batch: int) -> tuple[int, float]:
    import webdataset as wds

    ds = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node, empty_check=False)
        .shuffle(1000)
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(transform, str)
        .batched(batch, partial=False)
    )
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers)
    t0, n = time.perf_counter(), 0
    for images, _ in loader:
        n += len(images)
    return n, time.perf_counter() - t0


def _child(kind: str, path: str, workers: int, batch: int) -> float:
    """One time-to-first-batch measurement in a fresh interpreter."""
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import bench_streaming as b; "
        "print(b.first_batch(sys.argv[3], sys.argv[4] == 'stream', int(sys.argv[5]), int(sys.argv[6])))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    args = [str(ROOT / "src"), str(ROOT / "benchmarks"), path, kind, str(workers), str(batch)]
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=1000)
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--root", default="/tmp/bench_streaming")
    p.add_argument("--throughput-shards", type=int, default=40)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--index-repeats", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    t0 = time.perf_counter()
    urls = write_data(Path(a.root), a.shards, a.per_shard)
    print(
        f"data: {a.shards} shards x {a.per_shard} samples under {a.root} ({time.perf_counter() - t0:.1f} s)"
    )
    pattern = f"{a.root}/shard-{{00000..{a.shards - 1:05d}}}.tar"
    result: dict = {"shards": a.shards, "per_shard": a.per_shard, "workers": a.workers, "batch": a.batch}
    stream = [_child("stream", pattern, a.workers, a.batch) for _ in range(a.repeats)]
    index = [_child("index", pattern, a.workers, a.batch) for _ in range(a.index_repeats)]
    result["first_batch_s"] = {"streaming": stream, "index": index}
    print(
        f"time to first batch: streaming {statistics.median(stream):.2f} s, index {statistics.median(index):.2f} s"
    )
    sub = urls[: a.throughput_shards]
    rates: dict[str, list[float]] = {"clipforge": [], "webdataset": []}
    counts: dict[str, int] = {}
    for _ in range(a.repeats):
        for name, fn in (("webdataset", plain_webdataset), ("clipforge", ours)):
            n, seconds = fn(sub, a.workers, a.batch)
            rates[name].append(n / seconds)
            counts[name] = n
    med = {k: statistics.median(v) for k, v in rates.items()}
    result["images_per_s"] = rates
    result["images_per_pass"] = counts
    result["ratio"] = med["clipforge"] / med["webdataset"]
    print(
        f"images/s over {len(sub)} shards: clipforge {med['clipforge']:.0f}, webdataset {med['webdataset']:.0f} "
        f"(ratio {result['ratio']:.2f}); images per pass {counts}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
