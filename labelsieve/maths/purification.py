"""The purify rule: keep, relabel or drop each training sample (pure NumPy, no I/O).

This is both the `purify` stage's rule and the in-memory API for people who already have predictions
(`labelsieve.find_label_issues`). docs/purification.md gives the reasoning and the measurements; in short:

1. Confident learning on probabilities that did not simply memorise the given labels (`pred_probs`: the
   stage averages the co-trained networks' predictions over training with their final ones; a user may
   pass out-of-sample ones) estimates the noise matrix T̂[i, j] = P(ỹ = i | y* = j)
   (`labelsieve.maths.confident`).
2. One score, the posterior probability that the given label is wrong, by Bayes' rule with `pred_probs`
   as the belief about the true class and T̂ as the likelihood of the given one:
   P(y* ≠ ỹ | x, ỹ) = 1 − p_ỹ T̂[ỹ, ỹ] / Σ_j p_j T̂[ỹ, j].
   Under symmetric noise it orders the samples by p_ỹ; under a class swap it weighs the swap's source
   class; in a class that nothing flips into (T̂[ỹ, j] ≈ 0 for j ≠ ỹ) it is ≈ 0, so the class stays clean.
3. Flag every sample whose score is at least τ (`threshold`, default `WRONG_THRESHOLD`). τ < 1/2 says
   that keeping a wrong label costs more than losing a right one: (1 − τ)/τ = 1.5 times at τ = 0.4.
4. A flagged sample is relabelled to ŷ = argmax of `final_probs` when ŷ ≠ ỹ and the prediction is as
   confident as a typical kept member of class ŷ: p_ŷ ≥ the mean of p_ŷ over the kept samples labelled
   ŷ. Otherwise it is dropped: a flagged sample whose best guess is still ỹ, or a guess less sure than
   the class's own clean members, is not worth a label.

The only constant is τ, a probability with a decision-theoretic meaning, chosen on the Fashion-MNIST
tuning slice (docs/purification.md); the other thresholds come from the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from labelsieve.maths import chunks, confident

KEEP, RELABEL, DROP = 0, 1, 2
# τ: flag a label whose posterior probability of being wrong is at least this (docs/purification.md).
WRONG_THRESHOLD = 0.4
DECISION_NAMES = ("keep", "relabel", "drop")


@dataclass(frozen=True)
class Purification:
    """The decisions, the per-sample scores and the noise estimate behind them."""

    decision: np.ndarray  # (N,) int8: KEEP, RELABEL or DROP
    new_labels: np.ndarray  # (N,) int64: ỹ if kept, ŷ if relabelled, -1 if dropped
    scores: dict[str, np.ndarray]  # (N,) each; see `find_label_issues`
    noise: confident.NoiseEstimate


class Decisions(NamedTuple):
    """`decide`'s output: the decisions and the relabel target's top class behind them."""

    decision: np.ndarray  # (N,) int8: KEEP, RELABEL or DROP
    new_labels: np.ndarray  # (N,) int64: ỹ if kept, ŷ if relabelled, -1 if dropped
    predicted: np.ndarray  # (N,) int64: ŷ = argmax of the relabel target's probabilities
    confidence: np.ndarray  # (N,) float64: p_ŷ


def margins(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) p_ỹ − max_{j≠ỹ} p_j, in chunks of rows (no (N, C) temporary)."""
    out = np.empty(len(labels), dtype=np.float64)
    rows_of = np.arange(len(labels))
    for rows in chunks.row_chunks(len(labels), probs.shape[1]):
        p = np.array(probs[rows], dtype=np.float64)
        own = p[rows_of[rows] - rows.start, labels[rows]]
        p[rows_of[rows] - rows.start, labels[rows]] = -np.inf
        out[rows] = own - p.max(axis=1)
    return out


def wrong_posterior(labels: np.ndarray, probs: np.ndarray, noise_matrix: np.ndarray) -> np.ndarray:
    """(N,) P(y* ≠ ỹ | x, ỹ) = 1 − p_ỹ T[ỹ, ỹ] / Σ_j p_j T[ỹ, j], T[i, j] = P(ỹ = i | y* = j); in chunks."""
    out = np.empty(len(labels), dtype=np.float64)
    rows_of = np.arange(len(labels))
    for rows in chunks.row_chunks(len(labels), probs.shape[1]):
        likelihood = np.asarray(probs[rows], dtype=np.float64) * noise_matrix[labels[rows]]
        own = likelihood[rows_of[rows] - rows.start, labels[rows]]
        total = likelihood.sum(axis=1)
        out[rows] = np.divide(total - own, total, out=np.zeros(len(own)), where=total > 0)
    return out


