"""`labelsieve predict`: classify image files with a model package (labelsieve/package.py).

Inputs are image files, folders (searched recursively; hidden names and linked folders are skipped) or
``.csv`` / ``.jsonl`` manifests with a ``path`` column (relative to the manifest's folder and inside it:
the rule of ingest's manifests, labelsieve/data/paths.py; an absolute or escaping path is refused as
``path_escapes_root``). Each image is decoded exactly as `ingest` decodes training images
(labelsieve/data/images.py) to the package's size and channels, normalised with its mean and std, and
classified in batches.

An image that cannot be read never stops the run: its row carries the reason as ``status`` (the reason
names of `ingest_report.json`: ``not_an_image``, ``corrupt``, ``truncated``, ``empty_file``,
``decompression_bomb``, ``missing_file``, ``read_error``, ``bad_manifest_row``, ``path_escapes_root``,
``unsupported_uri``)
and the details in ``detail``. A readable one has ``status`` ``ok``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.atomic import write_csv
from labelsieve.config import IngestConfig
from labelsieve.data.images import ImageRejected, decode_image
from labelsieve.data.paths import manifest_file
from labelsieve.data.sources import (
    BAD_MANIFEST_ROW,
    MISSING_FILE,
    PATH_ESCAPES_ROOT,
    READ_ERROR,
    SourceError,
    manifest_rows,
)
from labelsieve.engine.loop import predict_logits
from labelsieve.errors import LabelsieveError
from labelsieve.package import load_package

OK = "ok"
UNSUPPORTED_URI = "unsupported_uri"
MANIFEST_SUFFIXES = (".csv", ".jsonl")
MAX_IMAGE_PIXELS = IngestConfig().max_image_pixels  # the same decompression-bomb limit as ingest


class PredictError(LabelsieveError):
    """Bad predict arguments or an unreadable manifest (not a bad image: those become rows)."""


@dataclass(frozen=True)
class Prediction:
    """One row of the output.

    Attributes:
        path: the input as given (file path, or the manifest's path value).
        classes: the top-k class names, most probable first; empty unless ``status == "ok"``.
        probs: their softmax probabilities.
        status: ``ok`` or the reason the image could not be read.
        detail: what exactly went wrong (empty when ok).
    """

    path: str
    classes: tuple[str, ...] = ()
    probs: tuple[float, ...] = ()
    status: str = OK
    detail: str = ""


@dataclass(frozen=True)
class _Entry:
    """An input to classify: a file to read, or a problem already known (missing file, bad row)."""

    name: str
    file: Path | None
    problem: tuple[str, str] | None = None


def list_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[_Entry]:
    """Expand files, folders and manifests into one ordered list of entries.

    Raises:
        PredictError: a manifest without a ``path`` column.
    """
    entries: list[_Entry] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            entries.extend(_Entry(str(f), f) for f in _walk(path))
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            entries.extend(_manifest_entries(path))
        elif path.is_file():
            entries.append(_Entry(str(path), path))
        else:
            entries.append(_Entry(str(path), None, (MISSING_FILE, "no such file or folder")))
    return entries


def _walk(root: Path) -> Iterator[Path]:
    """Files under `root` in sorted order; hidden names skipped, linked folders not followed."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def _manifest_entries(path: Path) -> list[_Entry]:
    """Entries of a CSV (header with ``path``) or JSONL (one object with ``path`` per line) manifest."""
    try:
        rows = manifest_rows(path, required=("path",))  # the reader ingest uses (UTF-8, BOM or not)
    except SourceError as err:
        raise PredictError(str(err)) from err
    entries = []
    for number, row, error in rows:
        where = f"{path}:{number}"
        ref = row.get("path") if row is not None else None
        if error:
            entries.append(_Entry(where, None, (BAD_MANIFEST_ROW, error)))
        elif not isinstance(ref, str) or not ref:
            entries.append(_Entry(where, None, (BAD_MANIFEST_ROW, "missing 'path'")))
        elif "://" in ref:
            entries.append(_Entry(ref, None, (UNSUPPORTED_URI, "predict reads local files only")))
        elif (file := manifest_file(path, ref)) is None:
            entries.append(_Entry(ref, None, (PATH_ESCAPES_ROOT, f"{where}: outside {path.parent}")))
        else:
            problem = None if file.is_file() else (MISSING_FILE, f"{where}: no such file")
            entries.append(_Entry(ref, file if problem is None else None, problem))
    return entries


def _decode(entry: _Entry, size: int, channels: int) -> np.ndarray | Prediction:
    """The (channels, size, size) uint8 pixels of an entry, or the row saying why there are none."""
    if entry.problem is not None:
        return Prediction(entry.name, status=entry.problem[0], detail=entry.problem[1])
    assert entry.file is not None
    try:
        data = entry.file.read_bytes()
    except OSError as err:
        return Prediction(entry.name, status=READ_ERROR, detail=str(err))
    try:
        return decode_image(data, size=size, channels=channels, max_pixels=MAX_IMAGE_PIXELS)
    except ImageRejected as err:
        return Prediction(entry.name, status=err.reason, detail=err.detail)


def predict(
    package_dir: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    top_k: int = 3,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> list[Prediction]:
    """Classify every image the inputs name, in input order; unreadable images become rows with a reason.

    Args:
        package_dir: a model package directory (the retrain stage's output).
        inputs: image files, folders (recursive) and .csv/.jsonl manifests with a ``path`` column.
        top_k: how many classes to report per image (at most C).
        device: where the network runs.
        batch_size: images decoded and classified at a time (bounds memory for large folders).

    Returns:
        One `Prediction` per image found.

    Raises:
        PredictError: ``top_k`` or ``batch_size`` below 1, or an unreadable manifest.
        PackageError: the package is missing or invalid.
    """
    if top_k < 1 or batch_size < 1:
        raise PredictError(f"--top-k and the batch size must be at least 1, got {top_k} and {batch_size}")
    model, meta = load_package(package_dir, device)
    entries = list_inputs(inputs)
    k = min(top_k, meta["num_classes"])
    rows: list[Prediction] = []
    top: Iterator[tuple[list[float], list[int]]] = iter(())
    for start in range(0, len(entries), batch_size):
        decoded = [
            _decode(e, meta["image_size"], meta["channels"]) for e in entries[start : start + batch_size]
        ]
        pixels = [d for d in decoded if isinstance(d, np.ndarray)]
        if pixels:
            images = torch.from_numpy(np.stack(pixels)).to(device)  # (B, c, H, W) uint8
            logits = predict_logits(model, images, mean=meta["mean"], std=meta["std"], batch_size=batch_size)
            probs, classes = F.softmax(logits, dim=1).topk(k, dim=1)  # (B, k), most probable first
            top = iter(zip(probs.cpu().tolist(), classes.cpu().tolist(), strict=True))
        for entry, item in zip(entries[start : start + batch_size], decoded, strict=True):
            if isinstance(item, Prediction):
                rows.append(item)
                continue
            p, c = next(top)
            rows.append(Prediction(entry.name, tuple(meta["classes"][i] for i in c), tuple(p)))
    return rows


def write_predictions(path: str | os.PathLike[str], rows: Sequence[Prediction], top_k: int) -> None:
    """Write the rows as CSV, atomically: path, class_1, prob_1, ... class_k, prob_k, status, detail.

    k is the number of classes the rows carry (``top_k`` capped at C), or ``top_k`` if no image was read.
    """
    top_k = max((len(r.classes) for r in rows if r.status == OK), default=top_k)
    header = ["path"]
    for i in range(1, top_k + 1):
        header += [f"class_{i}", f"prob_{i}"]
    table = []
    for row in rows:
        cells: list[object] = [row.path]
        for i in range(top_k):
            has = i < len(row.classes)
            cells += [row.classes[i] if has else "", f"{row.probs[i]:.6f}" if has else ""]
        table.append([*cells, row.status, row.detail])
    write_csv(path, [*header, "status", "detail"], table)
