"""All-gather of feature batches across data-parallel ranks, the building block of global negative pools.

Plain ``torch.distributed``: nothing here knows about Lightning, so the same loss runs under DDP, a bare
``torchrun`` script or a single process (where every function is the identity).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor

__all__ = ["gather_features", "rank_and_world"]


def rank_and_world() -> tuple[int, int]:
    """Rank of this process and number of processes in the default group.

    Returns:
        ``(rank, world_size)``; ``(0, 1)`` when ``torch.distributed`` is unavailable or not initialised.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_features(x: Tensor, with_grad: bool = True) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, in rank order.

    Every rank must hold the same shape (drop the last incomplete batch, as DDP training does anyway).

    Args:
        x: this rank's ``(B, ...)`` tensor.
        with_grad: ``True`` uses ``torch.distributed.nn.functional.all_gather``, whose backward *sums* the
            gradients every rank computed for each slice and returns its own slice to each rank (reduce-scatter),
            so a loss built from the gathered tensor back-propagates into every rank's encoder. ``False`` uses
            the plain collective (no autograd) and puts the local ``x`` back into its slot, so gradients still
            reach the local features through their own slice (open_clip's ``gather_with_grad=False``).

    Returns:
        ``(world_size * B, ...)`` tensor; ``x`` itself when not running distributed or with one process.
    """
    rank, world = rank_and_world()
    if world == 1:
        return x
    if with_grad:
        # torch >= 2.10 flags this public autograd collective as deprecated in favour of the private
        # ``torch.distributed._functional_collectives``; it still works, and it is the one spelling that exists
        # across every torch version this project supports (>= 2.4), so the warning is silenced here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            parts = dist_fn.all_gather(x)
        return torch.cat(parts, dim=0)
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank] = x
    return torch.cat(parts, dim=0)
