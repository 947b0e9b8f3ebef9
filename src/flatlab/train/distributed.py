"""torchrun support: the same command trains with DDP when launched under ``torchrun``."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup_distributed"]


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            # The DDP module of the run (in reference cycles with its optimizer) must be freed
            # while the process group lives: a reducer destroyed at interpreter exit tears down
            # gloo threads mid-flight and aborts ("terminate called without an active exception").
            gc.collect()
            dist.destroy_process_group()


def setup_distributed(device: torch.device) -> Distributed:
    """Initialises the process group from torchrun's environment (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)
