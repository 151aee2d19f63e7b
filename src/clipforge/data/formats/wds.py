"""webdataset tar shards (img2dataset layout) indexed for random access, with sidecar column shards.

Each shard member ``{key}.{column}`` (``__key__`` = member path up to the first dot of its file name, as in
webdataset) becomes one column of sample ``key``: ``jpg|jpeg|png|webp|...`` is the image (kept as a
``TarMemberRef``: shard path, data offset, size — read later by seeking, so the dataset is map-style),
``txt`` the caption, ``json`` metadata merged into ``meta``. Shards must be uncompressed tars.

Sidecars are other shards holding extra columns for the same keys (``{key}.long_caption.txt``,
``{key}.clip_emb.npy``), joined by ``__key__``. A text column (name ending in ``txt``) can be selected as a
caption column with ``caption_fields`` (``long_caption`` or ``long_caption.txt``); unselected text columns go to
``meta`` as text, other columns as a ``{"tar", "offset", "size"}`` reference. A key that a sidecar lacks keeps
its row and its other captions; the missing column is a ``missing_sidecar`` error (source ``<sidecar>#<column>``).
"""

from __future__ import annotations

import json
import os
import re
import tarfile

from clipforge.data.captions import clean_captions
from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import RecordBuilder
from clipforge.data.records import ErrorRecord, TarMemberRef, jsonable
from clipforge.data.specs import expand_paths

_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif")
_COMPRESSED = (".gz", ".tgz", ".bz2", ".xz", ".zst")


def _is_inline(column: str) -> bool:
    """Small text columns read at index time (captions, metadata)."""
    return column.endswith("txt") or column.endswith("json")


def shard_files(paths: list[str], where: str) -> list[str]:
    """Tar files named by paths (folders contribute their ``*.tar``), rejecting compressed shards."""
    out: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            out.extend(sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(".tar")))
        else:
            out.append(p)
    for p in out:
        if p.endswith(_COMPRESSED):
            raise DataConfigError(
                f"{where}.path: {p}: compressed shards cannot be read by offset; use plain .tar"
            )
    if not out:
        raise DataConfigError(f"{where}.path: no .tar shards in {', '.join(paths)}")
    return out


def index_tar(path: str) -> dict[str, dict[str, bytes | TarMemberRef]]:
    """``{key: {column: content bytes (text/json columns) or TarMemberRef}}`` of one shard, in member order."""
    out: dict[str, dict[str, bytes | TarMemberRef]] = {}
    with tarfile.open(path, "r:") as tf:
        for member in tf:
            match = _KEY_EXT.match(member.name) if member.isfile() else None
            if match is None:
                continue
            key, column = match.group(1), match.group(2).lower()
            if _is_inline(column):
                value: bytes | TarMemberRef = tf.extractfile(member).read()
            else:
                value = TarMemberRef(path, member.offset_data, member.size)
            out.setdefault(key, {})[column] = value
    return out


def _caption_column(field: str, columns: dict) -> str:
    return field if field in columns or f"{field}.txt" not in columns else f"{field}.txt"


def read_wds(builder: RecordBuilder, paths: list[str], where: str) -> None:
    """Index the shards (and sidecars) of ``builder.spec`` into ``builder``."""
    spec = builder.spec
    samples: dict[str, dict] = {}
    shard_of: dict[str, str] = {}
    side_files = [
        shard_files(expand_paths(side), f"{where}.sidecars[{i}]") for i, side in enumerate(spec.sidecars)
    ]
    # sidecars may sit beside the main shards (same folder or glob): they are not samples
    exclude = {os.path.abspath(p) for files in side_files for p in files}
    for tar in shard_files(paths, where):
        if os.path.abspath(tar) in exclude:
            continue
        for key, cols in index_tar(tar).items():
            if key in samples:
                builder.errors.append(ErrorRecord(key, "duplicate_key", f"{tar}#{key}"))
                continue
            samples[key], shard_of[key] = cols, tar
    for side, files in zip(spec.sidecars, side_files):
        side_index: dict[str, dict] = {}
        for tar in files:
            for key, cols in index_tar(tar).items():
                side_index.setdefault(key, {}).update(cols)
        columns = sorted({c for cols in side_index.values() for c in cols})
        for key, cols in samples.items():
            extra = side_index.get(key, {})
            for col in columns:
                if col in extra:
                    cols.setdefault(col, extra[col])
                else:
                    builder.errors.append(ErrorRecord(key, "missing_sidecar", f"{side}#{col}"))
    for key, cols in samples.items():
        _add_sample(builder, key, cols, f"{shard_of[key]}#{key}", os.path.basename(shard_of[key]))


def _add_sample(builder: RecordBuilder, key: str, cols: dict, source: str, shard: str) -> None:
    spec = builder.spec
    image = None
    if not spec.text_only:
        img_col = spec.image_field or next((c for c in IMAGE_EXTS if c in cols), None)
        if img_col is None or img_col not in cols:
            builder.errors.append(ErrorRecord(key, "no_image", source))
            return
        image = cols[img_col]
    meta: dict = {"shard": shard}
    info: dict = {}
    if "json" in cols:
        try:
            info = json.loads(cols["json"].decode("utf-8", "surrogateescape"))
            meta.update(jsonable(info) if isinstance(info, dict) else {"json": jsonable(info)})
        except (json.JSONDecodeError, AttributeError):
            builder.errors.append(ErrorRecord(key, "malformed_json", f"{source}.json"))
    fields = spec.caption_fields or ["txt"]
    cap_cols = [_caption_column(f, cols) for f in fields]
    values = [cols.get(c) for c in cap_cols]
    if spec.caption_fields is None and "txt" not in cols and isinstance(info, dict):
        values = [info.get("caption")]  # img2dataset also stores the caption in the json
    used = set(cap_cols) | {"json"} | set(IMAGE_EXTS)
    for col, value in cols.items():
        if col in used:
            continue
        if isinstance(value, TarMemberRef):
            meta[col] = {"tar": value.tar, "offset": value.offset, "size": value.size}
        elif col.endswith("json"):
            try:
                meta[col] = jsonable(json.loads(value.decode("utf-8", "surrogateescape")))
            except json.JSONDecodeError:
                builder.errors.append(ErrorRecord(key, "malformed_json", f"{source}.{col}"))
        else:
            meta[col] = jsonable(value.decode("utf-8", "surrogateescape"))
    captions, errors = clean_captions(values, key, source, builder.max_chars)
    builder.errors.extend(errors)
    builder.merge(key, image, captions, meta, source)
