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

A cut, corrupt or repeated member never stops the reader: see :func:`index_tar` for the error records.
"""

from __future__ import annotations

import json
import os
import re
import tarfile

from clipforge.data.captions import clean_captions
from clipforge.data.errors import DataConfigError
from clipforge.data.formats.rows import RecordBuilder
from clipforge.data.records import RAW, ErrorRecord, TarMemberRef, jsonable
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
            # LLM2CLIP's embedding sidecars (X_text_embeddings.tar) beside the shards are no samples
            names = [
                f for f in os.listdir(p) if f.endswith(".tar") and not f.endswith("_text_embeddings.tar")
            ]
            out.extend(sorted(os.path.join(p, f) for f in names))
        else:
            out.append(p)
    for p in out:
        if p.endswith(_COMPRESSED):
            raise DataConfigError(
                f"{where}.path: {p}: compressed shards cannot be read by offset; "
                "stream them (streaming: true, automatic for a .tar.gz path) or use plain .tar"
            )
    if not out:
        raise DataConfigError(f"{where}.path: no .tar shards in {', '.join(paths)}")
    return out


def _end_of_members(path: str, offset: int, size: int) -> str | None:
    """Reason when what follows the last readable header at ``offset`` is not a clean end of archive: nothing
    or a partial block (``truncated_tar``), or bytes that are no tar header (``corrupt_tar``); else ``None``."""
    with open(path, "rb") as f:
        f.seek(offset)
        block = f.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE:
        return "truncated_tar"
    return None if block == bytes(tarfile.BLOCKSIZE) else "corrupt_tar"


def index_tar(
    path: str, errors: list[ErrorRecord] | None = None
) -> dict[str, dict[str, bytes | TarMemberRef]]:
    """``{key: {column: content bytes (text/json columns) or TarMemberRef}}`` of one shard, in member order.

    Faults are error records appended to ``errors``, never exceptions: a shard that ends early (a copy or a
    download cut short) keeps every sample whose members are all complete, and the sample being cut is a
    ``truncated_tar`` error (keyed ``<shard>@<offset>``, source ``<tar>@<offset>``, when the cut leaves no member
    name: inside a header, or only the end-of-archive blocks missing); bytes that are no tar header after the
    last member are ``corrupt_tar``; a shard that is no tar at all is ``unreadable_tar``. A member repeating a
    column its key already has (a sample written twice) is a ``duplicate_key`` error: the first sample is kept
    and no later member of that key in this shard is read.
    """
    errors = [] if errors is None else errors
    out: dict[str, dict[str, bytes | TarMemberRef]] = {}
    name, size = os.path.basename(path), os.path.getsize(path)
    try:
        tf = tarfile.open(path, "r:")
    except tarfile.ReadError:
        reason = "truncated_tar" if 0 < size < tarfile.BLOCKSIZE else "unreadable_tar"
        errors.append(ErrorRecord(f"{name}@0", reason, f"{path}@0"))
        return out
    repeated: set[str] = set()
    with tf:
        while True:
            try:
                member = tf.next()  # never past the end of the file: a cut member stops the loop below
            except tarfile.ReadError:  # a header that announces a bad extended header (pax, GNU long name)
                errors.append(ErrorRecord(f"{name}@{tf.offset}", "corrupt_tar", f"{path}@{tf.offset}"))
                break
            if member is None:
                reason = _end_of_members(path, tf.offset, size)
                if reason:
                    errors.append(ErrorRecord(f"{name}@{tf.offset}", reason, f"{path}@{tf.offset}"))
                break
            match = _KEY_EXT.match(member.name) if member.isfile() else None
            if member.isfile() and member.offset_data + member.size > size:
                key = match.group(1) if match else f"{name}@{member.offset}"
                out.pop(key, None)  # the sample being written when the shard was cut
                errors.append(ErrorRecord(key, "truncated_tar", f"{path}#{member.name}"))
                break
            if match is None:
                continue
            key, column = match.group(1), match.group(2).lower()
            if key in repeated:
                continue
            if column in out.get(key, {}):
                repeated.add(key)
                errors.append(ErrorRecord(key, "duplicate_key", f"{path}#{member.name}"))
                continue
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
        for key, cols in index_tar(tar, builder.errors).items():
            if key in samples:
                builder.errors.append(ErrorRecord(key, "duplicate_key", f"{tar}#{key}"))
                continue
            samples[key], shard_of[key] = cols, tar
    for side, files in zip(spec.sidecars, side_files):
        side_index: dict[str, dict] = {}
        for tar in files:
            for key, cols in index_tar(tar, builder.errors).items():
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
        add_sample(builder, key, cols, f"{shard_of[key]}#{key}", os.path.basename(shard_of[key]))


def add_sample(builder: RecordBuilder, key: str, cols: dict, source: str, shard: str) -> None:
    """Add one sample (``{column: bytes | TarMemberRef}``) to ``builder`` (also used by the streaming reader)."""
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
    captions, sources = [], []
    for i, value in enumerate(values):  # per field, so that each caption keeps the name of its field
        good, errors = clean_captions([value], key, source, builder.max_chars)
        builder.errors.extend(errors)
        captions += good
        sources += [RAW if i == 0 else fields[i]] * len(good)
    builder.merge(key, image, captions, meta, source, sources=sources if len(fields) > 1 else None)
