"""Caption-generation throughput: clipforge's left-padded batched ``generate`` vs one image per ``generate`` call.

    python benchmarks/bench_recap_generate.py [--images 32 --batch-sizes 16 32 --repeats 3 --threads 1 \\
        --json out.json]

Model and images: the ``label_llm`` captioner with its real weights (EfficientNet-Lite0 top-3 ImageNet labels ->
SmolLM2-135M-Instruct, fp32, greedy, repetition penalty 1.3, at most 30 new tokens, the preset of
``conf/model/mllm/label_llm.yaml``) on the first ``--images`` photos of ``../shared/data/coco-dev``. The prompts
differ in length (the labels do), so batches are really left-padded.

The peer is the loop style of captioning scripts: one image per ``generate`` call, same model object, same
decoding, same post-processing (the seed's scripts call ``generate`` on fixed-size packs; a pack of one is what a
plain per-image loop does). Both go through ``BatchedCaptioner.generate``, so the only difference is the batch
size. Each repeat times every configuration once, in a rotating order, after the weights are loaded and one
warm-up call; the reported figure is the median over repeats of images per second (generation only: label
classification + prompt rendering + ``generate`` + decoding). Greedy decoding with correct attention masks must
give the same captions whatever the batch size: the script counts the captions that differ from the loop's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def coco_photos(n: int) -> tuple[list[Image.Image], list[str], list[str]]:
    """The first ``n`` coco-dev photos (RGB), their first human caption and their keys."""
    from clipforge.data.images import load_image
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec

    data = Path(os.environ.get("CLIPFORGE_DATA_DIR", ROOT.parent / "shared" / "data")) / "coco-dev"
    spec = DatasetSpec(
        path=str(data / "annotations" / "captions_train2017.json"), image_root=str(data / "train2017")
    )
    records, _ = read_records(spec)
    records = records[:n]
    return [load_image(r.image) for r in records], [r.captions[0] for r in records], [r.key for r in records]


def build_captioner():
    """The ``label_llm`` preset exactly as configured in ``conf/model/mllm/label_llm.yaml``."""
    from hydra.utils import instantiate

    from clipforge.utils.hydra import compose

    cfg = compose(["experiment=recap_label_llm"], "generate", output_dir="/tmp/bench_recap_generate")
    return instantiate(cfg.model.captioners.label_llm, _convert_="all")


def timed(captioner, batch_size: int, images, captions, keys) -> tuple[float, list[str]]:
    captioner.batch_size = batch_size
    t0 = time.perf_counter()
    out = captioner.generate(images, captions, keys)
    return time.perf_counter() - t0, [g[0].text for g in out]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 holds up best on a shared CPU)")
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    images, captions, keys = coco_photos(args.images)
    captioner = build_captioner()
    t0 = time.perf_counter()
    captioner.setup("cpu")
    load_s = time.perf_counter() - t0
    timed(captioner, 2, images[:2], captions[:2], keys[:2])  # warm-up

    configs = [1, *args.batch_sizes]
    times: dict[int, list[float]] = {b: [] for b in configs}
    texts: dict[int, list[str]] = {}
    cpu0 = os.times()
    for r in range(args.repeats):
        for b in configs[r % len(configs) :] + configs[: r % len(configs)]:
            seconds, out = timed(captioner, b, images, captions, keys)
            times[b].append(seconds)
            texts.setdefault(b, out)
            print(
                f"repeat {r} batch {b:3d}: {seconds:7.2f} s  {len(images) / seconds:6.2f} images/s",
                flush=True,
            )
    wall = sum(sum(v) for v in times.values())
    cpu1 = os.times()
    results = []
    loop = statistics.median(times[1])
    for b in configs:
        med = statistics.median(times[b])
        results.append(
            {
                "batch_size": b,
                "median_s": round(med, 3),
                "images_per_s": round(len(images) / med, 3),
                "speedup_vs_loop": round(loop / med, 2),
                "captions_differing_from_loop": sum(a != c for a, c in zip(texts[b], texts[1])),
                "runs_s": [round(t, 3) for t in times[b]],
            }
        )
    report = {
        "model": captioner.model_id,
        "images": len(images),
        "threads": args.threads,
        "load_s": round(load_s, 1),
        "cpu_utilisation": round((cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall, 2),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}",
        "results": results,
        "sample_captions": [{"key": k, "caption": c} for k, c in list(zip(keys, texts[1]))[:3]],
    }
    print(
        "\n| batch | median s | images/s | speed-up vs loop | captions ≠ loop |\n|---:|---:|---:|---:|---:|"
    )
    for row in results:
        print(
            f"| {row['batch_size']} | {row['median_s']} | {row['images_per_s']} | {row['speedup_vs_loop']}× | "
            f"{row['captions_differing_from_loop']} |"
        )
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
