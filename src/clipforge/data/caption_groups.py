"""Caption-group data of LLM2CLIP stage 1: supervised-SimCSE triplets and MNTP token blocks.

A *caption group* is every caption of one image (or one text of a plain corpus), read by the shared readers with
``text_only: true`` (a COCO caption file, JSONL / Parquet rows, a ``datasets`` folder...). A source whose
``caption_fields`` names exactly two columns is read as **short / long pairs** (first column short, second long,
LLM2CLIP's CC3M ``short_caption,long_caption``); any other source gives groups of interchangeable captions.

* SimCSE triplets (:class:`CaptionTripletDataModule`): the query and its positive are two captions of one group —
  for a pair, short→long or long→short by a coin flip, with the matching query instruction — and the hard negative
  is a caption of another group of the same source (for pairs: of the positive's type). Triplets are redrawn each
  epoch from ``(seed, epoch, index)``. Every global batch comes from one source (batches of each source, in
  shuffled order; incomplete ones dropped), as in LLM2Vec.
* MNTP blocks (:class:`TextBlockDataModule`): one caption per group (drawn from ``(seed, key)``), all texts of all
  sources shuffled together, tokenized, concatenated and cut into ``block_size`` token blocks.

Held-out groups come from ``DatasetSpec.split`` / ``val_fraction`` (stable key hash), or ``holdout_fraction`` of
every training source when ``val`` is empty; validation batches are whole groups (for CRA) or blocks (MNTP loss).
"""

from __future__ import annotations

import bisect
import dataclasses
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clipforge.data.datamodule import per_device_batch_size
from clipforge.data.errors import DataConfigError
from clipforge.data.readers import read_records
from clipforge.data.records import ErrorRecord
from clipforge.data.specs import DatasetSpec, as_spec_list, as_spec_or_list, is_empty_slot


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


# -- SimCSE ------------------------------------------------------------------------------------------------------
class CaptionTripletDataset(Dataset):
    """``(query, positive, hard negative)`` caption triplets of one source, redrawn each epoch.

    Items: ``{"key", "query", "positive", "negative", "instruction"}``; the index may be ``(index, epoch)``.

    Args:
        groups: caption groups; groups with fewer than two captions cannot give a positive and are left out.
        seed: seed of the draws.
        short_to_long: query instruction when a short caption retrieves its long one.
        long_to_short: query instruction when a long caption retrieves its short one.
        same_kind: query instruction between interchangeable captions (``""`` = none).
    """

    def __init__(
        self,
        groups: Sequence[CaptionGroup],
        seed: int = 0,
        short_to_long: str = "",
        long_to_short: str = "",
        same_kind: str = "",
    ) -> None:
        self.groups = [g for g in groups if len(g.captions) >= 2]
        if len(self.groups) < 2:
            raise DataConfigError("SimCSE triplets need at least two caption groups with two captions each")
        self.seed, self.instructions = seed, (short_to_long, long_to_short, same_kind)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index, epoch = index if isinstance(index, tuple) else (index, 0)
        rng = random.Random(f"{self.seed}:{epoch}:{index}")
        group = self.groups[index]
        other = self.groups[(index + 1 + rng.randrange(len(self.groups) - 1)) % len(self.groups)]
        if group.short is not None and other.short is not None:
            flip = rng.randrange(2)  # 0: short query -> long positive, 1: long -> short
            first, second = ("short", "long") if flip == 0 else ("long", "short")
            query, positive = getattr(group, first), getattr(group, second)
            negative, instruction = getattr(other, second), self.instructions[flip]
        else:
            query, positive = rng.sample(group.captions, 2)
            negative, instruction = rng.choice(other.captions), self.instructions[2]
        return {
            "key": group.key,
            "query": query,
            "positive": positive,
            "negative": negative,
            "instruction": instruction,
        }


class SourceMix(Dataset):
    """Several datasets indexed as one (``(index, epoch)`` pairs pass through to the owning dataset)."""

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        self.datasets = list(datasets)
        self.offsets = [0]
        for ds in self.datasets:
            self.offsets.append(self.offsets[-1] + len(ds))

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        index, epoch = index if isinstance(index, tuple) else (index, 0)
        source = bisect.bisect_right(self.offsets, index) - 1
        return {**self.datasets[source][(index - self.offsets[source], epoch)], "source": source}


