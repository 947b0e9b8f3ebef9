"""The training bar counts every step (it used to move every 10th, with the host sync of the loss
check), and shows the numbers of the checks."""

from __future__ import annotations

import torch

from flatlab.train import loop
from flatlab.train.loop import StepRunner, train_one_epoch


class Spy:
    made: list[Spy] = []

    def __init__(self, total, desc, enabled=None, stream=None, **kwargs):
        self.total, self.updates, self.closed = total, [], False
        Spy.made.append(self)

    def update(self, n=1, **fields):
        self.updates.append((n, sorted(fields)))

    def close(self):
        self.closed = True


def test_the_bar_moves_every_step_and_shows_the_checked_numbers(monkeypatch):
    monkeypatch.setattr(loop, "Progress", Spy)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    runner = StepRunner(model, torch.optim.SGD(model.parameters(), lr=0.1), torch.device("cpu"))
    batches = [(torch.randn(2, 4), torch.randint(0, 3, (2,))) for _ in range(23)]
    train_one_epoch(runner, batches, check_every=10)
    (bar,) = Spy.made
    assert bar.total == 23 and bar.closed
    assert [n for n, _ in bar.updates] == [1] * 23
    numbers = ["acc", "img/s", "loss"]
    assert [i + 1 for i, (_, f) in enumerate(bar.updates) if f == numbers] == [10, 20, 23]
    assert all(f in ([], numbers) for _, f in bar.updates)
