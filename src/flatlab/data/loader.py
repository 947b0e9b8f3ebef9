"""`BatchLoader`: epochs over an in-memory uint8 dataset by index slicing, augmenting whole batches."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .augment import PAD_MODES, AugmentDraws, crop, cutout, draw_augment, hflip, normalize

#: One batch, ``(inputs, targets)``: what ``BatchLoader`` yields and what sparse-training criteria and
#: the analyses read.
Batch = tuple[torch.Tensor, torch.Tensor]


def _seeded(*words: int) -> torch.Generator:
    # SeedSequence mixes (seed, epoch, stream) into a well-spread 64-bit seed; `seed * K + epoch`
    # would make nearby (seed, epoch) pairs collide.
    state = np.random.SeedSequence([int(w) for w in words]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


_PERMUTATION, _AUGMENT = 0, 1


class BatchLoader:
    """Iterate `(images, labels)` batches from uint8 tensors held on `device`.

    The dataset is moved to `device` once; each batch is an index into it, augmented on the whole
    batch with tensor ops (padded random crop, horizontal flip, cutout), then converted to float and
    normalised per channel. Cutout runs after normalisation, so the square is filled with 0, the
    channel mean.

    Reproducibility: epoch `e`'s order depends only on `(seed, e)` and its augmentation only on
    `(seed, e, rank)`. `set_epoch(e)` selects the epoch; without it, each new iteration
    advances the epoch by one, so forgetting `set_epoch` does not repeat the same order forever.

    DDP: with `world_size > 1` every rank draws the same global permutation and takes every
    `world_size`-th index of it, starting at its rank: shards are disjoint and equal in size (the
    few samples left over differ from epoch to epoch when shuffling), and the ranks' batches k
    together form the global batch k of a single process with `world_size` times the batch.

    Args:
        images: uint8 `[N, C, H, W]`. labels: int `[N]`.
        batch_size: samples per batch (per rank).
        shuffle: draw a new permutation each epoch; else sequential order.
        drop_last: drop the last, smaller batch.
        crop_padding: pad by this much and crop back to size at a random offset (0: off).
        pad_mode: `"reflect"`, `"zeros"` or `"replicate"`.
        flip: mirror each sample left-right with probability 1/2.
        cutout: side of the square erased per sample (0: off).
        mean, std: per-channel normalisation in [0, 1] units (e.g. `ImageArrays.mean_std()`);
            `None` only scales to [0, 1].
        device: where data and batches live (default: where `images` already are).
        dtype: float dtype of the image batches.
        channels_last: return batches in channels-last memory format (faster convolutions on GPU).
        seed: base seed for orders and augmentation.
        rank, world_size: DDP sharding.

    Example:
        >>> from flatlab.data import load_digits
        >>> data = load_digits()
        >>> loader = BatchLoader(data.train_images, data.train_labels, batch_size=256,
        ...                      crop_padding=1, flip=True, mean=data.mean_std()[0], std=data.mean_std()[1])
        >>> len(loader)
        6
        >>> x, y = next(iter(loader))
        >>> x.shape, x.dtype, y.shape
        (torch.Size([256, 1, 8, 8]), torch.float32, torch.Size([256]))
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 512,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        crop_padding: int = 0,
        pad_mode: str = "reflect",
        flip: bool = False,
        cutout: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels)
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
            raise ValueError(f"labels must be [N] with N={images.shape[0]}, got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        if pad_mode == "reflect" and crop_padding >= min(images.shape[2:]):
            raise ValueError(
                f"crop_padding must be smaller than the image for reflect padding, got {crop_padding}"
            )
        if cutout < 0:
            raise ValueError(f"cutout must be >= 0, got {cutout}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if images.shape[0] < world_size:
            raise ValueError(
                f"{images.shape[0]} samples cannot be split across world_size={world_size} ranks"
            )
        for name, values in (("mean", mean), ("std", std)):
            if values is not None and len(values) != images.shape[1]:
                raise ValueError(
                    f"{name} needs {images.shape[1]} values (one per channel), got {list(values)}"
                )
        if std is not None and min(std) <= 0:
            raise ValueError(f"std must be positive, got {list(std)}")

        self.device = torch.device(device) if device is not None else images.device
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.crop_padding = crop_padding
        self.pad_mode = pad_mode
        self.flip = flip
        self.cutout = cutout
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.dtype = dtype
        self.channels_last = channels_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.last_draws: AugmentDraws | None = None  # the latest batch's random parameters, for inspection

    @property
    def num_samples(self) -> int:
        """Samples this rank sees per epoch (before `drop_last`)."""
        return self.images.shape[0] // self.world_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch `epoch` (same order and augmentation on every run)."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices for `epoch`, in iteration order (on `device`).

        Example:
            >>> import torch
            >>> imgs = torch.zeros(10, 1, 2, 2, dtype=torch.uint8)
            >>> ranks = [BatchLoader(imgs, torch.zeros(10), rank=r, world_size=2) for r in range(2)]
            >>> a, b = (loader.epoch_indices(3) for loader in ranks)
            >>> sorted(a.tolist() + b.tolist())
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        """
        n = self.images.shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=_seeded(self.seed, epoch, _PERMUTATION))
        else:
            order = torch.arange(n)
        # Strided shards: batch k of every rank is a slice of the same global batch k, so a DDP run
        # with world_size ranks of batch b sees exactly the batches of one process with batch
        # world_size * b (the property that makes the two runs equal where the maths says so).
        per_rank = self.num_samples
        return order[: per_rank * self.world_size][self.rank :: self.world_size].to(self.device)

    def augment(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Apply this loader's augmentation and normalisation to a uint8 batch."""
        n, _, h, w = images.shape
        draws = draw_augment(
            n, h, w, padding=self.crop_padding, flip=self.flip, cutout_size=self.cutout, generator=generator
        )
        self.last_draws = draws
        if draws.crop is not None:
            images = crop(images, draws.crop, self.crop_padding, self.pad_mode)
        if draws.flip is not None:
            images = hflip(images, draws.flip)
        x = normalize(images, self.mean, self.std, self.dtype)
        if draws.cutout is not None:
            x = cutout(x, draws.cutout, self.cutout)
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=memory_format)

    def __iter__(self) -> Iterator[Batch]:
        # Not a generator function itself: the epoch is claimed when iter() is called, not at the
        # first next(), so set_epoch() between the two cannot be silently half-applied.
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = self.epoch_indices(epoch)
        generator = _seeded(self.seed, epoch, _AUGMENT, self.rank)
        stop = len(self) * self.batch_size if self.drop_last else len(indices)
        for start in range(0, stop, self.batch_size):
            idx = indices[start : start + self.batch_size]
            yield self.augment(self.images[idx], generator), self.labels[idx]
