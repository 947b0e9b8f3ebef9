"""Run under torchrun (2 processes): DDP replicas stepping SAM with m-sharpness on their halves of a
batch equal one process stepping it on the whole batch with the same groups (each rank's rows are
consecutive, so its groups of m are the one process's)."""

import gc

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import flatlab


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3)).double()


def losses(model, x, y):
    return flatlab.per_sample(lambda idx: F.cross_entropy(model(x if idx is None else x[idx]),
                                                          y if idx is None else y[idx], reduction="none"),
                              size=len(x))


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(5)
    data = [(torch.randn(16, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (16,), generator=g))
            for _ in range(3)]
    model, ref = DDP(net()), net()
    opt = flatlab.create_optimizer("sam", model, lr=0.1, momentum=0.9, m=4)
    ref_opt = flatlab.create_optimizer("sam", ref, lr=0.1, momentum=0.9, m=4)
    half = 16 // world
    for x, y in data:
        mine = slice(rank * half, (rank + 1) * half)
        opt.step(losses(model, x[mine], y[mine]))
        ref_opt.step(losses(ref, x, y))
    for p, q in zip(model.module.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
    print("equal", rank, flush=True)
    del model, opt
    gc.collect()  # free the DDP state while the group lives
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