class HomogeneousBatchSampler(DistributedSampler):
    """Yields ``(index, epoch)`` so that every *global* batch holds rows of a single source.

    Each epoch, every source's rows are shuffled (``seed + epoch``) and cut into full global batches, the batches of
    all sources are shuffled together, and this rank yields its ``batch_size // num_replicas`` slice of each; a
    ``DataLoader`` with that per-device batch size then delivers the slices. Being a ``DistributedSampler``,
    Lightning leaves it in place under DDP.

    Args:
        sizes: number of rows of each source (sources are consecutive in the dataset).
        batch_size: global batch size (a multiple of ``num_replicas``).
        num_replicas: world size.
        rank: global rank.
        seed: shuffling seed, identical on every rank.
    """

    def __init__(
        self, sizes: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        self.sizes, self.global_batch = list(sizes), batch_size
        self.per_device = per_device_batch_size(batch_size, num_replicas)
        super().__init__(
            range(sum(self.sizes)), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
        )
        if sum(n // batch_size for n in self.sizes) == 0:
            raise DataConfigError(
                f"data.train: every source has fewer rows {self.sizes} than one batch ({batch_size})"
            )

    def global_batches(self, epoch: int) -> list[list[int]]:
        """The global batches of ``epoch`` (row indices), in the order they are served."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        batches, offset = [], 0
        for n in self.sizes:
            perm = (torch.randperm(n, generator=g) + offset).tolist()
            batches += [
                perm[i : i + self.global_batch]
                for i in range(0, n - self.global_batch + 1, self.global_batch)
            ]
            offset += n
        order = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in order]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, lo = self.epoch, self.rank * self.per_device
        for batch in self.global_batches(epoch):
            for index in batch[lo : lo + self.per_device]:
                yield (index, epoch)

    def __len__(self) -> int:
        return sum(n // self.global_batch for n in self.sizes) * self.per_device


class TripletCollator:
    """Triplet items -> ``{"key", "source", "query", "positive", "negative"}`` (the last three tokenized; queries
    with their instructions)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict]) -> dict:
        return {
            "key": [it["key"] for it in items],
            "source": [it["source"] for it in items],
            "query": dict(self.tokenizer([it["query"] for it in items], [it["instruction"] for it in items])),
            "positive": dict(self.tokenizer([it["positive"] for it in items])),
            "negative": dict(self.tokenizer([it["negative"] for it in items])),
        }


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


# -- MNTP --------------------------------------------------------------------------------------------------------
def token_blocks(token_lists: Sequence[Sequence[int]], block_size: int) -> torch.Tensor:
    """Concatenate token lists and cut them into ``(N, block_size)`` blocks; the last partial block is dropped."""
    flat = torch.tensor([t for ids in token_lists for t in ids], dtype=torch.int32)
    n = flat.numel() // block_size
    return flat[: n * block_size].view(n, block_size)


def mntp_texts(groups: Sequence[CaptionGroup], seed: int) -> list[str]:
    """One caption per group (drawn from ``(seed, key)``), all groups shuffled by ``seed``."""
    texts = [random.Random(f"{seed}:{g.key}").choice(g.captions) for g in groups]
    random.Random(seed).shuffle(texts)
    return texts


