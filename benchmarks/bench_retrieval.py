"""Benchmark ``clipforge.eval.retrieval_metrics`` against CLIP_benchmark's retrieval evaluator: same features, same run.

    python benchmarks/bench_retrieval.py [--sizes 5000 50000 --captions-per-image 5 --dim 512 --repeats 5 \\
        --peer-repeats 5 --two-matmul-repeats 0 --memory-cap-gb 16 --chunk-size 1024 --json bench_retrieval.json]

For each size (number of images), random L2-normalised features with a fixed seed (captions = their image's
feature plus Gaussian noise, so the recalls are neither 0 nor 100) are written once to a temporary file. Every
measurement then runs in a *fresh* Python subprocess that loads them, records ``ru_maxrss`` (the baseline:
interpreter + torch + inputs), runs one evaluation, and records ``ru_maxrss`` again: the reported peak is that
process's high-water mark, and ``peak - baseline`` is the memory the evaluation itself needed. Runs of the two
evaluators alternate, so both see the same machine load.

Every worker runs under an address-space limit (``RLIMIT_AS`` = ``--memory-cap-gb``): on a shared machine the
peer's full score matrix must not take everyone's memory. An allocation beyond the cap fails inside the worker,
which reports ``out of memory`` (with the size it tried to allocate); the script then stops repeating that
evaluator at that size.

The peer is CLIP_benchmark 1.6.2 itself (``clip_benchmark.metrics.zeroshot_retrieval``, imported from the
installed package): what its ``evaluate`` does once the embeddings exist — ``scores = texts @ images.T`` (the
full ``N_txt x N_img`` fp32 matrix), the boolean ``positive_pairs`` matrix, and for each ``k``
``(batchify(recall_at_k, scores, positive_pairs, batch_size, device, k=k) > 0).float().mean()`` for image
retrieval (text→image) and the same on the transposes for text retrieval (image→text), with ``batch_size = 64``
(its CLI default; ``evaluate`` batches by the dataloader's batch size). Both evaluators' recalls are compared
(random features: no ties, so the tie rules agree). ``--two-matmul-repeats`` also times clipforge's earlier
design (``retrieval_ranks(single_matmul=False)``: one full matmul per direction) for the same features.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
EVALUATORS = ("clipforge", "clip_benchmark", "clipforge_two_matmul")


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


def clip_benchmark_recalls(
    img: torch.Tensor, txt: torch.Tensor, text_to_image: torch.Tensor, batch_size: int
) -> dict[str, float]:
    """CLIP_benchmark's retrieval metrics from embeddings, as its ``zeroshot_retrieval.evaluate`` computes them.

    Args:
        img: ``(N_img, D)`` L2-normalised image features.
        txt: ``(N_txt, D)`` L2-normalised caption features.
        text_to_image: ``(N_txt,)`` image index of each caption.
        batch_size: ``batchify``'s batch size (the evaluation dataloader's in CLIP_benchmark).

    Returns:
        Its ``text_retrieval_recall@k`` as ``i2t_R@k`` and ``image_retrieval_recall@k`` as ``t2i_R@k``, in percent.
    """
    from clip_benchmark.metrics.zeroshot_retrieval import batchify, recall_at_k

    texts_image_index = text_to_image.tolist()
    scores = txt @ img.t()
    positive_pairs = torch.zeros_like(scores, dtype=bool)
    positive_pairs[torch.arange(len(scores)), texts_image_index] = True
    out = {}
    for k in KS:
        t2i = batchify(recall_at_k, scores, positive_pairs, batch_size, "cpu", k=k) > 0
        i2t = batchify(recall_at_k, scores.T, positive_pairs.T, batch_size, "cpu", k=k) > 0
        out[f"i2t_R@{k}"] = 100.0 * i2t.float().mean().item()
        out[f"t2i_R@{k}"] = 100.0 * t2i.float().mean().item()
    return out


def worker(method: str, data: Path, chunk_size: int, batch_size: int) -> None:
    """One measurement in this (fresh) process; prints a JSON line.

    Args:
        method: ``"clipforge"`` (``retrieval_metrics``), ``"clip_benchmark"`` or ``"clipforge_two_matmul"``
            (``retrieval_ranks(single_matmul=False)``: one full matmul per direction, the earlier design).
        data: file written by :func:`main` with the features.
        chunk_size: ``retrieval_metrics`` chunk size.
        batch_size: CLIP_benchmark's ``batchify`` batch size.
    """
    import clip_benchmark.metrics.zeroshot_retrieval  # noqa: F401  both workers import both: same baseline

    from clipforge.eval.retrieval import retrieval_metrics, retrieval_ranks

    img, txt, mapping = torch.load(data)
    baseline = _max_rss_mb()
    start = time.perf_counter()
    try:
        if method == "clipforge":
            metrics = retrieval_metrics(img, txt, mapping, ks=KS, chunk_size=chunk_size)
        elif method == "clipforge_two_matmul":
            i2t, t2i = retrieval_ranks(img, txt, mapping, chunk_size=chunk_size, single_matmul=False)
            metrics = {
                f"{d}_R@{k}": 100.0 * float((r < k).double().mean())
                for d, r in (("i2t", i2t), ("t2i", t2i))
                for k in KS
            }
        else:
            metrics = clip_benchmark_recalls(img, txt, mapping, batch_size)
    except (MemoryError, RuntimeError) as exc:  # torch: "DefaultCPUAllocator: can't allocate memory"
        if isinstance(exc, RuntimeError) and "allocate" not in str(exc):
            raise
        message = " ".join(str(exc).split())[-200:]
        result = {"status": "out of memory", "error": message, "seconds": time.perf_counter() - start}
        print(json.dumps(result | {"baseline_mb": baseline, "peak_mb": _max_rss_mb()}))
        return
    seconds = time.perf_counter() - start
    peak = _max_rss_mb()
    recalls = {k: v for k, v in metrics.items() if "_R@" in k}
    result = {
        "status": "ok",
        "seconds": seconds,
        "baseline_mb": baseline,
        "peak_mb": peak,
        "recalls": recalls,
    }
    print(json.dumps(result))


def _run_worker(method: str, data: Path, args: argparse.Namespace) -> dict:
    cap = int(args.memory_cap_gb * 2**30)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    cmd = [sys.executable, __file__, "--worker", method, "--data", str(data)]
    cmd += ["--chunk-size", str(args.chunk_size), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=limit)
    if proc.returncode != 0:
        if proc.returncode < 0:  # killed (e.g. by the kernel's OOM killer)
            return {"status": f"killed by signal {-proc.returncode}", "error": proc.stderr[-300:]}
        raise RuntimeError(f"{method} worker failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["status"] == "ok"]
    if not runs:
        return {"status": "not run"}
    if not ok:
        return {"status": runs[0]["status"], "error": runs[0].get("error"), "runs": runs}
    times = [r["seconds"] for r in ok]
    return {
        "status": "ok",
        "median_s": statistics.median(times),
        "times_s": times,
        "peak_rss_mb": max(r["peak_mb"] for r in ok),
        "median_peak_rss_mb": statistics.median(r["peak_mb"] for r in ok),
        "peaks_mb": [r["peak_mb"] for r in ok],
        "peak_minus_baseline_mb": max(r["peak_mb"] - r["baseline_mb"] for r in ok),
        "baseline_mb": statistics.median(r["baseline_mb"] for r in ok),
        "recalls": ok[0]["recalls"],
    }


def measure_size(images: int, args: argparse.Namespace) -> dict:
    """Both evaluators on one feature set, runs alternating; the peer stops at its first failure.

    Args:
        images: number of images (captions: ``images * captions_per_image``).
        args: the parsed command line.

    Returns:
        The size, the load average before and after, and each evaluator's summary.
    """
    img, txt, mapping = make_features(images, args.captions_per_image, args.dim, args.noise, args.seed)
    runs: dict[str, list[dict]] = {name: [] for name in EVALUATORS}
    wanted = {
        "clipforge": args.repeats,
        "clip_benchmark": args.repeats if args.peer_repeats is None else args.peer_repeats,
    }
    wanted["clipforge_two_matmul"] = args.two_matmul_repeats
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "features.pt"
        torch.save((img, txt, mapping), data)
        del img, txt
        for r in range(max(wanted.values())):
            for name in EVALUATORS:
                failed = any(run["status"] != "ok" for run in runs[name])
                if r < wanted[name] and not failed:
                    runs[name].append(_run_worker(name, data, args))
                    print(f"  {images} images, {name} run {r + 1}: {json.dumps(runs[name][-1])}", flush=True)
    record = {"images": images, "captions": len(mapping), "dim": args.dim}
    record |= {"load_before": load_before, "load_after": os.getloadavg()}
    record |= {name: _summary(runs[name]) for name in EVALUATORS}
    ours, peer = record["clipforge"], record["clip_benchmark"]
    if ours["status"] == "ok" and peer["status"] == "ok":
        record["time_ratio"] = peer["median_s"] / ours["median_s"]
        record["working_memory_ratio"] = peer["peak_minus_baseline_mb"] / max(
            ours["peak_minus_baseline_mb"], 1.0
        )
        record["max_recall_diff"] = max(abs(ours["recalls"][k] - peer["recalls"][k]) for k in ours["recalls"])
    return record


def _row(name: str, shape: str, r: dict) -> str:
    if r["status"] != "ok":
        return f"| {name} | {shape} | {r['status']}: {r.get('error') or ''} | | |"
    peaks = f"{r['median_peak_rss_mb']:.0f} / {r['peak_rss_mb']:.0f}"
    return f"| {name} | {shape} | {r['median_s']:.2f} | {peaks} | {r['peak_minus_baseline_mb']:.0f} |"


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every measurement in its own subprocess, print the table and a JSON line.

    Args:
        argv: command-line arguments (``sys.argv[1:]`` when ``None``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000], help="numbers of images")
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument(
        "--repeats", type=int, default=5, help="clipforge measurements per size (fresh process each)"
    )
    parser.add_argument(
        "--peer-repeats", type=int, default=None, help="CLIP_benchmark's; defaults to --repeats"
    )
    parser.add_argument(
        "--two-matmul-repeats",
        type=int,
        default=0,
        help="also time clipforge's one-matmul-per-direction path",
    )
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64, help="CLIP_benchmark's batchify batch size")
    parser.add_argument("--memory-cap-gb", type=float, default=16.0, help="RLIMIT_AS of every worker (GiB)")
    parser.add_argument("--noise", type=float, default=7.0, help="caption noise (relative to a unit feature)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the JSON line to this file")
    parser.add_argument("--worker", choices=EVALUATORS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.data, args.chunk_size, args.batch_size)
        return

    started = time.time()
    records = [measure_size(images, args) for images in args.sizes]
    print(
        f"threads={torch.get_num_threads()} torch={torch.__version__} cpu={platform.processor() or platform.machine()}"
        f" cap={args.memory_cap_gb} GiB"
    )
    print(
        "| evaluator | images×captions×dim | median s | peak RSS median / max (MB) | max peak − baseline (MB) |"
    )
    print("|---|---|---|---|---|")
    for rec in records:
        shape = f"{rec['images']}×{rec['captions']}×{rec['dim']}"
        print(_row(f"clipforge `retrieval_metrics` (chunk {args.chunk_size})", shape, rec["clipforge"]))
        print(_row(f"CLIP_benchmark 1.6.2 (batch {args.batch_size})", shape, rec["clip_benchmark"]))
        if rec["clipforge_two_matmul"]["status"] != "not run":
            print(_row("clipforge, one matmul per direction", shape, rec["clipforge_two_matmul"]))
    for rec in records:
        if "time_ratio" in rec:
            print(
                f"{rec['images']} images: CLIP_benchmark / clipforge {rec['time_ratio']:.2f}× time, "
                f"{rec['working_memory_ratio']:.1f}× working memory; max |ΔR@k| = {rec['max_recall_diff']:.2g}"
            )
        print(f"{rec['images']} images: load average before {rec['load_before']}, after {rec['load_after']}")
    record = {
        "sizes": records,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "memory_cap_gb": args.memory_cap_gb,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "total_s": time.time() - started,
    }
    line = json.dumps(record)
    print(line)
    if args.json is not None:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
