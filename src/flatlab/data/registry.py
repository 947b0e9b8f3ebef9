"""Datasets by name: `load_dataset("cifar10", root)` and `list_datasets()`."""

from __future__ import annotations

import os
from collections.abc import Callable

from ..errors import UsageError
from .arrays import ImageArrays
from .cifar import load_cifar10, load_cifar100
from .embedded import load_digits
from .idx import load_fashion_mnist, load_mnist
from .imagefolder import load_image_folder

# A loader takes (root, download, **options) and returns ImageArrays.
Loader = Callable[..., ImageArrays]
_REGISTRY: dict[str, Loader] = {}
DEFAULT_DATASET = "digits"


def register_dataset(name: str, loader: Loader | None = None):
    """Register `loader(root, download, **kw) -> ImageArrays` under `name` (usable as a decorator).

    Example:
        >>> @register_dataset("digits-small")
        ... def _small(root=None, download=False, **kw):
        ...     return load_digits(test_size=100, **kw)
        >>> load_dataset("digits-small").num_test
        100
        >>> unregister_dataset("digits-small")
    """
    key = _canonical(name)

    def add(fn: Loader) -> Loader:
        if key in _REGISTRY:
            raise ValueError(f"dataset {key!r} is already registered")
        _REGISTRY[key] = fn
        return fn

    return add if loader is None else add(loader)


def unregister_dataset(name: str) -> None:
    """Remove a registered dataset (for tests and plug-ins that replace an entry)."""
    _REGISTRY.pop(_canonical(name), None)


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


_ALIASES = {
    "fashionmnist": "fashion-mnist",
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "image-folder": "imagefolder",
}


_EMBEDDED = {"digits"}  # shipped inside the package: no files to read, nothing to download


def is_embedded(name: str) -> bool:
    """Whether the dataset `name` ships inside flatlab (so a `root` has nothing to point at).

    Example:
        >>> is_embedded("digits"), is_embedded("CIFAR-10")
        (True, False)
    """
    key = _canonical(name)
    return _ALIASES.get(key, key) in _EMBEDDED


def list_datasets() -> list[str]:
    """Names accepted by `load_dataset`, sorted.

    Example:
        >>> list_datasets()
        ['cifar10', 'cifar100', 'digits', 'fashion-mnist', 'imagefolder', 'mnist']
    """
    return sorted(_REGISTRY)


def load_dataset(
    name: str = DEFAULT_DATASET, root: str | os.PathLike | None = None, download: bool = False, **kw
) -> ImageArrays:
    """Load a dataset by name as `ImageArrays`; `kw` goes to the dataset's loader.

    `root` is where the files are (default `data_dir()`; required for `imagefolder`, where it
    is the folder or `.tar.gz`). `download=True` fetches missing official files where the
    dataset has a download (CIFAR, MNIST, Fashion-MNIST).

    Example:
        >>> data = load_dataset()  # the embedded digits: no files, no download
        >>> data.name, data.num_train, data.num_test
        ('digits', 1437, 360)
        >>> load_dataset("nope")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        flatlab.errors.UsageError: unknown dataset 'nope'; available: cifar10, cifar100, digits, fashion-mnist, ...
    """
    key = _canonical(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise UsageError(f"unknown dataset {name!r}; available: {', '.join(list_datasets())}")
    return _REGISTRY[key](root=root, download=download, **kw)


@register_dataset("digits")
def _digits(root=None, download=False, **kw) -> ImageArrays:
    return load_digits(**kw)  # embedded in the package: root and download have nothing to do


@register_dataset("cifar10")
def _cifar10(root=None, download=False) -> ImageArrays:
    return load_cifar10(root, download)


@register_dataset("cifar100")
def _cifar100(root=None, download=False) -> ImageArrays:
    return load_cifar100(root, download)


@register_dataset("fashion-mnist")
def _fashion_mnist(root=None, download=False) -> ImageArrays:
    return load_fashion_mnist(root, download)


@register_dataset("mnist")
def _mnist(root=None, download=False) -> ImageArrays:
    return load_mnist(root, download)


@register_dataset("imagefolder")
def _imagefolder(root=None, download=False, **kw) -> ImageArrays:
    if root is None:
        raise UsageError(
            "the imagefolder dataset needs root= (a folder with train/ and test/, or its .tar.gz)"
        )
    if download:
        raise UsageError("the imagefolder dataset has no download; pass root= pointing at the files")
    return load_image_folder(root, **kw)