class TokenBlockDataset(Dataset):
    """Fixed-length token blocks: items ``{"input_ids": LongTensor[block_size]}``."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict:
        return {"input_ids": self.blocks[index].long()}


# -- datamodules -------------------------------------------------------------------------------------------------
class _CaptionGroupsDataModule(L.LightningDataModule):
    """Reading, splitting and tokenizer wiring shared by the two stage-1 datamodules."""

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


class CaptionTripletDataModule(_CaptionGroupsDataModule):
    """Supervised-SimCSE triplets from caption groups; validation batches are whole held-out groups (CRA).

    Train batches: ``{"key", "source", "query", "positive", "negative"}`` (tokenized by the model's tokenizer, which
    takes per-text instructions). Validation batches: ``{"key", "captions", "caption_group", "text"}``.

    Args:
        train: one source or a list (each global batch draws from one source).
        val: held-out sources; empty = ``holdout_fraction`` of every training source.
        batch_size: GLOBAL batch size (per device = ``batch_size // world_size``).
        eval_batch_size: groups per validation batch (global).
        num_workers: dataloader worker processes.
        seed: seed of triplet draws and batch order.
        holdout_fraction: share of each training source's groups held out (stable key hash) when ``val`` is empty.
        max_caption_chars: longer captions are dropped (``caption_too_long``).
        short_to_long_instruction: query instruction of short→long pairs (LLM2CLIP's).
        long_to_short_instruction: query instruction of long→short pairs.
        same_kind_instruction: query instruction between captions of the same kind (COCO groups); ``""`` = none.
    """

    def __init__(
        self,
        train: DatasetSpec | Mapping | list[DatasetSpec | Mapping] | None = None,
        val: DatasetSpec | Mapping | list[DatasetSpec | Mapping] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        holdout_fraction: float = 0.0,
        max_caption_chars: int = 2000,
        short_to_long_instruction: str = "Given a sentence, retrieve a detailed relevant sentence",
        long_to_short_instruction: str = "Given a detailed sentence, retrieve a short relevant sentence",
        same_kind_instruction: str = "",
    ) -> None:
        super().__init__()
        # normalised before save_hyperparameters, so Hydra (dicts) and jsonargparse (dataclasses) save the same
        train, val = as_spec_or_list(train), as_spec_or_list(val)
        self.save_hyperparameters(logger=False)
        self._init_groups(train, val)

    def _build(self, split: str, groups: list[list[CaptionGroup]]) -> list[Dataset]:
        hp = self.hparams
        if split == "val":
            return [GroupDataset(g) for g in groups]
        instructions = (hp.short_to_long_instruction, hp.long_to_short_instruction, hp.same_kind_instruction)
        return [SourceMix([CaptionTripletDataset(g, hp.seed, *instructions) for g in groups])]

    def train_dataloader(self) -> DataLoader:
        mix = self.datasets["train"][0]
        world, rank = self.world
        sizes = [len(ds) for ds in mix.datasets]
        sampler = HomogeneousBatchSampler(sizes, self.hparams.batch_size, world, rank, self.hparams.seed)
        return self._loader(
            mix, TripletCollator(self.tokenizer), batch_size=sampler.per_device, sampler=sampler
        )

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """One loader per validation source (a list when there are several, ``[]`` when there is none)."""
        loaders = [
            self._loader(ds, GroupCollator(self.tokenizer), batch_size=self._eval_batch(), shuffle=False)
            for ds in self.datasets.get("val", [])
        ]
        return loaders[0] if len(loaders) == 1 else loaders


class TextBlockDataModule(_CaptionGroupsDataModule):
    """MNTP token blocks: one caption per group of every source, shuffled together, cut into blocks.

    Batches: ``{"input_ids": LongTensor[B, block_size]}`` (no padding). The tokenizer is the model's (its ``hf``
    attribute, a ``transformers`` tokenizer, tokenizes the texts; special tokens such as BOS are kept).

    Args:
        train: one source or a list (e.g. caption groups + a plain text corpus).
        val: held-out sources; empty = ``holdout_fraction`` of every training source.
        block_size: tokens per block (LLM2CLIP: 512).
        batch_size: GLOBAL batch size in blocks.
        eval_batch_size: blocks per validation batch (global).
        num_workers: dataloader worker processes.
        seed: seed of caption choice, text order and block shuffling.
        holdout_fraction: share of each training source's groups held out when ``val`` is empty.
        max_caption_chars: longer texts are dropped (``caption_too_long``).
    """

    def __init__(
        self,
        train: DatasetSpec | Mapping | list[DatasetSpec | Mapping] | None = None,
        val: DatasetSpec | Mapping | list[DatasetSpec | Mapping] | None = None,
        block_size: int = 512,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        holdout_fraction: float = 0.0,
        max_caption_chars: int = 2000,
    ) -> None:
        super().__init__()
        # normalised before save_hyperparameters, so Hydra (dicts) and jsonargparse (dataclasses) save the same
        train, val = as_spec_or_list(train), as_spec_or_list(val)
        self.save_hyperparameters(logger=False)
        self._init_groups(train, val)

    def _build(self, split: str, groups: list[list[CaptionGroup]]) -> list[Dataset]:
        hf = getattr(self.tokenizer, "hf", self.tokenizer)
        if hf is None:
            raise RuntimeError("TextBlockDataModule needs a tokenizer: attach the model or call connect()")
        texts = mntp_texts([g for source in groups for g in source], self.hparams.seed)
        ids = hf(texts, return_attention_mask=False)["input_ids"]
        blocks = token_blocks(ids, self.hparams.block_size)
        if blocks.shape[0] == 0:
            raise DataConfigError(f"data.{split}: fewer tokens than one block of {self.hparams.block_size}")
        return [TokenBlockDataset(blocks)]

    def train_dataloader(self) -> DataLoader:
        dataset, (world, rank) = self.datasets["train"][0], self.world
        bs = self.batch_size_per_device
        sampler = DistributedSampler(
            dataset, world, rank, shuffle=True, seed=self.hparams.seed, drop_last=True
        )
        drop_last = len(sampler) >= bs  # keep the only (partial) batch of a set smaller than one batch
        return self._loader(dataset, None, batch_size=bs, sampler=sampler, drop_last=drop_last)

    def val_dataloader(self) -> DataLoader | list:
        datasets = self.datasets.get("val", [])
        return (
            self._loader(datasets[0], None, batch_size=self._eval_batch(), shuffle=False) if datasets else []
        )
