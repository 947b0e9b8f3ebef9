import os
import tarfile

import numpy as np
import pytest
import torch

from flatlab.data import DatasetFormatError, ImageFolderDataset, load_image_folder
from flatlab.data import imagefolder as imagefolder_module
from tests.helpers.datasets import CLASSES, write_folder

Image = pytest.importorskip("PIL.Image")

def make_tar(folder, archive, prefix=""):
    with tarfile.open(archive, "w:gz") as tar:
        for name in sorted(os.listdir(folder)):
            tar.add(folder / name, arcname=os.path.join(prefix, name) if prefix else name)
    return archive


def _check(data, expected, channels=3, exact=True):
    assert data.classes == sorted(CLASSES)
    for split in ("train", "test"):
        images = getattr(data, f"{split}_images").numpy()
        labels = getattr(data, f"{split}_labels").numpy()
        assert labels.tolist() == [label for label, _ in expected[split]]
        ref = np.stack([a.transpose(2, 0, 1) if a.ndim == 3 else a[None] for _, a in expected[split]])
        assert images.shape == ref.shape and images.shape[1] == channels
        if exact:
            np.testing.assert_array_equal(images, ref)
        else:
            assert np.abs(images.astype(int) - ref).mean() < 3


@pytest.fixture
def decode_counter(monkeypatch):
    calls = []
    real = imagefolder_module._decode_image

    def counting(data, name, size, channels):
        calls.append(name)
        return real(data, name, size, channels)

    monkeypatch.setattr(imagefolder_module, "_decode_image", counting)
    return calls


@pytest.mark.parametrize("source", ["folder", "tar", "tar-with-prefix"])
def test_png_round_trip_is_exact(tmp_path, source):
    expected = write_folder(tmp_path / "imgs")
    root = tmp_path / "imgs"
    if source != "folder":
        root = make_tar(root, tmp_path / "imgs.tar.gz", prefix="top" if source == "tar-with-prefix" else "")
    data = load_image_folder(root)
    _check(data, expected)
    assert data.name == "imgs"


@pytest.mark.parametrize("source", ["folder", "tar"])
def test_jpeg_round_trip_is_close(tmp_path, source):
    expected = write_folder(tmp_path / "imgs", fmt="jpg", size=(16, 16))
    root = tmp_path / "imgs" if source == "folder" else make_tar(tmp_path / "imgs", tmp_path / "imgs.tgz")
    _check(load_image_folder(root), expected, exact=False)


def test_grey_images_give_one_channel_and_val_is_the_test_split(tmp_path):
    expected = write_folder(tmp_path, mode="L", test_split="val")
    _check(load_image_folder(tmp_path), expected, channels=1)


def test_channels_can_be_forced(tmp_path):
    write_folder(tmp_path, mode="L")
    data = load_image_folder(tmp_path, channels=3)
    assert data.image_shape == (3, 6, 5)
    assert torch.equal(data.train_images[:, 0], data.train_images[:, 2])


def test_mixed_grey_and_colour_becomes_rgb(tmp_path):
    write_folder(tmp_path)
    grey = np.full((6, 5), 77, np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "train" / "ant" / "99.png")
    data = load_image_folder(tmp_path)
    assert data.image_shape[0] == 3
    assert (data.train_images == 77).all(dim=(1, 2, 3)).sum() == 1


