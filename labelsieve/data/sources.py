"""Every input source as one listing of candidates: where each would-be sample comes from, its label,
whether the source puts it in its test split.

Nothing is decoded here; `labelsieve.stages.ingest` reads and decodes candidates in bounded chunks. A
candidate that is already known to be bad (a path escaping the root, a bad manifest row) carries its
rejection, so it is reported rather than silently dropped.

Sources:
- ``fashion-mnist``: IDX files (labelsieve.data.idx), with its own train/test split.
- ``digits``: scikit-learn's 8x8 digits, no test split.
- a folder ``root/<keyword>/<files...>``: classes are the sorted folder names, with `export`'s ``%XX``
  escapes decoded (labelsieve/data/paths.py), so an exported folder ingests to the same class names.
- a folder export (labelsieve/export.py; its export.json says so): ``train/`` and ``val/`` class folders
  are the training pool (ingest draws its own validation split), ``test/`` the test split, the classes
  those of export.json in their order, and files under ``_dropped/`` are reported as dropped by purify.
- a ``.csv`` or ``.jsonl`` manifest with ``path``, ``label`` and optional ``split`` (train|val|test, val
  joining the training pool; an export's ``dropped`` rows are reported, not ingested); paths are relative
  to the manifest's folder, or ``s3://`` URIs.
- ``s3://bucket/prefix`` laid out like a folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.config import IngestConfig
from labelsieve.data import idx, s3
from labelsieve.data.paths import (
    DROPPED,
    DROPPED_FOLDER,
    EXPORT_LAYOUT,
    EXPORT_MANIFEST,
    EXPORT_META,
    EXPORT_SPLITS,
    class_name,
    manifest_file,
)
from labelsieve.data.store import TEXT
from labelsieve.errors import LabelsieveError

# Rejection reasons known before decoding.
PATH_ESCAPES_ROOT = "path_escapes_root"
MISSING_FILE = "missing_file"
BAD_MANIFEST_ROW = "bad_manifest_row"
NO_CLASS_FOLDER = "no_class_folder"
READ_ERROR = "read_error"
SYMLINKED_FOLDER = "symlinked_folder_not_followed"
DROPPED_BY_PURIFY = "dropped_by_purify"  # in an export, a sample that purify dropped


class SourceError(LabelsieveError):
    """The source as a whole cannot be read (missing, empty, or of an unknown kind)."""


Reader = Callable[[int], "bytes | np.ndarray"]
_PACK_ROWS = 65_536  # candidates listed before they are packed into numpy columns


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a source offers, one would-be sample (a candidate) per row of the columns; nothing decoded.

    Columns, not an object per candidate, so the listing of a large crawl stays small (README "Scale").

    Attributes:
        name: the source, as reports name it.
        sources: (N,) text: where each candidate came from (a path, a URI, or ``fashion-mnist:train:17``).
        labels: (N,) text: the class name the source gives it ("" when it gives none).
        in_test: (N,) bool: the source puts it in its own test split.
        rejected: row -> (reason, detail) for a candidate known to be unusable before decoding.
        classes: the class list, when the source defines one.
        read: row -> encoded image bytes, or pixels as an (H, W) or (C, H, W) uint8 array; only called
            for rows that are not rejected.
    """

    name: str
    sources: np.ndarray
    labels: np.ndarray
    in_test: np.ndarray
    rejected: dict[int, tuple[str, str]]
    classes: list[str] | None
    read: Reader

    def __len__(self) -> int:
        return len(self.sources)


