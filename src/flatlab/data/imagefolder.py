"""Image-folder datasets: small ones decoded once into cached uint8 arrays, large ones streamed.

Layout (class index = position in the sorted class-folder names):

```python
root/train/<class>/<image>      root/test/<class>/<image>   (or root/val/...)
```

`root` may also be a `.tar` / `.tar.gz` of that layout (optionally inside one top folder),
read directly without extracting.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import sys
import tarfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from ..errors import UserFileNotFoundError
from ..fileio import unwritable
from .arrays import ImageArrays
from .cache import atomic_write, cache_dir
from .errors import DatasetFormatError, require_pillow
from .transforms import random_resized_crop, resize_center_crop, to_tensor_uint8

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff"}
)
TEST_SPLITS = ("test", "val")  # the first one present is the test set
_SPLITS = ("train", *TEST_SPLITS)
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_CACHE_FORMAT = 1
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# ---------------------------------------------------------------------------------------------------
# decoding


def _decode_image(data: bytes, name: str, size: tuple[int, int] | None, channels: int | None) -> np.ndarray:
    """Decode one image to uint8 `[H, W]` (grey) or `[H, W, 3]`; errors name the file."""
    Image = require_pillow()
    try:
        with Image.open(io.BytesIO(data)) as img:
            grey = img.mode in _GRAY_MODES
            img = img.convert("L" if channels == 1 or (channels is None and grey) else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetFormatError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from exc


def _split_location(parts: tuple[str, ...]) -> tuple[tuple[str, ...], str, str] | None:
    """`(prefix, split, class)` of an image path `prefix/split/class/file`, else None."""
    if len(parts) < 3 or parts[-3] not in _SPLITS or any(p.startswith(".") for p in parts):
        return None
    if PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    return parts[:-3], parts[-3], parts[-2]


# ---------------------------------------------------------------------------------------------------
# sources: a directory or a tar archive, both yielding (relative parts, bytes) for image files


class _DirSource:
    def __init__(self, root: Path):
        self.root = root
        self.files: list[tuple[tuple[str, ...], int, int]] = []
        self.class_dirs: set[tuple[tuple[str, ...], str, str]] = set()
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(root).parts
            if len(rel) >= 2 and rel[-2] in _SPLITS:
                self.class_dirs.add((rel[:-2], rel[-2], rel[-1]))
            for filename in sorted(filenames):
                parts = (*rel, filename)
                if _split_location(parts) is not None:
                    st = os.stat(os.path.join(dirpath, filename))
                    self.files.append((parts, st.st_size, st.st_mtime_ns))

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for parts, size, mtime in self.files:
            digest.update(f"{'/'.join(parts)}\0{size}\0{mtime}\n".encode())
        return digest.hexdigest()

    def display(self, parts: tuple[str, ...]) -> str:
        return str(self.root.joinpath(*parts))

    def items(self) -> Iterator[tuple[tuple[str, ...], bytes]]:
        for parts, _, _ in self.files:
            yield parts, self.root.joinpath(*parts).read_bytes()


class _TarSource:
    def __init__(self, archive: Path):
        self.archive = archive
        self.class_dirs: set[tuple[tuple[str, ...], str, str]] = set()

    def fingerprint(self) -> str:
        # Listing the members of a .tar.gz costs a full decompression, so the archive itself is
        # the unit of change: any edit rewrites it and changes its size or mtime.
        st = self.archive.stat()
        return hashlib.sha256(
            f"{self.archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        ).hexdigest()

    def display(self, parts: tuple[str, ...]) -> str:
        return f"{self.archive}:{'/'.join(parts)}"

    def _open(self):
        with open(self.archive, "rb") as f:
            magic = f.read(6)
        for prefix, opener in ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open)):
            if magic.startswith(prefix):
                return opener(self.archive, "rb")
        return open(self.archive, "rb")

    def items(self) -> Iterator[tuple[tuple[str, ...], bytes]]:
        try:
            with self._open() as stream:
                # Stream mode ("r|") reads the archive once front to back, without a member index.
                tar = tarfile.open(fileobj=stream, mode="r|")
                for member in tar:
                    parts = PurePosixPath(member.name).parts
                    if member.isdir() and len(parts) >= 2 and parts[-2] in _SPLITS:
                        self.class_dirs.add((parts[:-2], parts[-2], parts[-1]))
                    if member.isfile() and _split_location(parts) is not None:
                        yield parts, tar.extractfile(member).read()
                # tarfile ends quietly when an archive stops at a member boundary; the
                # decompressors raise on a cut stream, and a complete tar ends with two zero blocks.
                while stream.read(1 << 20):
                    pass
                if stream.tell() < tar.offset + 2 * tarfile.BLOCKSIZE:
                    raise tarfile.ReadError("archive ends before its end-of-archive marker")
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
            raise DatasetFormatError(
                self.archive, f"cannot read the archive (truncated or corrupt?): {exc}"
            ) from exc


def _open_source(root: Path) -> _DirSource | _TarSource:
    if root.is_dir():
        return _DirSource(root)
    if root.is_file():
        if not tarfile.is_tarfile(root):
            raise DatasetFormatError(root, f"not a folder or a tar archive ({', '.join(_TAR_SUFFIXES)})")
        return _TarSource(root)
    raise UserFileNotFoundError(f"image folder {root} does not exist (expected a folder or a .tar.gz)")


# ---------------------------------------------------------------------------------------------------
# decoding a whole small folder


def _stack(records: list[tuple[str, np.ndarray]], root: Path, channels: int) -> np.ndarray:
    shapes = {}
    for name, array in records:
        shapes.setdefault(array.shape[:2], name)
        if len(shapes) > 1:
            (s1, f1), (s2, f2) = shapes.items()
            raise DatasetFormatError(
                root,
                f"images differ in size: {f1} is {s1[0]}x{s1[1]} (HxW) but {f2} is {s2[0]}x{s2[1]}. "
                "Pass size=(H, W) to resize every image, or use ImageFolderDataset for large, varied images.",
            )
    out = np.empty((len(records), channels, *records[0][1].shape[:2]), dtype=np.uint8)
    for i, (_, array) in enumerate(records):
        # Grey images in a colour set are broadcast to three equal channels, as Pillow's L->RGB does.
        out[i] = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return out


def _decode_folder(source, root: Path, size, channels) -> dict[str, object]:
    records: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in _SPLITS}
    prefixes: set[tuple[str, ...]] = set()
    for parts, data in source.items():
        prefix, split, cls = _split_location(parts)
        prefixes.add(prefix)
        name = source.display(parts)
        records[split].append((cls, "/".join(parts), name, _decode_image(data, name, size, channels)))
    if len(prefixes) > 1:
        shown = ", ".join(sorted("/".join(p) + "/" if p else "(top level)" for p in prefixes))
        raise DatasetFormatError(root, f"split folders found under several prefixes: {shown}")
    test_split = next((s for s in TEST_SPLITS if records[s]), None)
    if not records["train"] or test_split is None:
        raise UserFileNotFoundError(
            f"{root}: expected images in train/<class>/ and test/<class>/ (or val/<class>/); found "
            + ", ".join(f"{len(records[s])} in {s}/" for s in _SPLITS)
        )
    prefix = next(iter(prefixes))
    train_classes = {cls for cls, *_ in records["train"]}
    empty = sorted(
        c for p, s, c in source.class_dirs if p == prefix and s == "train" and c not in train_classes
    )
    if empty:
        raise DatasetFormatError(root, f"class folders with no images in train/: {', '.join(empty)}")
    classes = sorted(train_classes)
    unknown = sorted({cls for cls, *_ in records[test_split]} - train_classes)
    if unknown:
        raise DatasetFormatError(root, f"{test_split}/ has classes missing from train/: {', '.join(unknown)}")
    if channels is None:
        channels = 3 if any(r[3].ndim == 3 for s in ("train", test_split) for r in records[s]) else 1
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, object] = {"classes": classes}
    for split, key in (("train", "train"), (test_split, "test")):
        rows = sorted(records[split], key=lambda r: (index[r[0]], r[1]))
        out[f"{key}_images"] = _stack([(r[2], r[3]) for r in rows], root, channels)
        out[f"{key}_labels"] = np.array([index[r[0]] for r in rows], dtype=np.int64)
    return out


# ---------------------------------------------------------------------------------------------------
# public: small folders


def _dataset_name(root: Path) -> str:
    name = root.name
    for suffix in _TAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _normalise_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def load_image_folder(
    root: str | os.PathLike,
    *,
    size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    cache: bool = True,
    cache_root: str | os.PathLike | None = None,
    name: str | None = None,
) -> ImageArrays:
    """Decode a small image folder (or its `.tar.gz`) once into uint8 arrays, cached on disk.

    The cache lives in `cache_root` (default `<cache_dir()>/imagefolder`), keyed by a hash of
    the file list with sizes and modification times (for an archive: its path, size and mtime) and
    of `size`/`channels`; it is written atomically, and a changed folder makes a new one.

    Images must all have one size, unless `size=(H, W)` (or an int) is given, which resizes every
    image bilinearly; mixed sizes otherwise raise a `DatasetFormatError` naming two offending
    files, because silently resizing would change the data. `channels` forces 1 (grey) or 3
    (RGB); by default grey when every image is grey, else RGB.

    Example:
        >>> data = load_image_folder("/work/shared/data/cifar10-jpeg.tar.gz")  # doctest: +SKIP
        >>> data.num_train, data.num_test, data.image_shape  # doctest: +SKIP
        (50000, 10000, (3, 32, 32))
    """
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be None, 1 or 3, got {channels}")
    root = Path(root).expanduser()
    size = _normalise_size(size)
    source = _open_source(root)
    name = name or _dataset_name(root)
    params = {"format": _CACHE_FORMAT, "size": size, "channels": channels}
    if cache:
        folder = Path(cache_root) if cache_root is not None else cache_dir() / "imagefolder"
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        # One cache slot per (root, options): a changed folder replaces its own stale entry only.
        slot = hashlib.sha256(json.dumps([str(root.resolve()), params]).encode()).hexdigest()[:8]
        content = hashlib.sha256(json.dumps([source.fingerprint(), params]).encode()).hexdigest()[:16]
        path = folder / f"{stem}-{slot}-{content}.npz"
        if path.is_file():
            try:
                with np.load(path, allow_pickle=False) as f:
                    arrays = {k: f[k] for k in f.files}
                return _to_image_arrays(arrays, name)
            except Exception as exc:  # a damaged cache is only a cache: rebuild it
                warnings.warn(f"ignoring unreadable cache {path}: {exc}", stacklevel=2)
    if cache:
        reason = unwritable(folder)
        if reason:
            warnings.warn(f"the image cache {folder} cannot be written ({reason}): decoding without caching; "
                          "set FLATLAB_CACHE to a writable folder", stacklevel=2)
            cache = False
    # the first decode of a large folder takes a while (ImageNet-size: use --stream): say what happens
    where = f"once, cached in {folder} (FLATLAB_CACHE moves it)" if cache else "without a cache"
    print(f"flatlab: decoding the images of {root} {where} ...", file=sys.stderr, flush=True)
    arrays = _decode_folder(source, root, size, channels)
    if cache:
        with atomic_write(path) as f:
            np.savez(f, **{k: (np.array(v) if k == "classes" else v) for k, v in arrays.items()})
        for stale in folder.glob(f"{stem}-{slot}-*.npz"):
            if stale != path:
                stale.unlink(missing_ok=True)
    return _to_image_arrays(arrays, name)


def _to_image_arrays(arrays: dict, name: str) -> ImageArrays:
    return ImageArrays(
        train_images=torch.from_numpy(np.asarray(arrays["train_images"])),
        train_labels=torch.from_numpy(np.asarray(arrays["train_labels"], dtype=np.int64)),
        test_images=torch.from_numpy(np.asarray(arrays["test_images"])),
        test_labels=torch.from_numpy(np.asarray(arrays["test_labels"], dtype=np.int64)),
        classes=[str(c) for c in arrays["classes"]],
        name=name,
    )


# ---------------------------------------------------------------------------------------------------
# public: large folders, streamed


class ImageFolderDataset(torch.utils.data.Dataset):
    """A large image folder (`root/<class>/**/<image>`, e.g. ImageNet's `train/`) decoded per item.

    Items are `(uint8 tensor [3, size, size], label)`; normalise on the device, per batch. With
    `train=True` the view is `RandomResizedCrop(size, scale, ratio)` plus a random horizontal
    flip; otherwise `Resize(resize)` + `CenterCrop(size)`. Use with a `DataLoader` with workers;
    the file list is kept in numpy arrays, so forked workers do not copy it page by page through
    Python reference counting.

    Example:
        >>> ds = ImageFolderDataset("/data/imagenet/train", train=True)  # doctest: +SKIP
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=256, num_workers=8)  # doctest: +SKIP
        >>> images, labels = next(iter(loader))  # doctest: +SKIP
        >>> images.shape, images.dtype  # doctest: +SKIP
        (torch.Size([256, 3, 224, 224]), torch.uint8)
    """

    def __init__(
        self,
        root: str | os.PathLike,
        train: bool = True,
        *,
        size: int = 224,
        resize: int = 256,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool = True,
    ):
        require_pillow()
        if size < 1 or resize < size:
            raise ValueError(f"need 1 <= size <= resize, got size={size}, resize={resize}")
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise UserFileNotFoundError(f"image folder {self.root} does not exist")
        self.train, self.size, self.resize, self.scale, self.ratio, self.flip = (
            train,
            size,
            resize,
            scale,
            ratio,
            flip,
        )
        self.classes = sorted(
            d.name for d in os.scandir(self.root) if d.is_dir() and not d.name.startswith(".")
        )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        paths, labels = [], []
        for label, cls in enumerate(self.classes):
            found = 0
            for dirpath, dirnames, filenames in os.walk(self.root / cls):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, self.root)
                for filename in sorted(filenames):
                    if (
                        not filename.startswith(".")
                        and os.path.splitext(filename)[1].lower() in IMAGE_EXTENSIONS
                    ):
                        paths.append(os.path.join(rel, filename))
                        found += 1
            if not found:
                raise UserFileNotFoundError(
                    f"class folder {self.root / cls} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            labels.extend([label] * found)
        if not paths:
            raise UserFileNotFoundError(f"no class folders with images under {self.root}")
        self.paths = np.array(paths)
        self.targets = np.array(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int):
        """The decoded RGB PIL image at `index` (no transform); errors name the file."""
        Image = require_pillow()
        path = self.root / str(self.paths[index])
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DatasetFormatError(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.load(index)
        if self.train:
            img = random_resized_crop(img, self.size, self.scale, self.ratio)
            if self.flip and torch.rand(()) < 0.5:
                img = img.transpose(require_pillow().Transpose.FLIP_LEFT_RIGHT)
        else:
            img = resize_center_crop(img, self.size, self.resize)
        return to_tensor_uint8(img), int(self.targets[index])
