"""What the tests share: one copy of each model, data set, training step, reference computation and
fixture file writer. Test modules import from here (``from tests.helpers.nets import tiny_net``),
never from one another or from a conftest, which holds fixtures only."""
