"""Stage 1, `ingest`: read a source into the dataset store (format: labelsieve/data/store.py).

Steps: list candidates -> decode, convert and resize each into a disk-backed array (bounded memory)
-> drop exact duplicates (keep the first, report label conflicts) and train images that also occur in
the test split (leakage) -> drop classes with fewer than ``ingest.min_class_size`` usable samples (an
empty keyword folder, a mistyped label) with a warning -> seeded stratified test split (if the source has
none) -> drop train images whose perceptual hash is near a test image's (resized or recompressed copies)
-> optional first-n-per-class subset -> validation split -> write the store. Every skipped sample and
dropped class is listed in ``ingest_report.json``; nothing vanishes silently. ``ingest.strict_classes``
makes a dropped class an error instead. An object-store failure (not a missing key) stops the ingest.

Append mode (``ingest.append_to``, retraining on a new crawl): the existing dataset's samples keep their
split, index and label; new images already stored there (same content hash) are skipped as duplicates,
and the rest are split by the same seeded rules and added after the old rows. Classes the dataset lacks
are added after the stored ones with a warning naming them (an error under ``ingest.strict_classes``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from labelsieve.atomic import atomic_dir, preallocated_npy, write_csv, write_json
from labelsieve.config import IngestConfig, Params
from labelsieve.data import images, near_duplicates, s3, sources, splits, store
from labelsieve.errors import LabelsieveError
from labelsieve.progress import progress
from labelsieve.seeding import numpy_rng

UNKNOWN_LABEL = "unknown_label"
DUPLICATE = "duplicate"
TEST_LEAK = "test_leak"
NEAR_TEST_LEAK = "near_test_leak"
SMALL_CLASS = "small_class"
CHUNK = 512  # candidates decoded per batch; bounds the memory held by in-flight decodes
COPY_BYTES = 16 * 2**20  # pixels gathered at a time from the work array into a split's array
DIGEST_BYTES = 32  # sha256 of an image's stored pixels: its content hash
_KEPT, _STORED, _REPEAT, _LEAK = range(4)  # why `_deduplicate` skips a row
_ROWS_AT_ONCE = 65_536  # an appended-to dataset's rows turned into Python objects at a time


class IngestError(LabelsieveError):
    """The source leaves the dataset, or one of its classes, empty."""


def run(params: Params, *, out_dir: str | Path) -> dict[str, Any]:
    """Ingest `params.ingest.source` into `out_dir`; returns the headline counts.

    Raises:
        sources.SourceError: the source cannot be read at all.
        s3.StorageError: object storage failed (unreachable, silent, refused credentials, throttling).
        IngestError: no usable class is left, or, under ``ingest.strict_classes``, a class is dropped or
            an appended crawl brings classes the dataset lacks.
    """
    cfg, data = params.ingest, params.data
    listing = sources.open_source(cfg)
    n = len(listing)
    listed = np.ones(n, dtype=bool)
    listed[list(listing.rejected)] = False
    classes = list(cfg.classes or listing.classes or np.unique(listing.labels[listed]).tolist())
    base = _base_dataset(cfg.append_to, params) if cfg.append_to else None
    if base is not None:  # old class indices stay; classes new to this crawl go after them
        new = [name for name in classes if name not in base.classes]
        if new and cfg.strict_classes:
            raise IngestError(_new_classes_message(cfg.append_to, listing.name, base.classes, new))
        classes = base.classes + new
    labels = _class_indices(listing.labels, classes)
    shape = (data.channels, data.image_size, data.image_size)
    skipped: list[dict[str, str]] = []

    with atomic_dir(out_dir) as tmp:
        work = preallocated_npy(tmp / "work.npy", (max(n, 1), *shape))  # a full disk is an error, not SIGBUS
        digests = np.zeros((n, DIGEST_BYTES), dtype=np.uint8)  # sha256 of each decoded image's pixels
        workers = cfg.workers or os.cpu_count() or 1
        decode = functools.partial(
            _decode_into,
            work=work,
            digests=digests,
            listing=listing,
            labels=labels,
            size=data.image_size,
            channels=data.channels,
            max_pixels=cfg.max_image_pixels,
        )
        decoded = np.zeros(n, dtype=bool)
        with ThreadPoolExecutor(max_workers=workers) as pool:
            starts = range(0, n, CHUNK)
            try:
                for start in progress(starts, total=len(starts), desc="ingest", mode=params.runtime.progress):
                    rows = range(start, min(start + CHUNK, n))
                    for i, skip in zip(rows, pool.map(decode, rows), strict=True):
                        if skip is None:
                            decoded[i] = True
                        else:
                            skipped.append(_skip_entry(listing, i, *skip))
            except BaseException:  # a storage outage: do not wait for the queued reads to time out too
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        work.flush()

        is_test = listing.in_test
        keep, conflicts = _deduplicate(listing, digests, decoded, labels, classes, skipped, _stored(base))
        protected = len(base.classes) if base is not None else 0
        dropped = _small_classes(labels, keep & ~is_test, classes, protected, cfg.min_class_size, skipped)
        if dropped:
            _refuse_or_warn(cfg, listing.name, n, dropped, len(classes), skipped, out_dir)
            classes, labels = _without(classes, labels, keep, listing, dropped, skipped)
        new_classes = classes[protected:] if base is not None else []
        if new_classes:
            message = _new_classes_message(cfg.append_to, listing.name, base.classes, new_classes)
            warnings.warn(f"ingest: {message}", stacklevel=2)

        train_pool = np.flatnonzero(keep & ~is_test)
        test_rows = np.flatnonzero(keep & is_test)
        if not is_test.any():
            held = splits.stratified_holdout(
                labels[train_pool], cfg.test_fraction, numpy_rng(params.runtime.seed, "test")
            )
            train_pool, test_rows = train_pool[~held], train_pool[held]
        near_check = _near_duplicate_check(cfg.near_duplicate_bits, data.image_size)
        if near_check.startswith("on"):
            train_pool = _drop_near_test_leaks(
                work, train_pool, test_rows, base, listing, cfg.near_duplicate_bits, skipped
            )
        if base is None:
            subset = splits.first_per_class(labels[train_pool], cfg.per_class_limit)
        else:
            subset = _within_quota(labels[train_pool], cfg.per_class_limit, _train_counts(base, len(classes)))
        excluded_by_limit = int((~subset).sum())
        train_pool = train_pool[subset]
        held = splits.stratified_holdout(
            labels[train_pool], cfg.val_fraction, numpy_rng(params.runtime.seed, "val")
        )
        split_rows = {"train": train_pool[~held], "val": train_pool[held], "test": test_rows}

        old = {split: 0 if base is None else len(base.samples[split]["id"]) for split in store.SPLITS}
        counts = {split: old[split] + len(members) for split, members in split_rows.items()}
        reasons = Counter(item["reason"] for item in skipped)
        report: dict[str, Any] = {
            "source": listing.name,
            "candidates": n,
            "stored": counts,
            "skipped_total": len(skipped),
            "skipped_counts": dict(sorted(reasons.items())),
            "excluded_by_per_class_limit": excluded_by_limit,
            "label_conflicts": conflicts,
            "dropped_classes": dropped,
            "near_duplicate_check": near_check,
            "skipped": skipped,
        }
        if base is not None:
            report["appended_to"] = str(cfg.append_to)
            report["new_classes"] = new_classes
            report["added"] = {split: len(members) for split, members in split_rows.items()}
        problem = None if base is not None else _emptiness(listing.name, classes, labels, split_rows, reasons)
        if problem:
            _fail(out_dir, report, problem)
        if len(classes) < 2:  # a store may grow crawl by crawl, so this is no error yet (purify refuses it)
            warnings.warn(
                f"ingest: the dataset has a single class, {classes[0]!r}: training, and telling a wrong "
                "label, need at least two; append a crawl with the others (ingest.append_to) before training",
                stacklevel=2,
            )
        for split, members in split_rows.items():
            out = preallocated_npy(tmp / f"{split}.npy", (counts[split], *shape))
            if base is not None:  # the old rows first, unchanged
                out[: old[split]] = base.images(split)
            step = max(1, COPY_BYTES // math.prod(shape))  # rows copied at a time
            for start in range(0, len(members), step):
                end = old[split] + start + len(members[start : start + step])
                out[old[split] + start : end] = work[members[start : start + step]]
            out.flush()
            del out
        del work
        (tmp / "work.npy").unlink()

        sample_rows = functools.partial(_sample_rows, base, split_rows, old, labels, digests, listing.sources)
        meta = {
            "format_version": store.FORMAT_VERSION,
            "source": listing.name if base is None else f"{base.meta['source']} + {listing.name}",
            "image_size": data.image_size,
            "channels": data.channels,
            "num_classes": len(classes),
            "counts": counts,
            "content_hash": store.content_hash(classes, sample_rows()),
            "params": {"data": params.to_dict()["data"], "ingest": params.to_dict()["ingest"]},
        }
        write_csv(tmp / "samples.csv", store.SAMPLE_COLUMNS, sample_rows())
        write_json(tmp / "classes.json", classes)
        write_json(tmp / "dataset.json", meta)
        write_json(tmp / "ingest_report.json", report)
    return {
        "source": listing.name,
        "classes": len(classes),
        **counts,
        "skipped": len(skipped),
        "skipped_counts": report["skipped_counts"],
        "dropped_classes": [d["class"] for d in dropped],
        **({"new_classes": new_classes} if base is not None else {}),
    }


def _class_indices(names: np.ndarray, classes: list[str]) -> np.ndarray:
    """(N,) int64 index in `classes` of each class name in `names`, -1 for a name not there."""
    unique, inverse = np.unique(names, return_inverse=True)
    index = {name: k for k, name in enumerate(classes)}
    return np.array([index.get(str(name), -1) for name in unique], dtype=np.int64)[inverse.ravel()]


def _decode_into(
    i: int,
    *,
    work: np.ndarray,
    digests: np.ndarray,
    listing: sources.Listing,
    labels: np.ndarray,
    **decode: Any,
) -> tuple[str, str] | None:
    """Decode candidate `i` into row `i` of `work` and the sha256 of its pixels into row `i` of `digests`,
    in a pool thread (so the copy and the hash run in parallel too); (reason, detail) if it is skipped."""
    pixels, reason, detail = _decode(listing, i, labels[i] >= 0, **decode)
    if pixels is None:
        return reason, detail
    work[i] = pixels
    digests[i] = np.frombuffer(hashlib.sha256(pixels.tobytes()).digest(), dtype=np.uint8)
    return None


def _decode(
    listing: sources.Listing, i: int, known_label: bool, size: int, channels: int, max_pixels: int
) -> tuple[np.ndarray | None, str, str]:
    """(pixels, "", "") for usable candidate `i`, else (None, reason, detail)."""
    if i in listing.rejected:
        return None, *listing.rejected[i]
    if not known_label:
        return None, UNKNOWN_LABEL, f"label {str(listing.labels[i])!r} is not in the class list"
    try:
        raw = listing.read(i)
    except (OSError, s3.ObjectMissing) as err:  # any other StorageError is an outage: it stops the ingest
        return None, sources.READ_ERROR, str(err)
    try:
        if isinstance(raw, np.ndarray):
            return images.resize_array(raw, size=size, channels=channels), "", ""
        return images.decode_image(raw, size=size, channels=channels, max_pixels=max_pixels), "", ""
    except images.ImageRejected as err:
        return None, err.reason, err.detail


def _skip_entry(listing: sources.Listing, i: int, reason: str, detail: str) -> dict[str, str]:
    return {
        "source": str(listing.sources[i]),
        "label": str(listing.labels[i]),
        "reason": reason,
        "detail": detail,
    }


def _keys(digests: np.ndarray) -> np.ndarray:
    """(N,) one sortable value per row of (N, DIGEST_BYTES) uint8 digests (rows equal iff values equal)."""
    return np.ascontiguousarray(digests).view(np.dtype((np.void, DIGEST_BYTES))).ravel()


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each of `keys`: whether it is in `sorted_keys`, and its position there (valid where found)."""
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool), np.zeros(len(keys), dtype=np.int64)
    where = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[where] == keys, where


