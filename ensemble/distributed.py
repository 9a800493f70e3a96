"""Multi-process runs with torch.distributed (started by `torchrun` or `ens ... --nproc N`).

One process per device; rank 0 writes checkpoints, logs and outputs, every rank trains on its shard
of each epoch. CPU runs use the gloo backend (tests), GPUs nccl.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from .errors import EnsError


@dataclass(frozen=True)
class World:
    """This process's place in the run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The current world; starts the process group when launched by torchrun (WORLD_SIZE > 1)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def device_for(w: World, wanted: torch.device) -> torch.device:
    """Each rank on its own accelerator (LOCAL_RANK); CPU stays CPU."""
    if w.size > 1 and wanted.type == "cuda":
        torch.cuda.set_device(w.local_rank)
        return torch.device("cuda", w.local_rank)
    return wanted


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()


def per_rank_batch(batch_size: int, w: World) -> int:
    """The recipe's batch size is global: each rank gets an equal share."""
    if batch_size % w.size:
        raise EnsError(f"optim.batch_size: {batch_size} is not divisible by the {w.size} processes")
    return batch_size // w.size


class ShardedSampler(Sampler[int]):
    """Rank r of n takes positions r, r+n, r+2n, ... of the wrapped sampler's epoch order, padded by
    wrapping around so every rank gets the same count. Consecutive per-rank batches of b/n together
    are the single-process batch of b, so gradient averaging reproduces the single-process step."""

    def __init__(self, sampler, w: World):
        self.sampler, self.w = sampler, w

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.w.size)

    def __iter__(self):
        order = list(self.sampler)
        total = len(self) * self.w.size
        order += order[: total - len(order)]
        return iter(order[self.w.rank::self.w.size])


def gather_rows(part: np.ndarray, rows: np.ndarray, total: int, w: World) -> np.ndarray:
    """Every rank's (rows, features) -> the full [total, D] array, on every rank."""
    if w.size == 1:
        return part
    pieces: list = [None] * w.size
    dist.all_gather_object(pieces, (rows, part))
    out = np.zeros((total, part.shape[1]), part.dtype)
    for r, p in pieces:
        out[r] = p
    return out
