"""The `cleanlab` method of the quality benchmark: confident learning as its authors ship it, as a peer.

The recipe of docs/benchmarks.md, on the same data, network and epoch budget as every other method:
1. out-of-sample probabilities by K-fold cross-fitting: for each of K class-stratified folds, one
   `small_cnn` trained with plain CE on the other folds' noisy labels for the whole epoch budget
   (`warmup.epochs` of the `ce` preset), then scored on its held-out fold;
2. `cleanlab.filter.find_label_issues` (prune by noise rate, cleanlab's default) flags label issues;
   `cleanlab.rank.get_label_quality_scores` (self-confidence) ranks them for the AUROC, and cleanlab's
   noise-matrix estimate is compared with the injected matrix;
3. one `small_cnn` retrained with plain CE on the samples not flagged, for the same budget.

The cross-fit costs K full trainings: the price of out-of-sample probabilities that `purify` avoids by
averaging the co-training's own evaluation passes (docs/purification.md).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.config import Params
from labelsieve.engine import loop
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import metrics, noise
from labelsieve.seeding import numpy_rng
from labelsieve.stages import inject_noise

FOLDS = 5


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(N,) fold id of every sample: each given class dealt round-robin over the folds in a seeded order."""
    rng = numpy_rng(seed, "cleanlab_peer", "folds")
    fold = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        fold[members] = np.arange(len(members)) % folds
    return fold


def train_ce(data: TrainingData, params: Params, tag: str) -> tuple[torch.nn.Module, list[dict[str, Any]]]:
    """One network trained with plain CE on `data`'s training split for `warmup.epochs`; its history."""
    device = data.train_labels.device
    model = loop.build_networks(params, data, 1, device)[0]
    optimizer = loop.make_optimizer(model, params.model)
    generators = loop.Generators(params.runtime.seed, f"cleanlab_peer_{tag}", device)
    history = []
    for epoch in range(params.warmup.epochs):
        with loop.Timer() as timer:
            result = loop.supervised_epoch(
                model,
                optimizer,
                data,
                params=params,
                epoch=epoch,
                loss="ce",
                alpha=1.0,
                penalty=0.0,
                generators=generators,
                desc=f"cleanlab {tag} {epoch + 1}",
            )
        history.append({"epoch": epoch, "train_seconds": timer.seconds, **result})
        history[-1].update(loop.evaluate([model], data, params))
    return model, history


def subset(data: TrainingData, rows: np.ndarray) -> TrainingData:
    """`data` with only the training rows `rows` (validation and test splits unchanged)."""
    idx = torch.from_numpy(rows).to(data.train_labels.device)
    truth = None if data.train_true_labels is None else data.train_true_labels[idx]
    return dataclasses.replace(
        data,
        train_images=data.train_images[idx],
        train_labels=data.train_labels[idx],
        train_true_labels=truth,
    )


def cross_fit(data: TrainingData, params: Params) -> np.ndarray:
    """(N, C) float64 out-of-sample softmax of every training sample (step 1 of the module docstring)."""
    fold = stratified_folds(data.train_labels.cpu().numpy(), FOLDS, params.runtime.seed)
    probs = np.zeros((len(fold), data.num_classes))
    for k in range(FOLDS):
        model, _ = train_ce(subset(data, np.flatnonzero(fold != k)), params, f"fold{k}")
        held = np.flatnonzero(fold == k)
        images = data.train_images[torch.from_numpy(held).to(data.train_images.device)]
        probs[held] = F.softmax(loop.logits_on(model, images, data, params), dim=1).double().cpu().numpy()
    return probs


def run(params: Params, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """The whole recipe on one noise setting; the figures `benchmarks/quality.py` records."""
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    start = time.perf_counter()
    labels_dir = run_dir / "labels"
    inject_noise.run(params, dataset_dir=dataset, out_dir=labels_dir)
    data = TrainingData.load(dataset, labels_dir, resolve_device(params.runtime.device))
    given = data.train_labels.cpu().numpy()
    truth = data.train_true_labels.cpu().numpy()
    began = time.perf_counter()
    probs = cross_fit(data, params)
    cross_fit_seconds = time.perf_counter() - began
    issues = find_label_issues(given, probs)
    quality = get_label_quality_scores(given, probs)
    _, noise_matrix, _, _ = estimate_py_and_noise_matrices_from_probabilities(given, probs)
    noisy = given != truth
    predicted = probs.argmax(axis=1)
    relabel = issues & (predicted != given)  # cleanlab flags; its argmax is the relabel it implies
    injected = noise.noise_matrix(truth, given, data.num_classes)
    began = time.perf_counter()
    _, history = train_ce(subset(data, np.flatnonzero(~issues)), params, "retrain")
    best = loop.best_epoch(history)
    return {
        "final_stage": "cleanlab",
        "last_test_acc": history[-1]["test_acc"],
        "best_val_test_acc": best["test_acc"],
        "best_val_epoch": best["epoch"],
        "noise_rate_actual": float(noisy.mean()),
        "detection": {
            **metrics.detection(issues, noisy),
            "auroc": metrics.auroc(1.0 - quality, noisy),
            "relabel_accuracy": float(np.mean(predicted[relabel] == truth[relabel]))
            if relabel.any()
            else None,
            "noise_rate_after": float(np.mean(given[~issues] != truth[~issues])),
            "noise_matrix_mae": float(np.abs(noise_matrix - injected).mean()),
        },
        "epoch_seconds": {"cross_fit": cross_fit_seconds / (FOLDS * params.warmup.epochs)},
        "ce_epoch_seconds": None,
        "epoch_x_ce": {},
        "stage_seconds": {"cross_fit": cross_fit_seconds, "retrain": time.perf_counter() - began},
        "wall_seconds": time.perf_counter() - start,
    }
