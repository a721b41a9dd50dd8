"""Scheduled retraining: ingest the crawls under a root that the accumulated dataset does not hold yet.

The accumulated dataset is the store at `ingest.append_to`. Its ledger, `crawls.json` inside that store,
lists the crawls (by name: the sub-folder or sub-prefix under the crawl root) already in it, so it is
replaced together with the data it describes. Each run lists the root, appends the new crawls in name
order (dated names: oldest first) through the `ingest` stage's append mode, and replaces the store.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from labelsieve.config import Params
from labelsieve.errors import LabelsieveError
from labelsieve.stages import STAGES

LEDGER = "crawls.json"
NOTHING_NEW = "nothing_new.json"  # what `out` holds when no crawl is new


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
    """
    path = Path(store).expanduser() / LEDGER
    if not path.is_file():
        return []
    try:
        names = json.loads(path.read_text(encoding="utf-8")).get("crawls")
    except (ValueError, AttributeError) as err:
        raise CrawlError(f"{path} is damaged: {err}") from err
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CrawlError(f"{path} is damaged: expected {{'crawls': [names]}}")
    return names


def ingest_new_crawls(params: Params, crawl_root: str, *, out_dir: str | Path) -> dict[str, Any]:
    """Append the crawls under `crawl_root` missing from the ledger to `ingest.append_to`, into `out_dir`.

    `out_dir` gets the grown dataset (with its ledger) and the store is replaced by a copy of it; with
    nothing new, `out_dir` holds only `nothing_new.json` and the store is untouched.

    Returns:
        ``new_crawls`` (how many were appended), ``crawls`` (in the ledger now), and the last ingest's
        headline counts.

    Raises:
        CrawlError: `ingest.append_to` is not set, or the root or ledger cannot be used.
    """
    from labelsieve.atomic import atomic_dir, write_json

    if not params.ingest.append_to:
        raise CrawlError("a crawl root needs ingest.append_to: the accumulated dataset's folder")
    store = Path(params.ingest.append_to).expanduser()
    done = read_ledger(store)
    new = {name: source for name, source in list_crawls(crawl_root).items() if name not in done}
    out = Path(out_dir)
    if not new:
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / NOTHING_NEW, {"crawl_root": crawl_root, "store": str(store), "crawls": done})
        return {"new_crawls": 0, "crawls": len(done)}

    base: Path | None = store if (store / "dataset.json").is_file() else None
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix=".crawls-", dir=out.parent) as work:
        for step, source in enumerate(new.values()):
            target = out if step == len(new) - 1 else Path(work) / str(step)
            cfg = dataclasses.replace(params.ingest, source=source, append_to=str(base) if base else None)
            summary = STAGES["ingest"].run(dataclasses.replace(params, ingest=cfg), out_dir=target)
            base = target
    ledger = [*done, *new]
    write_json(out / LEDGER, {"crawl_root": crawl_root, "crawls": ledger})
    with atomic_dir(store) as tmp:
        shutil.copytree(out, tmp, dirs_exist_ok=True)
    return {**summary, "new_crawls": len(new), "crawls": len(ledger)}
