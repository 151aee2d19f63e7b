"""AITQE scoring throughput: the batched scoring job vs the official one-pair-per-call loop, same model; and what
stopping at ``<Overall>`` saves over ``output_all``.

    PYTHONPATH=. python benchmarks/bench_enhance_score.py --model_path <enhance_train_demo run>/aitqe \\
        [--pairs 32 --captions-per-photo 1 --batch-sizes 8 16 32 --repeats 2 --threads 2 --json out.json]

Pairs: ``--pairs`` pairs of ``../shared/data/coco-dev`` photos, ``--captions-per-photo`` consecutive ones per photo
(1: 32 photos; 5: a captioned dataset's shape, 5 captions of each photo), every other one with another photo's
caption, so both weak and good pairs (and answers with and without a Recaption) occur.

* ``official``: the seed's ``eval_single_node`` per pair: open the image, build the official prompt, one greedy
  ``generate`` (batch 1, ``stop_strings=["<Overall>"]``), decode, parse (:func:`clipforge.cli.aitqe.evaluate_pair`).
* ``batched B``: what ``EnhanceScoreModule.predict_step`` runs per batch of B pairs: open and transform each distinct
  photo once, one vision-tower pass per photo, one left-padded greedy decoding batch in which each pair leaves when
  its answer ends (``greedy_decode``), decode, parse.

Both include image decoding and parsing and exclude model loading; each repeat times every configuration once after
one warm-up call, and the figure is the median pairs/s over repeats. Greedy decoding with a correct attention mask
gives the same answers at any batch size: the script counts the parsed results that differ from the official loop's.

Stop vs ``output_all``: the cost of an answer is its length. The seed's example output (the README's ``--output_all``
answer) is tokenized with the model's tokenizer: the default mode generates the tokens up to ``<Overall>``, the full
mode all of them. Generation of exactly that many tokens (``min_new_tokens = max_new_tokens``) is timed at batch 1
and at the largest batch size, so the figure holds for any model of this size writing the official answer.
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

ROOT = Path(__file__).resolve().parents[1]


def coco_pairs(n: int, per_photo: int = 1) -> list[tuple[str, str]]:
    """``n`` (image path, caption) pairs of coco-dev, ``per_photo`` consecutive pairs per photo: pair ``m`` of
    photo ``i`` has the photo's caption ``j`` (``j = m % 5``), or caption ``j`` of photo ``i + 1`` when ``m`` is
    odd."""
    from clipforge.data.readers import read_records
    from clipforge.data.specs import DatasetSpec

    data = Path(os.environ.get("CLIPFORGE_DATA_DIR", ROOT.parent / "shared" / "data")) / "coco-dev"
    spec = DatasetSpec(
        path=str(data / "annotations" / "captions_train2017.json"), image_root=str(data / "train2017")
    )
    records, _ = read_records(spec)
    return [
        (records[m // per_photo].image, records[m // per_photo + (m % 2)].captions[m % per_photo % 5])
        for m in range(n)
    ]


def official(vlm, pairs) -> tuple[float, list]:
    from clipforge.cli.aitqe import evaluate_pair
    from clipforge.data.images import load_image

    t0 = time.perf_counter()
    out = [evaluate_pair(vlm, load_image(path), caption, path) for path, caption in pairs]
    return time.perf_counter() - t0, out


def batched(module, pairs, batch_size: int) -> tuple[float, list]:
    """The scoring job's work per batch: each distinct photo of the batch opened and transformed once."""
    from clipforge.data.images import load_image

    transform = module.image_transform(False)
    t0 = time.perf_counter()
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        paths = list(dict.fromkeys(path for path, _ in chunk))
        images = torch.stack([transform(load_image(path)) for path in paths])
        index = [paths.index(path) for path, _ in chunk]
        out += [r for r, _expected in module.score(images, [caption for _, caption in chunk], index)]
    return time.perf_counter() - t0, out


