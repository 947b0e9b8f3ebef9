import pytest
import torch

from flatlab.optim.topk import (
    count_for_density,
    drop_grow,
    drop_grow_per_tensor,
    random_mask,
    random_mask_per_tensor,
    topk_mask,
    topk_mask_per_tensor,
)


def test_topk_mask_is_global_and_exact():
    scores = [torch.tensor([[5.0, 1.0], [0.5, 9.0]]), torch.tensor([3.0, 2.0, 7.0])]
    masks = topk_mask(scores, density=3 / 7)
    assert masks[0].tolist() == [[True, False], [False, True]]
    assert masks[1].tolist() == [False, False, True]
    assert sum(int(m.sum()) for m in masks) == 3
    kept = torch.cat([s.flatten()[m.flatten()] for s, m in zip(scores, masks)])
    assert sorted(kept.tolist()) == [5.0, 7.0, 9.0]


@pytest.mark.parametrize("density", [0.0, 0.1, 0.5, 1.0])
def test_random_mask_density_and_reproducibility(density):
    like = [torch.empty(10, 3), torch.empty(7)]
    a = random_mask(like, density, torch.Generator().manual_seed(1))
    b = random_mask(like, density, torch.Generator().manual_seed(1))
    assert sum(int(m.sum()) for m in a) == round(density * 37)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_drop_grow_on_a_tiny_tensor():
    mask = [torch.tensor([True, True, True, False, False, False])]
    drop = [torch.tensor([0.3, 0.1, 0.2, 9.0, 9.0, 9.0])]  # drop the 2 smallest live: idx 1, 2
    grow = [torch.tensor([0.0, 0.0, 0.0, 0.5, 0.9, 0.7])]  # grow the 2 largest dead: idx 4, 5
    (new,) = drop_grow(mask, drop, grow, 2)
    assert new.tolist() == [True, False, False, False, True, True]
    assert mask[0].tolist() == [True, True, True, False, False, False]  # input untouched


def test_drop_grow_caps_the_count():
    (new,) = drop_grow([torch.tensor([True, False])], [torch.ones(2)], [torch.ones(2)], 5)
    assert new.tolist() == [False, True]


def test_density_validation():
    with pytest.raises(ValueError, match="density"):
        count_for_density(10, 1.5)


def test_per_tensor_variants_give_each_tensor_its_count():
    scores = [torch.tensor([[5.0, 1.0], [0.5, 9.0]]), torch.tensor([3.0, 2.0, 7.0])]
    a, b = topk_mask_per_tensor(scores, [1, 2])
    assert a.tolist() == [[False, False], [False, True]] and b.tolist() == [True, False, True]
    masks = random_mask_per_tensor([torch.empty(4, 5), torch.empty(3)], [7, 3], torch.Generator().manual_seed(0))
    assert [int(m.sum()) for m in masks] == [7, 3] and masks[0].shape == (4, 5)
    with pytest.raises(ValueError, match="count"):
        topk_mask_per_tensor(scores, [5, 0])


def test_drop_grow_per_tensor_keeps_each_count():
    masks = [torch.tensor([True, True, False, False]), torch.tensor([True, False, False])]
    drop = [torch.tensor([0.1, 0.2, 0.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])]
    grow = [torch.tensor([0.0, 0.0, 0.3, 0.9]), torch.tensor([0.0, 0.5, 0.6])]
    a, b = drop_grow_per_tensor(masks, drop, grow, [1, 1])
    assert a.tolist() == [False, True, False, True] and b.tolist() == [False, False, True]


def test_docstring_examples():
    import doctest

    import flatlab.optim.topk

    assert doctest.testmod(flatlab.optim.topk, extraglobs={"torch": torch}, verbose=False).failed == 0
