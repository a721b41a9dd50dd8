"""Would a cross-fitted retrain flag the class swap without fitting the labels it learns from?

`benchmarks/retrained_flags.py` found that the retrained network flags the Fashion-MNIST class swap better
than the co-trained networks on the tuning slice (F1 0.80 against 0.75 at asym40), but loses on digits, where
its 15 fine-tuning epochs fit the noisy labels they are scored against (docs/purification_studies.md). This
study asks whether the same retrain, cross-fitted, keeps the slice's gain and loses the digits loss: the
training samples are split into K seeded folds, stratified by the given label (`cleanlab_peer`'s folds);
for each fold the stage's retrain (its params, its labels from purify at τ_r, its forward correction, its
starting network) fine-tunes on the other K − 1 folds only, and predicts the held-out fold. Every sample is
then scored by a network that never learned its label in retrain (the co-trained network it starts from
still did). Flag sources, relabelling always by the stage's average with the training dynamics (as in
`retrained_flags.py`):
- ``stage``: the final co-trained networks (what `purify` does; rule 5's two readings since stop 61);
- ``retrained``: the run's own retrained network (in sample);
- ``crossfit``: the cross-fitted prediction;
- ``crossfit_unmixed``: the cross-fitted prediction read as a model of the given labels (its noise matrix
  estimated on it and unmixed before Bayes' rule, `probs_from="noisy_labels"`);
- ``mean_crossfit``: the mean of the stage's and the cross-fitted prediction.
The cost is reported as the cross-fit's seconds over the run's own retrain seconds (one thread each; the run's
retrain was timed when the run was made, so the ratio is as noisy as the machine was then and now).

    uv run python benchmarks/retrain_crossfit.py /var/tmp/w1 /var/tmp/w2 --out /tmp/retrain_crossfit.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling  # noqa: E402
from benchmarks.cleanlab_peer import stratified_folds  # noqa: E402
from benchmarks.retrained_flags import figures_by_source, table  # noqa: E402
from labelsieve.config import Params, load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import apply_threads  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import purification  # noqa: E402
from labelsieve.package import load_package  # noqa: E402
from labelsieve.stages import evaluate, purify, retrain  # noqa: E402

FOLDS = 4  # each fold retrains on three quarters of the samples: about 3x the stage's retrain


def crossfit_probs(run: Path, params: Params, data: TrainingData, folds: int) -> tuple[np.ndarray, float]:
    """((N, C) each training sample's prediction by the retrain that left its fold out, seconds taken)."""
    apply_threads(1)
    device = torch.device("cpu")
    labels = retrain.read_labels(params, data, run / "purified")
    fold = stratified_folds(data.train_labels.cpu().numpy(), folds, params.runtime.seed)
    out = np.zeros((len(fold), data.num_classes))
    began = time.perf_counter()
    for f in range(folds):
        state = retrain.initial_state(labels, data.num_classes, params.retrain, device)
        state.train_ids = state.train_ids[torch.from_numpy(fold != f)[state.train_ids]]
        model = retrain.starting_network(params, data, run / "ssl", device)
        optimizer = loop.make_optimizer(model, params.model)
        generators = loop.Generators(params.runtime.seed, f"retrain-crossfit-{f}", device)
        for epoch in range(params.retrain.epochs):
            generators.begin_epoch(epoch)
            retrain.run_epoch(
                model, optimizer, data, state, params=params, epoch=epoch, generators=generators
            )
        held = fold == f
        out[held] = purify.final_probs([model], data, params).double().numpy()[held]
    return out, time.perf_counter() - began


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The flag sources of the module docstring on one finished run, and the cross-fit's relative cost."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    params = load_params(params_file, overrides=["runtime.threads=1"])
    data = TrainingData.load(dataset, run / "labels", torch.device("cpu"), "resident")
    network, _ = load_package(run / "model")
    retrained = purify.final_probs([network], data, params).double().numpy()
    crossfit, seconds = crossfit_probs(run, params, data, FOLDS)
    retrain_seconds = sum(h["train_seconds"] for h in evaluate.read_history(run / "model"))

    def wrong(probs: np.ndarray, source: str = "robust") -> np.ndarray:
        return purification.estimate_and_posterior(given, probs, source)[2].wrong

    relabel = purification.estimate_and_posterior(given, averaged, "robust")[2]
    mean = (final + crossfit) / 2.0
    flags = {
        "stage": (purification.flag_scores(given, final, "robust")[0], final),
        "retrained": (wrong(retrained), retrained),
        "crossfit": (wrong(crossfit), crossfit),
        "crossfit_unmixed": (wrong(crossfit, "noisy_labels"), crossfit),
        "mean_crossfit": (wrong(mean), mean),
    }
    figures = figures_by_source(given, truth, relabel, flags)
    cost = seconds / retrain_seconds
    return {name: fig | {"cost_x_retrain": cost} for name, fig in figures.items()}


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
