import pytest
import torch

from flatlab.data import crop, cutout, draw_augment, hflip, normalize
from tests.helpers.reference import ref_crop, ref_cutout


def _images(n=16, c=3, h=9, w=7, dtype=torch.uint8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g)
    return x.to(dtype)


@pytest.mark.parametrize("mode", ["reflect", "zeros", "replicate"])
@pytest.mark.parametrize("padding", [1, 2, 4])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_crop_matches_per_sample_reference(mode, padding, dtype):
    images = _images(dtype=dtype)
    draws = draw_augment(16, 9, 7, padding=padding, generator=torch.Generator().manual_seed(1))
    assert draws.crop.min() >= 0 and draws.crop.max() <= 2 * padding
    torch.testing.assert_close(
        crop(images, draws.crop, padding, mode), ref_crop(images, draws.crop, padding, mode)
    )


def test_crop_covers_every_offset():
    images = _images(n=1)
    padding = 2
    for oy in range(2 * padding + 1):
        for ox in range(2 * padding + 1):
            offsets = torch.tensor([[oy, ox]])
            assert torch.equal(crop(images, offsets, padding), ref_crop(images, offsets, padding, "reflect"))


def test_crop_at_centre_is_identity():
    images = _images()
    assert torch.equal(crop(images, torch.full((16, 2), 3), 3), images)


def test_crop_rejects_bad_args():
    with pytest.raises(ValueError, match="reflect padding must be smaller"):
        crop(_images(h=4, w=4), torch.zeros(16, 2), 4)
    with pytest.raises(ValueError, match="mode must be one of"):
        crop(_images(), torch.zeros(16, 2), 1, mode="wrap")


def test_flip_matches_per_sample_reference():
    images = _images()
    mask = draw_augment(16, 9, 7, flip=True, generator=torch.Generator().manual_seed(2)).flip
    assert 0 < mask.sum() < 16
    expected = torch.stack([im.flip(-1) if m else im for im, m in zip(images, mask)])
    assert torch.equal(hflip(images, mask), expected)


@pytest.mark.parametrize("size", [1, 3, 8])
def test_cutout_matches_per_sample_reference(size):
    images = _images(dtype=torch.float32)
    corners = draw_augment(16, 9, 7, cutout_size=size, generator=torch.Generator().manual_seed(3)).cutout
    assert corners.min() >= -(size // 2) and (corners[:, 0] + size // 2).max() < 9
    assert torch.equal(cutout(images, corners, size), ref_cutout(images, corners, size))


def test_cutout_can_be_partly_outside():
    out = cutout(torch.ones(1, 1, 4, 4), torch.tensor([[-2, 3]]), 3)
    assert out[0, 0].eq(0).sum() == 1 and out[0, 0, 0, 3] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_normalize_values(dtype):
    images = _images()
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    out = normalize(images, mean, std, dtype)
    ref = (images.double() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert out.dtype == dtype
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_normalize_without_stats_scales_to_unit_range():
    images = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    torch.testing.assert_close(normalize(images), torch.tensor([0.0, 0.2, 1.0]).view(1, 1, 1, 3))
    with pytest.raises(ValueError, match="one per channel"):
        normalize(images, mean=[0.5, 0.5], std=[1, 1])


def test_draws_only_what_is_enabled_and_are_reproducible():
    a = draw_augment(8, 5, 5, padding=1, flip=True, cutout_size=2, generator=torch.Generator().manual_seed(0))
    b = draw_augment(8, 5, 5, padding=1, flip=True, cutout_size=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.crop, b.crop) and torch.equal(a.flip, b.flip) and torch.equal(a.cutout, b.cutout)
    none = draw_augment(8, 5, 5)
    assert none.crop is None and none.flip is None and none.cutout is None
