"""Score the captions of a ``clipforge generate`` table against the rows' human captions.

For every captioner slot: BLEU-1..4 and CIDEr (coco-caption's CIDEr-D, :mod:`clipforge.eval.captions`) of the
post-processed, unsheared caption (``<slot>_raw``) against the row's human captions (``captions``), and the mean
LiT image-text score (cosine) of the caption under a trained clipforge CLIP/LiT checkpoint; the human captions'
own LiT score is the reference row.

    python experiments/recap/score_captions.py <run>/predictions.jsonl --lit <lit run>/checkpoints/last.ckpt \\
        --slots label_llm nearest retrieval --json scores.json
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from PIL import Image

from clipforge.eval.captions import caption_metrics
from clipforge.tasks.recap.retrieval import load_lit


@torch.inference_mode()
def lit_scores(lit, images: list[Image.Image], texts: list[str], batch: int = 64) -> list[float]:
    """Cosine of each (image, text) pair under the LiT module."""
    transform = lit.image_transform(False)
    out: list[float] = []
    for s in range(0, len(images), batch):
        img = lit.encode_image(torch.stack([transform(im) for im in images[s : s + batch]]))
        txt = lit.encode_text(lit.tokenizer(texts[s : s + batch]))
        out.extend((img * txt).sum(-1).tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("table", help="predictions.jsonl of a clipforge generate run")
    ap.add_argument(
        "--lit", required=True, help="CLIP/LiT checkpoint (.ckpt or run folder) for the image-text score"
    )
    ap.add_argument("--slots", nargs="+", required=True, help="captioner slots to score")
    ap.add_argument("--json", help="write the scores here")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.table) if line.strip()]
    refs = {r["key"]: r["captions"] for r in rows}
    images = [Image.open(r["image"]).convert("RGB") for r in rows]
    lit = load_lit(args.lit)
    human = [
        statistics.mean(lit_scores(lit, [im] * len(r["captions"]), r["captions"]))
        for im, r in zip(images, rows)
    ]
    results = {"rows": len(rows), "human": {"LiT": statistics.mean(human)}}
    for slot in args.slots:
        hyps = {r["key"]: r[f"{slot}_raw"] for r in rows}
        scores = caption_metrics(refs, hyps)
        scores["LiT"] = statistics.mean(lit_scores(lit, images, [hyps[r["key"]] for r in rows]))
        scores["mean_words"] = statistics.mean(len(h.split()) for h in hyps.values())
        results[slot] = scores
    print(f"{len(rows)} images, {sum(len(v) for v in refs.values())} human captions")
    print("| captioner | BLEU-4 | CIDEr | LiT score | words |")
    print("|---|---:|---:|---:|---:|")
    for slot in args.slots:
        s = results[slot]
        print(
            f"| `{slot}` | {100 * s['BLEU-4']:.1f} | {100 * s['CIDEr']:.1f} | {s['LiT']:.3f} | {s['mean_words']:.1f} |"
        )
    print(f"| human captions (mean of 5) | — | — | {results['human']['LiT']:.3f} | |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
