"""LLM2CLIP stage-2 step throughput: cached caption embeddings vs the frozen LLM encoding captions online.

    python benchmarks/bench_llm2clip_cache.py [--quick] [--json bench_llm2clip_cache.json] [--repeats 3]
        [--encoder pypi:smollm2-135m-instruct] [--configs lit,full]

Both arms train the same ``experiment=llm2clip_s2_demo`` model on the same data in the same run of this script, each
as its own ``clipforge-train`` subprocess started the way a user starts it:

* ``cached`` — ``model.text_source=cache`` with ``data.train.text_embeddings`` = shards written beforehand by the
  caption-embedding job (``clipforge-generate experiment=llm2clip_embed_demo``, timed and reported separately:
  it is paid once per dataset and encoder); the LLM is not loaded at all (``model.text=null``, LLM2CLIP's "frozen
  and absent from the graph");
* ``online`` — ``model.text_source=online model.memoize_text=false``: the same frozen encoder embeds the sampled
  caption of every image at every step (the paper's "LLM in the loop" ablation).

The encoder is SmolLM2-135M-Instruct (``--encoder``: any LLM encoder folder / id / alias; the stage-1 SimCSE folder
has the same architecture and cost). Data: the 130 real COCO photos of ``../shared/data/coco-dev`` with their 5
captions (a random one per image per epoch, like training), global batch 32 with ``drop_last`` (4 steps = 128
samples per epoch), fp32, dataloader workers 0, no validation, logger or checkpoints.

Configurations (image side as in the demo and as in the paper):

* ``lit`` — the demo: frozen EfficientNet-Lite0 whose features are memoised by sample key
  (``model.cache_frozen_features=true``), so from the second epoch on a step is adapter + head + loss (+ the LLM
  forward in the online arm);
* ``full`` — the paper's image side: EfficientNet-Lite0 fully fine-tuned (``ablation/llm2clip=vision_full``:
  random resized crops, layer-wise lr decay 0.85), so every step also runs the vision tower forward and backward.

Measurement: bench_clip_train.py's in-process epoch timer (a Lightning callback injected with
``+callbacks.bench_timer``): steady-state samples/s over epochs 2..N (model loading, data indexing, the first
epoch — feature-cache filling — excluded), the share of time waiting for batches, the median step time; each run
also records the CPU other processes used meanwhile. Arms are interleaved in a rotating order, ``--repeats`` times;
medians are reported. The target is cached >= 5x online.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_clip_train import BATCH, COCO, run_one, timed_run_overrides  # noqa: E402  (same folder; shared timer and runner)

ENCODER = "pypi:smollm2-135m-instruct"
EMBEDDING_DIM = 576  # SmolLM2-135M hidden size


def _exe(name: str, module: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    return [str(exe)] if exe.exists() else [sys.executable, "-m", module]


def build_cache(tmp: Path, encoder: str, env: dict) -> tuple[Path, dict]:
    """Run the caption-embedding job over coco-dev's captions; return the shard folder and its timing."""
    out = tmp / "embed"
    cmd = _exe("clipforge-generate", "clipforge.cli.generate") + [
        "experiment=llm2clip_embed_demo",
        f"model.llm_encoder.name_or_path={encoder}",
        f"data.predict.path={COCO / 'annotations' / 'captions_train2017.json'}",
        "data.predict.text_only=true",
        "data.batch_size=32",
        "callbacks.shard_writer.dtype=float32",
        f"hydra.run.dir={out}",
    ]
    t0 = time.perf_counter()
    with open(tmp / "embed.log", "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"embedding job failed:\n{(tmp / 'embed.log').read_text()[-4000:]}")
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return out / "shards", {"wall_s": wall, **summary}


def train_cmd(config: str, arm: str, cache: Path, encoder: str, epochs: int, timer_out: Path) -> list[str]:
    cmd = _exe("clipforge-train", "clipforge.cli.train") + [
        "experiment=llm2clip_s2_demo",
        "~logger",
        "callbacks=none",
        "++callbacks.zero_shot=null",
        f"data.train.path={COCO / 'annotations' / 'captions_train2017.json'}",
        f"data.train.image_root={COCO / 'train2017'}",
        "data.holdout_fraction=0",
        f"data.batch_size={BATCH}",
        "data.num_workers=0",
        *timed_run_overrides(epochs, timer_out),
    ]
    if config == "full":
        cmd.append("ablation/llm2clip=vision_full")
    if arm == "cached":
        cmd += [
            "model.text_source=cache",
            "model.text=null",
            f"model.embedding_dim={EMBEDDING_DIM}",
            f"data.train.text_embeddings={cache}",
        ]
    else:
        cmd += [
            "model.text_source=online",
            "model.memoize_text=false",
            f"llm2clip_encoder={encoder}",
            "data.train.text_embeddings=null",
        ]
    return cmd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, 3 epochs")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--repeats", type=int, default=None, help="runs per (config, arm); default 3 (quick: 1)")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per run, the first excluded; default 4 (quick: 3)"
    )
    p.add_argument("--encoder", default=ENCODER, help="LLM encoder folder / HF id / pypi: alias")
    p.add_argument("--configs", default="lit,full", help="comma list of lit, full")
    p.add_argument(
        "--cache", help="existing embedding shards of coco-dev by --encoder (skips the embedding job)"
    )
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs) and print its path")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    epochs = args.epochs or (3 if args.quick else 4)
    configs = [c for c in args.configs.split(",") if c]

    tmp = Path(tempfile.mkdtemp(prefix="bench_llm2clip_cache_"))
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        CLIPFORGE_LOG_DIR=str(tmp / "cf_logs"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
    )
    results: dict = {
        "encoder": args.encoder,
        "batch": BATCH,
        "epochs": epochs,
        "repeats": repeats,
        "runs": {},
    }
    try:
        if args.cache:
            cache = Path(args.cache)
        else:
            cache, embed = build_cache(tmp, args.encoder, env)
            results["embedding_job"] = embed
            print(
                f"embedding job: {embed.get('captions', '?')} captions in {embed['wall_s']:.0f}s "
                f"(process wall clock, model loading included)",
                flush=True,
            )
        variants = [(c, a) for c in configs for a in ("cached", "online")]
        runs: dict[tuple, list[dict]] = {v: [] for v in variants}
        for rep in range(repeats):
            shift = rep % len(variants)
            for config, arm in variants[shift:] + variants[:shift]:
                run_dir = tmp / "runs" / f"{config}-{arm}-r{rep}"
                run_dir.mkdir(parents=True)
                timer = run_dir / "timer.json"
                cmd = train_cmd(config, arm, cache, args.encoder, epochs, timer)
                res = run_one(cmd, env, run_dir, timer, run_dir / "stdout.log")
                runs[(config, arm)].append(res)
                foreign = res["foreign_cpu_share"]
                print(
                    f"  [{rep + 1}/{repeats}] {config:4s} {arm:6s} {res['samples_per_s']:8.1f} samples/s, "
                    f"median step {1000 * res['median_step_s']:.0f} ms, data share {res['data_share']:.0%}"
                    + (f", other processes {foreign:.0%} CPU" if foreign is not None else ""),
                    flush=True,
                )
        print(
            f"\n{'config':6s} {'arm':7s} {'samples/s':>10s} {'median step (ms)':>17s} {'cached / online':>16s}"
        )
        for config in configs:
            med = {
                a: statistics.median(r["samples_per_s"] for r in runs[(config, a)])
                for a in ("cached", "online")
            }
            step = {
                a: statistics.median(r["median_step_s"] for r in runs[(config, a)])
                for a in ("cached", "online")
            }
            ratio = med["cached"] / med["online"]
            results["runs"][config] = {
                a: {"median_samples_per_s": med[a], "median_step_s": step[a], "runs": runs[(config, a)]}
                for a in ("cached", "online")
            }
            results["runs"][config]["speedup"] = ratio
            for a in ("cached", "online"):
                shown = f"{ratio:.1f}x" if a == "cached" else "1.0 (ref)"
                print(f"{config:6s} {a:7s} {med[a]:10.1f} {1000 * step[a]:17.0f} {shown:>16s}")
        foreign = [
            r["foreign_cpu_share"] for rs in runs.values() for r in rs if r["foreign_cpu_share"] is not None
        ]
        if foreign and max(foreign) > 0.05:
            print(f"warning: other processes used up to {max(foreign):.0%} of the CPU during a run")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
