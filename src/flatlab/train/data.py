"""Building the train/test loaders of a run from its config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data import BatchLoader, ImageArrays, ImageFolderDataset, load_dataset, normalize
from ..data.imagefolder import TEST_SPLITS
from ..errors import UsageError, UserFileNotFoundError
from .config import TrainConfig

__all__ = ["RunData", "build_data"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class RunData:
    """The data of a run: its training and evaluation loaders and the dataset's shape."""

    train: object  # iterable of (x, y) batches with set_epoch() and len()
    test: object
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    num_train: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    arrays: ImageArrays | None = None  # in-memory datasets only

    def fisher_batch(self, num_samples: int, seed: int, step: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """`num_samples` un-augmented training samples, drawn from (seed, step) alone so that a
        resumed run and every DDP rank draw the same ones.
        """
        if self.arrays is None:
            raise UsageError("SSAM-F's Fisher mask needs an in-memory dataset (not --stream)")
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randperm(self.arrays.num_train, generator=g)[:num_samples]
        x = normalize(self.arrays.train_images[idx].to(device), self.mean, self.std)
        return x, self.arrays.train_labels[idx].to(device=device, dtype=torch.int64)


#: the draw of the held-out samples: fixed, and apart from the seeds that draw training subsets
HOLDOUT_SEED = 2**31 - 1

def _subset(images: Tensor, labels: Tensor, n: int | None, seed: int, what: str, of: str) -> tuple[Tensor, Tensor]:
    if n is not None and n > images.shape[0]:
        raise UsageError(f"{what}={n} is more than the {images.shape[0]} {of}: lower it, or drop it to use them all")
    if n is None or n == images.shape[0]:
        return images, labels
    idx = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[idx], labels[idx]


def _hold_out(images: Tensor, labels: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """`n` training samples set aside for evaluation (a fixed draw, the same for every seed and
    method, so that tuning compares like with like), and the rest.
    """
    if n >= images.shape[0]:
        raise UsageError(f"holdout={n} leaves nothing to train on: the training split has {images.shape[0]} samples")
    perm = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(HOLDOUT_SEED))
    held, rest = perm[:n].sort().values, perm[n:].sort().values
    return images[held], labels[held], images[rest], labels[rest]


class _Streaming:
    """A DataLoader over an image folder too large for memory, with the BatchLoader interface."""

    def __init__(self, dataset, batch_size: int, shuffle: bool, workers: int, rank: int, world: int, seed: int,
                 mean, std, device: torch.device, channels_last: bool):
        self.sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=shuffle
        )
        self.loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, sampler=self.sampler, num_workers=workers,
            pin_memory=device.type == "cuda", drop_last=shuffle, persistent_workers=workers > 0,
        )
        self.mean, self.std, self.device, self.channels_last = mean, std, device, channels_last

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for x, y in self.loader:
            x = normalize(x.to(self.device, non_blocking=True), self.mean, self.std)
            yield x.contiguous(memory_format=fmt), y.to(self.device, non_blocking=True)


def build_data(config: TrainConfig, device: torch.device, rank: int = 0, world: int = 1) -> RunData:
    """The data a run's config asks for, this process's share of it under DDP."""
    if config.stream:
        if config.holdout is not None:
            raise UsageError("--holdout needs an in-memory dataset (not --stream)")
        if config.dataset != "imagefolder" or not config.data_root:
            raise UsageError("--stream reads an image folder: use --dataset imagefolder --data-root DIR")
        root = Path(config.data_root).expanduser()
        test_dir = next((root / s for s in TEST_SPLITS if (root / s).is_dir()), None)
        if not (root / "train").is_dir() or test_dir is None:
            raise UserFileNotFoundError(
                f"--stream reads {root}/train/<class>/ and {root}/test/<class>/ (or val/<class>/); not found"
            )
        train_set = ImageFolderDataset(root / "train", train=True)
        test_set = ImageFolderDataset(test_dir, train=False)
        if test_set.classes != train_set.classes:
            raise UsageError(f"{test_dir} has classes {test_set.classes}, {root / 'train'} has {train_set.classes}")
        per_rank = config.batch_size // world
        common = dict(workers=config.workers, rank=rank, world=world, seed=config.seed, mean=IMAGENET_MEAN,
                      std=IMAGENET_STD, device=device, channels_last=config.channels_last)
        return RunData(
            train=_Streaming(train_set, per_rank, True, **common),
            test=_Streaming(test_set, per_rank, False, **{**common, "rank": 0, "world": 1}),
            num_classes=len(train_set.classes), in_channels=3, image_size=(224, 224),
            num_train=len(train_set), mean=IMAGENET_MEAN, std=IMAGENET_STD,
        )
    arrays = load_dataset(config.dataset, root=config.data_root, download=config.download)
    pool_x, pool_y = arrays.train_images, arrays.train_labels
    if config.holdout is not None:
        test_x, test_y, pool_x, pool_y = _hold_out(pool_x, pool_y, config.holdout)
    else:
        test_x, test_y = _subset(arrays.test_images, arrays.test_labels, config.test_subset, 0, "test_subset",
                                 f"test samples of {arrays.name}")
    left = " left after the holdout" if config.holdout is not None else ""
    train_x, train_y = _subset(pool_x, pool_y, config.train_subset, config.seed, "train_subset",
                               f"training samples of {arrays.name}{left}")
    arrays = ImageArrays(train_x, train_y, test_x, test_y, arrays.classes, arrays.name)
    mean, std = arrays.mean_std()
    channels, height, width = arrays.image_shape
    padding = config.crop_padding if config.crop_padding is not None else (4 if min(height, width) >= 28 else 1)
    flip = config.flip if config.flip is not None else channels == 3
    if config.batch_size % world:
        raise UsageError(f"batch_size={config.batch_size} must be divisible by the {world} processes")
    per_rank = config.batch_size // world
    train = BatchLoader(
        train_x, train_y, per_rank, shuffle=True, drop_last=True, crop_padding=padding, flip=flip,
        cutout=config.cutout, mean=mean, std=std, device=device, channels_last=config.channels_last,
        seed=config.seed, rank=rank, world_size=world,
    )
    test = BatchLoader(
        test_x, test_y, max(per_rank, 256), shuffle=False, mean=mean, std=std, device=device,
        channels_last=config.channels_last,
    )
    return RunData(train, test, arrays.num_classes, channels, (height, width), arrays.num_train, mean, std, arrays)
