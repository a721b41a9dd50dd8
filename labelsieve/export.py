"""`labelsieve export`: write the purified dataset where other tools can take it, split by purpose.

Formats (both write ``manifest.csv`` and ``export.json`` at the root):
- ``folder``: ``train/<class>/`` holds the kept and relabelled training samples under their purified
  class; ``val/<class>/`` the validation samples and ``test/<class>/`` the test samples, under their given
  labels (neither split is purified: validation picks epochs on noisy labels, and test keeps its own
  labels so that a re-ingest keeps the same test split and nothing of it leaks into training). Dropped
  samples are left out, or written under ``_dropped/<given class>/`` with ``dropped: folder``.
- ``csv``: the same files under ``images/`` (``_dropped/`` for dropped ones); manifest.csv says where each
  belongs.

Each file is the original source file, copied, when the store records a local path (absolute, or relative
to the ingest manifest's folder or the working directory) that still holds the same image, i.e. decodes
to the stored pixels; otherwise (a built-in dataset, an ``s3://`` URI, a moved or changed file) it is the
stored pixels as PNG. ``manifest.csv`` has one row per stored sample: ``id``, ``split`` (train, val, test
or dropped), ``label`` (the class it is filed under), ``given_label``, ``purified_label`` and ``decision``
(keep, relabel or drop; both empty for val and test), ``source`` (as ingest recorded it), ``path`` (in the
export; empty for a dropped sample left out) and ``content`` (``original`` or ``pixels``).

Ingesting either export (the folder, or its manifest.csv) gives back the purified training samples and the
validation samples with these labels, and the test split as test (labelsieve/data/sources.py). Folder
names are the class names percent-encoded where a path needs it (labelsieve/data/paths.py): Fashion-MNIST's
"T-shirt/top" is the folder ``T-shirt%2Ftop``, and a class named ``..``, ``.hidden`` or ``_dropped`` becomes
``%2E.``, ``%2Ehidden`` or ``%5Fdropped``, so nothing is written outside `out_dir` or where ingest would
skip it; ingest decodes them. Manifests keep names as they are.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from labelsieve.atomic import atomic_dir, write_csv, write_json
from labelsieve.config import IngestConfig
from labelsieve.data import images
from labelsieve.data.paths import (
    DROPPED,
    DROPPED_FOLDER,
    EXPORT_LAYOUT,
    EXPORT_MANIFEST,
    EXPORT_META,
    class_folder,
)
from labelsieve.data.store import Dataset, load_dataset
from labelsieve.errors import LabelsieveError
from labelsieve.maths.purification import DECISION_NAMES, DROP

MANIFEST_COLUMNS = (
    "id",
    "split",
    "label",
    "given_label",
    "purified_label",
    "decision",
    "source",
    "path",
    "content",
)
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")


def folder_name(class_name: str) -> str:
    """A class name as one safe path component, reversibly encoded (`labelsieve.data.paths.class_folder`).

    Raises:
        LabelsieveError: an empty class name.
    """
    try:
        return class_folder(class_name)
    except ValueError as err:
        raise LabelsieveError(f"cannot export class {class_name!r}: {err}") from err


class _Originals:
    """Finds the source file of a stored sample, if it is still there and still the same image."""

    def __init__(self, dataset: Dataset) -> None:
        ingest = dataset.meta.get("params", {}).get("ingest", {})
        source = str(ingest.get("source", ""))
        self.bases = [Path.cwd()]  # folder sources record paths as given, relative to the working directory
        if source.lower().endswith((".csv", ".jsonl")):  # manifest rows: relative to the manifest's folder
            self.bases.insert(0, Path(source).expanduser().parent)
        self.size, self.channels = dataset.meta["image_size"], dataset.meta["channels"]
        self.max_pixels = int(ingest.get("max_image_pixels", IngestConfig().max_image_pixels))

    def read(self, source: str, sha256: str) -> bytes | None:
        """The bytes of `source`'s file when it decodes to the stored pixels (hash `sha256`), else None."""
        if not source or "://" in source:
            return None
        path = Path(source).expanduser()
        for file in [path] if path.is_absolute() else [base / path for base in self.bases]:
            try:
                data = file.read_bytes()
                pixels = images.decode_image(
                    data, size=self.size, channels=self.channels, max_pixels=self.max_pixels
                )
            except (OSError, images.ImageRejected):
                continue
            if hashlib.sha256(pixels.tobytes()).hexdigest() == sha256:
                return data
        return None


