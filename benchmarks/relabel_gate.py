"""Relabel or drop a flagged sample: the relabel gate, measured on kept runs with known truth.

`purify` flags a sample when its label is wrong with posterior probability at least τ
(docs/purification.md). The flags, and so F1 and AUROC, are fixed here; only the second decision varies:
relabel a flagged sample or drop it. Gates (ŷ is the relabel target):

- ``posterior`` (the rule, `purification.decide`): ŷ = argmax_j P(y* = j | x, ỹ), the posterior
  `purify` scores with (the averaged probabilities and confident learning's noise matrix), relabelled when
  P(y* = ŷ | x, ỹ) > 1 − τ: every label the dataset keeps or gives is then wrong with probability below τ;
- ``typical`` (the rule until this study): ŷ = argmax of the final networks' probabilities, relabelled
  when ŷ ≠ ỹ and p_ŷ ≥ the mean p_ŷ over the kept samples labelled ŷ;
- ``posterior_final``: the posterior gate with the final networks' probabilities in the posterior.

Per run and τ (0.4, purify's default; 0.5, retrain's): relabels, their accuracy, the number of correct
relabels, the label error left among kept and relabelled samples, and the fraction of samples that keep
a label. Nothing is retrained; the final networks' prediction pass is redone (`purify_ceiling.load_run`).
Run it on the Fashion-MNIST tuning slice (`benchmarks/tuning_slice.py`) or on digits, never on the
benchmark's own runs when a rule is being chosen:

    uv run python benchmarks/relabel_gate.py WORK... --out benchmarks/results/relabel_gate.json
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.maths import confident, purification

THRESHOLDS = (0.4, 0.5)


@functools.cache
def _purify_ceiling() -> Any:
    """benchmarks/purify_ceiling.py, whose `load_run` redoes a kept run's prediction pass."""
    spec = importlib.util.spec_from_file_location(
        "purify_ceiling", Path(__file__).with_name("purify_ceiling.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["purify_ceiling"] = module
    spec.loader.exec_module(module)
    return module


def typical_gate(labels: np.ndarray, final: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """The former gate's new labels: ŷ = argmax `final` where p_ŷ ≥ the kept class-ŷ members' mean p_ŷ."""
    predicted = final.argmax(axis=1)
    confidence = final[np.arange(len(labels)), predicted]
    own = final[np.arange(len(labels)), labels]
    counts = np.bincount(labels[~flagged], minlength=final.shape[1])
    sums = np.bincount(labels[~flagged], weights=own[~flagged], minlength=final.shape[1])
    typical = np.divide(sums, counts, out=np.ones(final.shape[1]), where=counts > 0)
    sure = (predicted != labels) & (confidence >= typical[predicted] - confident.THRESHOLD_SLACK)
    return np.where(flagged, np.where(sure, predicted, -1), labels)


def gate_labels(
    labels: np.ndarray, averaged: np.ndarray, final: np.ndarray, threshold: float
) -> dict[str, np.ndarray]:
    """The new labels (-1 where dropped) under each gate, the flags fixed by the rule's score at τ."""
    noise_matrix = confident.estimate(labels, averaged).noise_matrix
    post = purification.posterior(labels, averaged, noise_matrix)
    on_final = purification.posterior(labels, final, noise_matrix)
    return {
        "typical": typical_gate(labels, final, post.wrong >= threshold),
        "posterior": purification.decide(labels, post.wrong, post.best, post.best_prob, threshold)[1],
        "posterior_final": purification.decide(
            labels, post.wrong, on_final.best, on_final.best_prob, threshold
        )[1],
    }


def figures(new_labels: np.ndarray, labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Relabels, their accuracy and correct count, the error left among labelled samples, the kept share."""
    relabelled = (new_labels >= 0) & (new_labels != labels)
    labelled = new_labels >= 0
    right = new_labels[relabelled] == truth[relabelled]
    return {
        "relabelled": int(relabelled.sum()),
        "relabel_accuracy": float(right.mean()) if relabelled.any() else None,
        "correct_relabels": int(right.sum()),
        "noise_left": float(np.mean(new_labels[labelled] != truth[labelled])),
        "labelled_fraction": float(labelled.mean()),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per run, τ and gate."""
    lines = [
        "| run | τ | gate | relabelled | relabel accuracy | correct relabels | noise left | labelled |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, by_tau in results.items():
        for tau, by_gate in by_tau.items():
            for gate, f in by_gate.items():
                lines.append(
                    f"| {run} | {tau} | {gate} | {f['relabelled']} | {f['relabel_accuracy']:.3f} | "
                    f"{f['correct_relabels']} | {f['noise_left']:.4f} | {f['labelled_fraction']:.3f} |"
                )
    return "\n".join(lines) + "\n"


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """Every gate's figures at each τ on one kept run."""
    kept = _purify_ceiling().load_run(run, dataset, params_file)
    return {
        str(tau): {
            gate: figures(new, kept.given, kept.truth)
            for gate, new in gate_labels(kept.given, kept.averaged, kept.final, tau).items()
        }
        for tau in THRESHOLDS
    }


def main() -> None:
    _purify_ceiling().run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
