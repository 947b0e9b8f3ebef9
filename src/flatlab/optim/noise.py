"""Gaussian noise for the methods that perturb at random (RWP, bSAM), drawn where the weights live.

Noise is drawn on each parameter's device from a generator of that device, seeded on first use from
the optimizer's generator, and the generators' states are saved with the optimizer: a resumed run
draws the noise an uninterrupted one would. (Drawing on the host from the optimizer's own CPU
generator would copy a parameter-sized tensor to the accelerator at every step.)

Every replica of a data-parallel run draws the same noise (the same seed); a sharded (FSDP)
tensor's shard is the matching slice of the noise the whole tensor would get, so a sharded run
perturbs as one process does.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

__all__ = ["NormalNoise"]


class NormalNoise:
    """Standard normal tensors shaped like given ones, from per-device generators.

    Args:
        generator: the optimizer's generator, which seeds each device's generator on first use.
    """

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.devices: dict[str, torch.Generator] = {}

    def _on(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self.devices:
            seed = int(torch.randint(0, 2**62, (), generator=self.generator, dtype=torch.int64))
            self.devices[key] = torch.Generator(device=device).manual_seed(seed)
        return self.devices[key]

    def like(self, tensors: list[Tensor]) -> list[Tensor]:
        """One standard normal tensor per entry of `tensors`, in order; the local shard of a
        sharded tensor (drawn whole, then sliced: as one process would draw it).
        """
        out = []
        for t in tensors:
            local = t.to_local() if isinstance(t, DTensor) else t
            generator = self._on(local.device)
            if isinstance(t, DTensor):
                whole = torch.randn(t.shape, generator=generator, device=local.device, dtype=local.dtype)
                shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
                index = tuple(slice(o, o + n) for o, n in zip(offset, shape))
                out.append(whole[index].contiguous())
            else:
                out.append(torch.randn(local.shape, generator=generator, device=local.device, dtype=local.dtype))
        return out

    def state_dict(self) -> dict[str, Any]:
        """The generators' states, by device."""
        return {device: g.get_state() for device, g in self.devices.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Generators in the states that `state_dict` gave."""
        self.devices = {}
        for device, saved in state.items():
            self.devices[device] = torch.Generator(device=device)
            self.devices[device].set_state(saved)
