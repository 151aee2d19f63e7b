"""``clipforge eval-pairs``: labelled caption pairs of a source, to measure an enhancer's filtering ability.

clipforge eval-pairs --path coco.json --split val --val_fraction 0.3 [--kinds other_image shuffle] --out pairs.jsonl
clipforge generate experiment=enhance_score_demo model.model_path=<aitqe> data.predict.path=pairs.jsonl \\
    data.predict.image_root=null model.label_field=label

Each image gives its first true caption (``label: 1``) and one negative per kind (``label: 0``;
:func:`clipforge.tasks.enhance.eval_pairs.build_eval_pairs`); the scoring job then reports the ROC AUC overall
and per kind.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from clipforge.data.specs import DatasetSpec
from clipforge.tasks.enhance.eval_pairs import build_eval_pairs
from clipforge.tasks.enhance.negatives import KINDS
from clipforge.tasks.enhance.outputs import write_jsonl

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The source and its split, the negative kinds, the output file."""
    p = argparse.ArgumentParser(
        prog="clipforge eval-pairs", description="Write true / negative caption pairs of a source as JSONL."
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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Write the labelled pairs of a source as JSONL; print how many."""
    args = build_parser().parse_args(argv)
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
