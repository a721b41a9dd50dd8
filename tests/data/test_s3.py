import http.server
import io
import json
import logging
import socket
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from labelsieve.data import s3
from labelsieve.data.sources import SourceError
from labelsieve.data.store import load_dataset
from labelsieve.stages import ingest
from tests.conftest import XmlHandler, free_port, random_png


@pytest.fixture
def bucket(moto_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    name = f"crawl-{free_port()}"
    client.create_bucket(Bucket=name)
    return client, name


def test_parse_uri():
    assert s3.parse_uri("s3://b/some/prefix") == ("b", "some/prefix")
    assert s3.parse_uri("s3://b") == ("b", "")
    with pytest.raises(ValueError, match="has no bucket"):
        s3.parse_uri("s3:///x")


def test_ingest_s3_prefix_laid_out_like_a_folder(tmp_path, make_params, bucket):
    client, name = bucket
    for i in range(10):
        client.put_object(Bucket=name, Key=f"batch1/{['cat', 'dog'][i % 2]}/{i}.png", Body=random_png(i))
    client.put_object(Bucket=name, Key="batch1/cat/broken.png", Body=b"")
    client.put_object(Bucket=name, Key="batch1/loose.png", Body=random_png(99))
    client.put_object(Bucket=name, Key="elsewhere/cat/x.png", Body=random_png(98))
    out = tmp_path / "ds"
    summary = ingest.run(
        make_params(
            f"ingest.source=s3://{name}/batch1",
            "data.image_size=8",
            "ingest.val_fraction=0",
            "ingest.test_fraction=0.2",
        ),
        out_dir=out,
    )
    ds = load_dataset(out)
    assert ds.classes == ["cat", "dog"]
    assert summary["train"] + summary["test"] == 10
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["skipped_counts"] == {"empty_file": 1, "no_class_folder": 1}
    assert all(src.startswith(f"s3://{name}/batch1/") for src in ds.samples["train"]["source"])


def test_ingest_manifest_with_s3_uris(tmp_path, make_params, bucket):
    client, name = bucket
    lines = []
    for i in range(6):
        client.put_object(Bucket=name, Key=f"m/{i}.png", Body=random_png(i + 50))
        lines.append(json.dumps({"path": f"s3://{name}/m/{i}.png", "label": "ab"[i % 2]}))
    lines.append(json.dumps({"path": f"s3://{name}/m/absent.png", "label": "a"}))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines))
    out = tmp_path / "ds"
    ingest.run(
        make_params(
            f"ingest.source={manifest}",
            "data.image_size=8",
            "ingest.val_fraction=0",
            "ingest.test_fraction=0.34",
        ),
        out_dir=out,
    )
    report = json.loads((out / "ingest_report.json").read_text())
    assert report["skipped_counts"] == {"read_error": 1}
    assert "does not exist" in report["skipped"][0]["detail"]
    ds = load_dataset(out)
    stored = {
        src: (split, i) for split in ("train", "test") for i, src in enumerate(ds.samples[split]["source"])
    }
    assert len(stored) == 6
    split, row = stored[f"s3://{name}/m/0.png"]
    expected = np.asarray(Image.open(io.BytesIO(random_png(50))))
    np.testing.assert_array_equal(ds.images(split)[row, 0], expected)


def test_ingest_s3_missing_bucket_is_clear(tmp_path, make_params, bucket):
    params = make_params("ingest.source=s3://no-such-bucket/x", "data.image_size=8")
    with pytest.raises(s3.StorageError, match="s3://no-such-bucket/x/ does not exist"):
        ingest.run(params, out_dir=tmp_path / "ds")


