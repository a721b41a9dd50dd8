"""The pipeline step after `evaluate`: publish the retrained model only if it passes the accuracy gate.

The gate: the new package's test accuracy may fall below the published model's by at most
``publish.max_drop``. Both are measured here, the same way (labelsieve/engine/loop.py `predict_logits`,
``runtime.precision``), on this run's test split, so the two figures count the same images: appending a
crawl keeps every stored test sample in the test split (its rows first, unchanged) and only adds the new
crawl's share after them (labelsieve/stages/ingest.py, append mode). The first model under a root passes
(nothing to compare with). A refused model is reported, never published.

Outputs (``out_dir``): ``publish.json`` (the decision, both accuracies, the version published or kept).
Published (labelsieve/registry.py): ``models/<version>/`` under ``publish.to`` with the package, evaluate's
``metrics.json`` and this ``publish.json``, then ``latest.json`` naming it. With ``publish.to`` empty
nothing is compared or published, and ``publish.json`` says so.
"""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.atomic import atomic_dir, write_json
from labelsieve.config import Params
from labelsieve.data.store import Dataset, load_dataset
from labelsieve.errors import LabelsieveError
from labelsieve.registry import PACKAGE_FILES, fetch, publish, read_latest, version_folder, version_name
from labelsieve.storage import LocationError, open_location

PUBLISHED, REFUSED, OFF = "published", "refused", "off"  # the decision, also the step's output parameter
RECORD = "publish.json"
TOLERANCE = 1e-9  # accuracies are ratios of counts: 0.90 - 0.89 must count as 0.01, not 0.010000000000000009


class PublishError(LabelsieveError):
    """The model cannot be gated: no package, or a previous model that cannot be measured on this test set."""


@dataclass(frozen=True)
class Gate:
    """The gate's decision on one candidate.

    Attributes:
        passed: whether the candidate may be published.
        candidate: its test accuracy (0..1).
        previous: the published model's test accuracy on the same images; None when none is published.
        drop: previous − candidate (negative: an improvement); None without a previous model.
        max_drop: the largest drop allowed.
        reason: one line saying why.
    """

    passed: bool
    candidate: float
    previous: float | None
    drop: float | None
    max_drop: float
    reason: str