def flag_top(score: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N,) bool: in each given class i, the `counts[i]` samples with the highest `score` (ties by index)."""
    flagged = np.zeros(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(counts) + 1))
    for c, count in enumerate(counts):
        members = order[bounds[c] : bounds[c + 1]]
        k = min(int(count), len(members))
        if k > 0:
            flagged[members[np.argsort(-score[members], kind="stable")[:k]]] = True
    return flagged


def kept_confidence(final_probs: np.ndarray, labels: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """(C,) the mean of p_j over the kept samples labelled j; 1 for a class with none (no relabel into it)."""
    num_classes = final_probs.shape[1]
    members = labels[kept]
    own = np.take_along_axis(final_probs, labels[:, None], axis=1)[:, 0]  # (N,): no (N, C) copy
    sums = np.bincount(members, weights=own[kept], minlength=num_classes)
    counts = np.bincount(members, minlength=num_classes)
    return np.divide(sums, counts, out=np.ones(num_classes), where=counts > 0)


def decide(
    labels: np.ndarray, noise_score: np.ndarray, final_probs: np.ndarray, threshold: float
) -> Decisions:
    """Steps 3 and 4 of the rule: flag at τ = `threshold`, then relabel or drop each flagged sample.

    Args:
        labels: (N,) given labels ỹ.
        noise_score: (N,) P(y* ≠ ỹ | x, ỹ) (`wrong_posterior`).
        final_probs: (N, C) the relabel target's probabilities.
        threshold: τ in (0, 1).

    Returns:
        `Decisions`: the decision per sample, the new labels (-1 where dropped), ŷ and p_ŷ.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    flagged = noise_score >= threshold
    predicted = final_probs.argmax(axis=1)
    confidence = np.take_along_axis(final_probs, predicted[:, None], axis=1)[:, 0]
    typical = kept_confidence(final_probs, labels, ~flagged)
    sure = confidence >= typical[predicted] - confident.THRESHOLD_SLACK
    relabel = flagged & (predicted != labels) & sure
    decision = np.where(flagged, np.where(relabel, RELABEL, DROP), KEEP).astype(np.int8)
    new_labels = np.where(flagged, np.where(relabel, predicted, -1), labels).astype(np.int64)
    return Decisions(decision, new_labels, predicted.astype(np.int64), confidence.astype(np.float64))


def find_label_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    final_probs: np.ndarray | None = None,
    threshold: float = WRONG_THRESHOLD,
) -> Purification:
    """Score, flag and decide every sample (the module docstring's rule).

    Args:
        labels: (N,) given labels ỹ in [0, C).
        pred_probs: (N, C) probabilities that did not memorise ỹ: averaged over training, or out of
            sample (k-fold). Drive the noise estimate and the ranking.
        final_probs: (N, C) the final model's probabilities, for the relabel target; default `pred_probs`.
        threshold: τ in (0, 1): flag a sample whose label is wrong with at least this probability.

    Returns:
        `Purification`; its scores: ``noise_score`` (P(y* ≠ ỹ | x, ỹ)), ``self_confidence``
        (p_ỹ of `pred_probs`), ``predicted`` (argmax of `final_probs`) and ``confidence`` (its
        probability).
    """
    labels = np.asarray(labels, dtype=np.int64)
    noise = confident.estimate(labels, pred_probs)
    final = np.asarray(pred_probs if final_probs is None else final_probs)
    if final.shape != pred_probs.shape:
        raise ValueError(f"final_probs must be {pred_probs.shape} like pred_probs, got {final.shape}")
    noise_score = wrong_posterior(labels, pred_probs, noise.noise_matrix)
    decided = decide(labels, noise_score, final, threshold)
    own = np.take_along_axis(np.asarray(pred_probs), labels[:, None], axis=1)[:, 0]
    scores = {
        "noise_score": noise_score,
        "self_confidence": own.astype(np.float64),
        "predicted": decided.predicted,
        "confidence": decided.confidence,
    }
    return Purification(decided.decision, decided.new_labels, scores, noise)
