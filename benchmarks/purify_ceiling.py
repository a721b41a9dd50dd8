"""How far the purify rule is from its ceiling: each ranking's AUROC and F1, with estimated and true counts.

A flag rule has two sources of error: the ranking (how well the score orders noisy before clean) and how
many it flags. This benchmark separates them on finished runs with known truth. For each ranking it reports
the AUROC, the F1 when each given class flags confident learning's count round(ρ̂_i · N_i) (`purify`'s rule
before stop 25, which now thresholds the posterior; docs/purification.md) and the F1 with the true number
of noisy samples per class (the ceiling of any count estimate for that ranking); for the two posteriors
also the F1 of flagging at τ = 0.4, as `purify` does, and at the cut that maximises their own expected F1
(`expected_f1_cut`; tried, not adopted: docs/purification.md). It reads the artifacts a
`benchmarks/quality.py --work DIR` run keeps; nothing is retrained, only the final networks' prediction pass
is redone.

Rankings, all from the co-trained networks (higher = more likely wrong):
- ``margin``: −(p_ỹ − max_{j≠ỹ} p_j) on the average of the training dynamics and the final prediction;
- ``self_confidence``: −p_ỹ on the same average;
- ``dynamics_loss``: the CE against ỹ averaged over every co-divide (`dynamics.npz`);
- ``held_out``: −p_ỹ averaged over the divisions where the sample was unlabeled;
- ``noise_source_margin``: −(p_ỹ − Σ_j w_ỹj p_j) on the average, w_i the confident joint's off-diagonal row
  i normalised to 1 (uniform where it is empty): the margin against the estimated source of class ỹ's noise;
- ``noise_posterior``: P(y* ≠ ỹ | x, ỹ) on the average with confident learning's noise matrix, `purify`'s
  noise score;
- ``unmixed_posterior``: the same after unmixing the average as a noisy-label model's P(ỹ | x) when the
  matrix is identifiable (`find_label_issues(probs_from="noisy_labels")`; `purify` does so only without SSL
  epochs).

Run it on the Fashion-MNIST tuning slice (`benchmarks/tuning_slice.py`), never on the benchmark's own runs
when a rule is being chosen:

    uv run python benchmarks/purify_ceiling.py /tmp/fm-tune-work --out benchmarks/results/purify_ceiling.json
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from labelsieve.atomic import write_json, write_text
from labelsieve.config import load_params
from labelsieve.engine import loop
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import confident, metrics, purification
from labelsieve.stages import purify, ssl_train


def source_weights(joint: np.ndarray) -> np.ndarray:
    """(C, C) each row i: the off-diagonal of `joint`'s row i normalised to sum 1, uniform where it is 0."""
    num_classes = len(joint)
    off = joint * (1.0 - np.eye(num_classes))
    total = off.sum(axis=1, keepdims=True)
    uniform = (1.0 - np.eye(num_classes)) / (num_classes - 1)
    return np.where(total > 0, off / np.where(total > 0, total, 1.0), uniform)


def rankings(
    labels: np.ndarray,
    averaged: np.ndarray,
    dynamics: dict[str, np.ndarray],
    joint: np.ndarray,
    noise_matrix: np.ndarray,
) -> dict[str, np.ndarray]:
    """The noise scores of the module docstring, (N,) float64 each; `averaged` the mean of the dynamics'
    and the final probabilities, `joint` and `noise_matrix` confident learning's estimates on them."""
    rows = np.arange(len(labels))
    unmixable = purification.identifiable(noise_matrix)
    belief = purification.unmix(averaged, noise_matrix) if unmixable else averaged
    source = (averaged * source_weights(joint)[labels]).sum(axis=1)
    return {
        "margin": -purification.margins(labels, averaged),
        "self_confidence": -averaged[rows, labels],
        "dynamics_loss": dynamics["loss"].astype(np.float64),
        "held_out": -dynamics["held_out_probs"][rows, labels].astype(np.float64),
        "noise_source_margin": -(averaged[rows, labels] - source),
        "noise_posterior": purification.posterior(labels, averaged, noise_matrix).wrong,
        "unmixed_posterior": purification.posterior(labels, belief, noise_matrix).wrong,
    }


def expected_f1_cut(wrong: np.ndarray) -> np.ndarray:
    """(N,) bool: flag the k samples most likely wrong, k maximising the plug-in expected F1 when `wrong`
    is a calibrated P(label wrong): 2 Σ_top-k q / (k + Σ_all q). Its cut sits near F*/2, half the best F1
    (Lipton, Elkan & Narayanaswamy, ECML PKDD 2014), so it follows the estimated noise, not a fixed τ."""
    order = np.argsort(-wrong, kind="stable")
    expected = 2.0 * np.cumsum(wrong[order]) / (np.arange(1, len(wrong) + 1) + wrong.sum())
    flagged = np.zeros(len(wrong), dtype=bool)
    flagged[order[: int(np.argmax(expected)) + 1]] = True
    return flagged


