import math

import pytest
import torch

from flatlab.data import BatchLoader
from tests.helpers.reference import ref_crop, ref_cutout

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _data(n=37, c=3, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8, generator=g), torch.arange(n) % 5


def _loader(images, labels, **kw):
    base = dict(batch_size=8, crop_padding=2, flip=True, cutout=3, mean=MEAN, std=STD, seed=7)
    base.update(kw)
    return BatchLoader(images, labels, **base)


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def _ref_batch(images, draws, padding, size, mode="reflect"):
    """Per-sample reference of crop -> flip -> normalise -> cutout, using the loader's own draws."""
    out = []
    for i in range(images.shape[0]):
        x = ref_crop(images[i : i + 1], draws.crop[i : i + 1], padding, mode)[0]
        if draws.flip[i]:
            x = x.flip(-1)
        x = (x.double() / 255 - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        out.append(ref_cutout(x[None], draws.cutout[i : i + 1], size)[0])
    return torch.stack(out)


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_batches_match_per_sample_reference(pad_mode):
    images, labels = _data()
    loader = _loader(images, labels, pad_mode=pad_mode)
    order = loader.epoch_indices(0)
    seen = 0
    for x, y in loader:
        idx = order[seen : seen + len(y)]
        seen += len(y)
        assert torch.equal(y, labels[idx])
        expected = _ref_batch(images[idx], loader.last_draws, 2, 3, pad_mode)
        torch.testing.assert_close(x.double(), expected, atol=1e-5, rtol=1e-5)
        assert x.dtype == torch.float32 and x.is_contiguous()
    assert seen == 37


def test_without_augmentation_batches_are_normalised_slices():
    images, labels = _data()
    loader = BatchLoader(images, labels, batch_size=10, shuffle=False, mean=MEAN, std=STD)
    x = torch.cat([b for b, _ in loader])
    ref = (images.double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(x.double(), ref, atol=1e-5, rtol=1e-5)


def test_epoch_depends_only_on_seed_and_epoch():
    images, labels = _data()
    a = _loader(images, labels)
    epochs_a = [_epoch(a) for _ in range(3)]  # epochs 0, 1, 2 by auto-advance
    b = _loader(images, labels)
    b.set_epoch(2)
    epoch2_b = _epoch(b)
    for (xa, ya), (xb, yb) in zip(epochs_a[2], epoch2_b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(epochs_a[0][0][1], epochs_a[1][0][1]), "epochs must differ in order"
    c = _loader(images, labels, seed=8)
    assert not torch.equal(_epoch(c)[0][1], epochs_a[0][0][1]), "seeds must differ"


def test_set_epoch_between_iter_and_next_does_not_change_the_claimed_epoch():
    images, labels = _data()
    a, b = _loader(images, labels), _loader(images, labels)
    it = iter(a)
    a.set_epoch(5)
    assert torch.equal(next(it)[1], next(iter(b))[1])


def test_no_shuffle_is_sequential():
    images, labels = _data()
    loader = BatchLoader(images, labels, batch_size=8, shuffle=False)
    assert torch.equal(torch.cat([y for _, y in loader]), labels)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("n", [36, 37])
def test_ddp_shards_are_disjoint_equal_and_cover(world_size, n):
    images, labels = _data(n=n)
    loaders = [_loader(images, labels, rank=r, world_size=world_size) for r in range(world_size)]
    for epoch in (0, 1):
        shards = [loader.epoch_indices(epoch) for loader in loaders]
        sizes = {len(s) for s in shards}
        assert sizes == {n // world_size}
        union = torch.cat(shards)
        assert len(set(union.tolist())) == len(union), "shards overlap"
        # Together they are the head of one global permutation; only n % world_size samples sit out.
        assert len(union) == n - n % world_size
        permutation = torch.cat(
            [*shards, torch.tensor(sorted(set(range(n)) - set(union.tolist())), dtype=torch.long)]
        )
        assert sorted(permutation.tolist()) == list(range(n))
    # Ranks augment differently even though they share the permutation.
    if world_size > 1:
        next(iter(loaders[0])), next(iter(loaders[1]))
        assert not torch.equal(loaders[0].last_draws.crop, loaders[1].last_draws.crop)


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 8, 37, 50])
def test_len_and_drop_last(drop_last, batch_size):
    images, labels = _data()
    loader = BatchLoader(images, labels, batch_size=batch_size, drop_last=drop_last)
    sizes = [len(y) for _, y in loader]
    expected = 37 // batch_size if drop_last else math.ceil(37 / batch_size)
    assert len(loader) == len(sizes) == expected
    if drop_last:
        assert all(s == batch_size for s in sizes)
    else:
        assert sum(sizes) == 37 and all(s == batch_size for s in sizes[:-1])


def test_data_is_moved_to_device_once_and_options_apply():
    images, labels = _data()
    loader = BatchLoader(
        images, labels.int(), batch_size=8, device="cpu", dtype=torch.bfloat16, channels_last=True
    )
    x, y = next(iter(loader))
    assert loader.images.device.type == "cpu" and y.dtype == torch.int64
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(batch_size=0), "batch_size"),
        (dict(crop_padding=-1), "crop_padding"),
        (dict(crop_padding=8), "smaller than the image"),
        (dict(pad_mode="wrap"), "pad_mode"),
        (dict(cutout=-2), "cutout"),
        (dict(world_size=0), "world_size"),
        (dict(rank=2, world_size=2), "rank"),
        (dict(mean=(0.5,), std=(0.2,)), "mean needs 3 values"),
        (dict(mean=MEAN, std=(0.2, 0.0, 0.1)), "std must be positive"),
        (dict(dtype=torch.int32), "floating-point"),
    ],
)
def test_validation(kwargs, message):
    images, labels = _data()
    with pytest.raises(ValueError, match=message):
        BatchLoader(images, labels, **kwargs)
    with pytest.raises(ValueError, match="uint8"):
        BatchLoader(images.float(), labels)
    with pytest.raises(ValueError, match="epoch"):
        BatchLoader(images, labels).set_epoch(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_cpu():
    # Draws come from CPU generators, so a GPU run sees exactly the CPU run's order and augmentation.
    images, labels = _data()
    cpu = _epoch(_loader(images, labels))
    gpu = _epoch(_loader(images, labels, device="cuda"))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.device.type == "cuda" and torch.equal(yc, yg.cpu())
        torch.testing.assert_close(xc, xg.cpu(), atol=1e-5, rtol=1e-5)
