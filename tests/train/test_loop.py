"""`StepRunner`: the loss and correct predictions it reports are those of the pass at w."""

import pytest
import torch

import flatlab
from flatlab.train.loop import StepRunner
from tests.helpers.nets import mlp, vector_batches


@pytest.mark.parametrize("options", [{}, {"m": 3}, {"gamma": 0.5}])
@pytest.mark.parametrize("accumulate", [1, 2])
def test_hits_are_counted_once_per_sample_at_w(options, accumulate):
    name = "esam" if "gamma" in options else "sam"
    model = mlp()
    opt = flatlab.create_optimizer(name, model, lr=0.1, momentum=0.9, **options)
    runner = StepRunner(model, opt, torch.device("cpu"), accumulate=accumulate)
    for x, y in vector_batches(3, 8):
        with torch.no_grad():
            expected = int((model(x).argmax(1) == y).sum())  # at w, before the step
        _, hits = runner(x, y)
        assert int(hits) == expected
