"""Classification and noise-detection metrics in float64 NumPy (no I/O).

Detection convention: the positive class is "the given label is wrong" (truly noisy); a detector flags
samples, and a score ranks them (higher = more likely noisy).
"""

from __future__ import annotations

import numpy as np


def detection(flagged: np.ndarray, truly_noisy: np.ndarray) -> dict[str, float]:
    """Precision, recall and F1 of `flagged` (N,) bool against `truly_noisy` (N,) bool.

    An empty flagged set has precision 1 (it made no false claim); no noisy samples give recall 1.
    """
    flagged = np.asarray(flagged, dtype=bool)
    truly_noisy = np.asarray(truly_noisy, dtype=bool)
    hits = float(np.sum(flagged & truly_noisy))
    precision = hits / flagged.sum() if flagged.any() else 1.0
    recall = hits / truly_noisy.sum() if truly_noisy.any() else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def auroc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties half.

    Computed from average ranks (Mann-Whitney U) in O(N log N). NaN if either class is empty.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank (1-based) over each run of equal scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    run_rank = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: np.ndarray, positives: np.ndarray, points: int = 101) -> dict[str, list[float]]:
    """False- and true-positive rates at `points` score thresholds (quantiles), for plotting."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, points)))[::-1]
    flagged = scores[None, :] >= thresholds[:, None]
    tpr = (flagged & positives).sum(axis=1) / max(positives.sum(), 1)
    fpr = (flagged & ~positives).sum(axis=1) / max((~positives).sum(), 1)
    return {"fpr": [0.0, *fpr.tolist()], "tpr": [0.0, *tpr.tolist()]}


def confusion_matrix(true_labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts M[i, j] = #(true = i, predicted = j)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true_labels), np.asarray(predicted)), 1)
    return matrix


def per_class(matrix: np.ndarray) -> dict[str, list[float]]:
    """Per-class precision, recall and F1 from a confusion matrix (0 where undefined)."""
    matrix = matrix.astype(np.float64)
    hits = np.diag(matrix)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    precision = np.divide(hits, predicted, out=np.zeros_like(hits), where=predicted > 0)
    recall = np.divide(hits, actual, out=np.zeros_like(hits), where=actual > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}
