"""Fetching official archives: urllib download, md5 verification and path-safe tar extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .cache import atomic_write


def md5sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = p.write_bytes(b"abc")
        >>> md5sum(p)
        '900150983cd24fb0d6963f7d28e17f72'
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, dest: Path) -> None:
    """Download `url` to `dest` (atomically). Tests replace this function to stay offline."""
    with urllib.request.urlopen(url, timeout=60) as response, atomic_write(dest) as out:
        shutil.copyfileobj(response, out, length=1 << 20)


def download_verified(urls: str | Sequence[str], dest: str | os.PathLike, md5: str) -> Path:
    """Download a file (trying each mirror in turn) and check its md5.

    A file already at `dest` with the right md5 is kept. A wrong md5 deletes the download and
    raises, so a truncated transfer is never mistaken for the dataset on the next run.

    Example:
        >>> download_verified("https://example.org/x.tar.gz", "/tmp/x.tar.gz", "0" * 32)  # doctest: +SKIP
    """
    dest = Path(dest)
    urls = [urls] if isinstance(urls, str) else list(urls)
    if dest.is_file() and md5sum(dest) == md5:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            fetch(url, dest)
        except OSError as exc:  # URLError is an OSError; so are disk-full and timeout errors
            errors.append(f"{url}: {exc}")
            continue
        actual = md5sum(dest)
        if actual != md5:
            dest.unlink(missing_ok=True)
            errors.append(f"{url}: md5 mismatch (expected {md5}, got {actual}); the download was removed")
            continue
        return dest
    raise RuntimeError(f"could not download {dest.name}:\n  " + "\n  ".join(errors))


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ValueError(f"{archive}: refusing to extract {member.name!r} (path outside the target folder)")
    if not (member.isfile() or member.isdir()):
        raise ValueError(f"{archive}: refusing to extract {member.name!r} (links and devices not allowed)")


def safe_extract(archive: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Extract a tar(.gz) into `dest`, rejecting absolute paths, `..` and links.

    The dataset archives hold plain files only, so anything else means a tampered download.

    Example:
        >>> safe_extract("cifar-10-python.tar.gz", "data/")  # doctest: +SKIP
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, archive)
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Python without PEP 706 backports; members were checked above
            tar.extractall(dest, members=members)
