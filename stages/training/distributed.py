"""Single-process or `torchrun` DistributedDataParallel, decided by the environment torchrun sets.

Launched plainly, everything runs in one process. Under `torchrun --nproc_per_node N` every
process joins one group (NCCL when it has a GPU, gloo on CPU), takes every N-th study of each
epoch's shared permutation, and only rank 0 validates and writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of a per-process number over all processes."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world


def setup(device: str) -> Dist:
    """Join torchrun's process group when launched by it; `device` 'cuda' becomes this rank's GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return Dist(rank, world, device)


def teardown(context: Dist) -> None:
    if context.active and dist.is_initialized():
        dist.destroy_process_group()


def epoch_order(rows: np.ndarray, seed: int, epoch: int, context: Dist) -> np.ndarray:
    """This process's share of the epoch's permutation of `rows`.

    The permutation depends on (seed, epoch) only, so every process and every resumed run sees
    the same one; it is padded by wrapping to a multiple of the world size so that all processes
    take the same number of steps (DDP's all-reduce needs every process at every step).
    """
    order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
    if context.world > 1:
        padded = -(-len(order) // context.world) * context.world
        order = np.resize(order, padded)[context.rank::context.world]
    return order
