"""Does scoring each training image and its mirror image (test-time flip) help `purify`?

The networks train with random horizontal flips (`model.flip: true`), so an image and its mirror image are
equally theirs; averaging the two predictions is the cheapest ensemble there is (one more forward pass).
For each kept `quality.py --work` run with training dynamics it redoes `purify`'s final prediction pass of
the co-trained networks twice, on the unaugmented images and on their mirror images, and runs the stage's
rule (`purification.find_label_issues`, τ = `WRONG_THRESHOLD`, the noise matrix estimated again) on:
- ``stage``: flags by the final prediction, relabels by its average with the dynamics (what `purify` does);
- ``flip``: the same with the mean of the final prediction and the mirrored one in place of the final one.
The results of stop 50 (benchmarks/results/tuning_slice/flip_scoring.*) predate rule 3 of the rule
(`purification.RULE_VERSION`): both variants flagged by the average there.
Against the training-set truth it reports F1, AUROC, relabel accuracy and the noise left after purify, and
the two ensembles' accuracy on the run's test split. The dynamics themselves are not mirrored: that would
need the per-epoch networks, which a run does not keep.

    uv run python benchmarks/flip_scoring.py /var/tmp/s50/w-sym50 --out /tmp/flip.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import noisy_label_probs, purify_ceiling  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import metrics, purification  # noqa: E402
from labelsieve.stages import purify, ssl_train  # noqa: E402


def figures(
    given: np.ndarray, truth: np.ndarray, probs: np.ndarray, flag_probs: np.ndarray | None = None
) -> dict[str, float | None]:
    """The rule's detection figures on `probs` (robust probabilities, as the stage passes them), flagged
    by `flag_probs`' posterior where given (`purification.find_label_issues`)."""
    result = purification.find_label_issues(given, probs, probs_from="robust", flag_probs=flag_probs)
    return decision_figures(given, truth, result.decision, result.new_labels, result.scores["noise_score"])


def decision_figures(
    given: np.ndarray, truth: np.ndarray, decision: np.ndarray, new_labels: np.ndarray, score: np.ndarray
) -> dict[str, float | None]:
    """Precision and recall of the flags, and `noisy_label_probs.figures` (F1, AUROC of `score`, relabel
    accuracy, noise left, ...)."""
    flagged = decision != purification.KEEP
    return metrics.detection(flagged, given != truth) | noisy_label_probs.figures(
        decision, new_labels, score, given, truth
    )


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """Both variants of the module docstring on one finished run."""
    params = load_params(params_file, overrides=["runtime.threads=1"])
    device = torch.device("cpu")
    data = TrainingData.load(dataset, run / "labels", device, "resident")
    if data.train_true_labels is None:
        raise SystemExit(f"{run}: the truth is unknown (not a benchmark run)")
    networks = loop.load_networks(run / "ssl", params, data, device)
    dynamics = ssl_train.read_dynamics(run / "ssl")
    given, truth = data.train_labels.numpy(), data.train_true_labels.numpy()
    train, test = data.train_images, data.test_images
    final, mirrored, test, test_mirrored = (
        purify.final_probs(networks, data, params, images).double().numpy()
        for images in (train, train.flip(-1), test, test.flip(-1))
    )
    test_truth = data.test_labels.numpy()
    flipped = (final + mirrored) / 2.0
    return {
        "stage": figures(given, truth, (dynamics["probs"] + final) / 2.0, final)
        | {"test_acc": float(np.mean(test.argmax(1) == test_truth))},
        "flip": figures(given, truth, (dynamics["probs"] + flipped) / 2.0, flipped)
        | {"test_acc": float(np.mean((test + test_mirrored).argmax(1) == test_truth))},
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run and variant, the detection figures and the test accuracy."""
    lines = [
        "| run | variant | F1 | AUROC | relabel accuracy | noise left | ensemble test acc |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run, variants in results.items():
        for name, fig in variants.items():
            lines.append(
                f"| {run} | {name} | {fig['f1']:.3f} | {fig['auroc']:.3f} | {fig['relabel_accuracy']:.3f} "
                f"| {fig['noise_left']:.3f} | {100 * fig['test_acc']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
