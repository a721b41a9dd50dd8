"""Published models: versioned model packages under a root (a folder or an s3:// prefix) and a pointer.

Layout under the root (``publish.to``)::

    models/<version>/weights.pt, model.json, model_card.json   the model package (labelsieve/package.py)
    models/<version>/metrics.json                              evaluate's headline figures for that run
    models/<version>/publish.json                              the gate's figures that let it through
    latest.json                                                the pointer: which version is current

``<version>`` is the UTC time of publication and the first hex digits of the weights' SHA-256
(``20261121T030012Z-1a2b3c4d``): sortable, and unique per model. The pointer names the version, its folder,
its test accuracy (and on how many test images), and the content hash of the dataset it was trained on.

Publishing writes every file of the version first and the pointer last, as one atomic write: a run killed
on the way leaves an unnamed folder and the previous pointer, never a pointer naming a missing model.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from labelsieve.errors import LabelsieveError, field_problems
from labelsieve.storage import Location, LocationError, open_location

LATEST = "latest.json"
MODELS = "models"
PACKAGE_FILES = ("weights.pt", "model.json", "model_card.json")  # every package has them; ensembles add more
VERSION = re.compile(r"\d{8}T\d{6}Z-[0-9a-f]{8}")
# key -> the JSON types it may hold in latest.json
POINTER_FIELDS: dict[str, tuple[type, ...]] = {
    "version": (str,),
    "path": (str,),
    "test_accuracy": (int, float),
    "test_count": (int,),
    "dataset_content_hash": (str,),
    "published_at": (str,),
}


class RegistryError(LabelsieveError):
    """The published-models root, its pointer or a version in it cannot be used."""


def version_name(when: datetime.datetime, weights: bytes) -> str:
    """The version of a model published at `when` (any timezone; written in UTC) with these weights."""
    stamp = when.astimezone(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{hashlib.sha256(weights).hexdigest()[:8]}"


def version_folder(version: str) -> str:
    """The folder of `version` under the root, e.g. ``models/20261121T030012Z-1a2b3c4d``."""
    return f"{MODELS}/{version}"


def read_latest(root: Location) -> dict[str, Any] | None:
    """The pointer of `root`, checked; None if nothing was published there yet.

    Raises:
        RegistryError: ``latest.json`` is not JSON, lacks a field, or names a version in another form.
        s3.StorageError: object storage cannot be used.
    """
    data = root.read_bytes(LATEST)
    if data is None:
        return None
    where = root.describe(LATEST)
    try:
        pointer = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RegistryError(f"{where} is damaged: not valid JSON ({err})") from err
    if not isinstance(pointer, dict):
        raise RegistryError(f"{where} is damaged: expected a JSON object")
    problems = field_problems(pointer, POINTER_FIELDS)
    if not problems and not VERSION.fullmatch(pointer["version"]):
        problems.append(f"version {pointer['version']!r} is not of the form 20261121T030012Z-1a2b3c4d")
    if not problems and pointer["path"] != version_folder(pointer["version"]):
        problems.append(f"path {pointer['path']!r} is not {version_folder(pointer['version'])!r}")
    if problems:
        raise RegistryError(f"{where} is damaged: " + "; ".join(problems))
    return pointer


def fetch(root: Location, pointer: Mapping[str, Any], dest: Path) -> Path:
    """Download the published version `pointer` names into the folder `dest`; returns `dest`.

    Raises:
        RegistryError: a package file of that version is missing.
        s3.StorageError: object storage cannot be used.
    """
    folder = str(pointer["path"])
    names = [name[len(folder) + 1 :] for name in root.files(folder)]
    missing = [name for name in PACKAGE_FILES if name not in names]
    if missing:
        raise RegistryError(
            f"{root.describe(LATEST)} names version {pointer['version']}, but {root.describe(folder)} lacks "
            f"{', '.join(missing)}"
        )
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        root.download(f"{folder}/{name}", dest / name)
    return dest


def publish(root: Location, files: Mapping[str, Path], pointer: Mapping[str, Any]) -> None:
    """Upload `files` (name -> local file) into the folder of ``pointer["version"]``, then the pointer.

    Raises:
        RegistryError: the pointer lacks a field, its version is malformed or a package file is not given.
        s3.StorageError: object storage cannot be used (the pointer is then left as it was).
    """
    missing = [key for key in POINTER_FIELDS if key not in pointer]
    missing += [name for name in PACKAGE_FILES if name not in files]
    if missing:
        raise RegistryError(f"cannot publish without {', '.join(missing)}")
    version = str(pointer["version"])
    if not VERSION.fullmatch(version) or pointer["path"] != version_folder(version):
        raise RegistryError(f"cannot publish version {version!r} at {pointer['path']!r}")
    for name, source in files.items():
        root.upload(source, f"{version_folder(version)}/{name}")
    root.write_bytes(LATEST, (json.dumps(dict(pointer), indent=2) + "\n").encode())


def fetch_latest(uri: str, dest: Path) -> tuple[Path, dict[str, Any]] | None:
    """Download the model the pointer under `uri` names into `dest`: (its folder, the pointer), or None
    when nothing was published there yet.

    Raises:
        RegistryError: `uri` is not a folder or s3:// prefix, or the pointer or the version is damaged.
        s3.StorageError: object storage cannot be used.
    """
    try:
        root = open_location(uri)
    except LocationError as err:
        raise RegistryError(f"publish.to: {err}") from err
    pointer = read_latest(root)
    if pointer is None:
        return None
    return fetch(root, pointer, dest), pointer


def latest_weights(uri: str) -> tuple[bytes, dict[str, Any]] | None:
    """The ``weights.pt`` bytes and the pointer of the model published under `uri`, or None if none is.

    Raises:
        as `fetch_latest`.
    """
    with tempfile.TemporaryDirectory(prefix="labelsieve-latest-") as tmp:
        found = fetch_latest(uri, Path(tmp))
        if found is None:
            return None
        folder, pointer = found
        return (folder / "weights.pt").read_bytes(), pointer
