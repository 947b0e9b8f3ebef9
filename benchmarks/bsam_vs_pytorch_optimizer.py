"""flatlab's bsam (the authors' bSAM) and pytorch_optimizer 4.1.0's BSAM on one small least-squares
problem, both at pytorch_optimizer's defaults (lr 0.5, rho 0.05, weight decay 1e-4, damping 0.1):
the full-data loss every 50 steps. docs/methods.md quotes it (why bsam does not follow BSAM).

    python benchmarks/bsam_vs_pytorch_optimizer.py
"""

from __future__ import annotations

import torch
from pytorch_optimizer import BSAM

import flatlab


def problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 10, generator=g)
    y = x @ torch.randn(10, 1, generator=g) + 0.1 * torch.randn(256, 1, generator=g)
    return x, y


def run(kind: str, steps: int = 200) -> list[float]:
    x, y = problem()
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 1)
    if kind == "flatlab":
        base = flatlab.optim.BSAMBase(model.parameters(), lr=0.5, weight_decay=1e-4, damping=0.1)
        opt = flatlab.BSAM(base, rho=0.05, num_data=len(x), seed=0)
    else:
        opt = BSAM(model.parameters(), num_data=len(x), lr=0.5, rho=0.05, weight_decay=1e-4, damping=0.1)
    rows = torch.Generator().manual_seed(1)
    losses = []
    for step in range(steps + 1):
        idx = torch.randint(0, len(x), (32,), generator=rows)

        def closure(idx=idx):
            opt.zero_grad()
            loss = ((model(x[idx]) - y[idx]) ** 2).mean()
            loss.backward()
            return loss

        if kind != "flatlab":
            closure()  # its first step reads which parameters have a gradient
        opt.step(closure)
        if step % 50 == 0:
            with torch.no_grad():
                losses.append(float(((model(x) - y) ** 2).mean()))
    return losses


def main() -> None:
    for kind in ("flatlab", "pytorch_optimizer"):
        print(f"{kind:>18}: " + "  ".join(f"{v:.4g}" for v in run(kind)))


if __name__ == "__main__":
    main()
