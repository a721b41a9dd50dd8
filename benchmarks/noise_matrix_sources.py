"""How much of the flags' error is the noise-matrix estimate? The stage's posterior under other matrices.

`purify` flags by the final co-trained networks' posterior, P(y* = j | x, ỹ) ∝ p_j T̂[ỹ, j], with T̂ estimated
by confident learning on the same prediction, its one-flip columns cut (docs/purification.md, rules 3 and
4), and since rule 5 averaged over two readings of p (`purification.two_readings`, unmixed through the same
matrix; the rows of results from before stop 61 read p as the belief alone). A network's own confusions
enter confident learning's T̂ as if they were label noise. For each kept
`quality.py --work` run this keeps the final networks' p and swaps T̂, relabelling always by the stage's
average with the training dynamics (`retrained_flags.flagged_by`):
- ``stage``: confident learning on the final networks' prediction, its one-flip columns cut
  (`purification.single_flips`; what `purify` does since rule 4);
- ``confident_learning``: the same, uncut (what `purify` did under rule 3, the ``stage`` row of the results
  from before rule 4);
- ``injected``: the matrix of the injected noise, which no real run knows (the ceiling of any estimate);
- ``confident_top``: column j the given labels of the round(0.3 N / C) samples with the highest p_j;
- ``fixed_point``: Bayes' rule iterated from confident learning's T̂, each column re-estimated from the
  posterior (20 rounds);
- ``head``: confident learning on a linear head cross-fitted on the networks' features to the given labels
  (`feature_head_flags.out_of_fold_head`);
- ``retrained``: confident learning on the network `retrain` leaves (runs with ``model/`` only; it trains
  after purify, so this would take a second pass).
Against the training-set truth: F1, AUROC, relabel accuracy, noise left, and each matrix's mean absolute
error to the injected one.

    uv run python benchmarks/noise_matrix_sources.py /var/tmp/rt1 /var/tmp/rt2 --out /tmp/noise_matrix.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, retrained_flags  # noqa: E402
from benchmarks.feature_head_flags import out_of_fold_head  # noqa: E402
from benchmarks.neighbour_evidence import features  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import confident, purification  # noqa: E402
from labelsieve.maths.noise import noise_matrix  # noqa: E402
from labelsieve.package import load_package  # noqa: E402
from labelsieve.stages import purify  # noqa: E402

TOP_SHARE = 0.3
ROUNDS = 20


def confident_top(given: np.ndarray, probs: np.ndarray, share: float = TOP_SHARE) -> np.ndarray:
    """(C, C) T̂ whose column j is the given-label histogram of the round(share · N / C) samples with the
    highest p_j (ties by index)."""
    n, classes = probs.shape
    k = max(1, round(share * n / classes))
    matrix = np.empty((classes, classes))
    for j in range(classes):
        top = np.argsort(-probs[:, j], kind="stable")[:k]
        matrix[:, j] = np.bincount(given[top], minlength=classes) / k
    return matrix


def fixed_point(given: np.ndarray, probs: np.ndarray, start: np.ndarray, rounds: int = ROUNDS) -> np.ndarray:
    """T̂ re-estimated `rounds` times from the posterior: T̂[i, j] ∝ Σ_{ỹ = i} P(y* = j | x, ỹ)."""
    matrix, classes = start, probs.shape[1]
    for _ in range(rounds):
        joint = probs * matrix[given]
        total = joint.sum(axis=1)
        joint[total <= 0, given[total <= 0]] = 1.0  # no mass: the label stands, as in `posterior`
        post = joint / np.where(total > 0, total, 1.0)[:, None]
        counts = np.zeros((classes, classes))
        np.add.at(counts, given, post)
        matrix = counts / np.maximum(counts.sum(axis=0, keepdims=True), 1e-12)
    return matrix


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The matrices of the module docstring on one finished run."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    params = load_params(params_file, overrides=["runtime.threads=1"])
    data = TrainingData.load(dataset, run / "labels", torch.device("cpu"), "resident")
    classes = final.shape[1]
    networks = loop.load_networks(run / "ssl", params, data, torch.device("cpu"))
    head = out_of_fold_head(features(networks, data).double().numpy(), given, classes)
    estimated = confident.estimate(given, final)
    injected = noise_matrix(truth, given, classes)
    matrices = {
        "stage": purification.single_flips(estimated).noise_matrix,
        "confident_learning": estimated.noise_matrix,
        "injected": injected,
        "confident_top": confident_top(given, final),
        "fixed_point": fixed_point(given, final, estimated.noise_matrix),
        "head": confident.estimate(given, head).noise_matrix,
    }
    if (run / "model").is_dir():
        retrained = purify.final_probs([load_package(run / "model")[0]], data, params).double().numpy()
        matrices["retrained"] = confident.estimate(given, retrained).noise_matrix
    relabel = purification.estimate_and_posterior(given, averaged, "robust")[2]
    return {
        name: retrained_flags.flagged_by(
            given, truth, relabel, purification.two_readings(given, final, matrix)[0]
        )
        | {"mae": float(np.abs(matrix - injected).mean())}
        for name, matrix in matrices.items()
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run and matrix, the detection figures and the matrix's error."""
    return retrained_flags.table(results, "noise matrix", ("mae", "MAE to the injected"))


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
