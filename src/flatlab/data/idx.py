"""Reader for the idx format of MNIST and Fashion-MNIST (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserFileNotFoundError
from .arrays import ImageArrays
from .cache import data_dir
from .download import download_verified
from .errors import DatasetFormatError

# Third byte of the magic number -> big-endian element type.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    # Decide by content, not by name: some mirrors serve decompressed files under the .gz name.
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetFormatError(path, f"corrupt or truncated gzip data: {exc}") from exc
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (`.gz` or raw) into a numpy array of its declared dtype and shape.

    The magic number and the exact byte count are checked; problems raise `DatasetFormatError`
    naming the file.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "labels-idx1-ubyte"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise DatasetFormatError(path, f"too short for an idx header ({len(raw)} bytes)")
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise DatasetFormatError(
            path,
            f"bad idx magic number 0x{raw[:4].hex()} (expected 0x0000TTNN: TT a type code, NN dimensions)",
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFormatError(
            path, f"truncated header: {len(raw)} bytes, need {header} for {ndim} dimensions"
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual < expected:
        raise DatasetFormatError(path, f"truncated: {actual} data bytes, header {shape} needs {expected}")
    if actual > expected:
        raise DatasetFormatError(path, f"{actual - expected} unexpected trailing bytes after {shape} data")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


@dataclass(frozen=True)
class IdxSpec:
    """An idx-format dataset (MNIST, Fashion-MNIST): its folders, classes and files."""

    name: str
    folders: tuple[str, ...]
    classes: tuple[str, ...]
    mirrors: tuple[str, ...]
    md5: dict


_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST = IdxSpec(
    name="fashion-mnist",
    folders=("fashion-mnist", "FashionMNIST/raw"),
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    mirrors=(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
)

MNIST = IdxSpec(
    name="mnist",
    folders=("mnist", "MNIST/raw"),
    classes=tuple(str(i) for i in range(10)),
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    md5={
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
)


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _locate(spec: IdxSpec, root: Path) -> tuple[Path, dict[str, Path]] | None:
    for folder in (root, *(root / f for f in spec.folders)):
        found = {key: _find(folder, stem) for key, stem in _FILES.items()}
        if all(found.values()):
            return folder, found
    return None


def load_idx_dataset(
    spec: IdxSpec, root: str | os.PathLike | None = None, download: bool = False
) -> ImageArrays:
    """Load an MNIST-style dataset from idx files in `root` (or `root/<spec.folders>`).

    Each of `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and
    `t10k-labels-idx1-ubyte` may be gzip-compressed (`.gz`) or raw. With `download=True` the
    official `.gz` files are fetched into `root/<spec.folders[0]>` and md5-checked.

    Example:
        >>> data = load_idx_dataset(FASHION_MNIST, "/work/shared/data")  # doctest: +SKIP
        >>> data.image_shape  # doctest: +SKIP
        (1, 28, 28)
    """
    root = Path(root).expanduser() if root is not None else data_dir()
    located = _locate(spec, root)
    if located is None and download:
        target = root / spec.folders[0]
        for filename, md5 in spec.md5.items():
            download_verified([m + filename for m in spec.mirrors], target / filename, md5)
        located = _locate(spec, root)
    if located is None:
        searched = ", ".join(str(f) for f in (root, *(root / f for f in spec.folders)))
        raise UserFileNotFoundError(
            f"{spec.name}: idx files not found. Put {', '.join(s + '(.gz)' for s in _FILES.values())} in "
            f"one of: {searched}. They can be downloaded from {spec.mirrors[0]}, or pass --download "
            "(download=True in Python)."
        )
    _, paths = located
    arrays = {key: read_idx(path) for key, path in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetFormatError(
                paths[f"{split}_images"], f"expected uint8 [N, H, W], got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetFormatError(
                paths[f"{split}_labels"],
                f"{labels.shape} labels do not match {images.shape[0]} images in "
                f"{paths[f'{split}_images'].name}",
            )
        if labels.size and int(labels.max()) >= len(spec.classes):
            raise DatasetFormatError(
                paths[f"{split}_labels"], f"label {int(labels.max())} >= {len(spec.classes)} classes"
            )
    return ImageArrays(
        train_images=torch.from_numpy(arrays["train_images"][:, None].copy()),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(arrays["test_images"][:, None].copy()),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        classes=list(spec.classes),
        name=spec.name,
    )


def load_fashion_mnist(root: str | os.PathLike | None = None, download: bool = False) -> ImageArrays:
    """Fashion-MNIST (60,000 / 10,000 grey 28x28, 10 classes) from idx files.

    Example:
        >>> data = load_fashion_mnist("/work/shared/data")  # doctest: +SKIP
        >>> data.num_train, data.classes[0]  # doctest: +SKIP
        (60000, 'T-shirt/top')
    """
    return load_idx_dataset(FASHION_MNIST, root, download)


def load_mnist(root: str | os.PathLike | None = None, download: bool = False) -> ImageArrays:
    """MNIST (60,000 / 10,000 grey 28x28 digits) from idx files.

    Example:
        >>> data = load_mnist("~/data", download=True)  # doctest: +SKIP
    """
    return load_idx_dataset(MNIST, root, download)
