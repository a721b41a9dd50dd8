"""Scheduled retraining: ingest the crawls under a root that the accumulated dataset does not hold yet.

The accumulated dataset is the store at `ingest.append_to`, a folder or an s3:// prefix. Its ledger,
`crawls.json`, lists the crawls (by name: the sub-folder or sub-prefix under the crawl root) already in it.
Each run lists the root, appends the new crawls in name order (dated names: oldest first) through the
`ingest` stage's append mode, and replaces the store:

- a folder holds the dataset and its ledger together, and is replaced as a whole (labelsieve/atomic.py);
- an s3:// prefix holds each version of the dataset under ``data/<content hash>/`` and the ledger
  ``crawls.json`` beside it, naming the current one (``"dataset": "data/<hash>"``). A run downloads that
  version, uploads the grown one to its own folder, then writes the ledger (one PUT), and only then
  deletes the other versions. A run killed before the ledger is written leaves the old ledger naming the
  old, complete data; the next run appends the same crawls again.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from labelsieve.config import Params
from labelsieve.errors import LabelsieveError
from labelsieve.stages import STAGES
from labelsieve.storage import Location, LocationError, open_location

LEDGER = "crawls.json"
NOTHING_NEW = "nothing_new.json"  # what `out` holds when no crawl is new
DATA = "data"  # in object storage: data/<content hash>/ holds one version of the accumulated dataset
VERSION = re.compile(rf"{DATA}/[0-9a-f]{{64}}")


class CrawlError(LabelsieveError):
    """The crawl root or the ledger cannot be used."""


def list_crawls(root: str) -> dict[str, str]:
    """The crawls under `root` (sub-folders of a folder, sub-prefixes of an s3:// prefix): name -> source.

    Raises:
        s3.StorageError: the bucket cannot be listed.
        CrawlError: `root` is a local path that is not a folder.
    """
    if root.startswith("s3://"):
        from labelsieve.data import s3  # boto3: imported only for an s3:// root

        bucket, prefix = s3.parse_uri(root)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = s3.list_prefixes(s3.make_client(), bucket, prefix)
        return {key.rstrip("/").rsplit("/", 1)[-1]: f"s3://{bucket}/{key}" for key in sorted(found)}
    path = Path(root).expanduser()
    if not path.is_dir():
        raise CrawlError(f"crawl root {root} is not a folder")
    return {p.name: str(p) for p in sorted(path.iterdir()) if p.is_dir()}


def read_ledger(store: str | Path) -> list[str]:
    """Names of the crawls already in the dataset at `store` ([] if it has no ledger or does not exist).

    Raises:
        CrawlError: the ledger is not a JSON list of names.
        s3.StorageError: object storage cannot be used.
    """
    return list(_ledger(_open(str(store)))["crawls"])


def _open(store: str) -> Location:
    try:
        return open_location(store)
    except LocationError as err:
        raise CrawlError(f"ingest.append_to: {err}") from err


def _ledger(location: Location) -> dict[str, Any]:
    """The ledger of the store at `location`: ``crawls`` (names) and, in object storage, ``dataset``.

    Raises:
        CrawlError: the ledger is damaged.
    """
    where = location.describe(LEDGER)
    data = location.read_bytes(LEDGER)
    if data is None:
        return {"crawls": []}
    try:
        ledger = json.loads(data)
        names = ledger.get("crawls")
    except (ValueError, AttributeError) as err:
        raise CrawlError(f"{where} is damaged: {err}") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CrawlError(f"{where} is damaged: expected {{'crawls': [names]}}")
    dataset = ledger.get("dataset")
    if location.is_s3 and not (isinstance(dataset, str) and VERSION.fullmatch(dataset)):
        raise CrawlError(f"{where} is damaged: 'dataset' does not name a data/<content hash> folder")
    return ledger


def ingest_new_crawls(params: Params, crawl_root: str, *, out_dir: str | Path) -> dict[str, Any]:
    """Append the crawls under `crawl_root` missing from the ledger to `ingest.append_to`, into `out_dir`.

    `out_dir` gets the grown dataset (with its ledger) and the store is replaced by a copy of it; with
    nothing new, `out_dir` holds only `nothing_new.json` and the store is untouched.

    Returns:
        ``new_crawls`` (how many were appended), ``crawls`` (in the ledger now), and the last ingest's
        headline counts.

    Raises:
        CrawlError: `ingest.append_to` is not set, or the root or ledger cannot be used.
        s3.StorageError: object storage cannot be used (the store is then left as it was).
    """
    from labelsieve.atomic import write_json

    if not params.ingest.append_to:
        raise CrawlError(
            "a crawl root needs ingest.append_to: the accumulated dataset's folder or s3:// prefix"
        )
    store = _open(params.ingest.append_to)
    ledger = _ledger(store)
    done = ledger["crawls"]
    new = {name: source for name, source in list_crawls(crawl_root).items() if name not in done}
    out = Path(out_dir)
    if not new:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / NOTHING_NEW, {"crawl_root": crawl_root, "store": store.uri, "crawls": done})
        return {"new_crawls": 0, "crawls": len(done)}

    summary: dict[str, Any] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".crawls-", dir=out.parent) as work:
        base = _current(store, ledger, Path(work) / "base")
        for step, source in enumerate(new.values()):
            target = out if step == len(new) - 1 else Path(work) / str(step)
            cfg = dataclasses.replace(params.ingest, source=source, append_to=str(base) if base else None)
            summary = STAGES["ingest"].run(dataclasses.replace(params, ingest=cfg), out_dir=target)
            base = target
    record: dict[str, Any] = {"crawl_root": crawl_root, "crawls": [*done, *new]}
    if store.is_s3:
        content_hash = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["content_hash"]
        record["dataset"] = f"{DATA}/{content_hash}"
    write_json(out / LEDGER, record)
    _replace(store, out, record)
    return {**summary, "new_crawls": len(new), "crawls": len(record["crawls"])}


def _current(store: Location, ledger: dict[str, Any], scratch: Path) -> Path | None:
    """A local folder holding the store's current dataset (downloaded into `scratch` from object
    storage), or None when the store holds none yet."""
    if store.path is not None:
        return store.path if (store.path / "dataset.json").is_file() else None
    if "dataset" not in ledger:
        return None
    folder = str(ledger["dataset"])
    names = store.files(folder)
    if not names:
        raise CrawlError(f"{store.describe(LEDGER)} names {store.describe(folder)}, which holds no files")
    for name in names:
        store.download(name, scratch / name[len(folder) + 1 :])
    return scratch


def _replace(store: Location, out: Path, record: dict[str, Any]) -> None:
    """Make the dataset in `out` the store's: the folder replaced as a whole, or in object storage its
    files uploaded under ``record["dataset"]``, then the ledger, then the other versions deleted."""
    from labelsieve.atomic import atomic_dir

    if store.path is not None:
        with atomic_dir(store.path) as tmp:
            shutil.copytree(out, tmp, dirs_exist_ok=True)
        return
    folder = str(record["dataset"])
    for file in sorted(p for p in out.rglob("*") if p.is_file() and p.name != LEDGER):
        store.upload(file, f"{folder}/{file.relative_to(out).as_posix()}")
    store.write_bytes(LEDGER, (json.dumps(record, indent=2) + "\n").encode())
    store.delete([name for name in store.files(DATA) if not name.startswith(f"{folder}/")])
