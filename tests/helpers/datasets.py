"""Dataset files in their official layouts, written small, with the arrays a loader must return."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np

from flatlab.data.cifar import CIFAR10, CIFAR100


def _key(k, as_bytes):
    return k.encode() if as_bytes else k


def dump_pickle(path, obj, protocol):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_tiny_cifar(root, spec, *, n_per_batch=4, n_test=3, bytes_keys=True, protocol=2, seed=0):
    """A CIFAR set in the official layout; returns the expected arrays."""
    rng = np.random.default_rng(seed)
    folder = root / spec.folder
    n_classes = 10 if spec is CIFAR10 else 100
    names = [f"name{i}" for i in range(n_classes)]
    expected = {"train_images": [], "train_labels": []}
    for filename in spec.train_files:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, n_classes, n_per_batch).tolist()
        batch = {_key("data", bytes_keys): data, _key(spec.label_key, bytes_keys): labels}
        if spec is CIFAR100:
            batch[_key("coarse_labels", bytes_keys)] = [0] * n_per_batch
        dump_pickle(folder / filename, batch, protocol)
        expected["train_images"].append(data.reshape(-1, 3, 32, 32))
        expected["train_labels"] += labels
    data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    labels = rng.integers(0, n_classes, n_test).tolist()
    dump_pickle(
        folder / spec.test_file,
        {_key("data", bytes_keys): data, _key(spec.label_key, bytes_keys): labels},
        protocol,
    )
    meta_names = [n.encode() for n in names] if bytes_keys else names
    dump_pickle(folder / spec.meta_file, {_key(spec.names_key, bytes_keys): meta_names}, protocol)
    return dict(
        train_images=np.concatenate(expected["train_images"]),
        train_labels=np.array(expected["train_labels"]),
        test_images=data.reshape(-1, 3, 32, 32),
        test_labels=np.array(labels),
        classes=names,
    )


_TYPE_CODES = {
    np.uint8: 0x08,
    np.int8: 0x09,
    np.int16: 0x0B,
    np.int32: 0x0C,
    np.float32: 0x0D,
    np.float64: 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, _TYPE_CODES[array.dtype.type], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, compress):
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_tiny_mnist(folder, compress, n_train=5, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for stem, array in arrays.items():
        write_idx(folder / (stem + (".gz" if compress else "")), array, compress)
    return arrays


CLASSES = ["bird", "cat", "ant"]  # deliberately unsorted: labels must follow the sorted names


def write_folder(root, *, test_split="test", per_class=(3, 2), size=(6, 5), mode="RGB", fmt="png", seed=0):
    """root/<split>/<class>/NN.<fmt>; returns {split: [(class_index, array)]} in loader order."""
    from PIL import Image  # optional: only the tests that write image folders need it

    rng = np.random.default_rng(seed)
    expected = {}
    for split, count in zip(("train", test_split), per_class):
        rows = []
        for cls in CLASSES:
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = size if mode == "L" else (*size, 3)
                if fmt == "jpg":  # JPEG is lossy: use smooth images so the round trip is close
                    base = np.linspace(0, 255, size[0] * size[1]).reshape(size)
                    array = np.broadcast_to(base[..., None] if mode != "L" else base, shape).astype(np.uint8)
                else:
                    array = rng.integers(0, 256, shape, dtype=np.uint8)
                Image.fromarray(array, mode).save(folder / f"{i:02d}.{fmt}")
                rows.append((sorted(CLASSES).index(cls), array))
        expected[split if split == "train" else "test"] = sorted(rows, key=lambda r: r[0])
    return expected
