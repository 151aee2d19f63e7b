"""Caption groups, the data of LLM2CLIP stage 1: reading them, whole groups for evaluation, the shared datamodule.

A *caption group* is every caption of one image (or one text of a plain corpus), read by the shared readers with
``text_only: true`` (a COCO caption file, JSONL / Parquet rows, a ``datasets`` folder...). A source whose
``caption_fields`` names exactly two columns is read as **short / long pairs** (first column short, second long,
LLM2CLIP's CC3M ``short_caption,long_caption``); any other source gives groups of interchangeable captions.

* SimCSE triplets: :mod:`clipforge.data.caption_triplets` (:class:`CaptionTripletDataModule`).
* MNTP token blocks: :mod:`clipforge.data.text_blocks` (:class:`TextBlockDataModule`).

Both datamodules derive from :class:`CaptionGroupsDataModule` (reading, splitting, tokenizer wiring). Held-out
groups come from ``DatasetSpec.split`` / ``val_fraction`` (stable key hash), or ``holdout_fraction`` of every
training source when ``val`` is empty; validation batches are whole groups (for CRA) or blocks (MNTP loss).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from clipforge.data.datamodule import per_device_batch_size
from clipforge.data.errors import DataConfigError
from clipforge.data.readers import read_records
from clipforge.data.records import ErrorRecord
from clipforge.data.specs import DatasetSpec, as_spec_list, is_empty_slot

__all__ = ["CaptionGroup", "CaptionGroupsDataModule", "GroupCollator", "GroupDataset", "read_caption_groups"]


@dataclass
class CaptionGroup:
    """The captions of one image; ``short`` / ``long`` are set for pair sources."""

    key: str
    captions: list[str]
    short: str | None = None
    long: str | None = None


def read_caption_groups(
    spec: DatasetSpec, max_caption_chars: int = 2000, where: str = "data"
) -> tuple[list[CaptionGroup], list[ErrorRecord]]:
    """Groups of a source (split and limit applied, images never loaded) and the reader's error records."""
    spec = dataclasses.replace(spec, text_only=True)
    fields = spec.caption_fields or []
    if len(fields) != 2:
        records, errors = read_records(spec, max_caption_chars, where=where)
        return [CaptionGroup(r.key, list(r.captions)) for r in records], errors
    short, short_err = read_records(dataclasses.replace(spec, caption_fields=fields[:1]), max_caption_chars)
    long, long_err = read_records(dataclasses.replace(spec, caption_fields=fields[1:]), max_caption_chars)
    long_of = {r.key: r.captions[0] for r in long}
    short_keys = {r.key for r in short}
    groups = [
        CaptionGroup(r.key, [r.captions[0], long_of[r.key]], r.captions[0], long_of[r.key])
        for r in short
        if r.key in long_of
    ]
    unpaired = [ErrorRecord(r.key, f"no_{fields[1]}", where) for r in short if r.key not in long_of]
    unpaired += [ErrorRecord(r.key, f"no_{fields[0]}", where) for r in long if r.key not in short_keys]
    return groups, short_err + long_err + unpaired


class GroupDataset(Dataset):
    """Whole caption groups (``{"key", "captions"}``), for caption-retrieval evaluation."""

    def __init__(self, groups: Sequence[CaptionGroup]) -> None:
        self.groups = list(groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict:
        return {"key": self.groups[index].key, "captions": list(self.groups[index].captions)}


class GroupCollator:
    """Groups -> ``{"key", "captions", "caption_group"`` (batch position of each caption's group), ``"text"}``."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        captions = [c for it in items for c in it["captions"]]
        index = [i for i, it in enumerate(items) for _ in it["captions"]]
        return {
            "key": [it["key"] for it in items],
            "captions": captions,
            "caption_group": torch.tensor(index, dtype=torch.long),
            "text": dict(self.tokenizer(captions)),
        }


class CaptionGroupsDataModule(L.LightningDataModule):
    """Reading, splitting and tokenizer wiring shared by the two stage-1 datamodules
    (:class:`~clipforge.data.caption_triplets.CaptionTripletDataModule`,
    :class:`~clipforge.data.text_blocks.TextBlockDataModule`)."""

    def _init_groups(self, train, val) -> None:
        self.specs = {
            "train": as_spec_list(train),
            "val": [s for s in as_spec_list(val) if not is_empty_slot(s)],
        }
        self.tokenizer = None
        self._connected = False
        self.datasets: dict[str, list[Dataset]] = {}
        self.index_errors_by_split: dict[str, list[ErrorRecord]] = {}
        self.batch_size_per_device = self.hparams.batch_size

    def connect(self, tokenizer) -> None:
        """Supply the tokenizer directly (notebooks, tests) instead of the model's ``tokenizer`` attribute."""
        self.tokenizer, self._connected = tokenizer, True

    @property
    def world(self) -> tuple[int, int]:
        """``(world_size, global_rank)`` of the attached trainer, ``(1, 0)`` without one."""
        return (self.trainer.world_size, self.trainer.global_rank) if self.trainer is not None else (1, 0)

    def split_specs(self, split: str) -> list[DatasetSpec]:
        """The specs a split reads: with an empty ``val`` and ``holdout_fraction > 0``, every training source is
        split by key and its held-out groups are the validation sets."""
        frac = self.hparams.holdout_fraction
        holdout = frac > 0 and not self.specs["val"]
        if split == "train":
            return [
                dataclasses.replace(s, split="train", val_fraction=frac) if holdout and s.split is None else s
                for s in self.specs["train"]
            ]
        if holdout:
            return [
                dataclasses.replace(s, split="val", val_fraction=frac)
                for s in self.specs["train"]
                if s.split is None
            ]
        return self.specs["val"]

    def eval_names(self, stage: str = "val") -> list[str]:
        """Names of the validation sets in dataloader order (for metric keys)."""
        return [s.display_name for s in self.split_specs("val")] if stage == "val" else []

    def read_groups(self, split: str) -> list[list[CaptionGroup]]:
        """The caption groups of each source of ``split``; reader errors go to ``index_errors_by_split``."""
        out = []
        specs = self.split_specs(split)
        for i, spec in enumerate(specs):
            where = f"data.{split}" + (f"[{i}]" if len(specs) > 1 else "")
            groups, errors = read_caption_groups(spec, self.hparams.max_caption_chars, where)
            self.index_errors_by_split.setdefault(split, []).extend(errors)
            if not groups:
                raise DataConfigError(f"{where}: no caption groups in {spec.path} (split={spec.split})")
            out.append(groups)
        return out

    def setup(self, stage: str | None = None) -> None:
        """Bind the model's tokenizer and build the datasets ``stage`` needs (each only once; subclasses define
        ``_build(split, groups_per_source) -> list[Dataset]``)."""
        module = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        if not self._connected and module is not None:
            self.tokenizer = module.tokenizer
        self.batch_size_per_device = per_device_batch_size(self.hparams.batch_size, self.world[0])
        for split in {"fit": ("train", "val"), "validate": ("val",)}.get(stage or "", ("train", "val")):
            if split not in self.datasets and self.split_specs(split):
                self.datasets[split] = self._build(split, self.read_groups(split))

    def _loader(self, dataset: Dataset, collate, **kwargs) -> DataLoader:
        return DataLoader(dataset, num_workers=self.hparams.num_workers, collate_fn=collate, **kwargs)

    def _eval_batch(self) -> int:
        size = self.hparams.eval_batch_size or self.hparams.batch_size
        return max(1, -(-size // self.world[0]))
