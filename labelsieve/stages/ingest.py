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
import os
import warnings
from collections import Counter
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
    classes = list(
        cfg.classes or listing.classes or sorted({c.label for c in listing.candidates if not c.rejected})
    )
    base = _base_dataset(cfg.append_to, params) if cfg.append_to else None
    if base is not None:  # old class indices stay; classes new to this crawl go after them
        new = [name for name in classes if name not in base.classes]
        if new and cfg.strict_classes:
            raise IngestError(_new_classes_message(cfg.append_to, listing.name, base.classes, new))
        classes = base.classes + new
    class_index = {name: k for k, name in enumerate(classes)}
    candidates = listing.candidates
    n = len(candidates)
    shape = (data.channels, data.image_size, data.image_size)
    skipped: list[dict[str, str]] = []

    with atomic_dir(out_dir) as tmp:
        work = preallocated_npy(tmp / "work.npy", (max(n, 1), *shape))  # a full disk is an error, not SIGBUS
        hashes: list[str | None] = [None] * n
        workers = cfg.workers or os.cpu_count() or 1
        decode = functools.partial(
            _decode_into,
            work=work,
            candidates=candidates,
            class_index=class_index,
            size=data.image_size,
            channels=data.channels,
            max_pixels=cfg.max_image_pixels,
        )
        with ThreadPoolExecutor(max_workers=workers) as pool:
            starts = range(0, n, CHUNK)
            try:
                for start in progress(starts, total=len(starts), desc="ingest", mode=params.runtime.progress):
                    rows = range(start, min(start + CHUNK, n))
                    for i, (sha, reason, detail) in zip(rows, pool.map(decode, rows), strict=True):
                        if sha is None:
                            skipped.append(_skip_entry(candidates[i], reason, detail))
                        hashes[i] = sha
            except BaseException:  # a storage outage: do not wait for the queued reads to time out too
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        work.flush()

        labels = np.array([class_index.get(c.label, -1) for c in candidates], dtype=np.int64)
        has_test = any(c.split == "test" for c in candidates)
        is_test = np.array([c.split == "test" for c in candidates], dtype=bool)
        keep, conflicts = _deduplicate(candidates, hashes, labels, is_test, classes, skipped, _stored(base))
        protected = len(base.classes) if base is not None else 0
        dropped = _small_classes(labels, keep & ~is_test, classes, protected, cfg.min_class_size, skipped)
        if dropped:
            _refuse_or_warn(cfg, listing.name, n, dropped, len(classes), skipped, out_dir)
            classes, labels = _without(classes, labels, keep, candidates, dropped, skipped)
        new_classes = classes[protected:] if base is not None else []
        if new_classes:
            message = _new_classes_message(cfg.append_to, listing.name, base.classes, new_classes)
            warnings.warn(f"ingest: {message}", stacklevel=2)

        train_pool = np.flatnonzero(keep & ~is_test)
        test_rows = np.flatnonzero(keep & is_test)
        if not has_test:
            held = splits.stratified_holdout(
                labels[train_pool], cfg.test_fraction, numpy_rng(params.runtime.seed, "test")
            )
            train_pool, test_rows = train_pool[~held], train_pool[held]
        near_check = _near_duplicate_check(cfg.near_duplicate_bits, data.image_size)
        if near_check.startswith("on"):
            train_pool = _drop_near_test_leaks(
                work, train_pool, test_rows, base, candidates, cfg.near_duplicate_bits, skipped
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
        rows = []
        for split, members in split_rows.items():
            out = preallocated_npy(tmp / f"{split}.npy", (counts[split], *shape))
            if base is not None:  # the old rows first, unchanged
                out[: old[split]] = base.images(split)
                t = base.samples[split]
                old_rows = zip(t["id"], t["index"], t["label"], t["source"], t["sha256"], strict=True)
                rows += [(str(i), split, int(k), int(y), str(s), str(h)) for i, k, y, s, h in old_rows]
            for start in range(0, len(members), 4096):
                end = old[split] + start + len(members[start : start + 4096])
                out[old[split] + start : end] = work[members[start : start + 4096]]
            out.flush()
            del out
            for index, i in enumerate(members, start=old[split]):
                sha = hashes[i]
                rows.append((sha[:16], split, index, int(labels[i]), candidates[i].source, sha))
        del work
        (tmp / "work.npy").unlink()

        meta = {
            "format_version": store.FORMAT_VERSION,
            "source": listing.name if base is None else f"{base.meta['source']} + {listing.name}",
            "image_size": data.image_size,
            "channels": data.channels,
            "num_classes": len(classes),
            "counts": counts,
            "content_hash": store.content_hash(classes, rows),
            "params": {"data": params.to_dict()["data"], "ingest": params.to_dict()["ingest"]},
        }
        write_csv(tmp / "samples.csv", store.SAMPLE_COLUMNS, rows)
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


def _decode_into(
    i: int, *, work: np.ndarray, candidates: list[sources.Candidate], **decode: Any
) -> tuple[str | None, str, str]:
    """Decode candidate `i` into row `i` of `work`, in a pool thread (so the copy and the hash run in
    parallel too): (sha256 of the stored pixels, "", "") or (None, reason, detail)."""
    pixels, reason, detail = _decode(candidates[i], **decode)
    if pixels is None:
        return None, reason, detail
    work[i] = pixels
    return hashlib.sha256(pixels.tobytes()).hexdigest(), "", ""


def _decode(
    candidate: sources.Candidate, class_index: dict[str, int], size: int, channels: int, max_pixels: int
) -> tuple[np.ndarray | None, str, str]:
    """(pixels, "", "") for a usable candidate, else (None, reason, detail)."""
    if candidate.rejected:
        return None, *candidate.rejected
    if candidate.label not in class_index:
        return None, UNKNOWN_LABEL, f"label {candidate.label!r} is not in the class list"
    try:
        raw = candidate.load()
    except (OSError, s3.ObjectMissing) as err:  # any other StorageError is an outage: it stops the ingest
        return None, sources.READ_ERROR, str(err)
    try:
        if isinstance(raw, np.ndarray):
            return images.resize_array(raw, size=size, channels=channels), "", ""
        return images.decode_image(raw, size=size, channels=channels, max_pixels=max_pixels), "", ""
    except images.ImageRejected as err:
        return None, err.reason, err.detail


def _skip_entry(candidate: sources.Candidate, reason: str, detail: str) -> dict[str, str]:
    return {"source": candidate.source, "label": candidate.label, "reason": reason, "detail": detail}


def _deduplicate(
    candidates: list[sources.Candidate],
    hashes: list[str | None],
    labels: np.ndarray,
    is_test: np.ndarray,
    classes: list[str],
    skipped: list[dict[str, str]],
    stored: dict[str, tuple[str, str]] | None = None,
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Keep the first of each exact duplicate within a split; drop train images found in test.

    `stored` maps the content hash of each sample already in an appended-to dataset to (split, source);
    such an image is skipped as a duplicate, whatever split it is stored in.

    Returns the keep mask (N,) and the label conflicts among duplicates. Skips are appended to `skipped`.
    """
    stored = stored or {}
    keep = np.array([h is not None for h in hashes], dtype=bool)
    conflicts: list[dict[str, str]] = []
    first_test: dict[str, int] = {}
    first_train: dict[str, int] = {}
    # Test first, so a train image is checked against the whole test split for leakage.
    order = [i for i in range(len(candidates)) if is_test[i]] + [
        i for i in range(len(candidates)) if not is_test[i]
    ]
    for i in order:
        sha = hashes[i]
        if sha is None:
            continue
        seen = first_test if is_test[i] else first_train
        if sha in stored:
            keep[i] = False
            split, where = stored[sha]
            skipped.append(_skip_entry(candidates[i], DUPLICATE, f"already stored ({split}) as {where}"))
        elif sha in seen:
            kept = seen[sha]
            keep[i] = False
            detail = f"same pixels as {candidates[kept].source}"
            if labels[kept] != labels[i]:
                detail += f" (label conflict: kept {classes[labels[kept]]!r}, dropped {classes[labels[i]]!r})"
                conflicts.append(
                    {
                        "kept": candidates[kept].source,
                        "kept_label": classes[labels[kept]],
                        "dropped": candidates[i].source,
                        "dropped_label": classes[labels[i]],
                    }
                )
            skipped.append(_skip_entry(candidates[i], DUPLICATE, detail))
        elif not is_test[i] and sha in first_test:
            keep[i] = False
            skipped.append(
                _skip_entry(
                    candidates[i],
                    TEST_LEAK,
                    f"also in the test split as {candidates[first_test[sha]].source}",
                )
            )
        else:
            seen[sha] = i
    return keep, conflicts


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
    candidates: list[sources.Candidate],
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
        label = candidates[i].label
        detail = f"class {label!r} dropped: {usable[label]} usable sample(s), under ingest.min_class_size"
        skipped.append(_skip_entry(candidates[i], SMALL_CLASS, detail))
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
    candidates: list[sources.Candidate],
    bits: int,
    skipped: list[dict[str, str]],
) -> np.ndarray:
    """`train_rows` less those whose perceptual hash lies within `bits` of a test image's (the test rows,
    and an appended-to dataset's test split); each one dropped is appended to `skipped`."""
    reference = near_duplicates.phash(work, test_rows)
    names = [candidates[i].source for i in test_rows]
    if base is not None:
        reference = np.concatenate([reference, near_duplicates.phash(base.images("test"))])
        names += [str(name) for name in base.samples["test"]["source"]]
    distance, nearest = near_duplicates.nearest(near_duplicates.phash(work, train_rows), reference)
    near = np.flatnonzero(distance <= bits)
    for k in near:
        detail = f"perceptual hash within {distance[k]} bits of test image {names[nearest[k]]}"
        skipped.append(_skip_entry(candidates[train_rows[k]], NEAR_TEST_LEAK, detail))
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


def _stored(base: store.Dataset | None) -> dict[str, tuple[str, str]]:
    """Content hash -> (split, source) of every sample already in `base` (empty without one)."""
    if base is None:
        return {}
    return {
        sha: (split, str(source))
        for split, table in base.samples.items()
        for sha, source in zip(table["sha256"], table["source"], strict=True)
    }


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
