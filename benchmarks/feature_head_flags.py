"""Would `purify` flag better with a linear head fitted out of sample on the co-trained networks' features?

The retrained network flags the Fashion-MNIST class swap better than the co-trained networks but fits the
noise it keeps on small data (`benchmarks/retrained_flags.py`; docs/purification_studies.md). A linear head
on the final co-trained networks' frozen penultimate features (`neighbour_evidence.features`: both networks,
each L2-normalised), fitted to the *given* labels by multinomial logistic regression (scikit-learn's
defaults, C 1, not tuned) and cross-fitted over 5 stratified folds, scores every sample with a model that
never saw its label, at the cost of one feature pass and five linear fits. For each kept `quality.py --work`
run this applies the stage's rule, relabelling always by the stage's average with the training dynamics
(`retrained_flags.flagged_by`), and flagging by:
- ``stage``: the final co-trained networks (what `purify` does; rule 5's two readings since stop 61);
- ``head``: the head's probabilities read as robust ones;
- ``head_unmixed``: the head read as the model of the given labels it is (`probs_from="noisy_labels"`: its
  own noise matrix, the prediction unmixed before Bayes' rule);
- ``mean_unmixed``: the mean of the stage's and ``head_unmixed``'s posterior that the label is wrong.
Against the training-set truth: F1, AUROC, relabel accuracy, noise left, and the accuracy on the training
truth of the stage's networks (``stage``) and of the out-of-fold head (the other rows).

    uv run python benchmarks/feature_head_flags.py /var/tmp/rt1 /var/tmp/rt2 --out /tmp/head_flags.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling  # noqa: E402
from benchmarks.neighbour_evidence import features  # noqa: E402
from benchmarks.retrained_flags import figures_by_source, table  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import purification  # noqa: E402

FOLDS = 5


def out_of_fold_head(feats: np.ndarray, given: np.ndarray, classes: int) -> np.ndarray:
    """(N, C) each sample's probabilities from the logistic regression fitted on the other folds."""
    probs = np.zeros((len(given), classes))
    for fit, score in StratifiedKFold(FOLDS, shuffle=True, random_state=0).split(feats, given):
        head = LogisticRegression(max_iter=500).fit(feats[fit], given[fit])
        probs[np.ix_(score, head.classes_)] = head.predict_proba(feats[score])
    return probs


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The flag sources of the module docstring on one finished run."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    params = load_params(params_file, overrides=["runtime.threads=1"])
    data = TrainingData.load(dataset, run / "labels", torch.device("cpu"), "resident")
    networks = loop.load_networks(run / "ssl", params, data, torch.device("cpu"))
    head = out_of_fold_head(features(networks, data).double().numpy(), given, final.shape[1])
    relabel = purification.estimate_and_posterior(given, averaged, "robust")[2]
    stage = purification.flag_scores(given, final, "robust")[0]
    unmixed = purification.estimate_and_posterior(given, head, "noisy_labels")[2].wrong
    flags = {
        "stage": (stage, final),
        "head": (purification.estimate_and_posterior(given, head, "robust")[2].wrong, head),
        "head_unmixed": (unmixed, head),
        "mean_unmixed": ((stage + unmixed) / 2.0, head),
    }
    return figures_by_source(given, truth, relabel, flags)


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
