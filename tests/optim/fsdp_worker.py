"""Run by tests/optim/test_fsdp.py under torchrun: every method on a fully_shard-ed model (FSDP2,
two CPU processes, gloo), each rank on half of every batch, against one process on the whole
batch. Prints one JSON line on rank 0."""

import json
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

import flatlab

CASES = json.loads(sys.argv[1])


def build(norm=False):
    """The MLP; with ``norm``, a LayerNorm after the first layer (for SAM-ON, which perturbs it)."""
    torch.manual_seed(0)
    middle = [torch.nn.LayerNorm(8)] if norm else []
    return torch.nn.Sequential(torch.nn.Linear(6, 8), *middle, torch.nn.Tanh(), torch.nn.Linear(8, 3))


def run(name, options, model, shard):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
    momentum = {} if name == "bsam" else {"momentum": 0.9}  # bSAM's own base keeps no SGD momentum
    opt = flatlab.create_optimizer(name, model, **{"lr": 0.1, "seed": 0, **momentum, **options})
    for x, y in data:
        if shard is not None:
            x, y = x[4 * shard:4 * shard + 4], y[4 * shard:4 * shard + 4]
        if opt.needs_closure:
            opt.step(flatlab.per_sample(lambda idx, x=x, y=y: F.cross_entropy(
                model(x if idx is None else x[idx]), y if idx is None else y[idx], reduction="none")))
        else:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    with opt.unperturbed():
        return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def main():
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    out = {}
    for name, options in CASES:
        options = dict(options)
        norm = options.pop("norm", False)
        single = run(name, options, build(norm), None)
        model = build(norm)
        for layer in [m for m in model if any(True for _ in m.parameters())] + [model]:
            fully_shard(layer)
        try:
            sharded = run(name, options, model, rank)
        except ValueError as err:
            out[name] = {"error": str(err)}
            continue
        start = list(build(norm).parameters())
        out[name] = {"diff": max(float((a - b).abs().max()) for a, b in zip(single, sharded)),
                     "moved": max(float((a - b).abs().max()) for a, b in zip(single, start))}
    if rank == 0:
        print("RESULT " + json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
