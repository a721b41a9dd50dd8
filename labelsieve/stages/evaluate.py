"""Stage 9, `evaluate`: the figures of the whole run, its plots and one self-contained HTML report.

The final model is the last training stage that trained: `retrain` if ``retrain.epochs > 0``, else
`group_regularize`, else `ssl_train`, else `warmup` (a stage with 0 epochs passes through and leaves an empty
history). Its figures:
- test accuracy at the last epoch, and at the epoch chosen on the noisy validation split (never on test);
- per-class precision, recall and F1 and the confusion matrix on the test split, from the model package
  (`retrain`) or the ensemble of that stage's networks (summed logits);
- with injected noise: purify's detection figures (precision, recall, F1, AUROC, relabel accuracy) and the
  actual noise rate of the training labels.

Outputs:
- ``metrics.json``: flat headline numbers (for `dvc metrics show`);
- ``evaluation.json``: everything, nested: final stage, stages passed through, per-stage figures, per-class
  table, confusion matrix, purify's decisions and detection figures, machine and versions, provenance (git
  commit, dataset content hash, hash of the resolved params), resolved params;
- ``plots/``: plot data for `dvc plots show`: ``training_curves.csv`` (every stage's epochs on one step
  axis), ``loss_histogram.csv`` (the last co-divide, network 1, with its fitted GMM scaled to counts),
  ``loss_histograms.json`` (every co-divide and network), ``confusion.csv`` (one row per test sample:
  actual, predicted) and ``roc.csv`` (ROC of 1 − clean probability, where the truth is known);
- ``figures/*.png`` and ``report.html`` (labelsieve/report.py).

With `metrics_dir` (``metrics/`` under DVC) it also writes ``metrics.json`` and ``plots/*.csv`` there: small
files DVC declares with ``cache: false`` and git tracks, so a fresh clone's `dvc metrics show` and `dvc plots
show` print the committed figures. Wall-clock training times go only to ``<metrics_dir>/timings.json``
(git-ignored, undeclared): in a cached output they would change its hash on every run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelsieve import report
from labelsieve.atomic import atomic_dir, write_csv, write_json
from labelsieve.config import Params
from labelsieve.engine import loop
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.engine.timings import with_timings
from labelsieve.maths import metrics
from labelsieve.package import labelsieve_version, load_package
from labelsieve.stages import purify

# Training stages in DAG order: (stage name, run() keyword of its output directory).
TRAINING_STAGES = (
    ("warmup", "warmup_dir"),
    ("ssl_train", "ssl_dir"),
    ("group_regularize", "group_dir"),
    ("retrain", "model_dir"),
)


@dataclass(frozen=True)
class StageHistory:
    """One training stage's per-epoch records (its history.json; empty when the stage passed through)."""

    name: str
    history: list[dict[str, Any]]


def configured_epochs(params: Params) -> dict[str, int]:
    """Each training stage's configured epoch budget; 0 means it passes its input through."""
    return {
        "warmup": params.warmup.epochs,
        "ssl_train": params.ssl_train.epochs,
        "group_regularize": params.group_regularize.epochs,
        "retrain": params.retrain.epochs,
    }


def final_stage(params: Params) -> str:
    """The last training stage with epochs > 0 (warmup when none trained: its networks are the model)."""
    configured = configured_epochs(params)
    trained = [name for name, _ in TRAINING_STAGES if configured[name] > 0]
    return trained[-1] if trained else "warmup"


def read_history(directory: str | Path, *, timings: bool = True) -> list[dict[str, Any]]:
    """A stage's history.json, or [] when the stage wrote none.

    Args:
        timings: put back each epoch's ``train_seconds`` from ``<directory>.timings.json`` where present.
    """
    path = Path(directory) / "history.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    return with_timings(directory, history) if timings else history


def stage_seconds(directory: str | Path) -> float | None:
    """A training stage's total wall-clock training time, or None when it has no timings."""
    times = [h["train_seconds"] for h in read_history(directory) if "train_seconds" in h]
    return float(sum(times)) if times else None


