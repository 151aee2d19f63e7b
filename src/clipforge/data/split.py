"""Deterministic train/val split by sample key.

A key's side depends only on ``(split_seed, key)``: sha1 of ``f"{split_seed}:{key}"`` mapped to [0, 1), ``val``
when below ``val_fraction``. The same key lands on the same side on every machine, in every run, whatever the
order or number of rows; adding rows never moves existing keys. A k-fold split (``num_folds = k``) cuts the same
hash into ``k`` equal ranges: fold ``floor(k * hash)``, so every key is held out by exactly one fold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from clipforge.data.specs import DatasetSpec

T = TypeVar("T")


def key_fraction(key: str, seed: int = 0) -> float:
    """Stable hash of ``(seed, key)`` in [0, 1)."""
    digest = hashlib.sha1(f"{seed}:{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def fold_of(key: str, num_folds: int, seed: int = 0) -> int:
    """The fold (``0 .. num_folds - 1``) that holds ``key`` out in a ``num_folds``-fold split."""
    return min(int(key_fraction(key, seed) * num_folds), num_folds - 1)


def _is_val(key: str, spec: DatasetSpec, val_keys: set[str] | None) -> bool:
    if val_keys is not None:
        return key in val_keys
    if spec.num_folds:
        return fold_of(key, spec.num_folds, spec.split_seed) == spec.fold
    return key_fraction(key, spec.split_seed) < spec.val_fraction


def side_of(key: str, spec: DatasetSpec) -> str:
    """``val`` or ``train`` for ``key`` under the spec's ``val_keys`` / ``num_folds`` + ``fold`` /
    ``val_fraction`` / ``split_seed``."""
    val_keys = set(spec.val_keys) if spec.val_keys is not None else None
    return "val" if _is_val(key, spec, val_keys) else "train"


def select_split(items: Sequence[T], spec: DatasetSpec) -> list[T]:
    """The items (anything with a ``key``) on the spec's side; all of them when ``spec.split`` is ``None``."""
    if spec.split is None:
        return list(items)
    val_keys = set(spec.val_keys) if spec.val_keys is not None else None
    return [item for item in items if _is_val(item.key, spec, val_keys) == (spec.split == "val")]
