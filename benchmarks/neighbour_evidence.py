"""Do a sample's neighbours' labels tell a class swap apart better than the networks' own prediction?

At asym40 the co-trained networks learn part of each class swap (docs/purification_studies.md, "How far
the network itself could go"), so their prediction for a swapped sample is split between the two classes. A
group of similar images carries more evidence than one prediction: if the K nearest training images of a
sample all share its true class j, their given labels are K draws from column j of the noise matrix, and
Σ_m log T[ỹ_m, j] separates a 60/40 swap sharply once K is large. This study measures whether the
co-trained networks' features give such neighbourhoods.

For each kept `quality.py --work` run (`labelsieve` method) it takes both co-trained networks' penultimate
features on the unaugmented training images (each L2-normalised, concatenated), the K nearest other training
images by L2 distance (`neighbours.knn_dataset`), and reports against the training-set truth:
- ``purity``: the share of neighbours whose true class is the sample's own (what the argument needs);
- ``disagree``: the share of neighbours whose given label differs from the sample's, flagged at 0.5;
- ``neighbours``: P(y* ≠ ỹ) from `neighbour_posterior` with the run's estimated matrix and weight w
  (each neighbour's vote counts w; w < 1 because neighbours are not independent draws);
- ``neighbours_and_networks``: the same with log p_j of `purify`'s averaged probabilities added;
- ``stage``: `purify`'s own posterior on the same probabilities, for comparison.
Flags are at τ = 0.4, as `purify`'s.

    uv run python benchmarks/neighbour_evidence.py /var/tmp/fm-tune-work-b --out /tmp/neighbours.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.augment import to_float  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import metrics, neighbours, purification  # noqa: E402

SIZES = (10, 30, 100)  # K
WEIGHTS = (0.1, 0.3, 1.0)  # w


def neighbour_posterior(
    given: np.ndarray,
    nearest: np.ndarray,
    matrix: np.ndarray,
    weight: float,
    probs: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) P(y* ≠ ỹ): P(y* = j) ∝ T[ỹ, j] · Π_m T[ỹ_m, j]^w (· p_j), m over `nearest` (N, K) rows.

    T[i, j] = P(ỹ = i | y* = j); zeros are floored at 1e-6 so that one odd neighbour cannot veto a class.
    """
    log_t = np.log(np.clip(matrix, 1e-6, None))
    counts = np.zeros((len(given), matrix.shape[0]))
    np.add.at(counts, (np.repeat(np.arange(len(given)), nearest.shape[1]), given[nearest].ravel()), 1.0)
    logit = weight * counts @ log_t + log_t[given]
    if probs is not None:
        logit += np.log(np.clip(probs, 1e-12, None))
    logit -= logit.max(axis=1, keepdims=True)
    post = np.exp(logit)
    post /= post.sum(axis=1, keepdims=True)
    return 1.0 - post[np.arange(len(given)), given]


@torch.no_grad()
def features(networks: list[torch.nn.Module], data: TrainingData, batch: int = 512) -> torch.Tensor:
    """(N, K·D) the networks' penultimate features of the unaugmented training images, each L2-normalised."""
    parts = []
    for model in networks:
        model.eval()
        rows = []
        for start in range(0, len(data.train_images), batch):
            x = to_float(data.train_images[start : start + batch], data.mean, data.std)
            rows.append(F.normalize(model.features(x).float().flatten(1), dim=1))
        parts.append(torch.cat(rows))
    return torch.cat(parts, dim=1)


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """Every variant of the module docstring on one finished run."""
    given, truth, _, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    params = load_params(params_file, overrides=["runtime.threads=1"])
    data = TrainingData.load(dataset, run / "labels", torch.device("cpu"), "resident")
    summary = json.loads((run / "purified" / "summary.json").read_text())
    matrix = np.array(summary["noise_estimate"]["noise_matrix"], dtype=np.float64)
    feats = features(loop.load_networks(run / "ssl", params, data, torch.device("cpu")), data)
    noisy = given != truth

    def figures(wrong: np.ndarray, cut: float = purification.WRONG_THRESHOLD) -> dict[str, float]:
        return {**metrics.detection(wrong >= cut, noisy), "auroc": metrics.auroc(wrong, noisy)}

    stage = purification.posterior(given, averaged, matrix).wrong
    result: dict[str, Any] = {"stage": figures(stage)}
    for k in SIZES:
        nearest = neighbours.knn_dataset(feats, feats, k, query_ids=torch.arange(len(feats))).numpy()
        disagree = 1.0 - (given[nearest] == given[:, None]).mean(axis=1)
        row: dict[str, Any] = {
            "purity": float((truth[nearest] == truth[:, None]).mean()),
            "disagree": figures(disagree, 0.5),
        }
        for w in WEIGHTS:
            row[f"neighbours_w{w}"] = figures(neighbour_posterior(given, nearest, matrix, w))
            row[f"neighbours_and_networks_w{w}"] = figures(
                neighbour_posterior(given, nearest, matrix, w, averaged)
            )
        result[f"k{k}"] = row
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run, the stage's figures, then each K's purity and best variants."""
    lines = ["| run | variant | F1 | AUROC |", "|---|---|---:|---:|"]
    for run, figures in results.items():
        lines.append(f"| {run} | stage | {figures['stage']['f1']:.3f} | {figures['stage']['auroc']:.3f} |")
        for k in SIZES:
            row = figures[f"k{k}"]
            lines.append(f"| {run} | K {k}: neighbours of the same true class | {row['purity']:.3f} | |")
            for name, fig in row.items():
                if name != "purity":
                    lines.append(f"| {run} | K {k}: {name} | {fig['f1']:.3f} | {fig['auroc']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
