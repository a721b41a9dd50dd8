"""Fashion-MNIST in IDX format: read it from a directory, or download and verify it.

Checksums are SHA-256 of the decompressed IDX payload, so both the upstream `.gz` files and
Debian's re-compressed copies (package `dataset-fashion-mnist`) verify.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from labelsieve.atomic import write_bytes
from labelsieve.errors import LabelsieveError

FASHION_MNIST_CLASSES = [
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
]

# file name -> SHA-256 of the decompressed payload
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_IDX_DTYPE = {0x08: np.uint8}


class DatasetFileError(LabelsieveError):
    """A dataset file is missing, malformed, or fails its checksum."""


def parse_idx(payload: bytes, *, name: str) -> np.ndarray:
    """Parse an uncompressed IDX payload (big-endian header) into an array.

    Raises:
        DatasetFileError: bad magic number, unsupported type, or a size that does not match the header.
    """
    if len(payload) < 4 or payload[0] != 0 or payload[1] != 0:
        raise DatasetFileError(f"{name}: not an IDX file (bad magic number)")
    type_code, ndim = payload[2], payload[3]
    if type_code not in _IDX_DTYPE:
        raise DatasetFileError(f"{name}: IDX element type 0x{type_code:02x} is not supported (only uint8)")
    header_end = 4 + 4 * ndim
    if len(payload) < header_end:
        raise DatasetFileError(f"{name}: truncated IDX header")
    shape = tuple(int.from_bytes(payload[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    held = len(payload) - header_end
    if held != expected:
        raise DatasetFileError(
            f"{name}: IDX header promises {expected} values of shape {shape}, file holds {held}"
        )
    return np.frombuffer(payload, dtype=_IDX_DTYPE[type_code], offset=header_end).reshape(shape)


def _decompress(data: bytes, *, name: str) -> bytes:
    """The payload of gzip data, or the data itself when it is not compressed."""
    if data[:2] != b"\x1f\x8b":
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as err:
        raise DatasetFileError(f"{name}: corrupt gzip data: {err}") from err


def verify(payload: bytes, *, name: str, expected_sha256: str) -> None:
    """Raise DatasetFileError unless the payload has the expected SHA-256."""
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected_sha256:
        raise DatasetFileError(f"{name}: checksum mismatch (sha256 {actual}, expected {expected_sha256})")


def load_fashion_mnist(
    directory: Path, *, download: bool, url: str, cache_dir: Path
) -> dict[str, np.ndarray]:
    """Return train/test images (N, 28, 28) and labels (N,) as uint8 arrays.

    Looks in `directory` first (uncompressed files without `.gz` also count), then in the download
    cache, then downloads from `url` into the cache when `download` is true. Every file is verified.

    Raises:
        DatasetFileError: a file is missing (and downloading is off or fails) or fails verification.
    """
    arrays = {}
    for name, sha in FASHION_MNIST_FILES.items():
        path = _find(name, [directory, cache_dir])
        if path is None:
            if not download:
                raise DatasetFileError(
                    f"{name} not found in {directory} or {cache_dir} and ingest.download is false; "
                    "install Debian's dataset-fashion-mnist or allow the download"
                )
            source = url.rstrip("/") + "/" + name
            try:
                data = _download(source)
            except DatasetFileError as err:
                raise DatasetFileError(
                    f"{name} is not in {directory} or {cache_dir}, and {err}. Put the files in "
                    f"{directory} (scripts/bootstrap.sh copies Debian's dataset-fashion-mnist into "
                    "data/raw), point ingest.fashion_mnist_dir at a folder that has them, "
                    "or check the network"
                ) from err
            payload = _decompress(data, name=source)
            verify(payload, name=source, expected_sha256=sha)  # before caching: never keep a bad file
            write_bytes(cache_dir / name, data)
        else:
            payload = _decompress(path.read_bytes(), name=str(path))
            verify(payload, name=str(path), expected_sha256=sha)
        arrays[name] = parse_idx(payload, name=name)
    return {
        "train_images": arrays["train-images-idx3-ubyte.gz"],
        "train_labels": arrays["train-labels-idx1-ubyte.gz"],
        "test_images": arrays["t10k-images-idx3-ubyte.gz"],
        "test_labels": arrays["t10k-labels-idx1-ubyte.gz"],
    }


def _find(name: str, directories: list[Path]) -> Path | None:
    for directory in directories:
        for candidate in (directory / name, directory / name.removesuffix(".gz")):
            if candidate.is_file():
                return candidate
    return None


def _download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as err:
        raise DatasetFileError(f"cannot download {url}: {err}") from err
