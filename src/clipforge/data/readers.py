"""``read_records(spec)``: any supported source -> records + error records, split and limited.

Format detection (``format="auto"``), first match wins:

- ``path`` ``demo`` / ``synthetic`` -> the built-in sets;
- a folder with ``dataset_info.json`` / ``state.json`` / ``dataset_dict.json`` -> ``hf`` (``load_from_disk``);
- ``.tar`` files, or a folder holding them -> ``wds``; ``.parquet`` (or a folder of them) -> ``parquet``;
  ``.jsonl`` / ``.ndjson`` (or a folder of them) -> ``jsonl``; ``.csv`` / ``.tsv`` -> ``hf`` (``load_dataset``);
- ``.json``, by content: a dict with ``images`` + ``annotations`` -> ``coco``; a list whose first record has a
  list ``caption`` (LAVIS) or a dict whose ``images`` carry ``sentences`` (Karpathy's original) -> ``karpathy``;
  any other list of records -> ``json``; a file of one JSON object per line -> ``jsonl``.
"""

from __future__ import annotations

import json
import logging
import os

from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import DEFAULT_KEY_FIELDS, RecordBuilder
from clipforge.data.records import ErrorRecord, Record
from clipforge.data.specs import DatasetSpec, check_paths
from clipforge.data.split import select_split

log = logging.getLogger("clipforge.data")

_EXT_FORMATS = {
    ".tar": "wds",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "hf",
    ".tsv": "hf",
}
_FOLDER_EXTS = {"jsonl": (".jsonl", ".ndjson"), "parquet": (".parquet",), "json": (".json",)}


def _json_format(path: str, where: str) -> tuple[str, object]:
    from clipforge.data.formats.tabular import load_json

    try:
        data = load_json(path)
    except json.JSONDecodeError as e:
        with open(path, "rb") as f:
            first = f.readline().strip()
        try:
            if isinstance(json.loads(first.decode("utf-8", "surrogateescape")), dict):
                return "jsonl", None
        except json.JSONDecodeError:
            pass
        raise DataConfigError(f"{where}.path: {path}: not valid JSON ({e})") from e
    if isinstance(data, dict) and "images" in data and "annotations" in data:
        return "coco", data
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        return "karpathy", data
    if isinstance(data, list):
        first = next((r for r in data if isinstance(r, dict)), {})
        return ("karpathy" if isinstance(first.get("caption"), list) and "image" in first else "json"), data
    raise DataConfigError(f"{where}.path: {path}: a JSON dict that is neither COCO nor Karpathy; set format")


def _detect(spec: DatasetSpec, paths: list[str], where: str) -> tuple[str, object]:
    """(format, parsed JSON of the first file when it had to be read to tell)."""
    from clipforge.data.formats.hf import is_saved_dataset

    if spec.builtin:
        return spec.builtin, None
    if spec.format != "auto":
        return spec.format, None
    if len(paths) == 1 and os.path.isdir(paths[0]):
        folder = paths[0]
        if is_saved_dataset(folder):
            return "hf", None
        exts = {os.path.splitext(f)[1].lower() for f in os.listdir(folder)}
        for ext in (".tar", ".parquet", ".jsonl", ".ndjson"):
            if ext in exts:
                return _EXT_FORMATS[ext], None
        raise DataConfigError(f"{where}.path: cannot tell the format of folder {folder}; set {where}.format")
    exts = {os.path.splitext(p)[1].lower() for p in paths}
    if len(exts) > 1:
        raise DataConfigError(f"{where}.path: mixed file types {sorted(exts)}; one format per spec")
    ext = exts.pop()
    if ext in _EXT_FORMATS:
        return _EXT_FORMATS[ext], None
    if ext == ".json":
        return _json_format(paths[0], where)
    raise DataConfigError(f"{where}.path: cannot tell the format of {paths[0]}; set {where}.format")


def detect_format(spec: DatasetSpec, where: str = "spec") -> str:
    """The format ``read_records`` would use for ``spec`` (checks paths; may parse a ``.json`` file)."""
    return _detect(spec, check_paths(spec, where), where)[0]


def _files(paths: list[str], fmt: str) -> list[str]:
    """Folders of row files -> their files (sorted, non-recursive)."""
    out = []
    for p in paths:
        if os.path.isdir(p) and fmt in _FOLDER_EXTS:
            out.extend(
                sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(_FOLDER_EXTS[fmt]))
            )
        else:
            out.append(p)
    return out


def read_source(
    spec: DatasetSpec, max_caption_chars: int = 2000, require_captions: bool = True, where: str = "spec"
) -> tuple[list[Record], list[ErrorRecord]]:
    """Every record of the source, before ``split`` and ``limit`` (see :func:`read_records`)."""
    from clipforge.data.formats import coco, hf, tabular, wds

    paths = check_paths(spec, where)
    fmt, parsed = _detect(spec, paths, where)
    if fmt in ("demo", "synthetic"):
        from clipforge.data.demo import demo_records
        from clipforge.data.synthetic import synthetic_records

        records = demo_records() if fmt == "demo" else synthetic_records(spec.limit or 64)
        if spec.text_only:
            records = [Record(r.key, None, r.captions, r.meta, r.sources) for r in records]
        return records, []
    files = _files(paths, fmt)
    base_dir = os.path.dirname(os.path.abspath(files[0])) if files else os.getcwd()
    key_fields = () if fmt == "karpathy" else DEFAULT_KEY_FIELDS
    builder = RecordBuilder(spec, base_dir, max_caption_chars, key_fields)
    if fmt == "coco":
        coco.read_coco(builder, files, where, parsed)
    elif fmt in ("json", "karpathy"):
        tabular.read_json(builder, files, where, parsed)
    elif fmt == "jsonl":
        tabular.read_jsonl(builder, files)
    elif fmt == "parquet":
        tabular.read_parquet(builder, files)
    elif fmt == "wds":
        wds.read_wds(builder, paths, where)
    else:
        hf.read_hf(builder, paths, where)
    return builder.finish(require_captions)


def select(
    records: list[Record], errors: list[ErrorRecord], spec: DatasetSpec
) -> tuple[list[Record], list[ErrorRecord]]:
    """Apply the spec's split (records and errors alike, by key) and ``limit`` (records only)."""
    records, errors = select_split(records, spec), select_split(errors, spec)
    if spec.limit is not None:
        records = records[: spec.limit]
    return records, errors


def read_records(
    spec: DatasetSpec, max_caption_chars: int = 2000, require_captions: bool = True, where: str = "spec"
) -> tuple[list[Record], list[ErrorRecord]]:
    """Read a dataset spec into records (one per image / caption group) and error records.

    Args:
        spec: what to read (format, columns, split, limit).
        max_caption_chars: captions longer than this are dropped (``caption_too_long``).
        require_captions: a record left without a valid caption is a ``no_valid_caption`` error; ``False``
            keeps it (captioning jobs that only need images).
        where: config location of the spec for error messages (``data.train``).

    Returns:
        ``(records, errors)``; records keep source order, split and limit applied.

    Raises:
        DataConfigError: a path that does not exist, or a source whose layout cannot be read.
    """
    records, errors = read_source(spec, max_caption_chars, require_captions, where)
    return select(records, errors, spec)