class _Columns:
    """Collects candidates and packs them into numpy columns every `_PACK_ROWS`, so the Python objects
    of a listing in progress stay bounded."""

    def __init__(self) -> None:
        self.rejected: dict[int, tuple[str, str]] = {}
        self._pending: list[tuple[str, str, str, bool]] = []
        self._packed: list[tuple[np.ndarray, ...]] = []
        self._count = 0

    def add(
        self,
        source: str,
        label: str,
        *,
        in_test: bool = False,
        location: str = "",
        rejected: tuple[str, str] | None = None,
    ) -> None:
        """One candidate; `location` is the file its reader opens when that is not `source`."""
        if rejected is not None:
            self.rejected[self._count] = rejected
        self._pending.append((source, label, location, in_test))
        self._count += 1
        if len(self._pending) == _PACK_ROWS:
            self._pack()

    def _pack(self) -> None:
        if self._pending:
            source, label, location, in_test = zip(*self._pending, strict=True)
            text = (np.array(column, dtype=TEXT) for column in (source, label, location))
            self._packed.append((*text, np.array(in_test, dtype=bool)))
            self._pending = []

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(sources, labels, locations, in_test) of everything added, in order."""
        self._pack()
        if not self._packed:
            return (*(np.array([], dtype=TEXT) for _ in range(3)), np.array([], dtype=bool))
        source, label, location, in_test = (
            np.concatenate(parts) for parts in zip(*self._packed, strict=True)
        )
        return source, label, location, in_test


def _reader(where: np.ndarray, client: Any = None) -> Reader:
    """Reads the file, or through `client` the ``s3://`` object, that `where[i]` names."""

    def read(i: int) -> bytes:
        location = str(where[i])
        if location.startswith("s3://"):
            return s3.read_object(client, *s3.parse_uri(location))
        return Path(location).read_bytes()

    return read


def open_source(cfg: IngestConfig) -> Listing:
    """List the candidates of the source named by `cfg.source`.

    Raises:
        SourceError: the source does not exist, is of an unknown kind, or lists nothing.
    """
    source = cfg.source
    if source == "fashion-mnist":
        return _fashion_mnist(cfg)
    if source == "digits":
        return _digits()
    if source.startswith("s3://"):
        return _s3_folder(source)
    path = Path(source).expanduser()
    if path.is_dir():
        return _folder(path)
    if path.is_file() and path.suffix.lower() in (".csv", ".jsonl"):
        return _manifest(path)
    if path.is_file():
        raise SourceError(f"ingest.source {source!r}: a manifest must end in .csv or .jsonl")
    raise SourceError(
        f"ingest.source {source!r} does not exist; expected fashion-mnist, digits, a folder, "
        "a .csv/.jsonl manifest or an s3:// prefix"
    )


def _arrays(name: str, parts: list[tuple[str | None, np.ndarray, list[str]]]) -> Listing:
    """A listing of in-memory images: per part (split or None, (N, H, W) uint8 images, N labels)."""
    columns = _Columns()
    for split, _, labels in parts:
        for i, label in enumerate(labels):
            columns.add(f"{name}:{split or 'all'}:{i}", label, in_test=split == "test")
    sources, labels, _, in_test = columns.columns()
    offsets = np.cumsum([0] + [len(images) for _, images, _ in parts])

    def read(i: int) -> np.ndarray:
        part = int(np.searchsorted(offsets, i, side="right")) - 1
        return parts[part][1][i - offsets[part]]

    return Listing(name, sources, labels, in_test, columns.rejected, None, read)


def _fashion_mnist(cfg: IngestConfig) -> Listing:
    try:
        arrays = idx.load_fashion_mnist(
            Path(cfg.fashion_mnist_dir).expanduser(),
            download=cfg.download,
            url=cfg.download_url,
            cache_dir=Path(cfg.cache_dir).expanduser() / "fashion-mnist",
        )
    except idx.DatasetFileError as err:
        raise SourceError(f"fashion-mnist: {err}") from err
    names = idx.FASHION_MNIST_CLASSES
    parts = [
        (split, arrays[f"{split}_images"], [names[k] for k in arrays[f"{split}_labels"]])
        for split in ("train", "test")
    ]
    return dataclasses.replace(_arrays("fashion-mnist", parts), classes=list(names))


def _digits() -> Listing:
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16; stretch to the 0..255 range every other source uses.
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = [str(int(t)) for t in digits.target]
    return dataclasses.replace(
        _arrays("digits", [(None, images, labels)]), classes=[str(k) for k in range(10)]
    )