def _write(
    root: Path,
    folder: str,
    sample_id: str,
    source: str,
    originals: _Originals,
    sha256: str,
    pixels: np.ndarray,
) -> tuple[str, str]:
    """Write one sample to `root`/`folder`: its original file if still there, else its (C, H, W) pixels
    as PNG. Returns (path relative to `root`, "original" or "pixels")."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    data = originals.read(source, sha256)
    if data is not None:
        suffix = Path(source).suffix
        path = f"{folder}/{sample_id}{suffix if _SUFFIX.fullmatch(suffix) else ''}"
        (root / path).write_bytes(data)
        return path, "original"
    path = f"{folder}/{sample_id}.png"
    image = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(image)).save(root / path, format="PNG")
    return path, "pixels"


def export(
    dataset_dir: str | Path,
    purified_dir: str | Path,
    out_dir: str | Path,
    *,
    fmt: Literal["folder", "csv"] = "folder",
    dropped: Literal["omit", "folder"] = "omit",
) -> dict[str, Any]:
    """Write the purified dataset to `out_dir` (atomically, as a whole); returns counts.

    Raises:
        LabelsieveError: the purify output is missing or does not match the dataset.
    """
    dataset = load_dataset(dataset_dir)
    labels_file = Path(purified_dir) / "labels.npz"
    if not labels_file.is_file():
        raise LabelsieveError(f"{labels_file} is missing: run `labelsieve purify` first")
    with np.load(labels_file) as purified:
        new_labels, decision = purified["train_labels"], purified["train_decision"]
    if len(new_labels) != len(dataset.samples["train"]["id"]):
        raise LabelsieveError(
            f"{labels_file} has {len(new_labels)} labels, the dataset {len(dataset.samples['train']['id'])}"
        )
    classes = dataset.classes
    originals = _Originals(dataset)
    counts = dict.fromkeys(("train", "val", "test", DROPPED, "written", "originals", "pixels"), 0)
    rows: list[tuple[str, ...]] = []
    with atomic_dir(out_dir) as tmp:
        for split in ("train", "val", "test"):
            pixels, table = dataset.images(split), dataset.samples[split]
            for i, sample_id in enumerate(table["id"]):
                given = classes[table["label"][i]]
                purified_label = choice = ""
                purpose, label = split, given
                if split == "train":
                    choice = DECISION_NAMES[decision[i]]
                    if decision[i] == DROP:
                        purpose = DROPPED
                    else:
                        label = purified_label = classes[new_labels[i]]
                counts[purpose] += 1
                source, path, content = str(table["source"][i]), "", ""
                if purpose != DROPPED or dropped == "folder":
                    top = DROPPED_FOLDER if purpose == DROPPED else purpose if fmt == "folder" else "images"
                    folder = f"{top}/{folder_name(label)}" if fmt == "folder" else top
                    path, content = _write(
                        tmp, folder, sample_id, source, originals, table["sha256"][i], pixels[i]
                    )
                    counts["originals" if content == "original" else "pixels"] += 1
                    counts["written"] += purpose != DROPPED
                rows.append((sample_id, purpose, label, given, purified_label, choice, source, path, content))
        write_csv(tmp / EXPORT_MANIFEST, MANIFEST_COLUMNS, rows)
        layout = EXPORT_LAYOUT if fmt == "folder" else "images"
        write_json(
            tmp / EXPORT_META,
            {"format": fmt, "layout": layout, "dropped": dropped, "classes": classes, **counts},
        )
    return counts
