"""Caption-embedding extraction throughput (captions/s) of an LLM encoder: the library call and the cache job.

    python benchmarks/bench_llm2clip_embed.py [--encoder pypi:smollm2-135m-instruct] [--captions 512]
        [--batch-size 32] [--repeats 3] [--threads 2] [--json bench_llm2clip_embed.json] [--skip-job]

Captions: the first ``--captions`` of ``../shared/data/coco-captions-text`` (real COCO captions, 5 per image).
Arms, all with the same encoder, batch size, fp32 and CPU threads, measured in this process after a warm-up batch:

* ``encode (length-sorted)`` — :meth:`LLMEncoder.encode`: captions sorted by length, so each batch pads to
  similar lengths (what LLM2Vec's ``encode``, used by LLM2CLIP's ``extract_embedding.py``, does too);
* ``encode (input order)`` — the same forward passes over batches in dataset order (a plain loop: tokenize a
  slice, run the model), i.e. what sorting saves;
* ``clipforge-generate`` — the resumable cache job (``experiment=llm2clip_embed_demo``: data layer, collator,
  tokenizer, encoder in length-sorted micro-batches of ``--batch-size`` captions within each batch of rows,
  ``pt`` shard writer), run as a subprocess twice, on ``N/2`` and ``N`` caption groups; the *marginal* rate
  ``(captions_N - captions_N/2) / (seconds_N - seconds_N/2)`` removes start-up and model loading.

Medians over ``--repeats``; ``os.getloadavg`` is recorded because the machine may be shared.
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

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "coco-captions-text" / "annotations" / "captions_val2017.json"


def load_captions(n: int) -> list[str]:
    """The first ``n`` captions of the COCO caption file, in file order."""
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec

    records, _ = read_records(DatasetSpec(path=str(DATA), text_only=True))
    return [c for r in records for c in r.captions][:n]


def time_sorted(encoder, captions: list[str], batch_size: int) -> float:
    start = time.perf_counter()
    encoder.encode(captions, batch_size=batch_size)
    return time.perf_counter() - start


@torch.no_grad()
def time_input_order(encoder, captions: list[str], batch_size: int) -> float:
    encoder.eval()
    start = time.perf_counter()
    for s in range(0, len(captions), batch_size):
        encoder(**encoder.tokenizer(captions[s : s + batch_size]))
    return time.perf_counter() - start


def time_job(encoder: str, groups: int, batch_size: int, threads: int) -> tuple[float, int]:
    """Wall seconds of one ``clipforge-generate`` run over the first ``groups`` caption groups, and its captions."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable, "-m", "clipforge.cli.generate", "experiment=llm2clip_embed_demo",
            f"model.llm_encoder.name_or_path={encoder}", f"++data.predict.limit={groups}",
            f"++data.eval_batch_size={2 * batch_size // 5}",
            f"model.micro_batch_size={batch_size}", f"paths.output_dir={out}", f"hydra.run.dir={out}",
            "trainer.accelerator=cpu",
        ]  # fmt: skip
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(threads),
            "HF_HUB_OFFLINE": "1",
            "PYTHONWARNINGS": "ignore",
        }
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
        seconds = time.perf_counter() - start
        summary = json.loads(Path(out, "summary.json").read_text())
    return seconds, int(summary["captions"])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder", default="pypi:smollm2-135m-instruct")
    p.add_argument("--captions", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-job", action="store_true", help="only the in-process arms")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from clipforge.models.llm_encoder import LLMEncoder

    encoder = LLMEncoder.from_pretrained(args.encoder)
    captions = load_captions(args.captions)
    encoder.encode(captions[: args.batch_size], batch_size=args.batch_size)  # warm-up
    arms = {"encode (length-sorted)": time_sorted, "encode (input order)": time_input_order}
    times: dict[str, list[float]] = {name: [] for name in arms}
    loads = []
    for _ in range(args.repeats):
        for name, fn in arms.items():
            times[name].append(fn(encoder, captions, args.batch_size))
            loads.append(os.getloadavg()[0])
    result = {
        "encoder": args.encoder,
        "captions": len(captions),
        "batch_size": args.batch_size,
        "threads": args.threads,
        "arms": {name: len(captions) / statistics.median(t) for name, t in times.items()},
        "load_average": statistics.median(loads),
    }
    if not args.skip_job:
        groups = max(2, args.captions // 5)
        runs = [time_job(args.encoder, g, args.batch_size, args.threads) for g in (groups // 2, groups)]
        (t1, c1), (t2, c2) = runs
        result["arms"]["clipforge-generate (marginal)"] = (c2 - c1) / max(t2 - t1, 1e-9)
        result["job_seconds"] = {"captions": [c1, c2], "seconds": [t1, t2]}
    for name, rate in result["arms"].items():
        print(f"{name:32s} {rate:8.1f} captions/s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
