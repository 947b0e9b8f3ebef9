import pytest

from flatlab.sparse import WeightMasking, create_masking, list_sparse_methods
from tests.helpers.nets import batches, small_cnn


def test_every_method_builds_and_inits():
    assert list_sparse_methods() == ["random", "magnitude", "snip", "grasp", "set", "rigl"]
    for name in list_sparse_methods():
        masking = create_masking(name, small_cnn(), 0.5, distribution="uniform")
        assert isinstance(masking, WeightMasking) and masking.method == name
        masking.init(data=batches(1))
        assert masking.report()["overall"]["live"] == 255
        assert name in repr(masking)


def test_unknown_name_and_bad_sparsity():
    with pytest.raises(ValueError, match="'gmp'"):
        create_masking("gmp", small_cnn(), 0.5)
    for bad in (1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=f"sparsity={bad}"):
            create_masking("rigl", small_cnn(), bad)
    with pytest.raises(ValueError, match="method"):
        create_masking("rigl", small_cnn(), 0.5, method="set")
