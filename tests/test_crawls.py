"""Scheduled retraining: each run ingests the crawls its ledger lacks, and says when there is none; an
accumulated store in object storage is replaced version by version, its ledger last."""

import json

import pytest

from labelsieve import runner
from labelsieve.crawls import LEDGER, CrawlError, ingest_new_crawls, list_crawls, read_ledger
from labelsieve.data.s3 import StorageError
from labelsieve.data.store import load_dataset
from labelsieve.stages import STAGES
from labelsieve.stages.ingest import IngestError
from labelsieve.storage import Location, open_location
from tests.conftest import random_png

SETTINGS = ("data.image_size=8", "ingest.val_fraction=0.2", "ingest.test_fraction=0.25")


def _crawl(root, name: str, first_seed: int, per_class: int = 6) -> None:
    for k, label in enumerate(("cat", "dog")):
        folder = root / name / label
        folder.mkdir(parents=True)
        for i in range(per_class):
            (folder / f"{i}.png").write_bytes(random_png(first_seed + 100 * k + i))


def _total(path) -> int:
    return sum(load_dataset(path).meta["counts"].values())


def test_each_run_appends_only_the_crawls_not_in_the_ledger(tmp_path, make_params):
    crawls, store = tmp_path / "crawls", tmp_path / "store"
    _crawl(crawls, "2026-11-20", 0)
    _crawl(crawls, "2026-11-21", 1000)
    (crawls / "notes.txt").write_text("not a crawl")
    params = make_params(f"ingest.append_to={store}", *SETTINGS)
    assert list(list_crawls(str(crawls))) == ["2026-11-20", "2026-11-21"]

    first = ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "run1")
    assert first["new_crawls"] == 2 and first["crawls"] == 2
    assert read_ledger(store) == read_ledger(tmp_path / "run1") == ["2026-11-20", "2026-11-21"]
    assert _total(store) == _total(tmp_path / "run1") == 24  # both crawls, the store replaced by the run's

    stored = (store / "samples.csv").read_bytes()
    again = ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "run2")
    assert again == {"new_crawls": 0, "crawls": 2}
    assert json.loads((tmp_path / "run2" / "nothing_new.json").read_text())["crawls"] == read_ledger(store)
    assert (store / "samples.csv").read_bytes() == stored  # untouched

    _crawl(crawls, "2026-11-22", 5000, per_class=4)
    third = ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "run3")
    assert third["new_crawls"] == 1 and read_ledger(store)[-1] == "2026-11-22"
    assert _total(store) == 24 + 8 and load_dataset(store).meta["source"].count("+") == 2


def test_run_ingest_says_whether_anything_is_new(tmp_path, make_params):
    crawls, store = tmp_path / "crawls", tmp_path / "store"
    _crawl(crawls, "2026-11-20", 0)
    text = runner.stage_params_text(make_params(f"ingest.append_to={store}", *SETTINGS), "ingest")
    assert runner.run_ingest(text, str(crawls), out_dir=str(tmp_path / "a")) is True
    assert runner.run_ingest(text, str(crawls), out_dir=str(tmp_path / "b")) is False


def test_a_crawl_root_needs_a_store_and_a_sound_ledger(tmp_path, make_params):
    (tmp_path / "crawls" / "2026-11-20").mkdir(parents=True)
    with pytest.raises(CrawlError, match="needs ingest.append_to"):
        ingest_new_crawls(make_params(), str(tmp_path / "crawls"), out_dir=tmp_path / "out")
    with pytest.raises(CrawlError, match="not a folder"):
        list_crawls(str(tmp_path / "missing"))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / LEDGER).write_text('{"crawls": "2026-11-20"}')
    with pytest.raises(CrawlError, match="damaged"):
        read_ledger(tmp_path / "store")


def test_an_s3_store_is_downloaded_grown_uploaded_and_its_ledger_written_last(
    tmp_path, make_params, s3_bucket, monkeypatch
):
    crawls, store = tmp_path / "crawls", f"s3://{s3_bucket}/accumulated"
    _crawl(crawls, "2026-11-20", 0)
    params = make_params(f"ingest.append_to={store}", *SETTINGS)
    where = open_location(store)
    assert ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "run1")["new_crawls"] == 1
    first = load_dataset(tmp_path / "run1")
    version = f"data/{first.meta['content_hash']}"
    ledger = json.loads(where.read_bytes(LEDGER))
    assert ledger == {"crawl_root": str(crawls), "crawls": ["2026-11-20"], "dataset": version}
    names = {"classes.json", "dataset.json", "ingest_report.json", "samples.csv"}
    names |= {f"{split}.npy" for split in ("train", "val", "test")}
    assert set(where.files()) == {LEDGER, *(f"{version}/{name}" for name in names)}

    _crawl(crawls, "2026-11-21", 5000, per_class=4)
    write_bytes = Location.write_bytes

    def no_ledger(self, name, data):  # the run dies after uploading the data, before the ledger
        if name == LEDGER:
            raise StorageError("injected failure writing the ledger")
        write_bytes(self, name, data)

    monkeypatch.setattr(Location, "write_bytes", no_ledger)
    with pytest.raises(StorageError, match="injected failure"):
        ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "killed")
    monkeypatch.setattr(Location, "write_bytes", write_bytes)
    assert json.loads(where.read_bytes(LEDGER)) == ledger  # still names the old, complete data
    assert {f"{version}/{name}" for name in names} < set(where.files())  # plus the unnamed new upload

    second = ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "run2")
    assert second["new_crawls"] == 1 and read_ledger(store) == ["2026-11-20", "2026-11-21"]
    grown = load_dataset(tmp_path / "run2")
    assert _total(tmp_path / "run2") == 12 + 8
    new_version = f"data/{grown.meta['content_hash']}"
    assert set(where.files()) == {LEDGER, *(f"{new_version}/{name}" for name in names)}  # old ones gone
    for split in ("train", "val", "test"):  # old samples keep their split and come first
        old = first.samples[split]["sha256"].tolist()
        assert grown.samples[split]["sha256"][: len(old)].tolist() == old
    assert len(grown.samples["test"]["id"]) > len(first.samples["test"]["id"])  # the new crawl's share

    assert ingest_new_crawls(params, str(crawls), out_dir=tmp_path / "run3")["new_crawls"] == 0
    assert json.loads(where.read_bytes(LEDGER))["dataset"] == new_version


def test_the_ingest_stage_alone_does_not_append_to_object_storage(tmp_path, make_params, image_folder):
    params = make_params(f"ingest.source={image_folder({'a': 4, 'b': 4})}", "ingest.append_to=s3://b/acc")
    with pytest.raises(IngestError, match="s3://b/acc: this stage appends to a local dataset folder"):
        STAGES["ingest"].run(params, out_dir=tmp_path / "ds")
