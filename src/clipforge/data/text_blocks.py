"""MNTP data of LLM2CLIP stage 1: one caption per group (:mod:`clipforge.data.caption_groups`) of every source,
all texts shuffled together, tokenized, concatenated and cut into ``block_size`` token blocks."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from clipforge.data.caption_groups import CaptionGroup, CaptionGroupsDataModule
from clipforge.data.errors import DataConfigError
from clipforge.data.specs import DatasetSpec, as_spec_or_list

__all__ = ["TextBlockDataModule", "TokenBlockDataset", "mntp_texts", "token_blocks"]


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


class TextBlockDataModule(CaptionGroupsDataModule):
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
