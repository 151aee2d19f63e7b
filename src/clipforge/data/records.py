"""What readers produce: one ``Record`` per image (or caption group) and one ``ErrorRecord`` per rejected item."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Union

RAW = "raw"
"""Source name of the raw (original) captions of a record."""

_SURROGATES = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class TarMemberRef:
    """An image stored as a member of an uncompressed tar shard, read by seeking (random access)."""

    tar: str
    offset: int
    size: int


@dataclass(frozen=True)
class HFImageRef:
    """An ``Image``-feature cell of a dataset saved with ``save_to_disk``, read lazily (memory-mapped)."""

    path: str
    column: str
    row: int


@dataclass(frozen=True)
class SyntheticRef:
    """A synthetic image, rendered deterministically from ``(seed, index)`` (see :mod:`clipforge.data.synthetic`)."""

    index: int
    seed: int = 0
    size: int = 32


ImageRef = Union[str, bytes, TarMemberRef, HFImageRef, SyntheticRef]
"""A file path, encoded image bytes, or one of the lazy references above."""


@dataclass
class Record:
    """One image (or, text-only, one caption group) with all of its valid captions.

    Attributes:
        key: stable sample key (image id, ``__key__``, file stem or row index); splits and error logs use it.
        image: where the image is; ``None`` for text-only records.
        captions: every valid caption of the image (at least one, unless captions were not required).
        meta: provenance columns and ids, JSON-serialisable.
        sources: where each caption came from, parallel to ``captions``: ``raw`` for the first caption column,
            else the column name (a captioner's name in a recap table); ``None`` = every caption is ``raw``.
    """

    key: str
    image: ImageRef | None
    captions: list[str]
    meta: dict = field(default_factory=dict)
    sources: list[str] | None = None

    def source(self, index: int) -> str:
        """Source of caption ``index`` (``raw`` when the record has no source list)."""
        return self.sources[index] if self.sources else RAW


@dataclass
class ErrorRecord:
    """An item a reader rejected (a caption, a row, a sidecar column) and why.

    Attributes:
        key: sample key when known, else ``line:<n>`` / ``row:<n>``.
        reason: machine-readable reason, e.g. ``empty_caption``, ``malformed_json``, ``no_valid_caption``.
        source: where it came from: ``path:line``, ``path#row``, ``tar#member``.
    """

    key: str
    reason: str
    source: str

    def to_dict(self) -> dict[str, str]:
        """Plain dict for JSON lines."""
        return {"key": self.key, "reason": self.reason, "source": self.source}


def jsonable(value: Any) -> Any:
    """A JSON-serialisable copy of a metadata value (numpy scalars unwrapped, bytes and NaN dropped to ``None``,
    lone surrogates from undecodable text replaced by U+FFFD)."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, bytes | bytearray | memoryview):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalar
        try:
            return jsonable(value.item())
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
