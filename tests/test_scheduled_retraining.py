"""Scheduled retraining end to end on loopback: three runs of the compiled pipeline under kfp's local
SubprocessRunner against a moto S3 server on 127.0.0.1, digits images as crawls.

Crawl 1 lands -> run 1 ingests it into the accumulated store on S3, trains and publishes v1. Crawl 2
lands -> run 2 ingests only crawl 2 (the ledger then names both, the store holds both, the old test images
stay in test), warm-starts from v1, trains, and the gate compares with v1 on the same test images and
refuses (run 2 is crippled on purpose: a learning rate that leaves its model near chance). A third run
with no new crawl ends after ingest.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from labelsieve import kfp_client
from labelsieve.config import load_params
from labelsieve.data.store import load_dataset
from labelsieve.storage import open_location
from tests.conftest import TINY_PIPELINE

pytestmark = pytest.mark.integration

# Digits, one epoch per training stage, one thread; real crawls carry their own noise: none injected.
TINY = (*TINY_PIPELINE, "inject_noise.rate=0")


def _land_crawl(client, bucket: str, name: str, rows: range) -> None:
    """Upload digits `rows` of each class as s3://bucket/crawls/<name>/<digit>/<row>.png."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for label in range(10):
        for row in np.flatnonzero(digits.target == label)[rows]:
            buffer = io.BytesIO()
            Image.fromarray(images[row], mode="L").save(buffer, format="PNG")
            client.put_object(Bucket=bucket, Key=f"crawls/{name}/{label}/{row}.png", Body=buffer.getvalue())


def _run(params, bucket: str, root: Path) -> tuple[dict, str]:
    progress = io.StringIO()
    arguments = kfp_client.arguments(params, crawl_root=f"s3://{bucket}/crawls/")
    return kfp_client.run_local(arguments, pipeline_root=root, progress=progress), progress.getvalue()


def test_two_scheduled_runs_follow_the_crawls_publish_v1_and_gate_v2_then_a_third_ends_early(
    tmp_path, s3_bucket, moto_server
):
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    store, models = open_location(f"s3://{s3_bucket}/accumulated"), open_location(f"s3://{s3_bucket}/models")
    settings = (*TINY, f"ingest.append_to={store.uri}", f"publish.to={models.uri}", "warmup.init_from=latest")
    params = load_params(None, presets=["digits"], overrides=settings)

    _land_crawl(client, s3_bucket, "2026-11-20", range(0, 30))
    first, lines = _run(params, s3_bucket, tmp_path / "kfp1")
    assert re.search(r"^publish +SUCCESS", lines, re.M) and "publish: published" in lines
    assert first["publish"]["decision"] == "published"
    v1 = first["publish"]["version"]
    pointer = json.loads(models.read_bytes("latest.json"))
    run1 = load_dataset(first["outputs"]["ingest"])
    assert pointer["version"] == v1 and pointer["dataset_content_hash"] == run1.meta["content_hash"]
    assert pointer["test_count"] == len(run1.samples["test"]["id"]) == 60  # 20% of 30 per class
    assert f"models/{v1}/weights.pt" in models.files("models")
    ledger = json.loads(store.read_bytes("crawls.json"))
    assert ledger["crawls"] == ["2026-11-20"] and ledger["dataset"] == f"data/{run1.meta['content_hash']}"
    assert json.loads((Path(first["outputs"]["warmup"]) / "init.json").read_text())["version"] is None

    _land_crawl(client, s3_bucket, "2026-11-21", range(30, 45))
    crippled = load_params(None, presets=["digits"], overrides=[*settings, "model.lr=0.000001"])
    second, lines = _run(crippled, s3_bucket, tmp_path / "kfp2")
    report = json.loads((Path(second["outputs"]["ingest"]) / "ingest_report.json").read_text())
    assert report["source"] == f"s3://{s3_bucket}/crawls/2026-11-21/"  # only the new crawl was read
    assert report["added"]["test"] == 30 and report["skipped_total"] == 0
    run2 = load_dataset(second["outputs"]["ingest"])
    ledger = json.loads(store.read_bytes("crawls.json"))
    assert ledger["crawls"] == ["2026-11-20", "2026-11-21"]
    assert ledger["dataset"] == f"data/{run2.meta['content_hash']}"
    assert sum(run2.meta["counts"].values()) == 450 and set(store.files("data")) == {
        f"{ledger['dataset']}/{name}" for name in _dataset_files()
    }
    old_test = run1.samples["test"]["sha256"].tolist()
    assert run2.samples["test"]["sha256"][:60].tolist() == old_test  # the old test images stay, first
    init = json.loads((Path(second["outputs"]["warmup"]) / "init.json").read_text())
    assert init == {"init_from": "latest", "version": v1, "test_accuracy": pointer["test_accuracy"]}

    record = json.loads((Path(second["outputs"]["publish"]) / "publish.json").read_text())
    assert second["publish"] == {"decision": "refused", "version": v1, "reason": record["reason"]}
    assert record["previous"]["version"] == v1 and record["test_count"] == 90
    assert record["gate"]["drop"] > record["max_drop"] == 0.01
    assert f"publish: REFUSED, not published; {v1} stays the published model" in lines
    assert json.loads(models.read_bytes("latest.json")) == pointer  # v1 stays
    assert {name.split("/")[1] for name in models.files("models")} == {v1}

    third, lines = _run(crippled, s3_bucket, tmp_path / "kfp3")
    assert set(third["outputs"]) == {"ingest"} and "publish" not in third
    assert [line.split()[0] for line in lines.splitlines()[1:]] == ["ingest"]
    nothing = json.loads((Path(third["outputs"]["ingest"]) / "nothing_new.json").read_text())
    assert nothing["crawls"] == ["2026-11-20", "2026-11-21"]
    assert json.loads(store.read_bytes("crawls.json")) == ledger
    assert json.loads(models.read_bytes("latest.json")) == pointer


def _dataset_files() -> list[str]:
    return [
        "classes.json",
        "dataset.json",
        "ingest_report.json",
        "samples.csv",
        "test.npy",
        "train.npy",
        "val.npy",
    ]
