"""Rows (dicts from JSON, JSONL, Parquet, HF datasets) -> records: column defaults, keys, image paths, merging.

Rows that share a key are one image with several captions (the flattened ``[{image, caption}, ...]`` layout):
their captions are merged into one record, keeping the first row's metadata. Two rows with the same *derived*
key (image file stem) but different images keep both: the second uses the image path without extension as
key. Two rows with the same *explicit* key (``key_field``, ``key``, ``image_id`` column) but different images
are a ``duplicate_key`` error for the later row.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from clipforge.data.captions import clean_captions
from clipforge.data.records import RAW, ErrorRecord, HFImageRef, Record, SyntheticRef, TarMemberRef, jsonable
from clipforge.data.specs import DatasetSpec

DEFAULT_CAPTION_FIELDS = ("caption", "captions", "text", "txt")
DEFAULT_IMAGE_FIELDS = ("image", "image_path", "img", "file_name", "filename", "jpg")
DEFAULT_KEY_FIELDS = ("key", "__key__", "image_id")


def path_stem(path: str) -> str:
    """File name without folder and extension."""
    return os.path.splitext(os.path.basename(path))[0]


class RecordBuilder:
    """Accumulates rows into records, with per-caption hygiene and error records.

    Args:
        spec: the dataset spec (column choices, ``image_root``, ``text_only``).
        base_dir: folder relative image paths are resolved against when ``spec.image_root`` is unset.
        max_caption_chars: longest caption kept.
        key_fields: columns tried, in order, for the sample key when ``spec.key_field`` is unset.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        base_dir: str,
        max_caption_chars: int = 2000,
        key_fields: Sequence[str] = DEFAULT_KEY_FIELDS,
    ) -> None:
        self.spec, self.max_chars, self.key_fields = spec, max_caption_chars, tuple(key_fields)
        self.root = os.path.expanduser(spec.image_root) if spec.image_root else base_dir
        self.records: dict[str, Record] = {}
        self.first_source: dict[str, str] = {}
        self.errors: list[ErrorRecord] = []

    # -- columns ----------------------------------------------------------------------------------------------
    def caption_columns(self, row: Mapping) -> list[str]:
        """The spec's caption columns, else the first default present in the row."""
        if self.spec.caption_fields:
            return list(self.spec.caption_fields)
        return next(([f] for f in DEFAULT_CAPTION_FIELDS if f in row), [])

    def image_column(self, row: Mapping) -> str | None:
        """The spec's image column, else the first default present in the row."""
        if self.spec.image_field:
            return self.spec.image_field
        return next((f for f in DEFAULT_IMAGE_FIELDS if f in row), None)

    def resolve_image(self, raw: object) -> tuple[object, str | None]:
        """A cell -> ``(image ref, None)`` or ``(None, reason)``; relative paths are joined to the image root."""
        if isinstance(raw, Mapping):  # HF / Arrow image struct {"bytes", "path"}
            if raw.get("bytes"):
                return bytes(raw["bytes"]), None
            raw = raw.get("path")
        if raw is None:
            return None, "no_image"
        if isinstance(raw, TarMemberRef | HFImageRef | SyntheticRef):
            return raw, None
        if isinstance(raw, bytes | bytearray | memoryview):
            return bytes(raw), None
        if not isinstance(raw, str):
            return None, "bad_image_type"
        if not raw.strip():
            return None, "no_image"
        if raw.startswith(("http://", "https://")):
            return None, "remote_image"  # this layer never downloads; fetch first (img2dataset)
        path = os.path.expanduser(raw)
        return os.path.normpath(path if os.path.isabs(path) else os.path.join(self.root, path)), None

    def _key(self, row: Mapping, image_path: str | None, index: int) -> tuple[str | None, bool]:
        """(key, derived); ``None`` when an explicit ``key_field`` is missing."""
        if self.spec.key_field:
            value = row.get(self.spec.key_field)
            return (None, False) if value in (None, "") else (str(value), False)
        for f in self.key_fields:
            if row.get(f) not in (None, ""):
                return str(row[f]), False
        if image_path:
            return path_stem(image_path), True
        return str(index), False

    # -- rows -------------------------------------------------------------------------------------------------
    def add(self, row: Mapping, source: str, index: int) -> None:
        """Add one row (``source`` = ``path:line`` or ``path#row``; ``index`` = running row number)."""
        cap_cols, img_col = self.caption_columns(row), self.image_column(row)
        raw = row.get(img_col) if img_col else None
        image_path = raw if isinstance(raw, str) else raw.get("path") if isinstance(raw, Mapping) else None
        key, derived = self._key(row, image_path, index)
        if key is None:
            self.errors.append(ErrorRecord(f"row:{index}", "no_key", source))
            return
        image = None
        if not self.spec.text_only:
            image, reason = self.resolve_image(raw)
            if reason:
                self.errors.append(ErrorRecord(key, reason, source))
                return
        captions, sources = [], []
        for i, col in enumerate(cap_cols):
            good, errors = clean_captions([row.get(col)], key, source, self.max_chars)
            self.errors.extend(errors)
            captions += good
            sources += [RAW if i == 0 else col] * len(good)
        meta = {k: jsonable(v) for k, v in row.items() if k not in cap_cols and k != img_col}
        if self.spec.text_only and isinstance(image_path, str):
            meta[img_col] = image_path  # provenance of a caption group whose image is not used
        self.merge(
            key,
            image,
            captions,
            meta,
            source,
            alt_key=os.path.splitext(image_path)[0] if derived else None,
            sources=sources if len(cap_cols) > 1 else None,
        )

    def merge(
        self,
        key: str,
        image: object,
        captions: list[str],
        meta: dict,
        source: str,
        alt_key: str | None = None,
        sources: list[str] | None = None,
    ) -> None:
        """Add captions to the record of ``key`` (created if new); see the module docstring for key clashes.

        ``sources`` names each caption's column (``None``: all ``raw``); see :attr:`Record.sources`.
        """
        rec = self.records.get(key)
        if rec is not None and rec.image != image:
            if alt_key and alt_key != key:
                return self.merge(alt_key, image, captions, meta, source, sources=sources)
            self.errors.append(ErrorRecord(key, "duplicate_key", source))
            return None
        if rec is None:
            self.records[key] = Record(key, image, list(captions), meta, list(sources) if sources else None)
            self.first_source[key] = source
        else:
            if sources or rec.sources:
                rec.sources = [rec.source(i) for i in range(len(rec.captions))] + (
                    list(sources) if sources else [RAW] * len(captions)
                )
            rec.captions.extend(captions)
        return None

    def finish(self, require_captions: bool = True) -> tuple[list[Record], list[ErrorRecord]]:
        """Records in first-seen order; without captions they become ``no_valid_caption`` errors (if required)."""
        out = []
        for key, rec in self.records.items():
            if rec.captions or not require_captions:
                out.append(rec)
            else:
                self.errors.append(ErrorRecord(key, "no_valid_caption", self.first_source[key]))
        return out, self.errors