class KeptRun(NamedTuple):
    """A finished run's labels and the co-trained networks' probabilities, as `purify` computes them."""

    given: np.ndarray  # (N,) the noisy labels
    truth: np.ndarray  # (N,) the true labels
    final: np.ndarray  # (N, C) float64, the final networks' mean softmax
    averaged: np.ndarray  # (N, C) float64, its mean with the training dynamics (`purify`'s pred_probs)
    dynamics: dict[str, np.ndarray]  # `ssl_train.read_dynamics`


def load_run(run: Path, dataset: Path, params_file: Path) -> KeptRun:
    """Redo the final networks' prediction pass of a kept `quality.py --work` run (one thread)."""
    params = load_params(params_file, overrides=["runtime.threads=1"])
    device = torch.device("cpu")
    data = TrainingData.load(dataset, run / "labels", device, "resident")
    if data.train_true_labels is None:
        raise SystemExit(f"{run}: the truth is unknown (not a benchmark run)")
    final = purify.final_probs(loop.load_networks(run / "ssl", params, data, device), data, params)
    final = final.double().numpy()
    dynamics = ssl_train.read_dynamics(run / "ssl")
    if dynamics is None:
        raise SystemExit(f"{run / 'ssl'} holds no dynamics.npz")
    averaged = (dynamics["probs"].astype(np.float64) + final) / 2.0
    return KeptRun(data.train_labels.numpy(), data.train_true_labels.numpy(), final, averaged, dynamics)


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """Every ranking's AUROC and F1 (estimated and true counts) on one finished run."""
    given, truth, final, averaged, dynamics = load_run(run, dataset, params_file)
    noisy = given != truth
    estimate = confident.estimate(given, averaged)
    estimated = estimate.flag_counts()
    true_counts = np.bincount(given[noisy], minlength=final.shape[1])
    figures: dict[str, Any] = {
        "noise_rate": float(noisy.mean()),
        "flagged_fraction_estimated": float(estimated.sum() / len(given)),
    }
    for name, score in rankings(given, averaged, dynamics, estimate.joint, estimate.noise_matrix).items():
        figures[name] = {"auroc": metrics.auroc(score, noisy)} | {
            f"f1_{kind}_counts": metrics.detection(purification.flag_top(score, given, counts), noisy)["f1"]
            for kind, counts in (("estimated", estimated), ("true", true_counts))
        }
        if name in POSTERIORS:  # a probability: flagged at purify's τ as the rule does
            figures[name]["f1_tau"] = metrics.detection(score >= purification.WRONG_THRESHOLD, noisy)["f1"]
            figures[name]["f1_expected_cut"] = metrics.detection(expected_f1_cut(score), noisy)["f1"]
    return figures


POSTERIORS = ("noise_posterior", "unmixed_posterior")
RANKINGS = (
    "margin",
    "self_confidence",
    "dynamics_loss",
    "held_out",
    "noise_source_margin",
    "noise_posterior",
    "unmixed_posterior",
)


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: one row per run and ranking."""
    lines = [
        "| run | noise | flagged (CL) | ranking | AUROC | F1, CL counts | F1, true counts | F1 at τ "
        "| F1, expected-F1 cut |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run, fig in results.items():
        for name in RANKINGS:
            r = fig[name]
            lines.append(
                f"| {run} | {fig['noise_rate']:.3f} | {fig['flagged_fraction_estimated']:.3f} | {name} | "
                f"{r['auroc']:.4f} | {r['f1_estimated_counts']:.4f} | {r['f1_true_counts']:.4f} | "
                + (f"{r['f1_tau']:.4f} | {r['f1_expected_cut']:.4f} |" if "f1_tau" in r else "- | - |")
            )
    return "\n".join(lines) + "\n"


def report(results: dict[str, Any], table_of: Callable[[dict[str, Any]], str], out: str | None) -> None:
    """Print a study's Markdown table and, with `out`, write its results (JSON) and the table beside it."""
    print(table_of(results), end="")
    if out:
        write_json(out, results)
        write_text(Path(out).with_suffix(".md"), table_of(results))


def run_on_kept(
    doc: str,
    measure_run: Callable[[Path, Path, Path], dict[str, Any]],
    table_of: Callable[[dict[str, dict[str, Any]]], str],
) -> None:
    """The command line of a study on kept runs: `measure_run(run, dataset, params_file)` on every run with
    training dynamics under the WORK folders, the table printed and, with --out, written (JSON and .md)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="+", help="quality.py --work folders (dataset/, params.yaml, runs)")
    parser.add_argument("--out", help="write the figures here (JSON) and a Markdown table beside it")
    args = parser.parse_args()
    results = measure_kept(args.work, measure_run)
    if not results:
        raise SystemExit(f"no run with ssl/dynamics.npz under {', '.join(args.work)}")
    report(results, table_of, args.out)


def measure_kept(
    works: list[str], measure_run: Callable[[Path, Path, Path], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """`measure_run(run, dataset, params_file)` on every run with training dynamics under the `works`
    folders, keyed "<work folder>/<run>"."""
    results = {}
    for work in map(Path, works):
        for dynamics in sorted(work.glob("*/ssl/dynamics.npz")):
            run = dynamics.parent.parent
            results[f"{work.name}/{run.name}"] = measure_run(run, work / "dataset", work / "params.yaml")
    return results


def main() -> None:
    run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
