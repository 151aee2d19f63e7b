"""Labelled pairs for measuring an enhancer's filtering ability (paper §4.1): does its overall score rank an
image's true caption above a mismatched or degraded one?

Each image of a source (e.g. the photos held out from the enhancer's training) gives one row with its first true
caption (``label: 1``) and one row per negative kind (``label: 0``; ``other_image`` = a caption of another image of
the same source). The JSONL feeds the scoring job, which then reports the ROC AUC overall and per kind::

    clipforge eval-pairs --path coco.json --split val --val_fraction 0.3 --out pairs.jsonl
    clipforge generate experiment=enhance_score_demo model.model_path=<aitqe> data.predict.path=pairs.jsonl \\
        data.predict.image_root=null model.label_field=label

Design notes: docs/design/enhance.md#measuring-filtering.
"""

from __future__ import annotations

import dataclasses
import os
import random
from collections.abc import Sequence

from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.tasks.enhance.negatives import KINDS, NegativeGenerator

__all__ = ["build_eval_pairs"]


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
