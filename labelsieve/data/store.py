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

`load_dataset` checks every file before a stage uses it (JSON validity, the byte size and shape of each
array, every row of samples.csv, the counts in dataset.json) and names the damaged file. A labels folder
(`inject_noise`'s output) is checked against the dataset it is used with by `load_labels`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.errors import LabelsieveError

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
SAMPLE_COLUMNS = ("id", "split", "index", "label", "source", "sha256")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_DIGITS = re.compile(r"[0-9]+")
REINGEST = "run `labelsieve ingest` again"
TEXT = np.dtypes.StringDType()  # samples.csv's text columns: UTF-8 in one buffer, not an object per row
_CHUNK_ROWS = 65_536  # samples.csv rows parsed into Python objects before they become arrays


class DatasetError(LabelsieveError):
    """A dataset directory is missing, incomplete, or inconsistent."""


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset directory. Images stay memory-mapped until a stage moves them to a device."""

    root: Path
    classes: list[str]
    meta: dict[str, Any]
    # split -> column -> (N_split,) array, ordered by index: id, source and sha256 as `TEXT` (items are
    # str), index and label int64; the split column is the key
    samples: dict[str, dict[str, np.ndarray]]

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


def content_hash(classes: list[str], rows: Iterable[tuple[str, str, int, int, str, str]]) -> str:
    """SHA-256 over the class list and every (split, index, label, pixel hash): the dataset's identity."""
    digest = hashlib.sha256(json.dumps(classes).encode())
    for _id, split, index, label, _source, sha in rows:
        digest.update(f"{split}:{index}:{label}:{sha}\n".encode())
    return digest.hexdigest()


def load_dataset(root: str | Path) -> Dataset:
    """Open a dataset directory written by `ingest`, checking every file first.

    Raises:
        DatasetError: a file is missing, not valid JSON, truncated or inconsistent; names the file.
    """
    root = Path(root)
    for name in ("dataset.json", "classes.json", "samples.csv", *(f"{s}.npy" for s in SPLITS)):
        if not (root / name).is_file():
            raise DatasetError(
                f"{root} is not a labelsieve dataset: {name} is missing (run `labelsieve ingest`)"
            )
    meta = _read_json(root / "dataset.json", dict)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(f"{root}: format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    counts, size, channels = meta.get("counts"), meta.get("image_size"), meta.get("channels")
    if not (
        isinstance(counts, dict)
        and all(isinstance(counts.get(s), int) for s in SPLITS)
        and isinstance(size, int)
        and isinstance(channels, int)
        and isinstance(meta.get("content_hash"), str)
    ):
        raise DatasetError(
            f"{root / 'dataset.json'} is damaged: counts, image_size, channels or content_hash"
        )
    classes = _read_json(root / "classes.json", list)
    if not classes or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise DatasetError(f"{root / 'classes.json'} is damaged: expected a list of distinct class names")
    tables = _read_samples(root / "samples.csv", len(classes))
    samples = {}
    for split in SPLITS:
        table = tables[split]
        if not np.array_equal(table["index"], np.arange(len(table["index"]))):
            raise DatasetError(f"{root}/samples.csv: {split} rows are not numbered 0..N-1 in order")
        if len(table["index"]) != counts[split]:
            raise DatasetError(
                f"{root}/samples.csv is damaged: {len(table['index'])} {split} rows, dataset.json counts "
                f"{counts[split]}; {REINGEST}"
            )
        _check_npy(root / f"{split}.npy", (counts[split], channels, size, size))
        samples[split] = table
    return Dataset(root=root, classes=classes, meta=meta, samples=samples)


def _read_json(path: Path, kind: type) -> Any:
    """The JSON value in `path`, which must be of type `kind`.

    Raises:
        DatasetError: not valid JSON (e.g. truncated) or of another type, naming the file.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} is damaged: not valid JSON ({err}); {REINGEST}") from err
    if not isinstance(value, kind):
        raise DatasetError(f"{path} is damaged: expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _read_samples(path: Path, num_classes: int) -> dict[str, dict[str, np.ndarray]]:
    """The columns of samples.csv per split as arrays (`id`, `source` and `sha256` as numpy strings,
    `index` and `label` int64), every row checked.

    The rows become arrays every `_CHUNK_ROWS` rows, so the file is never held as Python objects whole: at
    10^6 rows the read peaks at 0.4 GB and keeps 0.3 GB, where one string object per field peaked at 1 GB
    (`benchmarks/metadata_memory.py`).

    Raises:
        DatasetError: a bad header, a short or malformed row (a truncated file), naming the line.
    """
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(size - 1, 0))
        if size and handle.read(1) != b"\n":
            raise DatasetError(
                f"{path} is damaged: it does not end with a full line (truncated?); {REINGEST}"
            )
    pending: dict[str, list[list[str]]] = {s: [] for s in SPLITS}
    chunks: dict[str, list[dict[str, np.ndarray]]] = {s: [] for s in SPLITS}
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            if tuple(next(reader, ())) != SAMPLE_COLUMNS:
                raise DatasetError(f"{path} is damaged: the header is not {','.join(SAMPLE_COLUMNS)}")
            for row in reader:
                if not row:
                    continue  # a blank line
                if problem := _row_problem(row, num_classes):
                    raise DatasetError(f"{path} line {reader.line_num} is damaged: {problem}; {REINGEST}")
                rows = pending[row[1]]
                rows.append(row)
                if len(rows) == _CHUNK_ROWS:
                    chunks[row[1]].append(_columns(rows))
                    rows.clear()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is damaged: not UTF-8 text ({err}); {REINGEST}") from err
    tables = {}
    for split in SPLITS:
        parts = [*chunks[split], _columns(pending[split])]
        tables[split] = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    return tables


def _row_problem(row: list[str], num_classes: int) -> str | None:
    """What is wrong with one samples.csv row, or None."""
    if len(row) != len(SAMPLE_COLUMNS):
        return f"{len(row)} fields, not {len(SAMPLE_COLUMNS)}"
    sample_id, split, index, label, _source, sha = row
    if split not in SPLITS:
        return f"split {split!r} is not one of {', '.join(SPLITS)}"
    if not _DIGITS.fullmatch(index) or not _DIGITS.fullmatch(label):
        return f"index {index!r} or label {label!r} is not a whole number"
    if int(label) >= num_classes:
        return f"label {label} is not below the {num_classes} classes of classes.json"
    if not _HEX16.fullmatch(sample_id) or not _HEX64.fullmatch(sha):
        return "id or sha256 is not a hex digest of the right length"
    return None


def _columns(rows: list[list[str]]) -> dict[str, np.ndarray]:
    """One split's checked rows as arrays, by column (the split column dropped)."""
    ids, _split, index, label, source, sha = zip(*rows, strict=True) if rows else ((),) * len(SAMPLE_COLUMNS)
    return {
        "id": np.array(ids, dtype=TEXT),
        "index": np.array(index, dtype=np.int64),
        "label": np.array(label, dtype=np.int64),
        "source": np.array(source, dtype=TEXT),
        "sha256": np.array(sha, dtype=TEXT),
    }


def _check_npy(path: Path, shape: tuple[int, ...]) -> None:
    """Check that `path` is a complete uint8 `.npy` array of `shape`.

    Raises:
        DatasetError: not an .npy file, another shape or dtype, or fewer bytes than the header promises.
    """
    try:
        with open(path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            found, _fortran, dtype = read_header(handle)
            expected = handle.tell() + math.prod(found) * dtype.itemsize
            actual = os.fstat(handle.fileno()).st_size
    except ValueError as err:
        raise DatasetError(f"{path} is damaged: not a .npy array ({err}); {REINGEST}") from err
    if tuple(found) != shape or dtype != np.uint8:
        raise DatasetError(f"{path} holds {dtype} {tuple(found)}, but dataset.json describes uint8 {shape}")
    if actual != expected:
        raise DatasetError(
            f"{path} is damaged: {actual:,} bytes, {expected:,} expected (truncated?); {REINGEST}"
        )


def noise_key(content_hash: str, seed: int, settings: dict[str, Any]) -> str:
    """The key of a labels folder: a hash of its dataset's content hash, the seed and the noise settings."""
    source = json.dumps({"dataset": content_hash, "seed": seed, **settings}, sort_keys=True)
    return hashlib.sha256(source.encode()).hexdigest()


NOISE_SETTINGS = ("mode", "rate", "class_map", "custom_map")


def load_labels(labels_dir: str | Path, dataset: Dataset) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays of ``labels.npz`` and the content of ``noise.json``, checked against `dataset`.

    Raises:
        DatasetError: a file is missing or damaged, or the folder was made for another dataset (its key
            does not hash this dataset's content), naming both folders.
    """
    labels_dir = Path(labels_dir)
    for name in ("labels.npz", "noise.json"):
        if not (labels_dir / name).is_file():
            raise DatasetError(f"{labels_dir} is not a labels folder: {name} is missing (run inject-noise)")
    noise = _read_json(labels_dir / "noise.json", dict)
    if "dataset" in noise:  # the content hash of the dataset it was made for
        same = noise["dataset"] == dataset.meta["content_hash"]
    else:  # written before noise.json named its dataset: recompute the key over this one
        missing = [k for k in (*NOISE_SETTINGS, "seed", "key") if k not in noise]
        if missing:
            raise DatasetError(f"{labels_dir / 'noise.json'} is damaged: it lacks {', '.join(missing)}")
        settings = {k: noise[k] for k in NOISE_SETTINGS}
        same = noise["key"] == noise_key(dataset.meta["content_hash"], noise["seed"], settings)
    if not same:
        raise DatasetError(
            f"labels folder {labels_dir} was made for another dataset than {dataset.root} (its noise.json "
            f"names another content hash); run `labelsieve inject-noise --dataset-dir {dataset.root} "
            f"--out-dir {labels_dir}`"
        )
    try:
        with np.load(labels_dir / "labels.npz") as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{labels_dir / 'labels.npz'} is damaged: {err}") from err
    for split in ("train", "val"):
        n = len(dataset.samples[split]["id"])
        for name in (f"{split}_labels", f"{split}_true_labels"):
            array = arrays.get(name)
            if (
                array is None
                or array.shape != (n,)
                or (n and not 0 <= array.min() <= array.max() < dataset.num_classes)
            ):
                raise DatasetError(
                    f"{labels_dir / 'labels.npz'}: {name} does not hold {n} labels below "
                    f"{dataset.num_classes} for {dataset.root}"
                )
    return arrays, noise
