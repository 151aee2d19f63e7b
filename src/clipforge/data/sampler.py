"""``EpochSampler``: a distributed-aware shuffling sampler that tells every worker which epoch it is."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from torch.utils.data import Dataset, DistributedSampler


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(index, epoch)`` pairs.

    Lightning calls ``set_epoch`` on the sampler of every training dataloader at the start of each epoch, in the
    main process. Sampling happens there too, so the epoch travels with each index to the worker processes —
    correct with ``num_workers > 0`` and ``persistent_workers`` (a dataset attribute set in the main process would
    not reach persistent workers). Being a ``DistributedSampler``, Lightning leaves it in place under DDP instead of
    wrapping it; ``num_replicas`` and ``rank`` are given explicitly, so no process group is needed.

    Args:
        dataset: the dataset (its length is used).
        num_replicas: world size.
        rank: global rank of this process.
        shuffle: reshuffle every epoch (``seed + epoch``).
        seed: shuffling seed, identical on every rank.
        drop_last: drop the tail instead of padding so every rank gets the same number of samples.
    """

    def __init__(
        self,
        dataset: Dataset,
        num_replicas: int = 1,
        rank: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
        )

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        for index in super().__iter__():
            yield (index, epoch)


@dataclass(frozen=True)
class Shard:
    """An input shard of a prediction job: ``keys`` of the rows ``start .. start + len(keys) - 1``."""

    name: str
    start: int
    keys: Sequence[str]


class ShardSampler(DistributedSampler):
    """Yields the row indices of the given shards, shard after shard, in order (no shuffling, no padding).

    The shards are already this rank's (disjoint across ranks); being a ``DistributedSampler``, Lightning keeps it
    as is under DDP instead of re-splitting it.

    Args:
        dataset: the predict dataset.
        shards: the shards this rank computes.
        num_replicas: world size.
        rank: global rank.
    """

    def __init__(
        self, dataset: Dataset, shards: Sequence[Shard], num_replicas: int = 1, rank: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.indices = [s.start + i for s in shards for i in range(len(s.keys))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
