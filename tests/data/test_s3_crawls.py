"""Retraining on new crawls against real S3 servers on 127.0.0.1: SeaweedFS (what Kubeflow deploys) and moto.

Each crawl lands under ``s3://<bucket>/crawls/<date>/<class>/...``; crawls are listed by name, ingested
into a new dataset, and the next one is appended to it.
"""

import json
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from labelsieve.crawls import list_crawls
from labelsieve.data.store import load_dataset
from labelsieve.stages import ingest
from tests.conftest import random_png

pytestmark = pytest.mark.integration

KEY, SECRET = "labelsieve-test", "labelsieve-test-secret"
NO_WEED = (
    "SeaweedFS's `weed` binary is not installed (Debian package seaweedfs-bin; scripts/bootstrap.sh "
    "installs it where the distribution has it)"
)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """`count` ports p free on 127.0.0.1 together with p + 10000 (SeaweedFS's gRPC port for p)."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 45000)
        if port not in chosen and _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


def _start_seaweedfs(tmp: Path) -> tuple[str, subprocess.Popen]:
    """`weed server` with master, volume, filer and S3 bound to 127.0.0.1, and one S3 identity."""
    weed = shutil.which("weed")
    if weed is None:
        pytest.skip(NO_WEED)
    master, volume, filer, s3_port = _ports(4)
    identity = {
        "identities": [
            {
                "name": "test",
                "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (tmp / "s3.json").write_text(json.dumps(identity))
    (tmp / "data").mkdir()
    helptext = subprocess.run([weed, "server", "-h"], capture_output=True, text=True).stderr
    command = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={tmp / 'data'}"]
    command += [f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}"]
    command += ["-s3", f"-s3.port={s3_port}", f"-s3.config={tmp / 's3.json'}", "-volume.max=8"]
    if "-master.telemetry" in helptext:  # newer releases report usage unless told not to
        command.append("-master.telemetry=false")
    log = open(tmp / "weed.log", "w")  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    process.log = log  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{s3_port}", process


def _client(endpoint: str):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10),
    )


def _wait_ready(endpoint: str, process: subprocess.Popen | None, log: Path | None) -> None:
    """Poll until the server lists buckets (at most 60 s); fail with its log if it dies or never answers."""
    deadline = time.monotonic() + 60
    error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"the S3 server exited with {process.returncode}:\n{log.read_text() if log else ''}")
        try:
            _client(endpoint).list_buckets()
            return
        except Exception as err:  # not up yet: connection refused, 503 while the filer starts, ...
            error = err
            time.sleep(0.5)
    pytest.fail(f"the S3 server at {endpoint} was not ready in 60 s: {error}")


@pytest.fixture(params=["seaweedfs", "moto"])
def s3_endpoint(request, tmp_path_factory, monkeypatch):
    """A real S3 server on 127.0.0.1, started for the test and always stopped; the AWS env points at it."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "seaweedfs":
        endpoint, process = _start_seaweedfs(tmp)
        stop = process
    else:
        port = _ports(1)[0]
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint, process, stop = f"http://127.0.0.1:{port}", None, server
    try:
        _wait_ready(endpoint, process, tmp / "weed.log")
        for name, value in {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(name, value)
        yield endpoint
    finally:
        if isinstance(stop, subprocess.Popen):
            stop.terminate()
            try:
                stop.wait(timeout=15)
            except subprocess.TimeoutExpired:
                stop.kill()
                stop.wait()
            stop.log.close()  # type: ignore[attr-defined]
        else:
            stop.stop()


def _upload(client, bucket: str, prefix: str, files: dict[tuple[str, str], int]) -> None:
    for (label, name), seed in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{label}/{name}.png", Body=random_png(seed))


def test_s3_crawls_ingest_newest_then_append_the_next(s3_endpoint, tmp_path, make_params):
    client = _client(s3_endpoint)
    client.create_bucket(Bucket="crawls")
    first = {(c, f"a{i}"): 100 * k + i for k, c in enumerate(("cat", "dog")) for i in range(8)}
    _upload(client, "crawls", "web/2026-11-20", first)
    settings = ("data.image_size=8", "ingest.val_fraction=0.2", "ingest.test_fraction=0.25")

    assert list_crawls("s3://crawls/web/") == {"2026-11-20": "s3://crawls/web/2026-11-20/"}
    newest = list_crawls("s3://crawls/web/")["2026-11-20"]
    ingest.run(make_params(f"ingest.source={newest}", *settings), out_dir=tmp_path / "ds")
    before = load_dataset(tmp_path / "ds")
    assert before.classes == ["cat", "dog"] and sum(before.meta["counts"].values()) == 16
    old_images = {split: np.array(before.images(split)) for split in ("train", "val", "test")}

    second = {(c, f"b{i}"): 1000 + 100 * k + i for k, c in enumerate(("cat", "dog")) for i in range(6)}
    _upload(client, "crawls", "web/2026-11-21", {**second, ("cat", "again"): 3, ("dog", "again"): 104})
    *_, newest = list_crawls("s3://crawls/web").values()
    assert newest == "s3://crawls/web/2026-11-21/"
    append = (f"ingest.source={newest}", f"ingest.append_to={tmp_path / 'ds'}")
    summary = ingest.run(make_params(*append, *settings), out_dir=tmp_path / "ds")

    after = load_dataset(tmp_path / "ds")
    assert summary["skipped_counts"] == {"duplicate": 2}
    assert sum(after.meta["counts"].values()) == 16 + 12
    for split in ("train", "val", "test"):
        n_old = len(before.samples[split]["id"])
        assert after.samples[split]["sha256"][:n_old].tolist() == before.samples[split]["sha256"].tolist()
        np.testing.assert_array_equal(np.array(after.images(split))[:n_old], old_images[split])
        new_sources = after.samples[split]["source"][n_old:]
        assert all(src.startswith("s3://crawls/web/2026-11-21/") for src in new_sources)
