import pytest
import torch

from tests.helpers.nets import batches


@pytest.fixture(autouse=True)
def one_thread():
    # These tensors are tiny: with intra-op threads on a busy 2-core machine a step takes 30x
    # longer than on one thread.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data():
    return batches()
