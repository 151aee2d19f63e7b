"""Caption generation on a vLLM engine vs clipforge's HF batched backend vs one row per ``generate`` call.

    .venv-vllm/bin/python benchmarks/bench_vllm.py [--images 32 --repeats 3 --threads 2 --vlm --json out.json]

Runs in ``.venv-vllm`` (``make setup-vllm``): both backends in one process, on the same torch / transformers
(vLLM's), the same captioner preset and the same rows. Text: the ``label_llm`` preset
(``conf/model/mllm/label_llm.yaml``: EfficientNet-Lite0 top-3 labels -> SmolLM2-135M-Instruct, fp32, greedy,
repetition penalty 1.3, <= 30 new tokens) on the first ``--images`` coco-dev photos; vLLM loads the same
de-quantized SmolLM2 folder the HF backend loads. ``--vlm`` adds a tiny random-weight LLaVA-1.5
(``LlavaForConditionalGeneration``, a 2-layer 256-wide Llama; the ``llava_1_5`` preset's prompt, greedy, 30 new
tokens) on the same photos: it measures per-row overheads, not a real VLM's compute.

Configurations: ``hf`` (the preset's ``batch_size``, left-padded ``generate`` calls), ``loop`` (the HF backend one
row per call: the captioning scripts' loop) and ``vllm`` (every row in one ``LLM.generate`` call, vLLM's
scheduler batching). Start-up (weights + engine) is timed separately; each repeat runs every configuration once in
a rotating order after one warm-up call, and the figure is the median rows/s (labels + prompts + generation +
decoding). The HF backend gets ``--threads`` torch threads; vLLM's CPU worker, a separate process, binds as many
cores (``VLLM_CPU_OMP_THREADS_BIND=0-<threads-1>``, none reserved) while the HF side idles. Greedy captions of the three are compared (``captions != hf``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def _timed(captioner, images, captions, keys) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    out = captioner.generate(images, captions, keys)
    return time.perf_counter() - t0, [g[0].text for g in out]


def _label_llm(backend: str):
    from hydra.utils import instantiate

    from clipforge.utils.hydra import compose

    overrides = ["experiment=recap_label_llm", f"model.captioners.label_llm.backend={backend}"]
    if backend == "vllm":
        overrides.append("+model.captioners.label_llm.engine_args.enforce_eager=true")
    cfg = compose(overrides, "generate", output_dir="/tmp/bench_vllm")
    return instantiate(cfg.model.captioners.label_llm, _convert_="all")


def _llava(backend: str, folder: str):
    from clipforge.models.captioners.hf import HFCaptioner

    engine = {"enforce_eager": True} if backend == "vllm" else None
    return HFCaptioner(
        folder,
        name="llava_1_5",
        model_class="LlavaForConditionalGeneration",
        prompt="Describe <image> in English:",
        chat_template=False,
        decoding={"max_new_tokens": 30},
        batch_size=32,
        backend=backend,
        engine_args=engine,
    )


def bench(name: str, build, images, captions, keys, repeats: int) -> dict:
    """Start-up and median rows/s of hf / loop / vllm for one captioner preset."""
    startup: dict[str, float] = {}
    captioners = {}
    for backend in ("hf", "vllm"):
        c = build(backend)
        t0 = time.perf_counter()
        c.setup("cpu")
        startup[backend] = round(time.perf_counter() - t0, 1)
        _timed(c, images[:2], captions[:2], keys[:2])  # warm-up
        captioners[backend] = c
    preset_batch = captioners["hf"].batch_size
    configs = ["hf", "loop", "vllm"]
    times: dict[str, list[float]] = {k: [] for k in configs}
    texts: dict[str, list[str]] = {}
    for r in range(repeats):
        for cfg in configs[r % 3 :] + configs[: r % 3]:
            c = captioners["vllm" if cfg == "vllm" else "hf"]
            c.batch_size = 1 if cfg == "loop" else preset_batch
            seconds, out = _timed(c, images, captions, keys)
            times[cfg].append(seconds)
            texts.setdefault(cfg, out)
            print(
                f"{name} repeat {r} {cfg:5s}: {seconds:7.2f} s  {len(images) / seconds:6.2f} rows/s",
                flush=True,
            )
    captioners["hf"].batch_size = preset_batch
    rows = {k: len(images) / statistics.median(v) for k, v in times.items()}
    return {
        "captioner": name,
        "model": captioners["hf"].model_id,
        "rows": len(images),
        "hf_batch_size": preset_batch,
        "startup_s": startup,
        "rows_per_s": {k: round(v, 3) for k, v in rows.items()},
        "vllm_vs_hf": round(rows["vllm"] / rows["hf"], 2),
        "hf_vs_vllm": round(rows["hf"] / rows["vllm"], 2),
        "hf_vs_loop": round(rows["hf"] / rows["loop"], 2),
        "vllm_vs_loop": round(rows["vllm"] / rows["loop"], 2),
        "captions_differing_from_hf": {
            k: sum(a != b for a, b in zip(texts[k], texts["hf"])) for k in configs
        },
        "runs_s": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "sample": [
            {"key": k, "hf": a, "vllm": b} for k, a, b in list(zip(keys, texts["hf"], texts["vllm"]))[:3]
        ],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch threads of the HF backend")
    p.add_argument("--vlm", action="store_true", help="also a tiny random-weight LLaVA-1.5")
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args()
    # vLLM's CPU worker binds cores 0..threads-1 and reserves none (its default on 2 cores: 1 thread + 1 reserved)
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{args.threads - 1}")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")

    import torch
    import transformers
    import vllm
    from bench_recap_generate import coco_photos

    from clipforge.models.assets import resolve_asset

    torch.set_num_threads(args.threads)
    resolve_asset("pypi:smollm2-135m-instruct")  # the one-time GGUF conversion, outside the start-up timing
    images, captions, keys = coco_photos(args.images)
    reports = [bench("label_llm", _label_llm, images, captions, keys, args.repeats)]
    if args.vlm:
        from tests.helpers.tiny_vlms import WIDE_DECODER, llava_hub_layout, save_tiny_llava

        folder = llava_hub_layout(save_tiny_llava(tempfile.mkdtemp(prefix="bench-llava-"), text=WIDE_DECODER))
        reports.append(bench("tiny_llava", lambda b: _llava(b, folder), images, captions, keys, args.repeats))
    machine = (
        f"{platform.machine()} {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, vllm {vllm.__version__}, HF threads {args.threads}"
    )
    print(
        "\n| captioner | rows | start-up hf / vllm (s) | loop rows/s | hf rows/s | vllm rows/s | hf ÷ vllm |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in reports:
        s, x = r["startup_s"], r["rows_per_s"]
        print(
            f"| {r['captioner']} | {r['rows']} | {s['hf']} / {s['vllm']} | {x['loop']} | {x['hf']} | {x['vllm']} | "
            f"{r['hf_vs_vllm']}× |"
        )
    print(json.dumps({"machine": machine, "reports": reports}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "reports": reports}, indent=1))


if __name__ == "__main__":
    main()
