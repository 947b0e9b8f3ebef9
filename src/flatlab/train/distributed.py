"""torchrun support: the same command trains with DDP when launched under `torchrun`."""

from __future__ import annotations

import atexit
import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Distributed", "setup_distributed", "launched_rank"]


@dataclass
class Distributed:
    """This process's place in a `torchrun` launch (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process is rank 0 (the one that prints and writes)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Waits for every process."""
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: list[float], device: torch.device) -> list[float]:
        """The values summed over all processes."""
        if not self.enabled:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        """Frees the process group."""
        if self.enabled and dist.is_initialized():
            # The DDP module of the run (in reference cycles with its optimizer) must be freed
            # while the process group lives: a reducer destroyed at interpreter exit tears down
            # gloo threads mid-flight and aborts ("terminate called without an active exception").
            # The group itself lives on for the process's next run (see setup_distributed).
            gc.collect()


def launched_rank() -> int:
    """This process's rank under torchrun (0 when not launched by it), before any process group."""
    return int(os.environ.get("RANK", "0"))


def setup_distributed(device: torch.device) -> Distributed:
    """Initialises the process group from torchrun's environment (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed()
    rank = launched_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        # One group for the life of the process: a group destroyed and created again in the same
        # torchrun worker (the runs of `flatlab train --seeds`) hangs in its rendezvous.
        atexit.register(_destroy)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def _destroy() -> None:
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
