import functools
import gzip
import http.server
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from labelsieve.data import idx
from labelsieve.data.sources import SourceError
from labelsieve.stages import ingest

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(not DEBIAN_DIR.is_dir(), reason="dataset-fashion-mnist not installed")


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def test_parse_idx_round_trip():
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(idx.parse_idx(_idx_bytes(array), name="x"), array)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x01\x00\x08\x01", "bad magic number"),
        (bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\x00" * 4, "element type 0x0d is not supported"),
        (bytes([0, 0, 8, 2, 0, 0, 0]), "truncated IDX header"),
        (bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]), "promises 5 values of shape \\(5,\\), file holds 2"),
    ],
)
def test_parse_idx_rejects_malformed(payload, message):
    with pytest.raises(idx.DatasetFileError, match=message):
        idx.parse_idx(payload, name="x")


@pytest.fixture
def file_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/served; stopped after the test."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@needs_debian
def test_load_fashion_mnist_downloads_verifies_and_caches(tmp_path, file_server):
    served, url = file_server
    for name in idx.FASHION_MNIST_FILES:
        shutil.copy(DEBIAN_DIR / name, served / name)
    cache = tmp_path / "cache"
    arrays = idx.load_fashion_mnist(tmp_path / "empty", download=True, url=url, cache_dir=cache)
    assert arrays["train_images"].shape == (60_000, 28, 28) and arrays["test_labels"].shape == (10_000,)
    assert sorted(p.name for p in cache.iterdir()) == sorted(idx.FASHION_MNIST_FILES)
    for name in idx.FASHION_MNIST_FILES:  # the server is no longer needed: the cache answers
        (served / name).unlink()
    again = idx.load_fashion_mnist(tmp_path / "empty", download=True, url=url, cache_dir=cache)
    np.testing.assert_array_equal(again["train_labels"], arrays["train_labels"])


@needs_debian
def test_load_fashion_mnist_tampered_download_is_refused_and_not_cached(tmp_path, file_server):
    served, url = file_server
    for name in idx.FASHION_MNIST_FILES:
        shutil.copy(DEBIAN_DIR / name, served / name)
    labels = bytearray(gzip.decompress((DEBIAN_DIR / "train-labels-idx1-ubyte.gz").read_bytes()))
    labels[100] = (labels[100] + 1) % 10  # one flipped label
    (served / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(labels)))
    cache = tmp_path / "cache"
    with pytest.raises(idx.DatasetFileError, match="train-labels-idx1-ubyte.gz: checksum mismatch"):
        idx.load_fashion_mnist(tmp_path / "empty", download=True, url=url, cache_dir=cache)
    assert not (cache / "train-labels-idx1-ubyte.gz").exists()


def test_load_fashion_mnist_missing_without_download_names_the_fix(tmp_path):
    with pytest.raises(
        idx.DatasetFileError, match="ingest.download is false; install Debian's dataset-fashion-mnist"
    ):
        idx.load_fashion_mnist(tmp_path, download=False, url="", cache_dir=tmp_path / "c")


def test_load_fashion_mnist_unreachable_server_is_a_clear_error(tmp_path, make_params):
    from tests.conftest import free_port

    params = make_params(
        f"ingest.fashion_mnist_dir={tmp_path}",
        f"ingest.cache_dir={tmp_path / 'c'}",
        f"ingest.download_url=http://127.0.0.1:{free_port()}/",
    )
    cache = tmp_path / "c" / "fashion-mnist"
    expected = (
        rf"fashion-mnist: train-images-idx3-ubyte.gz is not in {re.escape(str(tmp_path))} or "
        rf"{re.escape(str(cache))}, and cannot download "
        r"http://127.0.0.1.*scripts/bootstrap.sh copies Debian's dataset-fashion-mnist"
    )
    with pytest.raises(SourceError, match=expected):
        ingest.run(params, out_dir=tmp_path / "ds")