def test_cache_is_reused_and_invalidated(tmp_path, decode_counter):
    root = tmp_path / "imgs"
    write_folder(root)
    first = load_image_folder(root)
    assert len(decode_counter) == 15
    cache_files = list((tmp_path / "flatlab-cache" / "imagefolder").glob("*.npz"))
    assert len(cache_files) == 1 and cache_files[0].name.startswith("imgs-")

    second = load_image_folder(root)
    assert len(decode_counter) == 15, "second load must come from the cache"
    assert torch.equal(first.train_images, second.train_images) and first.classes == second.classes

    # Change one file: the cache must notice, re-decode, and replace its stale entry.
    target = root / "train" / "cat" / "00.png"
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(target)
    st = os.stat(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = load_image_folder(root)
    assert len(decode_counter) == 30
    cat = sorted(CLASSES).index("cat")
    assert third.train_images[third.train_labels == cat][0].sum() == 0
    assert len(list((tmp_path / "flatlab-cache" / "imagefolder").glob("*.npz"))) == 1
    assert not list((tmp_path / "flatlab-cache" / "imagefolder").glob(".*.tmp")), "no temp files left"


def test_tar_cache_is_keyed_by_the_archive(tmp_path, decode_counter):
    archive = make_tar(write_folder(tmp_path / "a") and tmp_path / "a", tmp_path / "a.tar.gz")
    load_image_folder(archive)
    load_image_folder(archive)
    assert len(decode_counter) == 15
    write_folder(tmp_path / "a", seed=1)
    make_tar(tmp_path / "a", archive)
    st = os.stat(archive)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_image_folder(archive)
    assert len(decode_counter) == 30


def test_cache_can_be_disabled_and_relocated(tmp_path, decode_counter):
    write_folder(tmp_path / "imgs")
    load_image_folder(tmp_path / "imgs", cache=False)
    load_image_folder(tmp_path / "imgs", cache=False)
    assert len(decode_counter) == 30
    assert not (tmp_path / "flatlab-cache").exists()
    load_image_folder(tmp_path / "imgs", cache_root=tmp_path / "elsewhere")
    assert len(list((tmp_path / "elsewhere").glob("*.npz"))) == 1


def test_damaged_cache_is_rebuilt(tmp_path, decode_counter):
    write_folder(tmp_path / "imgs")
    load_image_folder(tmp_path / "imgs")
    (cache,) = (tmp_path / "flatlab-cache" / "imagefolder").glob("*.npz")
    cache.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="unreadable cache"):
        data = load_image_folder(tmp_path / "imgs")
    assert data.num_train == 9 and len(decode_counter) == 30


def test_differing_sizes_error_or_resize(tmp_path):
    write_folder(tmp_path)
    odd = tmp_path / "train" / "bird" / "99.png"
    Image.fromarray(np.zeros((10, 4, 3), np.uint8)).save(odd)
    with pytest.raises(DatasetFormatError, match=r"differ in size.*99\.png is 10x4.*size=\(H, W\)"):
        load_image_folder(tmp_path)
    data = load_image_folder(tmp_path, size=(6, 5))
    assert data.image_shape == (3, 6, 5) and data.num_train == 10
    assert load_image_folder(tmp_path, size=4).image_shape == (3, 4, 4)


@pytest.mark.parametrize("source", ["folder", "tar"])
def test_corrupt_image_names_the_file(tmp_path, source):
    write_folder(tmp_path / "imgs")
    bad = tmp_path / "imgs" / "test" / "cat" / "01.png"
    bad.write_bytes(bad.read_bytes()[:40])
    root = tmp_path / "imgs" if source == "folder" else make_tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz")
    with pytest.raises(DatasetFormatError, match=r"test/cat/01\.png.*cannot decode image"):
        load_image_folder(root)


def test_corrupt_archive_is_reported(tmp_path):
    write_folder(tmp_path / "imgs")
    archive = make_tar(tmp_path / "imgs", tmp_path / "imgs.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetFormatError, match="imgs.tar.gz.*cannot read the archive"):
        load_image_folder(archive)


def test_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DatasetFormatError, match="not a folder or a tar archive"):
        load_image_folder(tmp_path / "notes.txt")

    only_train = tmp_path / "only_train"
    write_folder(only_train)
    for f in (only_train / "test").rglob("*.png"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match=r"train/<class>/ and test/<class>/ .*0 in test/"):
        load_image_folder(only_train)


