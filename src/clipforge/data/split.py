"""Deterministic train/val split by sample key.

A key's side depends only on ``(split_seed, key)``: sha1 of ``f"{split_seed}:{key}"`` mapped to [0, 1), ``val``
when below ``val_fraction``. The same key lands on the same side on every machine, in every run, whatever the
order or number of rows; adding rows never moves existing keys.
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


def side_of(key: str, spec: DatasetSpec) -> str:
    """``val`` or ``train`` for ``key`` under the spec's ``val_keys`` / ``val_fraction`` / ``split_seed``."""
    if spec.val_keys is not None:
        return "val" if key in set(spec.val_keys) else "train"
    return "val" if key_fraction(key, spec.split_seed) < spec.val_fraction else "train"


def select_split(items: Sequence[T], spec: DatasetSpec) -> list[T]:
    """The items (anything with a ``key``) on the spec's side; all of them when ``spec.split`` is ``None``."""
    if spec.split is None:
        return list(items)
    val_keys = set(spec.val_keys) if spec.val_keys is not None else None
    out = []
    for item in items:
        key = item.key
        is_val = (
            key in val_keys
            if val_keys is not None
            else key_fraction(key, spec.split_seed) < spec.val_fraction
        )
        if is_val == (spec.split == "val"):
            out.append(item)
    return out
