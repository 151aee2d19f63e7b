"""Labelled pairs for measuring an enhancer's filtering ability (paper §4.1): does its overall score rank an
image's true caption above a mismatched or degraded one?

Each image of a source (e.g. the photos held out from the enhancer's training) gives one row with its first true
caption (``label: 1``) and one row per negative kind (``label: 0``; ``other_image`` = a caption of another image of
the same source). The JSONL feeds the scoring job, which then reports the ROC AUC overall and per kind::

    python -m clipforge.tasks.enhance.eval_pairs --path coco.json --split val --val_fraction 0.3 --out pairs.jsonl
    clipforge-generate experiment=enhance_score_demo model.model_path=<aitqe> data.predict.path=pairs.jsonl \\
        data.predict.image_root=null model.label_field=label

Design notes: docs/design/enhance.md#measuring-filtering.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
from collections.abc import Sequence

from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.tasks.enhance.negatives import KINDS, NegativeGenerator
from clipforge.tasks.enhance.outputs import write_jsonl

__all__ = ["build_eval_pairs", "main"]


def build_eval_pairs(
    spec: DatasetSpec,
    kinds: Sequence[str] = ("other_image",),
    instances_path: str | None = None,
    seed: int = 0,
) -> list[dict]:
    """Rows ``{key, image, caption, label, kind}``: each image's first caption and one negative per kind.

    Args:
        spec: the source (with its split); its images must be files.
        kinds: negative kinds (:data:`~clipforge.tasks.enhance.negatives.KINDS`); a kind that does not apply to
            a caption is skipped for that image.
        instances_path: COCO instances file (object labels for ``swap_object``).
        seed: seed of the negatives.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown kinds {sorted(unknown)}; known: {KINDS}")
    records, _ = read_records(spec, where="eval_pairs")
    pool = dataclasses.replace(spec, text_only=True, limit=None)
    negatives = NegativeGenerator(instances_path, pool, kinds=dict.fromkeys(kinds, 1.0))
    rows = []
    for record in records:
        if not isinstance(record.image, str) or not record.captions:
            continue
        rng = random.Random(f"{seed}:{record.key}")
        base = {"image": os.path.abspath(record.image)}
        caption = record.captions[0]
        rows.append({"key": f"{record.key}#true", **base, "caption": caption, "label": 1, "kind": "true"})
        for kind in kinds:
            made = negatives.negative(record.key, caption, record.captions, record.meta, rng, kind=kind)
            if made is not None:
                rows.append(
                    {"key": f"{record.key}#{kind}", **base, "caption": made.caption, "label": 0, "kind": kind}
                )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Write the labelled pairs of a source as JSONL."""
    p = argparse.ArgumentParser(
        prog="python -m clipforge.tasks.enhance.eval_pairs", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--path", required=True, help="dataset file / folder (any format the data layer reads)")
    p.add_argument("--image_root", default=None)
    p.add_argument(
        "--split", choices=("train", "val"), default=None, help="keep one side of the key-hash split"
    )
    p.add_argument(
        "--val_fraction", type=float, default=0.0, help="the split's held-out fraction (holdout_fraction)"
    )
    p.add_argument("--kinds", nargs="+", default=["other_image"], choices=KINDS)
    p.add_argument("--instances", default=None, help="COCO instances JSON (object labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    spec = DatasetSpec(
        path=args.path, image_root=args.image_root, split=args.split, val_fraction=args.val_fraction
    )
    rows = build_eval_pairs(spec, args.kinds, args.instances, args.seed)
    n = write_jsonl(rows, args.out)
    print(
        f"{args.out}: {n} pairs ({sum(r['label'] for r in rows)} true) from {len({r['image'] for r in rows})} images"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