def test_test_classes_must_exist_in_train(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "test" / "zebra").mkdir()
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "test" / "zebra" / "0.png")
    with pytest.raises(DatasetFormatError, match="classes missing from train/: zebra"):
        load_image_folder(tmp_path)


def test_empty_class_folder_is_an_error(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "aardvark").mkdir()
    with pytest.raises(DatasetFormatError, match="no images in train/: aardvark"):
        load_image_folder(tmp_path)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    expected = write_folder(tmp_path)
    (tmp_path / "README.md").write_text("about")
    (tmp_path / "train" / "cat" / "._00.png").write_bytes(b"AppleDouble junk")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("x")
    _check(load_image_folder(tmp_path), expected)


# --- large folders, streamed -------------------------------------------------------------------


def _big_folder(root, sizes=((40, 30), (50, 64), (33, 33))):
    for c, cls in enumerate(["dog", "ape"]):
        (root / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            ys, xs = np.mgrid[0:h, 0:w]
            array = np.stack([ys * 255 // h, xs * 255 // w, np.full_like(ys, 100 * c)], -1).astype(np.uint8)
            Image.fromarray(array).save(root / cls / f"{i}.jpg", quality=95)
    return root


@pytest.mark.parametrize("train", [True, False])
def test_streaming_dataset_shapes_and_labels(tmp_path, train):
    torch.manual_seed(0)
    ds = ImageFolderDataset(_big_folder(tmp_path / "big"), train=train, size=16, resize=20)
    assert ds.classes == ["ape", "dog"] and len(ds) == 6
    assert ds.targets.tolist() == [0, 0, 0, 1, 1, 1]
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y == ds.targets[i]


def test_eval_view_matches_resize_then_centre_crop(tmp_path):
    ds = ImageFolderDataset(_big_folder(tmp_path / "big"), train=False, size=16, resize=20)
    for i in range(len(ds)):
        img = ds.load(i)
        w, h = img.size
        scale = 20 / min(w, h)
        big = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        left, top = (big.width - 16) // 2, (big.height - 16) // 2
        ref = torch.from_numpy(np.array(big.crop((left, top, left + 16, top + 16)))).permute(2, 0, 1)
        assert (ds[i][0].int() - ref.int()).abs().float().mean() < 6


def test_streaming_dataset_with_dataloader_workers(tmp_path):
    ds = ImageFolderDataset(_big_folder(tmp_path / "big"), train=True, size=8, resize=10)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1)
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(3, 3, 8, 8)] * 2


def test_streaming_dataset_errors(tmp_path):
    root = _big_folder(tmp_path / "big")
    (root / "dog" / "1.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    ds = ImageFolderDataset(root, train=False, size=8, resize=10)
    with pytest.raises(DatasetFormatError, match=r"dog/1\.jpg.*cannot decode image"):
        ds[4]
    (root / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty holds no images"):
        ImageFolderDataset(root)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(ValueError, match="size <= resize"):
        ImageFolderDataset(root, size=30, resize=20)


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_archives_never_load_silently(tmp_path, compression, fraction):
    write_folder(tmp_path / "imgs", per_class=(2, 1))
    archive = tmp_path / f"imgs.tar{'.' + compression if compression else ''}"
    with tarfile.open(archive, f"w:{compression}") as tar:
        tar.add(tmp_path / "imgs" / "train", arcname="train")
        tar.add(tmp_path / "imgs" / "test", arcname="test")
    assert load_image_folder(archive, cache=False).num_train == 6
    raw = archive.read_bytes()
    if not compression:  # cut inside member data, not in the zero padding that follows it
        with tarfile.open(archive) as tar:
            end = max(m.offset_data + m.size for m in tar.getmembers())
    else:
        end = len(raw)
    archive.write_bytes(raw[: int(end * fraction)])
    with pytest.raises((DatasetFormatError, FileNotFoundError)):
        load_image_folder(archive, cache=False)
