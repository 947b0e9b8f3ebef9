import pytest

from flatlab.train import TrainConfig


@pytest.fixture
def quick(tmp_path):
    """A tiny, fast config on the embedded digits (a few tenths of a second per epoch)."""

    def make(**changes):
        values = dict(dataset="digits", model="cnn", width=0.5, epochs=2, batch_size=128, lr=0.05,
                      out=str(tmp_path / "runs"), threads=1)
        values.update(changes)
        return TrainConfig(**values)

    return make
