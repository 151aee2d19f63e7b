"""Benchmark ``clipforge.eval.retrieval_metrics`` against the naive full-matrix + argsort evaluator.

    python benchmarks/bench_retrieval.py [--images 5000 --captions-per-image 5 --dim 512 --repeats 5 \\
        --chunk-size 1024 --json bench_retrieval.json]

Random L2-normalised features with a fixed seed (captions = their image's feature plus Gaussian noise, so the
recalls are neither 0 nor 100) are written once to a temporary file. Every measurement then runs in a *fresh*
Python subprocess that loads them, records ``ru_maxrss`` (the baseline: interpreter + torch + inputs), runs one
evaluation, and records ``ru_maxrss`` again: the reported peak is that process's high-water mark, and
``peak - baseline`` is the memory the evaluation itself needed. ``tracemalloc`` cannot see torch's allocations.

The naive peer is the straightforward evaluator of BLIP/ALBEF's ``itm_eval`` (also what LLM2CLIP's
``retrieval_global`` amounts to): materialise the whole ``N_img x N_txt`` score matrix, ``argsort`` every row
(and every column for text→image), and read off the position of the first positive — vectorised with torch here
so it is not slowed down by a Python loop. Both evaluators' recalls are compared (random features: no ties).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

KS = (1, 5, 10)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_features(
    images: int, captions_per_image: int, dim: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random unit-norm image features and noisy copies of them as captions.

    Args:
        images: number of images.
        captions_per_image: captions per image.
        dim: embedding width.
        noise: standard deviation of the Gaussian noise added to each caption's image feature.
        seed: RNG seed.

    Returns:
        ``(image_features, text_features, text_to_image)``.
    """
    g = torch.Generator().manual_seed(seed)
    img = F.normalize(torch.randn(images, dim, generator=g), dim=-1)
    mapping = torch.arange(images).repeat_interleave(captions_per_image)
    txt = F.normalize(img[mapping] + noise * torch.randn(len(mapping), dim, generator=g) / dim**0.5, dim=-1)
    return img, txt, mapping


def naive_full_argsort(img: torch.Tensor, txt: torch.Tensor, text_to_image: torch.Tensor) -> dict[str, float]:
    """The full-matrix + per-row argsort evaluator (any-hit image→text, like BLIP's ``itm_eval``).

    Args:
        img: ``(N_img, D)`` image features.
        txt: ``(N_txt, D)`` caption features.
        text_to_image: ``(N_txt,)`` image index of each caption.

    Returns:
        ``i2t_R@k`` / ``t2i_R@k`` in percent.
    """
    scores = img @ txt.T  # the whole (N_img, N_txt) matrix
    order = scores.argsort(dim=1, descending=True)
    own = torch.arange(img.shape[0])[:, None]
    i2t = (text_to_image[order] == own).to(torch.uint8).argmax(dim=1)  # position of the first own caption
    del order
    order = scores.T.argsort(dim=1, descending=True)
    t2i = (order == text_to_image[:, None]).to(torch.uint8).argmax(dim=1)
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in KS:
            out[f"{name}_R@{k}"] = 100.0 * int((ranks < k).sum()) / ranks.numel()
    return out


def worker(method: str, data: Path, chunk_size: int) -> None:
    """One measurement in this (fresh) process; prints a JSON line.

    Args:
        method: ``"chunked"`` (``retrieval_metrics``) or ``"naive"``.
        data: file written by :func:`main` with the features.
        chunk_size: ``retrieval_metrics`` chunk size.
    """
    from clipforge.eval.retrieval import retrieval_metrics  # imported by both methods: same baseline

    img, txt, mapping = torch.load(data, weights_only=True)
    baseline = _max_rss_mb()
    start = time.perf_counter()
    if method == "chunked":
        metrics = retrieval_metrics(img, txt, mapping, ks=KS, chunk_size=chunk_size)
    else:
        metrics = naive_full_argsort(img, txt, mapping)
    seconds = time.perf_counter() - start
    peak = _max_rss_mb()
    recalls = {k: v for k, v in metrics.items() if "_R@" in k}
    print(json.dumps({"seconds": seconds, "baseline_mb": baseline, "peak_mb": peak, "recalls": recalls}))


def _measure(method: str, data: Path, chunk_size: int, repeats: int) -> dict[str, object]:
    runs = []
    for _ in range(repeats):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            method,
            "--data",
            str(data),
            "--chunk-size",
            str(chunk_size),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    times = [r["seconds"] for r in runs]
    return {
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mb": max(r["peak_mb"] for r in runs),
        "peak_minus_baseline_mb": max(r["peak_mb"] - r["baseline_mb"] for r in runs),
        "baseline_mb": statistics.median(r["baseline_mb"] for r in runs),
        "recalls": runs[0]["recalls"],
    }


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every measurement in its own subprocess, print the table and a JSON line.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when ``None``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5, help="measurements per method (fresh process each)")
    parser.add_argument("--naive-repeats", type=int, default=None, help="defaults to --repeats")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--noise", type=float, default=7.0, help="caption noise (relative to a unit feature)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON line to this file")
    parser.add_argument("--worker", choices=("chunked", "naive"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.chunk_size)
        return

    img, txt, mapping = make_features(args.images, args.captions_per_image, args.dim, args.noise, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "features.pt"
        torch.save((img, txt, mapping), data)
        del img, txt
        chunked = _measure("chunked", data, args.chunk_size, args.repeats)
        naive = _measure("naive", data, args.chunk_size, args.naive_repeats or args.repeats)

    max_diff = max(abs(chunked["recalls"][k] - naive["recalls"][k]) for k in chunked["recalls"])
    shape = f"{args.images}×{len(mapping)}×{args.dim}"
    print(f"threads={torch.get_num_threads()} torch={torch.__version__} recalls: {chunked['recalls']}")
    print("| evaluator | images×captions×dim | median time (s) | peak RSS (MB) | peak − baseline (MB) |")
    print("|---|---|---|---|---|")
    rows = [(f"clipforge `retrieval_metrics` (chunk {args.chunk_size})", chunked)]
    rows.append(("naive full matrix + argsort", naive))
    for name, r in rows:
        print(
            f"| {name} | {shape} | {r['median_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['peak_minus_baseline_mb']:.0f} |"
        )
    time_ratio = naive["median_s"] / chunked["median_s"]
    mem_ratio = naive["peak_minus_baseline_mb"] / max(chunked["peak_minus_baseline_mb"], 1.0)
    print(
        f"naive / clipforge: {time_ratio:.1f}× time, {mem_ratio:.1f}× working memory; max |ΔR@k| = {max_diff}"
    )
    record = {
        "images": args.images,
        "captions": len(mapping),
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "clipforge": chunked,
        "naive": naive,
        "time_ratio": time_ratio,
        "working_memory_ratio": mem_ratio,
        "max_recall_diff": max_diff,
    }
    line = json.dumps(record)
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
