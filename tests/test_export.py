"""`labelsieve export`: split by purpose, original files where they still are, a manifest back to the
sources, and an ingest of the export that gives back the purified samples."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelsieve import atomic
from labelsieve.config import load_params
from labelsieve.data import images
from labelsieve.data.store import Dataset, load_dataset
from labelsieve.export import MANIFEST_COLUMNS, export, folder_name
from labelsieve.maths.purification import DROP, KEEP, RELABEL
from labelsieve.stages import ingest
from tests.conftest import random_png

CLASSES = ["T-shirt/top", "cat", "_dropped"]
QUIET = ("runtime.progress=never", "runtime.threads=1", "data.image_size=8")


def _dataset(tmp: Path) -> Dataset:
    """6 images per class from a manifest (5 train, 1 test), a validation split, every third a 16 px PNG."""
    (tmp / "src").mkdir()
    rows = [("path", "label", "split")]
    for c, name in enumerate(CLASSES):
        for i in range(6):
            size = 16 if i % 3 == 0 else 8  # a larger original: the stored pixels are its resized copy
            (tmp / "src" / f"{c}-{i}.png").write_bytes(random_png(100 * c + i, size=size))
            rows.append((f"{c}-{i}.png", name, "test" if i == 5 else "train"))
    with open(tmp / "src" / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    overrides = [*QUIET, f"ingest.source={tmp / 'src' / 'list.csv'}", "ingest.val_fraction=0.2"]
    ingest.run(load_params(None, overrides=overrides), out_dir=tmp / "dataset")
    return load_dataset(tmp / "dataset")


def _purified(tmp: Path, dataset: Dataset) -> Path:
    """A purify output: the first training sample relabelled to the next class, the last dropped."""
    given = dataset.samples["train"]["label"]
    decision = np.full(len(given), KEEP)
    decision[0], decision[-1] = RELABEL, DROP
    new = np.where(decision == RELABEL, (given + 1) % dataset.num_classes, given)
    new = np.where(decision == DROP, -1, new)
    atomic.write_npz(tmp / "purified" / "labels.npz", train_labels=new, train_decision=decision)
    return tmp / "purified"


def _manifest(out: Path) -> list[dict[str, str]]:
    with open(out / "manifest.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        return list(reader)


def _sha(data: bytes) -> str:
    pixels = images.decode_image(data, size=8, channels=1, max_pixels=10**6)
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def test_folder_export_splits_by_purpose_copies_originals_and_lists_every_sample(tmp_path):
    dataset = _dataset(tmp_path)
    purified = _purified(tmp_path, dataset)
    train = dataset.samples["train"]
    (tmp_path / "src" / train["source"][1]).unlink()  # gone: the stored pixels are written instead
    (tmp_path / "src" / train["source"][2]).write_bytes(random_png(999))  # another image now
    out = tmp_path / "out"
    counts = export(tmp_path / "dataset", purified, out, fmt="folder", dropped="folder")

    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["train", "val", "test", "_dropped", "manifest.csv", "export.json"]
    )
    rows = _manifest(out)
    stored = {split: dataset.samples[split] for split in ("train", "val", "test")}
    assert [r["id"] for r in rows] == [i for split in ("train", "val", "test") for i in stored[split]["id"]]
    by_id = {r["id"]: r for r in rows}
    names = dataset.classes
    for split, table in stored.items():
        for i, sample_id in enumerate(table["id"]):
            row, given = by_id[sample_id], names[table["label"][i]]
            assert (row["given_label"], row["source"]) == (given, table["source"][i])
            if split == "train":
                choice = ("relabel", "keep", "drop")[0 if i == 0 else 2 if i == len(table["id"]) - 1 else 1]
                assert row["decision"] == choice
                label = given if choice == "drop" else names[(table["label"][i] + (choice == "relabel")) % 3]
                assert row["purified_label"] == ("" if choice == "drop" else label)
                purpose = "dropped" if choice == "drop" else "train"
            else:  # validation and test keep their given labels and are not purified
                assert row["decision"] == row["purified_label"] == ""
                label, purpose = given, split
            assert (row["split"], row["label"]) == (purpose, label)
            folder = "_dropped" if purpose == "dropped" else purpose
            assert row["path"].startswith(f"{folder}/{folder_name(label)}/{sample_id}.")
            written = (out / row["path"]).read_bytes()
            assert _sha(written) == table["sha256"][i]  # the same image as the stored sample
            if row["content"] == "original":
                assert written == (tmp_path / "src" / table["source"][i]).read_bytes()
            else:
                assert row["path"].endswith(".png") and split == "train" and i in (1, 2)
    assert [r["content"] for r in rows].count("pixels") == 2  # the moved and the changed file
    meta = json.loads((out / "export.json").read_text())
    assert meta["classes"] == names and meta["layout"] == "split/class"
    assert counts == {
        "train": len(stored["train"]["id"]) - 1,
        "val": len(stored["val"]["id"]),
        "test": 3,
        "dropped": 1,
        "written": len(rows) - 1,
        "originals": len(rows) - 2,
        "pixels": 2,
    }
    assert counts["val"] > 0


@pytest.mark.parametrize("fmt", ["folder", "csv"])
def test_export_ingests_back_to_the_purified_samples_and_reports_the_dropped(tmp_path, fmt):
    dataset = _dataset(tmp_path)
    purified = _purified(tmp_path, dataset)
    out = tmp_path / "out"
    export(tmp_path / "dataset", purified, out, fmt=fmt, dropped="omit")
    rows = _manifest(out)
    dropped = [r for r in rows if r["split"] == "dropped"]
    assert len(dropped) == 1 and dropped[0]["path"] == dropped[0]["content"] == ""  # listed, not written
    assert not (out / "_dropped").exists()
    if fmt == "csv":
        assert {r["path"].split("/")[0] for r in rows if r["path"]} == {"images"}
    source = out if fmt == "folder" else out / "manifest.csv"
    overrides = [*QUIET, f"ingest.source={source}", "ingest.val_fraction=0"]
    ingest.run(load_params(None, overrides=overrides), out_dir=tmp_path / "again")
    again = load_dataset(tmp_path / "again")
    assert again.classes == sorted(CLASSES) == dataset.classes
    got = {
        split: {
            sha: again.classes[label]
            for sha, label in zip(again.samples[split]["sha256"], again.samples[split]["label"], strict=True)
        }
        for split in ("train", "test")
    }
    tables = [dataset.samples[split] for split in ("train", "val", "test")]
    sha = {i: s for t in tables for i, s in zip(t["id"], t["sha256"], strict=True)}
    # training and validation samples come back to train with the labels the export gives them
    assert got["train"] == {sha[r["id"]]: r["label"] for r in rows if r["split"] in ("train", "val")}
    assert got["test"] == {sha[r["id"]]: r["label"] for r in rows if r["split"] == "test"}
    report = json.loads((tmp_path / "again" / "ingest_report.json").read_text())
    assert report["skipped_counts"] == ({} if fmt == "folder" else {"dropped_by_purify": 1})


def test_folder_export_with_dropped_folder_reports_them_on_ingest_and_files_elsewhere(tmp_path):
    dataset = _dataset(tmp_path)
    out = tmp_path / "out"
    export(tmp_path / "dataset", _purified(tmp_path, dataset), out, fmt="folder", dropped="folder")
    (out / "notes.txt").write_text("not a sample\n")
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 7).save(buffer, format="PNG")
    (out / "val" / "stray.png").write_bytes(buffer.getvalue())  # not in a class folder
    overrides = [*QUIET, f"ingest.source={out}", "ingest.val_fraction=0"]
    ingest.run(load_params(None, overrides=overrides), out_dir=tmp_path / "again")
    report = json.loads((tmp_path / "again" / "ingest_report.json").read_text())
    assert report["skipped_counts"] == {"dropped_by_purify": 1, "no_class_folder": 2}
    reasons = {Path(item["source"]).name: item["reason"] for item in report["skipped"]}
    assert reasons["notes.txt"] == reasons["stray.png"] == "no_class_folder"
