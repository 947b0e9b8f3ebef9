"""Readers for the official python-pickle CIFAR-10 and CIFAR-100 files (with optional download)."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserFileNotFoundError
from .arrays import ImageArrays
from .cache import data_dir
from .download import download_verified, safe_extract
from .errors import DatasetFormatError


@dataclass(frozen=True)
class CifarSpec:
    """Where a CIFAR dataset's files live, in its archive and on disk."""

    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    url: str
    md5: str

    @property
    def all_files(self) -> tuple[str, ...]:
        """Every file the dataset needs."""
        return (*self.train_files, self.test_file, self.meta_file)

    @property
    def archive(self) -> str:
        """File name of the official archive."""
        return self.url.rsplit("/", 1)[1]


CIFAR10 = CifarSpec(
    name="cifar10",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)

CIFAR100 = CifarSpec(
    name="cifar100",
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)

# The files are pickles, and unpickling can run arbitrary code. They only ever hold dicts, lists,
# strings and numpy arrays, so anything beyond the globals needed for arrays is refused.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file")
        # The official files name numpy.core, which numpy 2 keeps only as a deprecated alias.
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module[len("numpy.core.") :]
        return super().find_class(module, name)


def read_pickle(path: str | os.PathLike) -> dict[str, object]:
    """Load one CIFAR pickle as a dict with `str` keys (the files come from Python 2).

    Raises `DatasetFormatError` naming the file if it is truncated, corrupt or not a dict.

    Example:
        >>> batch = read_pickle("cifar-10-batches-py/data_batch_1")  # doctest: +SKIP
        >>> batch["data"].shape  # doctest: +SKIP
        (10000, 3072)
    """
    try:
        with open(path, "rb") as f:
            # latin1 is how numpy arrays pickled by Python 2 are meant to be read back.
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except OSError:
        raise
    except Exception as exc:  # corrupt bytes surface as any of a dozen exception types
        raise DatasetFormatError(path, f"not a readable CIFAR pickle (truncated or corrupt?): {exc}") from exc
    if not isinstance(obj, dict):
        raise DatasetFormatError(path, f"expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _field(batch: dict, key: str, path: Path):
    if key not in batch:
        raise DatasetFormatError(path, f"missing key {key!r} (has {sorted(batch)})")
    return batch[key]


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = read_pickle(path)
    data = np.asarray(_field(batch, "data", path))
    labels = np.asarray(_field(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetFormatError(path, f"'data' should be uint8 [N, 3072], got {data.dtype} {data.shape}")
    if labels.shape != (data.shape[0],):
        raise DatasetFormatError(path, f"{data.shape[0]} images but labels of shape {labels.shape}")
    # Rows are the 1024 red, then green, then blue values of one image in row-major order.
    return data.reshape(-1, 3, 32, 32), labels


def _resolve_folder(spec: CifarSpec, root: Path) -> Path:
    # Accept both the parent of the extracted folder (torchvision's convention) and the folder itself.
    if root.name == spec.folder and not (root / spec.folder).is_dir():
        return root
    return root / spec.folder


def _missing(folder: Path, spec: CifarSpec) -> list[str]:
    return [name for name in spec.all_files if not (folder / name).is_file()]


def load_cifar(spec: CifarSpec, root: str | os.PathLike | None = None, download: bool = False) -> ImageArrays:
    """Load a CIFAR dataset described by `spec` (`CIFAR10` or `CIFAR100`).

    `root` holds the extracted folder (`root/cifar-10-batches-py/...`) or is that folder;
    default `data_dir()`. With `download=True` missing files are fetched from the official
    URL, md5-checked and extracted into `root`.

    Example:
        >>> data = load_cifar(CIFAR10, "~/data", download=True)  # doctest: +SKIP
    """
    root = Path(root).expanduser() if root is not None else data_dir()
    folder = _resolve_folder(spec, root)
    missing = _missing(folder, spec)
    if missing and download:
        archive = download_verified(spec.url, root / spec.archive, spec.md5)
        safe_extract(archive, root)
        folder = root / spec.folder
        missing = _missing(folder, spec)
    if missing:
        raise UserFileNotFoundError(
            f"{spec.name}: missing {', '.join(missing)} in {folder}. Expected the python-pickle files "
            f"{', '.join(spec.all_files)} in {folder}/. Download {spec.url} (md5 {spec.md5}) and extract it "
            f"into {folder.parent}, or pass --download (download=True in Python)."
        )
    images, labels = zip(*(_read_batch(folder / name, spec.label_key) for name in spec.train_files))
    test_images, test_labels = _read_batch(folder / spec.test_file, spec.label_key)
    meta_path = folder / spec.meta_file
    classes = [
        c.decode() if isinstance(c, bytes) else str(c)
        for c in _field(read_pickle(meta_path), spec.names_key, meta_path)
    ]
    train_labels = np.concatenate(labels)
    for split_name, split_labels in (("train", train_labels), ("test", test_labels)):
        if split_labels.size and (split_labels.min() < 0 or split_labels.max() >= len(classes)):
            raise DatasetFormatError(
                folder,
                f"{split_name} labels outside [0, {len(classes)}) for the {len(classes)} class names "
                f"in {spec.meta_file}",
            )
    return ImageArrays(
        train_images=torch.from_numpy(np.ascontiguousarray(np.concatenate(images))),
        train_labels=torch.from_numpy(train_labels),
        test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
        test_labels=torch.from_numpy(test_labels),
        classes=classes,
        name=spec.name,
    )


def load_cifar10(root: str | os.PathLike | None = None, download: bool = False) -> ImageArrays:
    """CIFAR-10 from `root/cifar-10-batches-py` (50,000 train / 10,000 test, 32x32 RGB).

    Example:
        >>> data = load_cifar10("~/data")  # doctest: +SKIP
        >>> data.num_train, data.num_test, data.num_classes  # doctest: +SKIP
        (50000, 10000, 10)
    """
    return load_cifar(CIFAR10, root, download)


def load_cifar100(root: str | os.PathLike | None = None, download: bool = False) -> ImageArrays:
    """CIFAR-100 from `root/cifar-100-python` with the 100 fine labels.

    Example:
        >>> data = load_cifar100("~/data")  # doctest: +SKIP
        >>> data.num_classes  # doctest: +SKIP
        100
    """
    return load_cifar(CIFAR100, root, download)