def accuracy_figures(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Last-epoch and best-noisy-validation-epoch accuracies of one history (empty dict if no epochs)."""
    if not history:
        return {}
    last, best = history[-1], loop.best_epoch(history)
    return {
        "epochs_run": len(history),
        "test_acc": last["test_acc"],
        "val_acc": last["val_acc"],
        "best_val_epoch": best.get("epoch"),
        "best_val_test_acc": best.get("test_acc"),
    }


def classification_figures(
    true_labels: np.ndarray, predicted: np.ndarray, classes: list[str]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision / recall / F1 and the (C, C) confusion matrix (true, pred)."""
    matrix = metrics.confusion_matrix(true_labels, predicted, len(classes))
    table = metrics.per_class(matrix)
    return {
        "accuracy": float(np.mean(true_labels == predicted)) if len(true_labels) else float("nan"),
        "macro_f1": float(np.mean(table["f1"])),
        "per_class": {
            name: {key: table[key][c] for key in ("precision", "recall", "f1")}
            | {"support": int(matrix[c].sum())}
            for c, name in enumerate(classes)
        },
        "confusion_matrix": matrix.tolist(),
    }


def flat_metrics(
    final: str,
    stages: dict[str, dict[str, Any]],
    test: dict[str, Any],
    detection: dict[str, Any] | None,
    noise_rate: float | None,
) -> dict[str, float | int]:
    """The headline numbers as one flat mapping of numbers (NaN and None left out: not valid JSON metrics)."""
    final_figures = stages.get(final, {})
    out: dict[str, Any] = {
        "test_acc": test["accuracy"],
        "test_acc_best_val_epoch": final_figures.get("best_val_test_acc", test["accuracy"]),
        "best_val_epoch": final_figures.get("best_val_epoch"),
        "val_acc": final_figures.get("val_acc"),
        "test_macro_f1": test["macro_f1"],
    }
    for name, figures in stages.items():
        for key in ("test_acc", "best_val_test_acc"):
            out[f"{name}.{key}"] = figures.get(key)
    if noise_rate is not None:
        out["noise_rate_actual"] = noise_rate
    if detection:
        out.update(
            {
                "detection.precision": detection["precision"],
                "detection.recall": detection["recall"],
                "detection.f1": detection["f1"],
                "detection.auroc": detection["auroc"],
                "detection.relabel_accuracy": detection.get("relabel_accuracy"),
                "detection.noise_matrix_mae": detection.get("noise_matrix_mae"),
                "noise_rate_after_purify": detection.get("noise_rate_after"),
            }
        )
    return {k: v for k, v in out.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}


def training_curves(histories: list[StageHistory]) -> list[dict[str, Any]]:
    """Every stage's epochs in DAG order on one `step` axis (rows for training_curves.csv)."""
    rows = []
    for stage in histories:
        for record in stage.history:
            rows.append(
                {
                    "step": len(rows),
                    "stage": stage.name,
                    "epoch": record["epoch"],
                    "val_acc": record["val_acc"],
                    "test_acc": record["test_acc"],
                }
            )
    return rows


def gmm_counts(entry: dict[str, Any], edges: np.ndarray) -> dict[str, np.ndarray]:
    """The fitted GMM components of one histogram.json network entry as expected counts per bin.

    Component densities are integrated over each bin by the midpoint rule and scaled by the sample count,
    so they overlay the histogram. The entry's `clean` flags name the clean components (one per fitted
    group); without them the low-mean component is the clean one (§2.1).
    """
    n = float(np.sum(entry["all"]))
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    weights, means, variances = (
        np.asarray(entry[k], dtype=np.float64) for k in ("weights", "means", "variances")
    )
    density = [
        weights[k]
        * np.exp(-0.5 * (centres - means[k]) ** 2 / variances[k])
        / np.sqrt(2 * np.pi * variances[k])
        for k in range(len(weights))
    ]
    clean = entry.get("clean") or [k == int(np.argmin(means)) for k in range(len(weights))]
    return {
        "gmm_clean": n * width * sum(d for d, is_clean in zip(density, clean, strict=True) if is_clean),
        "gmm_noisy": n * width * sum(d for d, is_clean in zip(density, clean, strict=True) if not is_clean),
    }


def loss_histograms(sources: dict[str, Path]) -> dict[str, Any]:
    """Every available histogram.json (co_divide's, ssl_train's final), each network with its GMM counts."""
    out = {}
    for name, directory in sources.items():
        path = directory / "histogram.json"
        if not path.is_file():
            continue
        raw = json.loads(path.read_text())
        edges = np.asarray(raw["bin_edges"], dtype=np.float64)
        networks = []
        for entry in raw["networks"]:
            fitted = gmm_counts(entry, edges)
            networks.append({**entry, **{k: v.tolist() for k, v in fitted.items()}})
        out[name] = {"bin_edges": edges.tolist(), "networks": networks}
    return out


def read_manifest(purified_dir: str | Path) -> list[dict[str, str]]:
    """purify's manifest.csv rows, or [] when purify wrote none."""
    path = Path(purified_dir) / "manifest.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def gallery_rows(manifest: list[dict[str, str]], count: int) -> list[dict[str, str]]:
    """About `count` training samples a reviewer should check, spread over decisions and classes.

    A third each: relabelled, dropped, and borderline (kept, with the highest noise score: the next in
    line to be flagged). Within each group the classes take turns, each offering its highest noise score
    first; ties go to the lower index, so the gallery is deterministic. A group with too few samples
    leaves its share to the next.
    """
    groups = {
        "relabel": [r for r in manifest if r["decision"] == "relabel"],
        "drop": [r for r in manifest if r["decision"] == "drop"],
        "borderline": [r for r in manifest if r["decision"] == "keep"],
    }
    chosen: list[dict[str, str]] = []
    for position, (name, rows) in enumerate(groups.items()):
        share = (count - len(chosen)) // (len(groups) - position)
        by_class: dict[str, list[dict[str, str]]] = {}
        for row in sorted(rows, key=lambda r: (-float(r["noise_score"]), int(r["index"]))):
            by_class.setdefault(row["given_label"], []).append(row)
        turns = [row for rank in zip_longest(*by_class.values()) for row in rank if row is not None]
        chosen += [{**row, "group": name} for row in turns[:share]]
    return chosen


def final_predictions(
    final: str, directory: Path, data: TrainingData, params: Params, device: torch.device
) -> np.ndarray:
    """(N_test,) predicted classes of the final model: the package for retrain, else the stage's ensemble."""
    if final == "retrain":
        model, meta = load_package(directory, device)
        logits = loop.predict_logits(
            model,
            data.test_images,
            mean=meta["mean"],
            std=meta["std"],
            batch_size=params.model.eval_batch_size,
            precision=params.runtime.precision,
        )
    else:
        networks = loop.load_networks(directory, params, data, device)
        logits = loop.ensemble_logits(networks, data.test_images, data, params)
    return logits.argmax(dim=1).cpu().numpy()


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    warmup_dir: str | Path,
    ssl_dir: str | Path,
    group_dir: str | Path,
    purified_dir: str | Path,
    model_dir: str | Path,
    out_dir: str | Path,
    divide_dir: str | Path | None = None,
    metrics_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate the run: write metrics.json, evaluation.json, plots/, figures/ and report.html.

    Args:
        divide_dir: the co_divide stage's output, for its loss histogram (optional: ssl_train's final
            co-divide is in `ssl_dir` either way).
        metrics_dir: also write metrics.json, plots/*.csv and timings.json here (replacing the folder).

    Returns:
        The flat headline numbers of metrics.json plus ``final_stage`` and ``report`` (its path).
    """
    device = resolve_device(params.runtime.device)
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    dirs = {"warmup_dir": warmup_dir, "ssl_dir": ssl_dir, "group_dir": group_dir, "model_dir": model_dir}
    histories = [StageHistory(name, read_history(dirs[key], timings=False)) for name, key in TRAINING_STAGES]
    stages = {h.name: accuracy_figures(h.history) for h in histories if h.history}
    final = final_stage(params)  # from the params: a stage that passed through left an empty history
    final_dir = Path(dirs[dict(TRAINING_STAGES)[final]])
    classes = list(data.dataset.classes)
    true_test = data.test_labels.cpu().numpy()
    predicted = final_predictions(final, final_dir, data, params, device)
    test = classification_figures(true_test, predicted, classes)

    noise = json.loads((Path(labels_dir) / "noise.json").read_text())
    has_truth = data.train_true_labels is not None
    noise_rate = float(noise["train"]["actual_noise_rate"]) if has_truth else None
    summary_path = Path(purified_dir) / "summary.json"
    purify_summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    detection = purify_summary.get("detection") if has_truth else None
    manifest = read_manifest(purified_dir)
    scores = purify.read_scores(purified_dir)
    roc = None
    if has_truth and scores is not None:
        noisy = scores["given_label"] != data.train_true_labels.cpu().numpy()
        roc = metrics.roc_curve(scores["noise_score"], noisy)

    headline = flat_metrics(final, stages, test, detection, noise_rate)
    sources = {"co_divide": divide_dir, "ssl_train": ssl_dir}
    histograms = loss_histograms({name: Path(d) for name, d in sources.items() if d is not None})
    evaluation = {
        "final_stage": final,
        "final_model": str(final_dir),
        "classes": classes,
        "test": test,
        "stages": stages,
        "passed_through": [name for name, epochs in configured_epochs(params).items() if epochs == 0],
        "noise": {k: noise[k] for k in ("mode", "rate", "seed")} | {"actual_noise_rate": noise_rate},
        "purify": {
            "decisions": purify_summary.get("decisions"),
            "detection": detection,
            "noise_estimate": purify_summary.get("noise_estimate"),
        },
        "metrics": headline,
        "environment": _environment(device),
        "provenance": provenance(params, data.dataset.meta.get("content_hash")),
        "regression": regression(final, stages, test["accuracy"]),
        "params": params.to_dict(),
    }
    gallery = [
        {**row, "image": data.dataset.images("train")[int(row["index"])]}
        for row in gallery_rows(manifest, params.evaluate.gallery_size)
    ]
    plot_data = (histories, histograms, true_test, predicted, classes, roc)
    if metrics_dir is not None:
        timings = {name: stage_seconds(dirs[key]) for name, key in TRAINING_STAGES}
        with atomic_dir(metrics_dir) as tmp:
            write_json(tmp / "metrics.json", headline)
            _write_plot_data(tmp / "plots", *plot_data)
            write_json(tmp / "timings.json", {k: v for k, v in timings.items() if v is not None})
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", headline)
        write_json(tmp / "evaluation.json", evaluation)
        _write_plot_data(tmp / "plots", *plot_data)
        figures = report.figures(
            tmp / "figures",
            curves=training_curves(histories),
            histograms=histograms,
            confusion=np.asarray(test["confusion_matrix"]),
            classes=classes,
            roc=roc,
            auroc=None if not detection else detection.get("auroc"),
            noise_estimate=purify_summary.get("noise_estimate"),
        )
        report.write_html(
            tmp / "report.html",
            params=params,
            evaluation=evaluation,
            figures=figures,
            gallery=gallery,
            thumbnail_px=params.evaluate.thumbnail_px,
            has_truth=has_truth,
        )
    return {"final_stage": final, **headline, "report": str(Path(out_dir) / "report.html")}


def _write_plot_data(
    directory: Path,
    histories: list[StageHistory],
    histograms: dict[str, Any],
    true_test: np.ndarray,
    predicted: np.ndarray,
    classes: list[str],
    roc: dict[str, list[float]] | None,
) -> None:
    curves = training_curves(histories)
    columns = ["step", "stage", "epoch", "val_acc", "test_acc"]
    write_csv(directory / "training_curves.csv", columns, [[r[c] for c in columns] for r in curves])
    write_json(directory / "loss_histograms.json", histograms)
    if histograms:
        # The run's last co-divide (ssl_train's final one), network 1: the histogram dvc plots shows.
        last = histograms[list(histograms)[-1]]
        edges = np.asarray(last["bin_edges"])
        net = last["networks"][0]
        centres = (edges[:-1] + edges[1:]) / 2
        header = ["loss", "count", "gmm_clean", "gmm_noisy"]
        rows = [
            [f"{centres[i]:.4f}", net["all"][i], f"{net['gmm_clean'][i]:.3f}", f"{net['gmm_noisy'][i]:.3f}"]
            for i in range(len(centres))
        ]
        write_csv(directory / "loss_histogram.csv", header, rows)
    write_csv(
        directory / "confusion.csv",
        ["actual", "predicted"],
        [[classes[a], classes[p]] for a, p in zip(true_test, predicted, strict=True)],
    )
    if roc is not None:
        write_csv(directory / "roc.csv", ["fpr", "tpr"], list(zip(roc["fpr"], roc["tpr"], strict=True)))


def regression(final: str, stages: dict[str, dict[str, Any]], final_acc: float) -> dict[str, Any] | None:
    """The earlier training stage with the best last-epoch test accuracy, if the final model is below it.

    A final model worse than the networks it replaced is worth a warning: the later stages (GRIP, purify,
    retrain) cost accuracy on this run instead of adding it.
    """
    earlier = {name: f["test_acc"] for name, f in stages.items() if name != final and "test_acc" in f}
    if not earlier or math.isnan(final_acc):
        return None
    best = max(earlier, key=lambda name: earlier[name])
    if final_acc >= earlier[best]:
        return None
    return {
        "final_stage": final,
        "final_test_acc": final_acc,
        "best_stage": best,
        "best_test_acc": earlier[best],
    }


def params_hash(params: Params) -> str:
    """SHA-256 of the resolved params (sorted-key JSON): equal hashes mean equal settings."""
    text = json.dumps(params.to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def git_commit(cwd: str | Path | None = None) -> str | None:
    """The checked-out git commit, or None outside a git repository (or without git).

    Uncommitted changes are not flagged: under `dvc repro` dvc.lock itself is modified while the stage runs.
    """
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def provenance(params: Params, content_hash: str | None) -> dict[str, str | None]:
    """What the figures came from: the code (git commit), the data (content hash), the settings (params)."""
    return {
        "git_commit": git_commit(),
        "dataset_content_hash": content_hash,
        "params_sha256": params_hash(params),
    }


def _environment(device: torch.device) -> str:
    """The machine and library versions every headline number was measured on."""
    cores = os.cpu_count()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cores}-core CPU"
    return (
        f"{where} ({platform.machine()}), torch {torch.__version__}, Python {platform.python_version()}, "
        f"labelsieve {labelsieve_version()}"
    )
