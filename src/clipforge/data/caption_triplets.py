"""Supervised-SimCSE data of LLM2CLIP stage 1: caption triplets, homogeneous global batches, the datamodule.

The query and its positive are two captions of one group (:mod:`clipforge.data.caption_groups`) — for a short /
long pair, short→long or long→short by a coin flip, with the matching query instruction — and the hard negative is
a caption of another group of the same source (for pairs: of the positive's type). Triplets are redrawn each epoch
from ``(seed, epoch, index)``. Every global batch comes from one source (batches of each source, in shuffled order;
incomplete ones dropped), as in LLM2Vec. Validation batches are whole held-out groups (for CRA).
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clipforge.data.caption_groups import CaptionGroup, CaptionGroupsDataModule, GroupCollator, GroupDataset
from clipforge.data.datamodule import per_device_batch_size
from clipforge.data.errors import DataConfigError
from clipforge.data.specs import DatasetSpec, as_spec_or_list

__all__ = [
    "CaptionTripletDataModule",
    "CaptionTripletDataset",
    "HomogeneousBatchSampler",
    "SourceMix",
    "TripletCollator",
]


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


class CaptionTripletDataModule(CaptionGroupsDataModule):
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