def gate(candidate: float, previous: float | None, max_drop: float) -> Gate:
    """Pass `candidate` unless its accuracy is more than `max_drop` below `previous` (None: nothing to
    compare with, so it passes). A drop of exactly `max_drop` passes.

    Raises:
        PublishError: an accuracy outside [0, 1] or a negative `max_drop`.
    """
    for name, value in (("candidate", candidate), ("previous", previous)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise PublishError(f"{name} accuracy {value} is not in [0, 1]")
    if max_drop < 0:
        raise PublishError(f"publish.max_drop {max_drop} is negative")
    if previous is None:
        return Gate(True, candidate, None, None, max_drop, "no model is published yet")
    drop = previous - candidate
    if drop <= max_drop + TOLERANCE:
        how = f"{-drop:.4f} above" if drop < 0 else f"{drop:.4f} below"
        reason = f"test accuracy {candidate:.4f} is {how} the published {previous:.4f}"
        return Gate(True, candidate, previous, drop, max_drop, f"{reason} (publish.max_drop {max_drop})")
    reason = (
        f"test accuracy {candidate:.4f} is {drop:.4f} below the published {previous:.4f}, more than "
        f"publish.max_drop {max_drop}"
    )
    return Gate(False, candidate, previous, drop, max_drop, reason)


def measure_accuracy(package_dir: str | Path, dataset: Dataset, params: Params) -> tuple[float, int]:
    """(accuracy, test images) of the model package on the dataset's test split.

    Predicted class names are matched to the dataset's by name, so a model trained before a crawl added
    classes is measured on every test image (it cannot predict the new classes: those count as wrong).

    Raises:
        PackageError: the package is missing or damaged.
        PublishError: the package takes other images than the dataset holds, or the test split is empty.
    """
    import torch

    from labelsieve.engine import loop
    from labelsieve.engine.device import resolve_device
    from labelsieve.package import load_package

    device = resolve_device(params.runtime.device)
    model, meta = load_package(package_dir, device)
    stored = (dataset.meta["image_size"], dataset.meta["channels"])
    if (meta["image_size"], meta["channels"]) != stored:
        raise PublishError(
            f"model {package_dir} takes {meta['image_size']} px images with {meta['channels']} channel(s), "
            f"the dataset {dataset.root} holds {stored[0]} px with {stored[1]}: their accuracies are not "
            "comparable; publish to a new publish.to for the new image format"
        )
    truth = dataset.labels("test")
    if len(truth) == 0:
        raise PublishError(f"the dataset {dataset.root} has no test images to gate the model on")
    images = torch.from_numpy(np.array(dataset.images("test"))).to(device)
    logits = loop.predict_logits(
        model,
        images,
        mean=meta["mean"],
        std=meta["std"],
        batch_size=params.model.eval_batch_size,
        precision=params.runtime.precision,
    )
    index = {name: k for k, name in enumerate(dataset.classes)}
    as_dataset = np.array([index.get(name, -1) for name in meta["classes"]], dtype=np.int64)
    predicted = as_dataset[logits.argmax(dim=1).cpu().numpy()]
    return float((predicted == truth).mean()), len(truth)


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    model_dir: str | Path,
    evaluate_dir: str | Path,
    out_dir: str | Path,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Gate the package in `model_dir` against the model published under ``publish.to``; publish it if
    it passes. Writes ``publish.json`` to `out_dir` and returns its content.

    Args:
        now: the publication time (default: the current UTC time), which names the version.

    Raises:
        PublishError: the package or evaluate's output is missing, or the previous model is not comparable.
        RegistryError: the published root's pointer or version is damaged.
        s3.StorageError: object storage cannot be used (nothing is then published).
    """
    cfg = params.publish
    record: dict[str, Any] = {"decision": OFF, "to": cfg.to, "max_drop": cfg.max_drop}
    if not cfg.to:
        record["reason"] = "publish.to is empty: nothing compared or published"
        return _write(out_dir, record)
    from labelsieve.package import MODEL_JSON, package_files

    names = package_files(model_dir) if (Path(model_dir) / MODEL_JSON).is_file() else PACKAGE_FILES
    files = {name: Path(model_dir) / name for name in names}
    files["metrics.json"] = Path(evaluate_dir) / "metrics.json"
    if missing := [str(path) for path in files.values() if not path.is_file()]:
        raise PublishError(
            f"cannot publish: {', '.join(missing)} missing (the retrain stage's package with "
            "retrain.epochs > 0, and the evaluate stage's output)"
        )
    try:
        root = open_location(cfg.to)
    except LocationError as err:
        raise PublishError(f"publish.to: {err}") from err
    dataset = load_dataset(dataset_dir)
    candidate, count = measure_accuracy(model_dir, dataset, params)
    previous = read_latest(root)
    previous_accuracy = None
    if previous is not None:
        with tempfile.TemporaryDirectory(prefix="labelsieve-published-") as tmp:
            previous_accuracy, _ = measure_accuracy(fetch(root, previous, Path(tmp)), dataset, params)
    decision = gate(candidate, previous_accuracy, cfg.max_drop)
    weights = files["weights.pt"].read_bytes()
    version = version_name(now or datetime.datetime.now(datetime.UTC), weights)
    record |= {
        "decision": PUBLISHED if decision.passed else REFUSED,
        "reason": decision.reason,
        "candidate": {"test_accuracy": candidate, "weights_sha256_prefix": version.rsplit("-", 1)[1]},
        "previous": None if previous is None else {**previous, "test_accuracy_now": previous_accuracy},
        "test_count": count,
        "dataset_content_hash": dataset.meta["content_hash"],
        "gate": asdict(decision),
    }
    if decision.passed:
        pointer = {
            "version": version,
            "path": version_folder(version),
            "test_accuracy": candidate,
            "test_count": count,
            "dataset_content_hash": dataset.meta["content_hash"],
            "published_at": version.split("-", 1)[0],
            "previous_version": None if previous is None else previous["version"],
        }
        record |= {"version": version, "location": root.describe(version_folder(version))}
        with tempfile.TemporaryDirectory(prefix="labelsieve-publish-") as tmp:
            write_json(Path(tmp) / RECORD, record)
            publish(root, {**files, RECORD: Path(tmp) / RECORD}, pointer)
    else:
        record["version"] = None if previous is None else previous["version"]
    print(describe(record), file=sys.stderr, flush=True)
    return _write(out_dir, record)


def describe(record: dict[str, Any]) -> str:
    """The one line a run prints about its publish decision."""
    if record["decision"] == PUBLISHED:
        return f"publish: published {record['version']} to {record['location']}: {record['reason']}"
    if record["decision"] == REFUSED:
        kept = record["version"]
        return f"publish: REFUSED, not published; {kept} stays the published model: {record['reason']}"
    return f"publish: {record['reason']}"


def _write(out_dir: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    """Replace `out_dir` with one holding ``publish.json`` = `record`; returns `record`."""
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / RECORD, record)
    return record


def read_record(out_dir: str | Path) -> dict[str, Any]:
    """The ``publish.json`` of a publish step's output folder.

    Raises:
        PublishError: it is missing or not a JSON object.
    """
    path = Path(out_dir) / RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PublishError(f"{path} cannot be read: {err}") from err
    if not isinstance(record, dict) or "decision" not in record:
        raise PublishError(f"{path} is not a publish record")
    return record