def _inside(path: Path, root: Path) -> bool:
    """True if `path`, with symlinks resolved, stays inside `root`."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _folder(root: Path) -> Listing:
    export_classes = _export_classes(root)
    if export_classes is not None:
        return _export_folder(root, export_classes)
    columns = _Columns()
    _loose_files(root, columns)
    classes = _class_folders(root, False, columns)
    if not classes:
        raise SourceError(f"image folder {root} has no class subfolders (expected root/<keyword>/<images>)")
    sources, labels, _, in_test = columns.columns()
    return Listing(str(root), sources, labels, in_test, columns.rejected, classes, _reader(sources))


def _loose_files(root: Path, columns: _Columns) -> None:
    """A rejected candidate per file directly in `root` (not in a class folder), hidden files aside."""
    for entry in sorted(root.iterdir()):
        if entry.is_file() and not entry.name.startswith("."):
            columns.add(str(entry), "", rejected=(NO_CLASS_FOLDER, "file is not inside a class folder"))


def _class_folders(root: Path, in_test: bool, columns: _Columns) -> list[str]:
    """Add a candidate per file in `root`'s class folders; returns their classes.

    Raises:
        SourceError: two folders stand for the same class.
    """
    # Folders starting with "." or "_" are reserved (hidden folders, an export's _dropped/).
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    names: dict[str, str] = {}  # class name -> folder; an export's %XX escapes decoded (data/paths.py)
    for folder in folders:
        if (other := names.setdefault(class_name(folder), folder)) != folder:
            raise SourceError(
                f"folders {other!r} and {folder!r} in {root} both stand for class {class_name(folder)!r}"
            )
    classes = sorted(names)
    for label in classes:
        for dirpath, dirnames, filenames in os.walk(root / names[label], followlinks=False):
            dirnames.sort()
            for name in [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                # os.walk does not follow linked folders; say so instead of dropping them quietly.
                link = Path(dirpath) / name
                reason = PATH_ESCAPES_ROOT if not _inside(link, root) else SYMLINKED_FOLDER
                detail = f"linked folder to {os.path.realpath(link)}"
                columns.add(str(link), label, in_test=in_test, rejected=(reason, detail))
            folder = Path(dirpath)
            folder_inside = _inside(folder, root)  # resolved once per folder, not once per file
            for name in sorted(filenames):
                path = os.path.join(dirpath, name)
                if not (folder_inside and not os.path.islink(path)) and not _inside(Path(path), root):
                    detail = f"links outside the root to {os.path.realpath(path)}"
                    columns.add(path, label, in_test=in_test, rejected=(PATH_ESCAPES_ROOT, detail))
                else:
                    columns.add(path, label, in_test=in_test)
    return classes


def _export_classes(root: Path) -> list[str] | None:
    """The class list of a folder export with split folders (its export.json), or None for any other folder.

    Raises:
        SourceError: export.json is not valid JSON, or names the layout without a list of class names.
    """
    meta_file = root / EXPORT_META
    if not meta_file.is_file():
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SourceError(f"{meta_file} is damaged: not valid JSON ({err}); export again") from err
    if not isinstance(meta, dict) or meta.get("layout") != EXPORT_LAYOUT:
        return None  # not an export, or one of the older flat layout: read as class folders
    classes = meta.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        raise SourceError(f"{meta_file} is damaged: 'classes' is not a list of class names; export again")
    return classes


def _export_folder(root: Path, classes: list[str]) -> Listing:
    """A folder export: split folders of class folders (see the module docstring)."""
    columns = _Columns()
    found: set[str] = set()
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or (entry.is_file() and entry.name in (EXPORT_META, EXPORT_MANIFEST)):
            continue
        if entry.name in EXPORT_SPLITS and entry.is_dir() and not entry.is_symlink():
            # val/ joins the training pool, as in any source: ingest draws its own validation split
            _loose_files(entry, columns)
            found.update(_class_folders(entry, entry.name == "test", columns))
        elif entry.name == DROPPED_FOLDER and entry.is_dir() and not entry.is_symlink():
            for file in sorted(p for p in entry.rglob("*") if p.is_file()):
                label = class_name(file.parent.name)
                columns.add(str(file), label, rejected=(DROPPED_BY_PURIFY, "purify dropped it"))
        else:
            detail = f"not inside the export's {', '.join(f'{s}/' for s in EXPORT_SPLITS)} folders"
            columns.add(str(entry), "", rejected=(NO_CLASS_FOLDER, detail))
    if not found:
        splits = ", ".join(f"{s}/" for s in EXPORT_SPLITS)
        raise SourceError(f"export {root} has no class folders in {splits}")
    sources, labels, _, in_test = columns.columns()
    classes = classes + sorted(found - set(classes))
    return Listing(str(root), sources, labels, in_test, columns.rejected, classes, _reader(sources))


def manifest_rows(
    path: Path, required: tuple[str, ...] = ("path", "label")
) -> list[tuple[int, dict[str, Any] | None, str]]:
    """(line number, row or None, error) for each data row of a CSV or JSONL manifest.

    The text is UTF-8, with or without the byte-order mark that Excel's "CSV UTF-8" writes. Ingest and
    predict both read manifests here.

    Raises:
        SourceError: the file cannot be read or decoded, or a CSV header lacks a `required` column.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise SourceError(f"manifest {path} cannot be read as UTF-8 text: {err}") from err
    rows: list[tuple[int, dict[str, Any] | None, str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        missing = set(required) - set(reader.fieldnames or [])
        if missing:
            raise SourceError(f"manifest {path}: header lacks column(s) {', '.join(sorted(missing))}")
        for number, row in enumerate(reader, start=2):
            rows.append((number, row, ""))
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            rows.append((number, None, f"not valid JSON: {err.msg}"))
            continue
        if not isinstance(row, dict):
            rows.append((number, None, "not a JSON object"))
        elif row.get("path") is not None and not isinstance(row["path"], str):
            rows.append((number, None, f"'path' must be a string, got {row['path']!r}"))
        else:
            rows.append((number, row, ""))
    return rows


def _manifest(path: Path) -> Listing:
    root = path.parent
    client = None
    columns = _Columns()
    for number, row, error in manifest_rows(path):
        where = f"{path}:{number}"
        if row is not None:
            ref, label, split = row.get("path"), row.get("label"), row.get("split") or None
            if split == DROPPED:  # an export's manifest lists the samples purify dropped
                name = ref if isinstance(ref, str) and ref else where
                reason = (DROPPED_BY_PURIFY, f"{where}: split {DROPPED}: purify dropped it")
                columns.add(name, str(label or ""), rejected=reason)
                continue
            if not isinstance(ref, str) or not ref:
                error = "missing 'path'"
            elif label is None or str(label) == "":
                error = "missing 'label'"
            elif split not in (None, *EXPORT_SPLITS):
                error = f"split {split!r} is not train, val or test"
        if error or row is None:
            columns.add(where, "", rejected=(BAD_MANIFEST_ROW, error))
            continue
        label, in_test = str(label), split == "test"  # val joins the training pool
        if ref.startswith("s3://"):
            client = client or s3.make_client()
            s3.parse_uri(ref)  # a malformed URI fails the listing, as it always did
            columns.add(ref, label, in_test=in_test, location=ref)
            continue
        file = manifest_file(path, ref)  # the same rule as predict's manifests
        if file is None:
            columns.add(ref, label, in_test=in_test, rejected=(PATH_ESCAPES_ROOT, f"{where}: outside {root}"))
        elif not file.is_file():
            columns.add(ref, label, in_test=in_test, rejected=(MISSING_FILE, f"{where}: no such file"))
        else:
            columns.add(ref, label, in_test=in_test, location=str(file))
    sources, labels, locations, in_test = columns.columns()
    return Listing(str(path), sources, labels, in_test, columns.rejected, None, _reader(locations, client))


def _s3_folder(uri: str) -> Listing:
    bucket, prefix = s3.parse_uri(uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    client = s3.make_client()
    columns = _Columns()
    classes: set[str] = set()
    for key in s3.list_keys(client, bucket, prefix):
        rest = key[len(prefix) :]
        if rest.endswith("/"):
            continue  # a "folder" marker object
        label, sep, _name = rest.partition("/")
        if not sep:
            columns.add(
                f"s3://{bucket}/{key}", "", rejected=(NO_CLASS_FOLDER, "object is not under a class prefix")
            )
            continue
        classes.add(label)
        columns.add(f"s3://{bucket}/{key}", label)
    if not classes:
        raise SourceError(f"{uri} holds no objects under <keyword>/ prefixes")
    sources, labels, _, in_test = columns.columns()
    return Listing(uri, sources, labels, in_test, columns.rejected, sorted(classes), _reader(sources, client))
