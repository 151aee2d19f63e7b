"""``DatasetSpec``: what to read, in which layout, and which part of it (split, limit).

A spec is a small dataclass that Hydra passes as a dict and jsonargparse as the dataclass itself; ``as_spec``
normalises both. Path existence is checked when the data is read (``check_paths``), not at construction, so a
config can be composed and validated on a machine without the data.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from clipforge.data.errors import DataConfigError

FORMATS = ("auto", "json", "jsonl", "parquet", "coco", "karpathy", "wds", "hf", "demo", "synthetic")
"""Valid values of ``DatasetSpec.format``."""

REMOTE_PREFIXES = ("pipe:", "http://", "https://", "s3://", "gs://", "gcs://")
"""Paths that name a command or a URL, not a local file: streamed, never checked for existence here."""

BUILTIN_SOURCES = ("demo", "synthetic")
"""Formats that need no path; with ``format="auto"`` the path ``"demo"`` / ``"synthetic"`` selects them."""


@dataclass
class DatasetSpec:
    """One image-text (or caption-only) source.

    Attributes:
        path: file, folder, glob or brace pattern of shards (``shard-{000..009}.tar``); ``""`` with
            ``format=demo|synthetic`` (or simply ``path: demo`` / ``path: synthetic``).
        format: ``auto`` (detected from extension / content) or one of :data:`FORMATS`.
        image_root: folder that relative image paths are resolved against (default: the data file's folder).
        caption_fields: columns holding captions, several allowed; ``None`` = the format's default.
        image_field: column with the image path or bytes; ``None`` = the format's default.
        key_field: column with a stable sample key; ``None`` = the format's default (image id, ``__key__``,
            image file stem, row index).
        sidecars: webdataset only: extra column shards (tar files / globs) joined to the main shards by
            ``__key__``.
        split: ``None`` (all rows), ``train`` or ``val``: deterministic split by sample key.
        val_fraction: fraction of keys that go to ``val`` (stable hash of ``split_seed`` and key).
        split_seed: seed of the split hash.
        val_keys: explicit held-out keys, used instead of ``val_fraction`` when given.
        num_folds: k-fold split by key (``> 1``): a key's fold is ``floor(k * hash)`` (the same stable hash as
            ``val_fraction``), and ``val`` is fold ``fold``; used instead of ``val_fraction`` (not with
            ``val_keys``). Every key is held out by exactly one of the ``k`` folds.
        fold: the held-out fold, ``0 <= fold < num_folds``.
        text_only: caption groups without images (images are not loaded even if present).
        limit: keep the first N records after the split (debugging); for ``synthetic``, also the number made.
        name: dataset name in metric keys; default derived from the path (file stem / folder name / format).
        text_embeddings: folder of cached caption embeddings (``ShardWriter`` ``pt`` shards of rows
            ``{"key", "captions", "text_embedding"}``, or LLM2CLIP's ``*_text_embeddings.tar`` sidecars, see
            :mod:`clipforge.data.embeddings`), joined to the records by key and caption; a record or
            caption without one is an error record (``missing_text_embedding``), never a zero vector.
        streaming: webdataset only: read the shards front to back as a stream (``IterableDataset``) instead of
            indexing them; ``None`` = automatic: remote paths (``pipe:``, ``http(s)://``, ``s3://``, ``gs://``) and
            compressed shards (``.tar.gz``) stream (:mod:`clipforge.data.streaming`).
    """

    path: str = ""
    format: str = "auto"
    image_root: str | None = None
    caption_fields: list[str] | None = None
    image_field: str | None = None
    key_field: str | None = None
    sidecars: list[str] = field(default_factory=list)
    split: str | None = None
    val_fraction: float = 0.0
    split_seed: int = 0
    val_keys: list[str] | None = None
    num_folds: int = 0
    fold: int = 0
    text_only: bool = False
    limit: int | None = None
    name: str | None = None
    text_embeddings: str | None = None
    streaming: bool | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"DatasetSpec.format={self.format!r} is not one of: {', '.join(FORMATS)}")
        self.path = "" if self.path is None else str(self.path)
        if isinstance(self.caption_fields, str):
            self.caption_fields = [self.caption_fields]
        elif self.caption_fields is not None:
            self.caption_fields = [str(c) for c in self.caption_fields]
        if isinstance(self.sidecars, str):
            self.sidecars = [self.sidecars]
        self.sidecars = [str(s) for s in (self.sidecars or [])]
        if self.split not in (None, "train", "val"):
            raise ValueError(f"DatasetSpec.split={self.split!r} must be None, 'train' or 'val'")
        if not 0.0 <= float(self.val_fraction) <= 1.0:
            raise ValueError(f"DatasetSpec.val_fraction={self.val_fraction} must be in [0, 1]")
        if self.val_keys is not None:
            self.val_keys = [str(k) for k in self.val_keys]
        if self.num_folds < 0 or self.num_folds == 1:
            raise ValueError(f"DatasetSpec.num_folds={self.num_folds} must be 0 (no folds) or >= 2")
        if self.num_folds and not 0 <= self.fold < self.num_folds:
            raise ValueError(f"DatasetSpec.fold={self.fold} must be in [0, num_folds={self.num_folds})")
        if self.num_folds and self.val_keys is not None:
            raise ValueError("DatasetSpec: give val_keys or num_folds, not both")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"DatasetSpec.limit={self.limit} must be >= 0")

    @property
    def builtin(self) -> str | None:
        """``demo`` / ``synthetic`` when the spec names a built-in source, else ``None``."""
        if self.format in BUILTIN_SOURCES:
            return self.format
        if self.format == "auto" and self.path in BUILTIN_SOURCES:
            return self.path
        return None

    @property
    def display_name(self) -> str:
        """``name``, or one derived from the source: file stem, folder name or built-in format."""
        if self.name:
            return self.name
        if self.builtin:
            return self.builtin
        base = self.path.rstrip("/")
        stem = os.path.basename(base)
        for ext in (".parquet", ".jsonl", ".json", ".tar.gz", ".tgz", ".tar", ".csv"):
            if stem.endswith(ext):
                stem = stem[: -len(ext)]
        return stem.strip("*{}") or "data"


def as_spec(spec: DatasetSpec | Mapping | None) -> DatasetSpec | None:
    """Normalise a spec given as a dataclass, a mapping (Hydra, jsonargparse) or ``None``."""
    if spec is None or isinstance(spec, DatasetSpec):
        return spec
    if isinstance(spec, Mapping):
        return DatasetSpec(**spec)
    raise TypeError(f"expected DatasetSpec, a mapping or None, got {type(spec).__name__}")


def as_spec_or_list(value: DatasetSpec | Mapping | list | None) -> DatasetSpec | list[DatasetSpec] | None:
    """``as_spec`` on a spec, or on each spec of a list (several validation / test sets)."""
    return [as_spec(v) for v in value] if isinstance(value, list | tuple) else as_spec(value)


def as_spec_list(value: DatasetSpec | Mapping | list | None) -> list[DatasetSpec]:
    """Zero, one or several specs as a list."""
    value = as_spec_or_list(value)
    return [] if value is None else value if isinstance(value, list) else [value]


def is_empty_slot(spec: DatasetSpec) -> bool:
    """``{path: ""}`` with ``format: auto``: a config slot left empty ("no dataset here")."""
    return spec.path == "" and spec.format == "auto"


def is_remote(path: str) -> bool:
    """Whether ``path`` names a ``pipe:`` command or a URL (not a local file)."""
    return path.startswith(REMOTE_PREFIXES)


def expand_paths(pattern: str) -> list[str]:
    """Files named by a path, glob (``*``, ``?``, ``[]``) or brace pattern (``{000..009}``), sorted.

    A plain existing path (file or folder) is returned as is; a pattern with no matches gives ``[]``.
    """
    pattern = os.path.expanduser(pattern)
    if os.path.exists(pattern):
        return [pattern]
    from braceexpand import braceexpand

    out: list[str] = []
    for p in braceexpand(pattern):
        if any(c in p for c in "*?["):
            out.extend(sorted(glob.glob(p)))
        elif os.path.exists(p):
            out.append(p)
    return sorted(dict.fromkeys(out))


def check_paths(spec: DatasetSpec, where: str = "spec") -> list[str]:
    """Raise ``DataConfigError`` naming the field if ``path``, ``image_root`` or a sidecar does not exist.

    Args:
        spec: the spec to check.
        where: config location of the spec, used in the message (``data.train``).

    Returns:
        The files / folders ``path`` names (empty for built-in sources).
    """
    paths: list[str] = []
    if is_remote(spec.path):
        pass  # a missing remote shard is an error record when it is read
    elif not spec.builtin:
        if not spec.path:
            raise DataConfigError(
                f"{where}.path: empty; set a file, folder or glob (or format=demo|synthetic)"
            )
        paths = expand_paths(spec.path)
        if not paths:
            raise DataConfigError(f"{where}.path: no such file: {spec.path}")
    if spec.image_root and not spec.text_only and not os.path.isdir(os.path.expanduser(spec.image_root)):
        raise DataConfigError(f"{where}.image_root: no such folder: {spec.image_root}")
    if spec.text_embeddings and not expand_paths(spec.text_embeddings):
        raise DataConfigError(f"{where}.text_embeddings: no such folder: {spec.text_embeddings}")
    for i, side in enumerate(spec.sidecars):
        if not expand_paths(side):
            raise DataConfigError(f"{where}.sidecars[{i}]: no such file: {side}")
    return paths