def test_ingest_s3_unreachable_endpoint_is_one_clear_error(tmp_path, make_params, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(s3, "RETRY_CONFIG", s3.Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(s3.StorageError, match="cannot reach object storage at http://127.0.0.1"):
        ingest.run(make_params("ingest.source=s3://b/x", "data.image_size=8"), out_dir=tmp_path / "ds")
    assert issubclass(s3.StorageError, Exception) and not issubclass(s3.StorageError, SourceError)


def test_s3_default_config_fails_a_silent_endpoint_within_a_minute():
    attempts = s3.RETRY_CONFIG.retries["total_max_attempts"]
    backoff = sum(min(2**i, 20) for i in range(attempts - 1))  # botocore's standard-mode ceiling
    assert attempts * s3.RETRY_CONFIG.read_timeout + backoff < 60
    assert attempts * s3.RETRY_CONFIG.connect_timeout + backoff < 60
    assert attempts >= 2  # a transient error is still retried


@pytest.fixture
def short_retries(monkeypatch):
    """Two attempts of at most a second each, and fake credentials."""
    config = s3.Config(
        retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=1, read_timeout=1
    )
    monkeypatch.setattr(s3, "RETRY_CONFIG", config)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")


def _mixed_manifest(tmp_path) -> Path:
    """Six local images (classes a, b) and two s3:// rows."""
    root = tmp_path / "crawl"
    root.mkdir()
    lines = []
    for i in range(6):
        (root / f"{i}.png").write_bytes(random_png(i))
        lines.append(json.dumps({"path": f"{i}.png", "label": "ab"[i % 2]}))
    lines += [json.dumps({"path": f"s3://crawl/{k}.png", "label": "ab"[k]}) for k in range(2)]
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    return root / "m.jsonl"


def _assert_nothing_written(tmp_path):
    assert not (tmp_path / "ds").exists()
    assert not (tmp_path / "ds.failed_ingest_report.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def _ingest(manifest, make_params, tmp_path):
    params = make_params(f"ingest.source={manifest}", "data.image_size=8", "ingest.val_fraction=0")
    return ingest.run(params, out_dir=tmp_path / "ds")


def test_ingest_mixed_manifest_during_an_outage_stops_with_one_error(
    tmp_path, make_params, monkeypatch, short_retries
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    manifest = _mixed_manifest(tmp_path)
    with pytest.raises(s3.StorageError, match=r"cannot reach object storage at .* for s3://crawl/0.png"):
        _ingest(manifest, make_params, tmp_path)
    _assert_nothing_written(tmp_path)


@pytest.fixture
def silent_endpoint(monkeypatch):
    """A TCP server on 127.0.0.1 that accepts connections and never answers; closed afterwards."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_ingest_from_a_silent_endpoint_fails_quickly_and_logs_the_retries(
    tmp_path, make_params, silent_endpoint, short_retries, caplog
):
    manifest = _mixed_manifest(tmp_path)
    started = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="labelsieve.data.s3"),
        pytest.raises(s3.StorageError, match=r"did not answer within 1 s \(2 attempt\(s\)\) for s3://crawl/"),
    ):
        _ingest(manifest, make_params, tmp_path)
    assert time.monotonic() - started < 20
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "GetObject" in m and "attempt 1 of 2 failed (ReadTimeoutError" in m and "retrying" in m
        for m in messages
    )
    _assert_nothing_written(tmp_path)


class _ErrorHandler(XmlHandler):
    """Answers every request with the S3 error in `status` and `code` (class attributes set per test)."""

    status = 503
    code = "SlowDown"

    def do_GET(self) -> None:
        body = f"<?xml version='1.0'?><Error><Code>{self.code}</Code><Message>no</Message></Error>".encode()
        self.reply_xml(self.status, body)


@pytest.mark.parametrize(
    ("status", "code", "message", "retried"),
    [
        (503, "SlowDown", r"is throttling requests \(SlowDown\) for s3://crawl/0.png \(2 attempt", True),
        (
            403,
            "InvalidAccessKeyId",
            r"refused the credentials for s3://crawl/0.png \(InvalidAccessKeyId\)",
            False,
        ),
    ],
    ids=["throttled", "credentials-refused"],
)
def test_ingest_stops_on_throttling_or_refused_credentials_instead_of_skipping_rows(
    tmp_path, make_params, monkeypatch, short_retries, caplog, status, code, message, retried
):
    handler = type("Handler", (_ErrorHandler,), {"status": status, "code": code})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="labelsieve.data.s3"),
            pytest.raises(s3.StorageError, match=message) as info,
        ):
            _ingest(_mixed_manifest(tmp_path), make_params, tmp_path)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert not isinstance(info.value, s3.ObjectMissing)
    logged = [r.getMessage() for r in caplog.records if f"HTTP {status} {code}" in r.getMessage()]
    assert bool(logged) == retried
    _assert_nothing_written(tmp_path)