def _first_rows(rows: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For ascending `rows`: their distinct keys (sorted), the first row of each, and for every row the
    first row with its key."""
    distinct, first, inverse = np.unique(keys[rows], return_index=True, return_inverse=True)
    return distinct, rows[first], rows[first][inverse.ravel()]


def _deduplicate(
    listing: sources.Listing,
    digests: np.ndarray,
    decoded: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    skipped: list[dict[str, str]],
    stored: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Keep the first of each exact duplicate within a split; drop train images found in test.

    `stored` holds the content keys (`_keys`), splits and sources of the samples already in an
    appended-to dataset; such an image is skipped as a duplicate, whatever split it is stored in.

    Returns the keep mask (N,) and the label conflicts among duplicates. Skips are appended to `skipped`:
    the test split's first, each split in listing order.
    """
    keys, is_test = _keys(digests), listing.in_test
    stored_keys, stored_split, stored_source = stored
    why = np.zeros(len(keys), dtype=np.int8)  # _KEPT, or why the row is skipped
    other = np.zeros(len(keys), dtype=np.int64)  # the stored sample, or the row, that it repeats
    by_key = np.argsort(stored_keys, kind="stable")
    found, where = _find(stored_keys[by_key], keys)
    hit = decoded & found
    why[hit], other[hit] = _STORED, by_key[where[hit]]
    test_rows = np.flatnonzero(decoded & ~found & is_test)
    test_keys, test_firsts, first = _first_rows(test_rows, keys)
    repeat = test_rows[first != test_rows]
    why[repeat], other[repeat] = _REPEAT, first[first != test_rows]
    train_rows = np.flatnonzero(decoded & ~found & ~is_test)
    leaked, where = _find(test_keys, keys[train_rows])  # every copy of a test image, not only the first
    why[train_rows[leaked]], other[train_rows[leaked]] = _LEAK, test_firsts[where[leaked]]
    train_rows = train_rows[~leaked]
    _, _, first = _first_rows(train_rows, keys)
    repeat = train_rows[first != train_rows]
    why[repeat], other[repeat] = _REPEAT, first[first != train_rows]

    conflicts: list[dict[str, str]] = []
    flagged = np.flatnonzero(why)
    for i in np.concatenate([flagged[is_test[flagged]], flagged[~is_test[flagged]]]):
        kept = other[i]
        if why[i] == _STORED:
            detail = f"already stored ({stored_split[kept]}) as {stored_source[kept]}"
            skipped.append(_skip_entry(listing, i, DUPLICATE, detail))
        elif why[i] == _LEAK:
            skipped.append(
                _skip_entry(listing, i, TEST_LEAK, f"also in the test split as {listing.sources[kept]}")
            )
        else:
            detail = f"same pixels as {listing.sources[kept]}"
            if labels[kept] != labels[i]:
                detail += f" (label conflict: kept {classes[labels[kept]]!r}, dropped {classes[labels[i]]!r})"
                conflicts.append(
                    {
                        "kept": str(listing.sources[kept]),
                        "kept_label": classes[labels[kept]],
                        "dropped": str(listing.sources[i]),
                        "dropped_label": classes[labels[i]],
                    }
                )
            skipped.append(_skip_entry(listing, i, DUPLICATE, detail))
    return decoded & (why == _KEPT), conflicts


def _counts(skipped: list[dict[str, str]]) -> dict[str, int]:
    return dict(sorted(Counter(item["reason"] for item in skipped).items()))


def _fail(out_dir: str | Path, report: dict[str, Any], problem: str) -> NoReturn:
    """Write `report` next to `out_dir` as ``<name>.failed_ingest_report.json`` and raise IngestError."""
    failed_report = Path(out_dir).with_name(Path(out_dir).name + ".failed_ingest_report.json")
    write_json(failed_report, report)
    raise IngestError(f"{problem}; every skipped sample is listed in {failed_report}")


def _small_classes(
    labels: np.ndarray,
    usable: np.ndarray,
    classes: list[str],
    protected: int,
    minimum: int,
    skipped: list[dict[str, str]],
) -> list[dict[str, Any]]:
    """Classes after the first `protected` (an appended-to dataset's) with fewer than `minimum` usable
    samples (mask (N,)), each as {"class", "usable", "skipped_counts"} (its samples skipped so far)."""
    counts = np.bincount(labels[usable], minlength=len(classes))
    return [
        {
            "class": classes[k],
            "usable": int(counts[k]),
            "skipped_counts": _counts([item for item in skipped if item["label"] == classes[k]]),
        }
        for k in range(protected, len(classes))
        if counts[k] < minimum
    ]


def _refuse_or_warn(
    cfg: IngestConfig,
    source: str,
    candidates: int,
    dropped: list[dict[str, Any]],
    num_classes: int,
    skipped: list[dict[str, str]],
    out_dir: str | Path,
) -> None:
    """Warn that the `dropped` classes are left out; fail instead (see `_fail`) under strict_classes or
    when no class is left."""
    names = ", ".join(f"{d['class']!r} ({d['usable']} usable)" for d in dropped)
    problem = (
        f"class(es) {names} of source {source} have fewer than ingest.min_class_size="
        f"{cfg.min_class_size} usable samples outside the test split"
    )
    if cfg.strict_classes or len(dropped) == num_classes:
        if not cfg.strict_classes:
            problem = f"source {source} leaves no usable training image: {problem}"
        report = {"source": source, "candidates": candidates, "dropped_classes": dropped}
        _fail(out_dir, {**report, "skipped_counts": _counts(skipped), "skipped": skipped}, problem)
    warnings.warn(
        f"ingest: dropped {problem}; see dropped_classes in ingest_report.json "
        "(ingest.strict_classes=true makes this an error)",
        stacklevel=3,
    )


def _without(
    classes: list[str],
    labels: np.ndarray,
    keep: np.ndarray,
    listing: sources.Listing,
    dropped: list[dict[str, Any]],
    skipped: list[dict[str, str]],
) -> tuple[list[str], np.ndarray]:
    """Drop the `dropped` classes: their kept samples are skipped (`keep` updated in place) and the labels
    renumbered. Returns (classes left, labels (N,) with -1 for the dropped)."""
    gone = np.array([name in {d["class"] for d in dropped} for name in classes])
    has = labels >= 0
    hit = np.zeros(len(labels), dtype=bool)
    hit[has] = gone[labels[has]]
    usable = {d["class"]: d["usable"] for d in dropped}
    for i in np.flatnonzero(keep & hit):
        keep[i] = False
        label = str(listing.labels[i])
        detail = f"class {label!r} dropped: {usable[label]} usable sample(s), under ingest.min_class_size"
        skipped.append(_skip_entry(listing, i, SMALL_CLASS, detail))
    renumber = np.where(gone, -1, np.cumsum(~gone) - 1)
    labels = np.where(has, renumber[np.clip(labels, 0, None)], -1)
    return [name for name, g in zip(classes, gone, strict=True) if not g], labels


def _new_classes_message(path: str | None, source: str, stored: list[str], new: list[str]) -> str:
    names = ", ".join(map(repr, new))
    return (
        f"source {source} adds {len(new)} class(es) that ingest.append_to {path} lacks: {names} "
        f"(stored: {', '.join(map(repr, stored))}); the label space grows from {len(stored)} to "
        f"{len(stored) + len(new)} classes. Rename the folders or labels to the stored names if they are "
        "the same classes; ingest.strict_classes=true refuses such a crawl"
    )


def _near_duplicate_check(bits: int, size: int) -> str:
    """Whether train images near a test image are looked for, and why not (for the report)."""
    if bits < 0:
        return "off: ingest.near_duplicate_bits is -1"
    if size < near_duplicates.SIDE:
        # An image smaller than the hash's own 28 px has too little detail to tell copies from look-alikes
        # at the measured threshold (on 8 px digits, two writers' 6s came within 10 bits).
        return f"off: images of {size} px are smaller than the {near_duplicates.SIDE} px the hash needs"
    return f"on: train images within {bits} bits of a test image's perceptual hash are dropped"


def _drop_near_test_leaks(
    work: np.ndarray,
    train_rows: np.ndarray,
    test_rows: np.ndarray,
    base: store.Dataset | None,
    listing: sources.Listing,
    bits: int,
    skipped: list[dict[str, str]],
) -> np.ndarray:
    """`train_rows` less those whose perceptual hash lies within `bits` of a test image's (the test rows,
    and an appended-to dataset's test split); each one dropped is appended to `skipped`."""
    reference = near_duplicates.phash(work, test_rows)
    names = listing.sources[test_rows]
    if base is not None:
        reference = np.concatenate([reference, near_duplicates.phash(base.images("test"))])
        names = np.concatenate([names, base.samples["test"]["source"]])
    distance, nearest = near_duplicates.nearest(near_duplicates.phash(work, train_rows), reference)
    near = np.flatnonzero(distance <= bits)
    for k in near:
        detail = f"perceptual hash within {distance[k]} bits of test image {names[nearest[k]]}"
        skipped.append(_skip_entry(listing, train_rows[k], NEAR_TEST_LEAK, detail))
    return np.delete(train_rows, near)


def _base_dataset(path: str, params: Params) -> store.Dataset:
    """The dataset to append to, checked against the image format the params ask for.

    Raises:
        store.DatasetError: `path` is not a dataset.
        IngestError: `path` is in object storage, or its image size or channels differ from `params.data`.
    """
    if "://" in path:
        raise IngestError(
            f"ingest.append_to {path}: this stage appends to a local dataset folder; an accumulated dataset "
            "in object storage is grown by a crawl-following run (`labelsieve pipeline run-local` or "
            "`schedule` with --crawl-root), which downloads it first"
        )
    base = store.load_dataset(Path(path).expanduser())
    stored = (base.meta["image_size"], base.meta["channels"])
    wanted = (params.data.image_size, params.data.channels)
    if stored != wanted:
        raise IngestError(
            f"ingest.append_to {path}: images are {stored[0]} px with {stored[1]} channel(s), but data asks "
            f"for {wanted[0]} px with {wanted[1]}; set data.image_size and data.channels to match"
        )
    return base


def _stored(base: store.Dataset | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Content keys (`_keys`), splits and sources of every sample already in `base` (none without one)."""
    tables = [(split, base.samples[split]) for split in store.SPLITS] if base is not None else []
    sha = "".join(h for _, table in tables for h in table["sha256"].tolist())
    digests = np.frombuffer(bytes.fromhex(sha), dtype=np.uint8).reshape(-1, DIGEST_BYTES)
    splits = np.repeat(
        np.array([split for split, _ in tables], dtype=store.TEXT), [len(t["sha256"]) for _, t in tables]
    )
    names = [table["source"] for _, table in tables]
    return _keys(digests), splits, np.concatenate(names) if names else np.array([], dtype=store.TEXT)


def _sample_rows(
    base: store.Dataset | None,
    split_rows: dict[str, np.ndarray],
    old: dict[str, int],
    labels: np.ndarray,
    digests: np.ndarray,
    names: np.ndarray,
) -> Iterator[tuple[str, str, int, int, str, str]]:
    """The rows of samples.csv (`store.SAMPLE_COLUMNS`): per split, `base`'s rows unchanged, then the
    listing rows `split_rows[split]` from index `old[split]` on."""
    for split, members in split_rows.items():
        table = base.samples[split] if base is not None else {"id": []}
        for start in range(0, len(table["id"]), _ROWS_AT_ONCE):  # Python objects for a chunk at a time
            part = slice(start, start + _ROWS_AT_ONCE)
            columns = (
                table[column][part].tolist() for column in ("id", "index", "label", "source", "sha256")
            )
            for sample_id, index, label, source, sha in zip(*columns, strict=True):
                yield sample_id, split, index, label, source, sha
        for index, i in enumerate(members, start=old[split]):
            sha = digests[i].tobytes().hex()
            yield sha[:16], split, index, int(labels[i]), str(names[i]), sha


def _train_counts(base: store.Dataset, num_classes: int) -> np.ndarray:
    """(C,) samples per class already in `base`'s train and val splits (what per_class_limit counts)."""
    labels = np.concatenate([base.samples["train"]["label"], base.samples["val"]["label"]])
    return np.bincount(labels, minlength=num_classes)


def _within_quota(labels: np.ndarray, limit: int, already: np.ndarray) -> np.ndarray:
    """Mask (N,) keeping, in order, the samples of each class c until `already[c]` + kept reaches `limit`."""
    if limit <= 0:
        return np.ones(len(labels), dtype=bool)
    taken = already.astype(np.int64).copy()
    keep = np.zeros(len(labels), dtype=bool)
    for i, c in enumerate(labels):
        if taken[c] < limit:
            keep[i] = True
            taken[c] += 1
    return keep


def _emptiness(
    source: str,
    classes: list[str],
    labels: np.ndarray,
    split_rows: dict[str, np.ndarray],
    reasons: Counter[str],
) -> str | None:
    """A message if the dataset, or some class, has no training image left; else None."""
    why = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items())) or "nothing was skipped"
    train = split_rows["train"]
    if len(train) == 0:
        return f"source {source} leaves no usable training image (skipped {why})"
    present = np.bincount(labels[train], minlength=len(classes))
    empty = [classes[k] for k in np.flatnonzero(present == 0)]
    if empty:
        names = ", ".join(map(repr, empty))
        return f"source {source} leaves class(es) {names} with no usable training image (skipped {why})"
    return None
