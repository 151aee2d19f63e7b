"""Two-process CPU (gloo) runs for the distributed-loss tests: each rank saves ``rank{r}.pt`` to a folder."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def init_gloo(rank: int, world: int, port: int) -> None:
    """Join a local gloo process group (one CPU thread per rank)."""
    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(worker, world: int, out_dir: Path) -> list:
    """Spawn ``worker(rank, port, out_dir)`` on ``world`` processes; return what each saved as ``rank{r}.pt``."""
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=world, join=True)
    return [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world)]
