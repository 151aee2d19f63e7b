"""``clipforge data``: data preparation helpers.

clipforge data inspect <path> [--image-root DIR] [--format auto] [--check-images]
    rows, captions and per-reason error counts of any source the data layer reads
clipforge data split-coco <captions.json> --val-fraction 0.3 [--seed 0] [--out-dir DIR]
    two COCO files (<stem>_train.json, <stem>_val.json) split by the same stable hash of the image id that
    `holdout_fraction` uses, so a model trained on one can be evaluated on the other
clipforge data sidecars <pt cache folder> <image shards> --columns shortsv_captions,longsv_captions [--out-dir DIR]
    the embedding job's cache as LLM2CLIP sidecars: X_text_embeddings.tar beside (or in DIR for) each shard X.tar,
    members {key}.{column} of raw float32 in the shard's sample order (the official training code's layout)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

from clipforge.data.errors import DataConfigError, ImageLoadError
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.data.split import key_fraction


def inspect_source(
    path: str, image_root: str | None, fmt: str, check_images: bool, text_only: bool = False
) -> dict:
    """Counts of rows, captions and errors (by reason); ``check_images`` also decodes every image."""
    from clipforge.data.images import load_image  # imports torch: not for --help

    spec = DatasetSpec(path=path, format=fmt, image_root=image_root, text_only=text_only)
    records, errors = read_records(spec, where="inspect")
    reasons = collections.Counter(e.reason for e in errors)
    if check_images:
        for r in records:
            if r.image is None:
                continue
            try:
                load_image(r.image)
            except ImageLoadError as e:
                reasons[e.reason] += 1
    return {
        "rows": len(records),
        "captions": sum(len(r.captions) for r in records),
        "errors": dict(sorted(reasons.items())),
    }


def split_coco(path: str, val_fraction: float, seed: int = 0, out_dir: str | None = None) -> tuple[str, str]:
    """Write ``<stem>_train.json`` and ``<stem>_val.json``; returns their paths."""
    with open(path) as f:
        coco = json.load(f)
    is_val = {img["id"]: key_fraction(str(img["id"]), seed) < val_fraction for img in coco["images"]}
    stem = os.path.splitext(os.path.basename(path))[0]
    out_dir = out_dir or os.path.dirname(os.path.abspath(path))
    os.makedirs(out_dir, exist_ok=True)
    outputs = []
    for side, want in (("train", False), ("val", True)):
        part = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
        part["images"] = [i for i in coco["images"] if is_val[i["id"]] == want]
        part["annotations"] = [a for a in coco["annotations"] if is_val.get(a["image_id"]) == want]
        out = os.path.join(out_dir, f"{stem}_{side}.json")
        with open(out + ".tmp", "w") as f:
            json.dump(part, f)
        os.replace(out + ".tmp", out)
        outputs.append(out)
        print(f"{out}: {len(part['images'])} images, {len(part['annotations'])} captions")
    return outputs[0], outputs[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="clipforge data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="count rows, captions and bad input of a source")
    p.add_argument("path")
    p.add_argument("--image-root", default=None)
    p.add_argument("--format", default="auto")
    p.add_argument("--text-only", action="store_true")
    p.add_argument("--check-images", action="store_true", help="decode every image (slow on big sets)")
    s = sub.add_parser("split-coco", help="split a COCO captions file into train/val files by image id")
    s.add_argument("path")
    s.add_argument("--val-fraction", type=float, required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out-dir", default=None)
    c = sub.add_parser("sidecars", help="write an embedding cache as LLM2CLIP *_text_embeddings.tar sidecars")
    c.add_argument("cache", help="folder of the embedding job's pt shards")
    c.add_argument("shards", help="image shards (file, folder, glob or brace pattern)")
    c.add_argument(
        "--columns", required=True, help="comma-separated caption fields, in the cache's caption order"
    )
    c.add_argument("--out-dir", default=None)
    a = parser.parse_args(argv)
    try:
        if a.command == "inspect":
            print(
                json.dumps(
                    inspect_source(a.path, a.image_root, a.format, a.check_images, a.text_only), indent=2
                )
            )
        elif a.command == "sidecars":
            from clipforge.data.embeddings import write_sidecar_tars
            from clipforge.data.streaming import shard_urls

            shards = shard_urls(DatasetSpec(path=a.shards, streaming=True), "sidecars")
            paths, errors = write_sidecar_tars(a.cache, shards, a.columns.split(","), a.out_dir)
            print(json.dumps({"sidecars": len(paths), "missing_text_embedding": len(errors)}))
        else:
            split_coco(a.path, a.val_fraction, a.seed, a.out_dir)
    except DataConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
