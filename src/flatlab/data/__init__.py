"""Datasets and loaders for flatlab.

Small datasets are `ImageArrays` (uint8 tensors in memory) fed by `BatchLoader`, which slices
and augments whole batches on the device; large image folders stream through
`ImageFolderDataset` and a `torch.utils.data.DataLoader`.

Example:
    >>> from flatlab.data import BatchLoader, load_dataset
    >>> data = load_dataset("digits")
    >>> mean, std = data.mean_std()
    >>> loader = BatchLoader(data.train_images, data.train_labels, batch_size=128, flip=True,
    ...                      mean=mean, std=std)
    >>> sum(len(y) for _, y in loader)
    1437
"""

from .arrays import ImageArrays
from .augment import AugmentDraws, crop, cutout, draw_augment, hflip, normalize
from .cache import cache_dir, data_dir
from .cifar import load_cifar10, load_cifar100
from .download import download_verified, md5sum, safe_extract
from .embedded import load_digits, stratified_split
from .errors import DatasetFormatError
from .idx import load_fashion_mnist, load_mnist, read_idx
from .imagefolder import ImageFolderDataset, load_image_folder
from .loader import Batch, BatchLoader
from .registry import DEFAULT_DATASET, is_embedded, list_datasets, load_dataset, register_dataset, unregister_dataset
from .transforms import random_resized_crop, resize_center_crop

__all__ = [
    "DEFAULT_DATASET",
    "AugmentDraws",
    "Batch",
    "BatchLoader",
    "DatasetFormatError",
    "ImageArrays",
    "ImageFolderDataset",
    "cache_dir",
    "crop",
    "cutout",
    "data_dir",
    "download_verified",
    "draw_augment",
    "hflip",
    "is_embedded",
    "list_datasets",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_image_folder",
    "load_mnist",
    "md5sum",
    "normalize",
    "random_resized_crop",
    "read_idx",
    "register_dataset",
    "resize_center_crop",
    "safe_extract",
    "stratified_split",
    "unregister_dataset",
]