def forced_length(vlm, n_tokens: int, batch_size: int, pairs) -> float:
    """Seconds per pair to generate exactly ``n_tokens`` for ``batch_size`` pairs at once."""
    from clipforge.data.images import load_image
    from clipforge.tasks.enhance.prompt import build_prompt

    chunk = (pairs * batch_size)[:batch_size]
    images = [load_image(path) for path, _ in chunk]
    inputs = vlm.prepare_generation(images, [build_prompt(c) for _, c in chunk])
    t0 = time.perf_counter()
    vlm.generate(**inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, num_beams=1)
    return (time.perf_counter() - t0) / batch_size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model_path", required=True, help="an AITQE-format folder (enhance_train_demo's <run>/aitqe)"
    )
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument(
        "--captions-per-photo", type=int, default=1, help="pairs per photo (a captioned dataset: 5)"
    )
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--no-lengths", action="store_true", help="skip the stop vs output_all timing")
    p.add_argument("--dtype", default=None, help="load the model in this dtype (both paths), e.g. bfloat16")
    p.add_argument("--vision-chunk-size", type=int, default=None, help="images per tower call (batched path)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from tests.unit.test_enhance_parse import SEED_OUTPUT

    from clipforge.tasks.enhance.prompt import OVERALL_MARKER
    from clipforge.tasks.enhance.scorer import EnhanceScoreModule

    module = EnhanceScoreModule(
        model_path=args.model_path, dtype=args.dtype, vision_chunk_size=args.vision_chunk_size
    )
    module.configure_model()
    vlm = module.vlm
    pairs = coco_pairs(args.pairs, args.captions_per_photo)
    with torch.inference_mode():
        official(vlm, pairs[:1])  # warm-up
        batched(module, pairs[:2], 2)
        times: dict[str, list[float]] = {"official": []} | {f"batched_{b}": [] for b in args.batch_sizes}
        results: dict[str, list] = {}
        for r in range(args.repeats):
            names = list(times)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                if name == "official":
                    seconds, out = official(vlm, pairs)
                else:
                    seconds, out = batched(module, pairs, int(name.split("_")[1]))
                times[name].append(len(pairs) / seconds)
                results[name] = [(o.overall, o.recaption) for o in out]
        tok = vlm.tokenizer
        n_stop = len(
            tok(
                SEED_OUTPUT[: SEED_OUTPUT.index(OVERALL_MARKER) + len(OVERALL_MARKER)],
                add_special_tokens=False,
            )["input_ids"]
        )
        n_all = len(tok(SEED_OUTPUT, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        big = max(args.batch_sizes)
        length = {
            f"{mode}_b{b}": statistics.median(forced_length(vlm, n, b, pairs) for _ in range(args.repeats))
            for mode, n in (("stop", n_stop), ("all", n_all))
            for b in (1, big)
            if not args.no_lengths
        }
    rate = {k: statistics.median(v) for k, v in times.items()}
    mismatches = {
        k: sum(a != b for a, b in zip(v, results["official"])) for k, v in results.items() if k != "official"
    }
    report = {
        "model_path": args.model_path,
        "pairs": len(pairs),
        "photos": len({path for path, _ in pairs}),
        "threads": args.threads,
        "dtype": args.dtype or "checkpoint's",
        "vision_chunk_size": args.vision_chunk_size,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "pairs_per_s": rate,
        "speedup_vs_official": {k: v / rate["official"] for k, v in rate.items() if k != "official"},
        "results_differing_from_official": mismatches,
        "answer_tokens": {"stop_at_overall": n_stop, "output_all": n_all},
        "seconds_per_pair": length,
        "stop_saving": {f"b{b}": 1 - length[f"stop_b{b}"] / length[f"all_b{b}"] for b in (1, big) if length},
        "answers_with_recaption": {k: sum(o[1] is not None for o in v) for k, v in results.items()},
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
