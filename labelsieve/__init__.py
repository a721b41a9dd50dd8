"""labelsieve: train image classifiers on noisily labelled web data and hand back the purified dataset.

The in-memory API for people who already have predictions, as the `purify` stage runs it:

    from labelsieve import find_label_issues
    result = find_label_issues(labels, pred_probs)   # labels (N,), out-of-sample pred_probs (N, C)
    # pred_probs from a model fitted to the given labels (k-fold CE) are unmixed first;
    # pass probs_from="robust" for noise-robust ones (docs/purification.md)
    result.decision      # (N,) 0 keep, 1 relabel, 2 drop
    result.new_labels    # (N,) purified labels, -1 where dropped
    result.noise.noise_matrix   # (C, C) estimated P(given label i | true class j)
"""

from labelsieve.maths.purification import DECISION_NAMES, Purification, find_label_issues

__all__ = ["DECISION_NAMES", "Purification", "find_label_issues"]
