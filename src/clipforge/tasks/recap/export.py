"""The recap caption table: column names, image references, the seed's per-captioner JSON files, the summary.

Row layout (one row per image, written by :class:`~clipforge.tasks.recap.generator.CaptionGeneratorModule`):

- ``key``, ``image`` (the image's path or reference as a string), ``caption`` (the raw caption: the row's first),
  ``captions`` (all raw captions), ``caption_len``;
- for every captioner *slot* ``<s>`` (the captioner's name, or ``<name>_<j>`` when it writes ``num_captions > 1``):
  ``<s>`` (sheared caption), ``<s>_raw`` (the captioner's caption, post-processed but not sheared), ``<s>_len``,
  ``<s>_raw_len`` (lengths in the shear unit), ``<s>_empty`` (the captioner wrote nothing) and ``<s>_meta``
  (provenance: ``model_id``, ``prompt_id``, ``params``, ``num_tokens``, ``output`` = the decoded text before
  post-processing).

The seed's released captions are one JSON list ``[{"image": <path>, "caption": <text>}, ...]`` per MLLM;
:func:`write_seed_json` writes the same format per slot.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence

from clipforge.data.records import HFImageRef, SyntheticRef, TarMemberRef

__all__ = ["image_ref", "seed_records", "slot_names", "summarize", "write_seed_json"]

SEED_JSON_DIR = "seed_json"


def slot_names(name: str, num_captions: int) -> list[str]:
    """Column names of a captioner's captions: ``[name]``, or ``[name_0, name_1, ...]`` for several per image."""
    return [name] if num_captions == 1 else [f"{name}_{j}" for j in range(num_captions)]


def image_ref(ref: object) -> str:
    """A record's image reference as a string: the path itself, ``<tar>#<offset>+<size>`` for a webdataset member,
    ``<dataset>#<column>/<row>`` for a ``datasets`` cell, ``synthetic:<seed>/<index>``, ``""`` for inline bytes."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, TarMemberRef):
        return f"{ref.tar}#{ref.offset}+{ref.size}"
    if isinstance(ref, HFImageRef):
        return f"{ref.path}#{ref.column}/{ref.row}"
    if isinstance(ref, SyntheticRef):
        return f"synthetic:{ref.seed}/{ref.index}"
    return ""


def seed_records(rows: Sequence[Mapping], column: str) -> list[dict]:
    """``[{"image", "caption"}]`` of one caption column (rows without it are left out)."""
    return [{"image": r["image"], "caption": r[column]} for r in rows if column in r]


def write_seed_json(rows: Sequence[Mapping], columns: Mapping[str, str], output_dir: str) -> dict[str, str]:
    """Write ``<output_dir>/seed_json/<slot>.json`` for each ``slot -> column``; returns ``slot -> path``."""
    folder = os.path.join(output_dir, SEED_JSON_DIR)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for slot, column in columns.items():
        path = os.path.join(folder, f"{slot}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(seed_records(rows, column), f, ensure_ascii=False)
        os.replace(path + ".tmp", path)
        paths[slot] = path
    return paths


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summarize(rows: Sequence[Mapping], slots: Sequence[str]) -> dict:
    """Per slot: rows, empty captions, rows the shearing cut, mean lengths before / after shearing, mean new tokens;
    plus the raw captions' mean length."""
    out: dict = {"caption_mean_len": _mean([r["caption_len"] for r in rows if "caption_len" in r])}
    per: dict[str, dict] = {}
    for s in slots:
        mine = [r for r in rows if s in r]
        tokens = [r[f"{s}_meta"]["num_tokens"] for r in mine if r[f"{s}_meta"].get("num_tokens") is not None]
        per[s] = {
            "rows": len(mine),
            "empty": sum(bool(r[f"{s}_empty"]) for r in mine),
            "sheared": sum(r[s] != r[f"{s}_raw"] for r in mine),
            "mean_len_before_shear": _mean([r[f"{s}_raw_len"] for r in mine]),
            "mean_len_after_shear": _mean([r[f"{s}_len"] for r in mine]),
            "mean_new_tokens": _mean(tokens),
        }
    out["captioners"] = per
    return out
