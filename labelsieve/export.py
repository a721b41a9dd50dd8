"""`labelsieve export`: write the purified dataset where other tools can take it.

Formats:
- ``folder``: ``<out>/<class>/<id>.png`` for every kept or relabelled training sample (under its new class)
  and every validation sample (given label; validation is never purified). Dropped samples are left out,
  or written under ``<out>/_dropped/<given class>/`` with ``dropped: folder`` (ingest ignores folders
  starting with ``_``). The test split is not part of a folder export.
- ``csv``: ``<out>/images/<id>.png`` plus ``<out>/manifest.csv`` with ``path``, ``label`` and ``split``
  (train for training and validation samples, test for test samples), and dropped rows left out or
  listed in ``<out>/dropped.csv``.

Ingesting either export gives back exactly the purified labels and class names. Folder names are the
class names percent-encoded where a path needs it (labelsieve/data/paths.py): Fashion-MNIST's
"T-shirt/top" is the folder ``T-shirt%2Ftop``, and a class named ``..``, ``.hidden`` or ``_dropped``
becomes ``%2E.``, ``%2Ehidden`` or ``%5Fdropped``, so nothing is written outside `out_dir` or where
ingest would skip it; ingest decodes them. Manifests keep names as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from labelsieve.atomic import atomic_dir, write_csv, write_json
from labelsieve.data.paths import class_folder
from labelsieve.data.store import load_dataset
from labelsieve.errors import LabelsieveError
from labelsieve.maths.purification import DROP


def folder_name(class_name: str) -> str:
    """A class name as one safe path component, reversibly encoded (`labelsieve.data.paths.class_folder`).

    Raises:
        LabelsieveError: an empty class name.
    """
    try:
        return class_folder(class_name)
    except ValueError as err:
        raise LabelsieveError(f"cannot export class {class_name!r}: {err}") from err


def _png(pixels: np.ndarray, path: Path) -> None:
    """Save (C, H, W) uint8 pixels as PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")


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
    counts = {"written": 0, "dropped": 0}
    rows: list[tuple[str, str, str]] = []
    dropped_rows: list[tuple[str, str]] = []
    with atomic_dir(out_dir) as tmp:
        for split in ("train", "val", "test"):
            if fmt == "folder" and split == "test":
                continue
            images, table = dataset.images(split), dataset.samples[split]
            for i, sample_id in enumerate(table["id"]):
                given = classes[table["label"][i]]
                is_dropped = split == "train" and decision[i] == DROP
                label = given if split != "train" or is_dropped else classes[new_labels[i]]
                if is_dropped:
                    counts["dropped"] += 1
                    if dropped == "omit":
                        dropped_rows.append((sample_id, given))
                        continue
                if fmt == "folder":
                    parent = tmp / "_dropped" / folder_name(given) if is_dropped else tmp / folder_name(label)
                    _png(images[i], parent / f"{sample_id}.png")
                else:
                    _png(images[i], tmp / "images" / f"{sample_id}.png")
                    if is_dropped:
                        dropped_rows.append((sample_id, given))
                    else:
                        rows.append(
                            (f"images/{sample_id}.png", label, "test" if split == "test" else "train")
                        )
                counts["written"] += not is_dropped
        if fmt == "csv":
            write_csv(tmp / "manifest.csv", ("path", "label", "split"), rows)
            write_csv(tmp / "dropped.csv", ("id", "given_label"), dropped_rows)
        write_json(tmp / "export.json", {"format": fmt, "dropped": dropped, "classes": classes, **counts})
    return counts
