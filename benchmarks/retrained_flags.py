"""Would `purify` flag better with the retrained network than with the co-trained ones?

`retrain` fine-tunes the first co-trained network on purify's labels (at τ_r) with the ensemble distilled in,
and ends more accurate than the ensemble it starts from at the Fashion-MNIST class swap (README,
Benchmarks). `purify` runs before it, so its flags come from the co-trained networks alone. For each kept
`quality.py --work` run with training dynamics and a retrained model package (``model/``), this redoes the
prediction passes of the final co-trained networks and of the retrained network on the training images and
runs the stage's rule (`purification.find_label_issues`, τ = `WRONG_THRESHOLD`, the noise matrix estimated
again), relabelling always by the stage's average with the training dynamics, and flagging by:
- ``stage``: the final co-trained networks (what `purify` does; rule 5's two readings since stop 61);
- ``retrained``: the retrained network alone;
- ``mean``: the mean of the two predictions;
- ``retrained_unmixed``: the retrained network read as a model fitted to the given labels (it fine-tunes on
  them with plain CE): its noise matrix estimated on its own prediction, the prediction unmixed through it
  before Bayes' rule (`probs_from="noisy_labels"` of the API, applied to the flags only);
- ``mean_unmixed``: the mean of the stage's and ``retrained_unmixed``'s posterior that the label is wrong.
Against the training-set truth it reports F1, AUROC, relabel accuracy and the noise left after purify, and
each flagging network's accuracy on the training truth. The retrained networks of the kept runs learned from
the labels of the rule their run was made with, and through the forward correction of their run's
`retrain.forward_correction` (0 before stop 55, 0.5 since; docs/purification_studies.md has both).

    uv run python benchmarks/retrained_flags.py /var/tmp/rt1 /var/tmp/rt2 --out /tmp/retrained_flags.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling  # noqa: E402
from benchmarks.flip_scoring import decision_figures  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import purification  # noqa: E402
from labelsieve.package import load_package  # noqa: E402
from labelsieve.stages import purify  # noqa: E402


def flagged_by(
    given: np.ndarray, truth: np.ndarray, relabel: purification.Posterior, wrong: np.ndarray
) -> dict[str, Any]:
    """The rule's figures when `wrong` flags and `relabel` (the posterior of the stage's average, computed
    once per run by the caller) relabels or drops."""
    decision, new_labels = purification.decide(
        given, wrong, relabel.best, relabel.best_prob, purification.WRONG_THRESHOLD
    )
    return decision_figures(given, truth, decision, new_labels, wrong)


def figures_by_source(
    given: np.ndarray,
    truth: np.ndarray,
    relabel: purification.Posterior,
    flags: dict[str, tuple[np.ndarray, np.ndarray]],
) -> dict[str, dict[str, Any]]:
    """Per source, `flagged_by` of its noise score and the training-truth accuracy of the probabilities
    behind it (`flags`: name -> (P(y* ≠ ỹ | x, ỹ), (N, C) probabilities))."""
    return {
        name: flagged_by(given, truth, relabel, wrong)
        | {"train_acc": float(np.mean(probs.argmax(1) == truth))}
        for name, (wrong, probs) in flags.items()
    }


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The flag sources of the module docstring on one finished run."""
    if not (run / "model").is_dir():
        raise SystemExit(f"{run}: no retrained model package (model/)")
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    params = load_params(params_file, overrides=["runtime.threads=1"])
    data = TrainingData.load(dataset, run / "labels", torch.device("cpu"), "resident")
    network, _ = load_package(run / "model")
    retrained = purify.final_probs([network], data, params).double().numpy()
    mean = (final + retrained) / 2.0
    relabel = purification.estimate_and_posterior(given, averaged, "robust")[2]
    stage = purification.flag_scores(given, final, "robust")[0]
    unmixed = purification.estimate_and_posterior(given, retrained, "noisy_labels")[2].wrong
    flags = {
        "stage": (stage, final),
        "retrained": (purification.estimate_and_posterior(given, retrained, "robust")[2].wrong, retrained),
        "mean": (purification.estimate_and_posterior(given, mean, "robust")[2].wrong, mean),
        "retrained_unmixed": (unmixed, retrained),
        "mean_unmixed": ((stage + unmixed) / 2.0, mean),
    }
    return figures_by_source(given, truth, relabel, flags)


def table(
    results: dict[str, dict[str, Any]],
    source: str = "flags from",
    last: tuple[str, str] = ("train_acc", "accuracy on the training truth"),
) -> str:
    """A Markdown table: per run and `source`, the detection figures and one more figure (`last`: key, title);
    the last line is each source's mean F1 over the runs that have it."""
    key, title = last
    lines = [
        f"| run | {source} | F1 | AUROC | relabel accuracy | noise left | {title} |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run, variants in results.items():
        for name, fig in variants.items():
            lines.append(
                f"| {run} | {name} | {fig['f1']:.4f} | {fig['auroc']:.4f} | {fig['relabel_accuracy']:.3f} "
                f"| {fig['noise_left']:.3f} | {fig[key]:.4f} |"
            )
    names = dict.fromkeys(name for variants in results.values() for name in variants)
    means = {
        name: np.mean([variants[name]["f1"] for variants in results.values() if name in variants])
        for name in names
    }
    lines.append("| mean F1 | " + " / ".join(f"{k} {v:.4f}" for k, v in means.items()) + " | | | | | |")
    return "\n".join(lines) + "\n"


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
