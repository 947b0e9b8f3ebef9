"""The optional ``progress(done, total)`` callbacks of the long analysis loops, and the averaged 1-D
landscape built on ``loss_surface_1d``."""

import pytest
import torch

from flatlab.analysis import (
    averaged_loss_surface_1d,
    averaged_loss_surface_2d,
    evaluate_corruptions,
    gaussian_direction_pairs,
    hutchinson_trace,
    linearity,
    loss_surface_1d,
    random_direction,
    relative_gradient_difference,
    sds_statistics,
    spectral_density,
    top_eigenvalues,
)
from tests.helpers.nets import image_data, split, tiny_cnn


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, done, total):
        self.calls.append((done, total))

    def check(self, total):
        assert self.calls, "progress was never called"
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones) and dones[0] >= 1
        assert all(t == total for _, t in self.calls)
        assert self.calls[-1] == (total, total)


@pytest.fixture
def setup():
    model = tiny_cnn().eval()
    x, y = image_data(12)
    return model, split(x, y, [6, 6])


def test_landscape_progress_and_averaged_1d(setup):
    model, batches = setup
    alphas = torch.linspace(-1, 1, 5)
    dirs = [random_direction(model, seed=s) for s in (0, 1, 2)]
    rec = Recorder()
    avg = averaged_loss_surface_1d(model, batches, dirs, alphas, progress=rec)
    rec.check(15)
    curves = [loss_surface_1d(model, batches, d, alphas) for d in dirs]
    torch.testing.assert_close(avg.loss, torch.stack([c.loss for c in curves]).mean(0))
    torch.testing.assert_close(avg.accuracy, torch.stack([c.accuracy for c in curves]).mean(0))
    with pytest.raises(ValueError, match="empty"):
        averaged_loss_surface_1d(model, batches, [], alphas)
    rec = Recorder()
    pairs = gaussian_direction_pairs(model, groups=2)
    averaged_loss_surface_2d(model, batches, pairs, [-1, 0, 1], [0, 1], progress=rec)
    rec.check(12)


def test_hessian_progress(setup):
    model, batches = setup
    rec = Recorder()
    top_eigenvalues(model, batches, k=2, iters=6, progress=rec)
    rec.check(6)
    rec = Recorder()
    hutchinson_trace(model, batches, samples=3, progress=rec)
    rec.check(3)
    rec = Recorder()
    spectral_density(model, batches, runs=2, iters=4, progress=rec)
    rec.check(8)


def test_gradstats_and_corruption_progress(setup):
    model, batches = setup
    for fn in (relative_gradient_difference, sds_statistics, linearity):
        rec = Recorder()
        fn(model, batches, progress=rec)
        rec.check(2)
    raw = [((x.clamp(-2, 2) + 2) / 4, y) for x, y in batches]
    rec = Recorder()
    evaluate_corruptions(model, raw, ["contrast", "jpeg"], (1, 5), progress=rec)
    rec.check((1 + 2 * 2) * 2)
    with pytest.raises(ValueError, match="severity"):
        evaluate_corruptions(model, raw, ["contrast"], (0,))
