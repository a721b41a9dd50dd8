"""A second detection pass: cross-fit plain CE on purify's labels, then Bayes' rule on the given labels again.

`detection_ceiling.py` shows that `small_cnn` at the `ce` budget, cross-fitted on the *true* labels, ranks
the injected noise far better than the co-trained networks do (AUROC 0.986 against 0.917 at asym40): the
co-trained networks learn part of a class swap. Purify's own output is close to such labels (about 5% of
its kept and relabelled labels are wrong). This study cross-fits the same recipe on those labels instead
(`cleanlab_peer`: 5 class-stratified folds, 15 epochs each; a dropped sample trains no fold but is scored),
so every sample is scored by a network that never saw it, and applies `purification.posterior` to the
*given* labels with the run's own estimated noise matrix (`summary.json`). Nothing here knows the truth
except the figures.

`--fit forward` asks the other way round whether the noisy labels can train such a network: every fold
trains on the *given* labels with the forward-corrected loss of Patrini et al. (CVPR 2017),
−log (T̂ p(x))_ỹ with T̂ the run's estimated noise matrix, so that p(x) is pushed towards the clean class
instead of the given one; the posterior then uses the same T̂.

Variants per kept `quality.py --work` run (`labelsieve` method), against the training-set truth:
- ``stage``: the run's own decisions (`purified/scores.npz`);
- ``refit``: the posterior of the cross-fitted probabilities, flagged at τ = 0.4;
- ``mean``: the mean of the two posteriors' P(y* ≠ ỹ), flagged at τ = 0.4.

    uv run python benchmarks/refit_detection.py /var/tmp/fm-tune-work-b/asym40-labelsieve \
        --set ingest.source=/var/tmp/fm-tune/manifest.csv --out /tmp/refit.json [--fit forward]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import cleanlab_peer  # noqa: E402
from labelsieve.atomic import write_json  # noqa: E402
from labelsieve.config import Params, load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import resolve_device  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import metrics, purification  # noqa: E402


def forward_loss(logits: torch.Tensor, labels: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Mean of −log (T p)_ỹ over the batch, p = softmax(logits), T[i, j] = P(ỹ = i | y* = j)."""
    noisy = F.softmax(logits.float(), dim=1) @ matrix.T
    return F.nll_loss(torch.log(noisy.clamp_min(1e-12)), labels)


def train_forward(data: TrainingData, params: Params, matrix: np.ndarray, tag: str) -> torch.nn.Module:
    """`cleanlab_peer.train_ce` with the forward-corrected loss −log (T p)_ỹ, T[i, j] = P(ỹ = i | y* = j):
    the same network, optimiser, schedule, batches and augmentation (`loop.supervised_epoch` on one process).
    """
    cfg = params.model
    model = loop.build_networks(params, data, 1, torch.device("cpu"))[0]
    optimizer = loop.make_optimizer(model, cfg)
    generators = loop.Generators(params.runtime.seed, f"refit_forward_{tag}", torch.device("cpu"))
    noise = torch.from_numpy(matrix).float()
    for epoch in range(params.warmup.epochs):
        model.train()
        order = loop.batches(len(data.train_labels), cfg.batch_size, generators.cpu)
        for step, idx in enumerate(order):
            loop.set_lr(optimizer, loop.lr_at(epoch + step / len(order), cfg, params.total_epochs))
            x = loop.views(data.train_images[idx], cfg, data.mean, data.std, generators.device)
            loss = forward_loss(model(x), data.train_labels[idx], noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model


def refit_probs(
    data: TrainingData, targets: np.ndarray, params: Params, matrix: np.ndarray | None = None
) -> np.ndarray:
    """(N, C) out-of-fold softmax: fold k's network trains on the other folds' rows with a target >= 0,
    by plain CE, or by the forward-corrected loss with `matrix` when it is given."""
    fold = cleanlab_peer.stratified_folds(data.train_labels.numpy(), cleanlab_peer.FOLDS, params.runtime.seed)
    probs = np.zeros((len(fold), data.num_classes))
    relabelled = dataclasses.replace(data, train_labels=torch.from_numpy(targets))
    for k in range(cleanlab_peer.FOLDS):
        train_rows = np.flatnonzero((fold != k) & (targets >= 0))
        train = cleanlab_peer.subset(relabelled, train_rows)
        if matrix is None:
            model, _ = cleanlab_peer.train_ce(train, params, f"refit{k}")
        else:
            model = train_forward(train, params, matrix, f"fold{k}")
        held = np.flatnonzero(fold == k)
        logits = loop.logits_on(model, data.train_images[torch.from_numpy(held)], data, params)
        probs[held] = F.softmax(logits, dim=1).double().numpy()
    return probs


def figures(flagged: np.ndarray, score: np.ndarray, noisy: np.ndarray) -> dict[str, float]:
    return {**metrics.detection(flagged, noisy), "auroc": metrics.auroc(score, noisy)}


def measure(run: Path, params: Params, fit: str = "purified") -> dict[str, Any]:
    data = TrainingData.load(run.parent / "dataset", run / "labels", resolve_device("cpu"), "resident")
    given, truth = data.train_labels.numpy(), data.train_true_labels.numpy()
    noisy = given != truth
    with np.load(run / "purified" / "scores.npz") as scores:
        decision, new_label, stage_wrong = scores["decision"], scores["new_label"], scores["noise_score"]
    summary = json.loads((run / "purified" / "summary.json").read_text())
    matrix = np.array(summary["noise_estimate"]["noise_matrix"], dtype=np.float64)
    if fit == "forward":
        targets = given
        probs = refit_probs(data, given, params, matrix)
    else:
        targets = np.where(decision == purification.DROP, -1, new_label)
        probs = refit_probs(data, targets, params)
    wrong = purification.posterior(given, probs, matrix).wrong
    mean = (wrong + stage_wrong) / 2.0
    tau = purification.WRONG_THRESHOLD
    return {
        "run": str(run),
        "fit": fit,
        f"{'purified' if fit == 'purified' else 'given'}_label_error": float(
            np.mean(targets[targets >= 0] != truth[targets >= 0])
        ),
        "refit_accuracy_vs_truth": float(np.mean(probs.argmax(axis=1) == truth)),
        "refit_recall_by_true_class": [
            float(np.mean(probs.argmax(axis=1)[truth == c] == c)) for c in range(data.num_classes)
        ],
        "stage": figures(decision != purification.KEEP, stage_wrong, noisy),
        "refit": figures(wrong >= tau, wrong, noisy),
        "mean": figures(mean >= tau, mean, noisy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--set", action="append", default=[], help="params override, as for the run")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--fit",
        choices=("purified", "forward"),
        default="purified",
        help="purified: plain CE on purify's labels; forward: forward-corrected CE on the given labels",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        seed = 0 if "seed" not in run.name else int(run.name.rsplit("seed", 1)[1])
        params = load_params(
            run.parent / "params.yaml",
            presets=["ce"],
            overrides=["runtime.progress=never", "runtime.threads=1", f"runtime.seed={seed}", *args.set],
        )
        results.append(measure(run, params, args.fit))
        print(json.dumps(results[-1]), flush=True)
        write_json(Path(args.out), {"runs": results})


if __name__ == "__main__":
    main()
