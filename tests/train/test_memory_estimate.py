"""A model that cannot fit is refused in one line before it is allocated (``--width 1000`` used to end
in a 32-line out-of-memory traceback); the papers' models at their usual sizes are not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flatlab.analysis import peak_memory
from flatlab.cli import main
from flatlab.errors import UsageError
from flatlab.models import count_parameters, create_model
from flatlab.train import TrainConfig
from flatlab.train.loop import StepRunner
from flatlab.train.memory import GiB, available_memory, check_memory, estimate_training_memory
from flatlab.train.optimizer import build_optimizer

SRC = str(Path(__file__).parents[2] / "src")


def test_width_1000_is_one_line_naming_the_width_and_the_estimate(tmp_path):
    """In a process whose address space is capped, so that a regression fails fast instead of
    taking the machine's memory."""
    resource = pytest.importorskip("resource")

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (16 * GiB, 16 * GiB))

    proc = subprocess.run([sys.executable, "-m", "flatlab.cli", "train", "--width", "1000", "--threads", "1",
                           "--out", str(tmp_path / "runs")], capture_output=True, text=True, timeout=300,
                          preexec_fn=cap, env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"})
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    # 92.2 G parameters of the CNN at width 1000, held four times (w, grad, momentum, SAM's w copy)
    assert lines[0].startswith("flatlab train: error: width=1000: cnn has 92,162.0M parameters")
    assert "needs at least 1,373.3 GiB (4 copies of its 343.3 GiB of weights" in lines[0]
    assert "lower --width" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_run_larger_than_the_free_memory_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("flatlab.train.memory.available_memory", lambda device: 10 * 2**20)
    code = main(["train", "--width", "4", "--epochs", "1", "--threads", "1", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "width=4: cnn has" in err and "but cpu has 0.0 GiB free" in err
    assert list(tmp_path.iterdir()) == []


def test_the_estimate_counts_every_parameter_without_allocating_them():
    config = TrainConfig(model="resnet18", dataset="cifar10", width=0.5)
    estimate = estimate_training_memory(config, 10, 3, (32, 32))
    real = create_model("resnet18", num_classes=10, in_channels=3, width=0.5)
    assert estimate.parameters == count_parameters(real)
    # SAM on SGD with momentum: w, its gradient, the momentum buffer, SAM's copy of w
    assert estimate.copies == 4 and estimate.weight_bytes == 4 * count_parameters(real)
    assert estimate_training_memory(config.replace(optimizer="sgd"), 10, 3, (32, 32)).copies == 3
    assert estimate_training_memory(config.replace(optimizer="adamw"), 10, 3, (32, 32)).copies == 4
    halved = estimate_training_memory(config.replace(accumulate=2), 10, 3, (32, 32))
    assert halved.activations * 2 == estimate.activations


@pytest.mark.parametrize("model, optimizer, batch", [("cnn", "sam", 128), ("resnet18", "sam", 32),
                                                     ("resnet18", "sgd", 16)])
def test_the_estimate_is_a_floor_of_what_a_training_step_allocates(model, optimizer, batch):
    """Measured: the peak of building the model and optimizer and taking two steps (state exists
    after the first) is at least the estimate, so a refusal is never of a run that would fit."""
    torch.manual_seed(0)
    shape = (1, 8, 8) if model == "cnn" else (3, 32, 32)
    config = TrainConfig(model=model, width=0.25 if model == "resnet18" else 1.0, optimizer=optimizer,
                         batch_size=batch)
    x, y = torch.randn(batch, *shape), torch.randint(0, 10, (batch,))

    def train_steps():
        net = create_model(model, num_classes=10, in_channels=shape[0], width=config.width)
        runner = StepRunner(net, build_optimizer(config, net), torch.device("cpu"))
        for _ in range(2):
            runner(x, y)
        return net, runner

    measured = peak_memory(train_steps).peak
    estimate = estimate_training_memory(config, 10, shape[0], shape[1:])
    assert estimate.total <= measured, (estimate, measured)
    assert estimate.total > measured / 4  # a floor, not a vacuous one


@pytest.mark.parametrize("model, classes, size, batch, world", [
    ("cnn", 10, 8, 128, 1),                # the default run
    ("resnet18", 10, 32, 128, 1),          # SAM / ESAM / SSAM on CIFAR-10
    ("wrn28-10", 100, 32, 128, 1),         # SAM on CIFAR-100
    ("pyramidnet110", 100, 32, 128, 1),
    ("vgg19-bn", 100, 32, 128, 1),
    ("resnet50", 1000, 224, 256, 8),       # ImageNet: batch 256 over 8 GPUs
])
def test_the_papers_models_are_not_refused_on_a_24_gb_machine(model, classes, size, batch, world):
    dataset = "imagefolder" if size == 224 else "cifar100"
    config = TrainConfig(dataset=dataset, model=model, batch_size=batch, optimizer="sam")
    check_memory(config, classes, 3 if size > 8 else 1, (size, size), torch.device("cpu"), world,
                 available=22 * GiB)  # what a 24 GB card has free


def test_refused_one_byte_over_and_accepted_at_the_estimate():
    config = TrainConfig(width=2.0)
    need = estimate_training_memory(config, 10, 1, (8, 8)).total
    check_memory(config, 10, 1, (8, 8), torch.device("cpu"), available=need)
    with pytest.raises(UsageError, match=r"width=2: cnn has .* needs at least"):
        check_memory(config, 10, 1, (8, 8), torch.device("cpu"), available=need - 1)


def test_the_cpus_free_memory_is_read():
    free = available_memory(torch.device("cpu"))
    if sys.platform.startswith("linux"):
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        assert free is not None and 0 < free <= total
