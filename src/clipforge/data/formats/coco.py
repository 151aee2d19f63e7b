"""COCO captions JSON (``images`` + ``annotations``): one record per image with all of its captions.

Key = ``str(image id)``; image = ``image_root / file_name`` (default root: the annotation file's folder);
``meta`` = the image entry (``image_id``, ``file_name``, ``width``, ``height``, licence and URLs). Images are listed
in file order; annotations of an unknown image id are ``unknown_image_id`` errors.
"""

from __future__ import annotations

from clipforge.data.captions import clean_captions
from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import RecordBuilder
from clipforge.data.formats.tabular import load_json
from clipforge.data.records import ErrorRecord, jsonable


def read_coco(builder: RecordBuilder, paths: list[str], where: str, parsed: object = None) -> None:
    """Read COCO caption files into ``builder`` (caption field: ``caption`` unless ``caption_fields`` says)."""
    spec = builder.spec
    fields = spec.caption_fields or ["caption"]
    for n, path in enumerate(paths):
        data = parsed if (n == 0 and parsed is not None) else load_json(path)
        if not (isinstance(data, dict) and "images" in data and "annotations" in data):
            raise DataConfigError(f"{where}.path: {path}: not a COCO file (needs 'images' and 'annotations')")
        by_image: dict[object, list] = {img["id"]: [] for img in data["images"]}
        for ann in data["annotations"]:
            image_id = ann.get("image_id")
            if image_id not in by_image:
                builder.errors.append(
                    ErrorRecord(str(image_id), "unknown_image_id", f"{path}#ann{ann.get('id')}")
                )
                continue
            by_image[image_id].append(ann)
        for img in data["images"]:
            key, source = str(img["id"]), f"{path}#image{img['id']}"
            image = None
            if not spec.text_only:
                image, reason = builder.resolve_image(img.get("file_name"))
                if reason:
                    builder.errors.append(ErrorRecord(key, reason, source))
                    continue
            captions = []
            for ann in by_image[img["id"]]:
                good, errors = clean_captions(
                    [ann.get(f) for f in fields], key, f"{path}#ann{ann.get('id')}", builder.max_chars
                )
                captions.extend(good)
                builder.errors.extend(errors)
            meta = {"image_id": jsonable(img["id"]), **{k: jsonable(v) for k, v in img.items() if k != "id"}}
            builder.merge(key, image, captions, meta, source)
