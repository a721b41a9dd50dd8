"""The dataset store: the on-disk format `ingest` writes and every later stage reads.

A dataset directory holds:

- ``train.npy``, ``val.npy``, ``test.npy``: uint8 arrays of shape (N_split, C, H, W), memory-mappable
  (``np.load(..., mmap_mode="r")``). Row i of a split is the sample with ``index == i`` in that split.
- ``samples.csv``: one row per stored sample with columns ``id`` (first 16 hex digits of the content
  hash, stable across re-ingests), ``split``, ``index``, ``label`` (class index into classes.json),
  ``source`` (path, URI or ``name:split:row``) and ``sha256`` (of the stored pixels).
- ``classes.json``: the class names; the label is an index into this list.
- ``dataset.json``: format version, source, image size, channels, counts per split, content hash.
- ``ingest_report.json``: what was skipped, counted by reason, each item listed.

The `val` split is held out of training; it carries the same (possibly noisy) labels as `train`.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.errors import LabelsieveError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SAMPLE_COLUMNS = ("id", "split", "index", "label", "source", "sha256")


class DatasetError(LabelsieveError):
    """A dataset directory is missing, incomplete, or inconsistent."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset directory. Images stay memory-mapped until a stage moves them to a device."""

    root: Path
    classes: list[str]
    meta: dict[str, Any]
    samples: dict[str, dict[str, np.ndarray]]  # split -> column -> (N_split,) array, ordered by index

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        return len(self.classes)

    def images(self, split: str) -> np.ndarray:
        """(N_split, C, H, W) uint8, memory-mapped."""
        return np.load(self.root / f"{split}.npy", mmap_mode="r")

    def labels(self, split: str) -> np.ndarray:
        """(N_split,) int64 labels as ingested (before any injected noise)."""
        return self.samples[split]["label"].astype(np.int64)


def content_hash(classes: list[str], rows: list[tuple[str, str, int, int, str, str]]) -> str:
    """SHA-256 over the class list and every (split, index, label, pixel hash): the dataset's identity."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for _id, split, index, label, _source, sha in rows:
        digest.update(f"{split}:{index}:{label}:{sha}\n".encode())
    return digest.hexdigest()


def load_dataset(root: str | Path) -> Dataset:
    """Open a dataset directory written by `ingest`.

    Raises:
        DatasetError: files missing, an unknown format version, or arrays that disagree with the table.
    """
    root = Path(root)
    for name in ("dataset.json", "classes.json", "samples.csv", *(f"{s}.npy" for s in SPLITS)):
        if not (root / name).is_file():
            raise DatasetError(
                f"{root} is not a labelsieve dataset: {name} is missing (run `labelsieve ingest`)"
            )
    meta = json.loads((root / "dataset.json").read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{root}: format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    classes = json.loads((root / "classes.json").read_text())
    columns: dict[str, dict[str, list[Any]]] = {s: {c: [] for c in SAMPLE_COLUMNS} for s in SPLITS}
    with open(root / "samples.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            for column in SAMPLE_COLUMNS:
                columns[row["split"]][column].append(row[column])
    samples = {}
    for split in SPLITS:
        cols = columns[split]
        table = {
            "id": np.asarray(cols["id"], dtype=str),
            "index": np.asarray(cols["index"], dtype=np.int64),
            "label": np.asarray(cols["label"], dtype=np.int64),
            "source": np.asarray(cols["source"], dtype=object),
            "sha256": np.asarray(cols["sha256"], dtype=str),
        }
        if not np.array_equal(table["index"], np.arange(len(table["index"]))):
            raise DatasetError(f"{root}/samples.csv: {split} rows are not numbered 0..N-1 in order")
        shape = np.load(root / f"{split}.npy", mmap_mode="r").shape
        if shape[0] != len(table["index"]):
            raise DatasetError(
                f"{root}/{split}.npy holds {shape[0]} images but samples.csv lists {len(table['index'])}"
            )
        samples[split] = table
    return Dataset(root=root, classes=classes, meta=meta, samples=samples)
