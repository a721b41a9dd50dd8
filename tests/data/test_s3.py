import io
import json

import boto3
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image

from labelsieve.data import s3
from labelsieve.data.sources import SourceError
from labelsieve.data.store import load_dataset
from labelsieve.stages import ingest
from tests.conftest import free_port, random_png


@pytest.fixture(scope="module")
def moto_endpoint():
    """A moto S3 server on 127.0.0.1 for this module; stopped afterwards."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
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
