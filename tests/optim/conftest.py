import pytest

from tests.helpers.nets import batches


@pytest.fixture
def data():
    return batches()
