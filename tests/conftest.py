"""Shared fixtures: generated images and folders, params builders, local servers."""

from __future__ import annotations

import http.server
import io
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelsieve.config import Params, load_params


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    """Encode a PIL image to bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def random_png(seed: int, size: int = 8) -> bytes:
    """A distinct grayscale PNG per seed."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    return encode(Image.fromarray(pixels, mode="L"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Temporary files of libraries and child processes go to this session's pytest folder, not /tmp.

    kfp's local runner writes a folder per component, torchrun one per launch and DVC an analytics report per
    command; pytest keeps its last three session folders, so none of this piles up. DVC's usage analytics
    are off in the repositories the tests create (this repository's `.dvc/config` turns them off for it).
    """
    folder = tmp_path_factory.mktemp("tmp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(folder))
        patch.setenv("DVC_NO_ANALYTICS", "1")
        patch.setattr(tempfile, "tempdir", str(folder))
        yield


@pytest.fixture
def make_params() -> Callable[..., Params]:
    """Params from the built-in defaults plus `section.key=value` overrides (no params.yaml)."""

    def build(*overrides: str, presets: tuple[str, ...] = ()) -> Params:
        return load_params(None, presets=presets, overrides=["runtime.progress=never", *overrides])

    return build


@pytest.fixture
def image_folder(tmp_path: Path) -> Callable[[dict[str, int]], Path]:
    """Build root/<class>/<i>.png with distinct 8x8 images: {class: count} -> root."""

    def build(counts: dict[str, int], name: str = "images") -> Path:
        root = tmp_path / name
        seed = 0
        for label, count in counts.items():
            (root / label).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                seed += 1
                (root / label / f"{i:03d}.png").write_bytes(random_png(seed + 1000 * len(name)))
        return root

    return build


class XmlHandler(http.server.BaseHTTPRequestHandler):
    """Base of the fake S3 servers in tests: answers with an XML body and logs nothing."""

    def reply_xml(self, status: int, body: bytes) -> None:
        """Send `body` as an XML response with status `status`."""
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


# Digits through every stage in seconds: one thread on the CPU, one epoch per training stage (two for
# retrain, whose synthetic phase starts at its second).
TINY_PIPELINE = (
    "runtime.progress=never",
    "runtime.device=cpu",
    "runtime.threads=1",
    "warmup.epochs=1",
    "ssl_train.epochs=1",
    "group_regularize.epochs=1",
    "group_regularize.warmup_epochs=1",
    "retrain.epochs=2",
    "retrain.synthetic_start=1",
    "evaluate.gallery_size=4",
)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session (its endpoint URL); stopped afterwards."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new empty bucket on the moto server, with the AWS variables pointing at it; its name."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"bucket-{free_port()}-{np.random.default_rng().integers(1 << 30)}"
    boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").create_bucket(Bucket=bucket)
    return bucket
