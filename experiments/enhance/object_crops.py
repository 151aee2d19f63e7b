"""Object-crop verdict data: many more distinct (image, caption, verdict) triples from the same training photos.

    python experiments/enhance/object_crops.py --out /tmp/clipforge-runs/crops
    clipforge train experiment=enhance_train_demo data.train.path=/tmp/clipforge-runs/crops/train.jsonl \\
        data.train.image_root=null ...

The enhancer has ~100 training photos, too few to learn whether a caption matches a photo. COCO's instance boxes
give each photo several labelled objects: every box of at least ``--min_side`` pixels on the training side of the
split (the same key hash as every stage; held-out photos are never cropped) becomes a crop with a minimal pair of
annotated rows: ``"A photo of a <its category>."`` (overall 8) and ``"A photo of a <a category absent from the
photo>."`` (overall 2, recaption = the true one). Same crop, same sentence frame, opposite verdicts: only the image
tells them apart. The output JSONL also holds every caption of every training photo as a plain row (the SFT
formatter turns those into graded positives / offline negatives as usual), so one file trains both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import defaultdict

from PIL import Image

from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.tasks.enhance.outputs import write_jsonl
from clipforge.tasks.enhance.vocabulary import COCO_CATEGORIES

POSITIVE = {"text_quality": 8, "image_text_matching": 9, "object_detail": 7, "semantic_understanding": 7}
NEGATIVE = {"text_quality": 8, "image_text_matching": 1, "object_detail": 1, "semantic_understanding": 1}


def article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--captions", default="../shared/data/coco-dev/annotations/captions_train2017.json")
    p.add_argument("--instances", default="../shared/data/coco-dev/annotations/instances_train2017.json")
    p.add_argument("--image_root", default="../shared/data/coco-dev/train2017")
    p.add_argument("--val_fraction", type=float, default=0.3)
    p.add_argument("--min_side", type=int, default=48)
    p.add_argument("--max_per_photo", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    spec = DatasetSpec(path=a.captions, image_root=a.image_root, split="train", val_fraction=a.val_fraction)
    records, _ = read_records(spec, where="object_crops")
    with open(a.instances, encoding="utf-8") as f:
        inst = json.load(f)
    names = {c["id"]: c["name"] for c in inst["categories"]}
    boxes = defaultdict(list)
    for ann in inst["annotations"]:
        boxes[str(ann["image_id"])].append((ann["bbox"], names[ann["category_id"]]))
    os.makedirs(os.path.join(a.out, "crops"), exist_ok=True)
    rng = random.Random(a.seed)
    rows, crops = [], 0
    for record in records:
        image_id = str(record.meta.get("image_id", record.key))
        for caption in record.captions:
            rows.append(
                {
                    "key": record.key,
                    "image": os.path.abspath(record.image),
                    "caption": caption,
                    "image_id": image_id,
                }
            )
        present = {name for _, name in boxes.get(image_id, [])}
        big = [(b, n) for b, n in boxes.get(image_id, []) if min(b[2], b[3]) >= a.min_side]
        big.sort(key=lambda bn: -bn[0][2] * bn[0][3])
        if not big:
            continue
        photo = Image.open(record.image).convert("RGB")
        for k, ((x, y, w, h), name) in enumerate(big[: a.max_per_photo]):
            pad_w, pad_h = 0.1 * w, 0.1 * h
            box = (
                max(0, x - pad_w),
                max(0, y - pad_h),
                min(photo.width, x + w + pad_w),
                min(photo.height, y + h + pad_h),
            )
            path = os.path.abspath(os.path.join(a.out, "crops", f"{record.key}_{k}.jpg"))
            photo.crop(tuple(int(v) for v in box)).save(path, quality=92)
            crops += 1
            true = f"A photo of {article(name)}."
            other = rng.choice([c for c in COCO_CATEGORIES if c not in present])
            base = {"image": path, "image_id": f"{image_id}_crop{k}"}
            rows.append(
                {
                    "key": f"{record.key}_crop{k}_true",
                    **base,
                    "caption": true,
                    "overall": 8,
                    "scores": POSITIVE,
                    "kind": "crop_true",
                }
            )
            rows.append(
                {
                    "key": f"{record.key}_crop{k}_other",
                    **base,
                    "caption": f"A photo of {article(other)}.",
                    "overall": 2,
                    "scores": NEGATIVE,
                    "recaption": true,
                    "kind": "crop_other",
                }
            )
    write_jsonl(rows, os.path.join(a.out, "train.jsonl"))
    print(f"{a.out}/train.jsonl: {len(rows)} rows ({crops} crops of {len(records)} training photos)")


if __name__ == "__main__":
    main()
