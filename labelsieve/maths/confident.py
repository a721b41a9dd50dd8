"""Confident learning (Northcutt, Jiang and Chuang, JAIR 2021): the noise matrix from predicted probabilities.

Pure NumPy, no I/O. N samples, C classes, ``labels`` (N,) the given labels ỹ, ``probs`` (N, C) predicted
probabilities that did not simply memorise ỹ (out of sample, or averaged over training).

1. Per-class thresholds t_j = mean of p_j over the samples labelled j: how confident the model is, on
   average, in a sample that carries label j.
2. Confident joint C[i, j] = the number of samples labelled i whose most probable class among those with
   p_l ≥ t_l is j. A sample with no class above its threshold is not counted. Each diagonal entry is at
   least 1, so no class is estimated to have no clean sample.
3. Calibration: each row is rescaled to the number of samples labelled i, and the whole matrix to N; the
   joint Q = C̃ / N estimates P(ỹ = i, y* = j).
4. From Q: the noise matrix P(ỹ = i | y* = j) (columns sum to 1, the convention of
   `labelsieve.maths.noise.noise_matrix`), the prior P(y* = j), and each given class's noise rate
   P(y* ≠ i | ỹ = i) = 1 − Q[i, i] / Σ_j Q[i, j], whose count is how many class-i samples to flag.

docs/purification.md explains how `purify` uses these.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from labelsieve.maths import chunks

# p_j ≥ t_j is tested with this slack: the mean of equal probabilities can round to just above each of them.
THRESHOLD_SLACK = 1e-6
# A row of probabilities may sum to 1 within this: a float16 softmax over many classes rounds this far.
ROW_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class NoiseEstimate:
    """What confident learning estimates from one set of predicted probabilities (all float64)."""

    thresholds: np.ndarray  # (C,) t_j
    confident_joint: np.ndarray  # (C, C) int64 counts, rows = given label, columns = confident class
    joint: np.ndarray  # (C, C) calibrated Q[i, j] ≈ P(ỹ = i, y* = j), sums to 1
    noise_matrix: np.ndarray  # (C, C) P(ỹ = i | y* = j), columns sum to 1 (0 for an empty column)
    prior: np.ndarray  # (C,) P(y* = j)
    noise_rates: np.ndarray  # (C,) P(y* ≠ i | ỹ = i), one per given class
    label_counts: np.ndarray  # (C,) samples per given label

    def flag_counts(self) -> np.ndarray:
        """(C,) int64: how many samples of each given class are estimated to carry a wrong label."""
        return np.rint(self.noise_rates * self.label_counts).astype(np.int64)


def check_inputs(labels: np.ndarray, probs: np.ndarray, name: str = "probs") -> tuple[np.ndarray, np.ndarray]:
    """(int64 labels, probs as an array), refusing what is not class indices and per-row probabilities.

    Labels must be integers (or whole-valued floats) in [0, C), and not all one class. Each row of probs
    must be finite, in [0, 1] and sum to 1 within `ROW_SUM_TOLERANCE`: logits, log-probabilities and
    unnormalised scores are refused with the first offending row named, instead of giving confident-looking
    wrong answers. `name` is what the errors call the probabilities (the caller's argument name).
    """
    labels, probs = np.asarray(labels), np.asarray(probs)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"{name} must be (N, C) and labels (N,); got {probs.shape} and {labels.shape}")
    if not (np.issubdtype(probs.dtype, np.floating) or np.issubdtype(probs.dtype, np.integer)):
        raise ValueError(f"{name} must be real numbers, got dtype {probs.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        fractional = np.flatnonzero(labels != np.round(labels))
        if fractional.size:
            i = fractional[0]
            raise ValueError(f"labels must be whole class indices; labels[{i}] is {labels[i]}")
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    num_classes = probs.shape[1]
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    if len(labels) and (labels == labels[0]).all():
        raise ValueError(
            f"labels are all class {labels[0]}: telling which labels are wrong needs at least two classes "
            "among them (the noise matrix has nothing to compare)"
        )
    for rows in chunks.row_chunks(len(probs), num_classes):
        block = np.asarray(probs[rows], dtype=np.float64)
        sums = block.sum(axis=1)  # NaN or inf anywhere in a row makes its sum NaN or inf
        bad = np.flatnonzero(~np.isfinite(sums))
        if bad.size:
            raise ValueError(f"{name} contain NaN or inf (row {rows.start + bad[0]})")
        bad = np.flatnonzero(block.min(axis=1) < 0)
        if bad.size:
            row = rows.start + bad[0]
            raise ValueError(
                f"{name} row {row} has a negative entry ({block[bad[0]].min():.4g}): "
                "pass probabilities (a softmax), not logits or log-probabilities"
            )
        bad = np.flatnonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE)
        if bad.size:
            row = rows.start + bad[0]
            raise ValueError(
                f"{name} row {row} sums to {sums[bad[0]]:.4g}, not 1: "
                "pass probabilities (a softmax), not logits or unnormalised scores"
            )
    return labels, probs


def thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(C,) t_j = mean p_j over the samples labelled j; a class with no sample gets 1 (nothing passes it)."""
    return _thresholds(*check_inputs(labels, probs))


def _thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    num_classes = probs.shape[1]
    own = np.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    sums = np.bincount(labels, weights=own, minlength=num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    return np.divide(sums, counts, out=np.ones(num_classes), where=counts > 0)


def confident_class(probs: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(N,) int64: the most probable class among those with p_j ≥ t_j, or -1 where there is none."""
    out = np.empty(len(probs), dtype=np.int64)
    for rows in chunks.row_chunks(len(probs), probs.shape[1]):
        above = probs[rows] >= t - THRESHOLD_SLACK
        masked = np.where(above, probs[rows], -np.inf)
        out[rows] = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    return out


def confident_joint(labels: np.ndarray, probs: np.ndarray, t: np.ndarray | None = None) -> np.ndarray:
    """(C, C) int64 counts C[i, j] (module docstring, step 2), diagonal clipped to at least 1."""
    labels, probs = check_inputs(labels, probs)
    return _confident_joint(labels, probs, _thresholds(labels, probs) if t is None else t)


def _confident_joint(labels: np.ndarray, probs: np.ndarray, t: np.ndarray) -> np.ndarray:
    num_classes = probs.shape[1]
    guess = confident_class(probs, t)
    counted = guess >= 0
    pairs = labels[counted] * num_classes + guess[counted]
    joint = np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)
    np.fill_diagonal(joint, np.maximum(np.diagonal(joint), 1))
    return joint


def calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Q (C, C) float64: each row rescaled to its label count, then the whole to sum 1 (step 3)."""
    rows = joint.sum(axis=1, keepdims=True).astype(np.float64)
    scaled = np.divide(joint * label_counts[:, None], rows, out=np.zeros(joint.shape), where=rows > 0)
    total = scaled.sum()
    return scaled / total if total > 0 else scaled


def estimate(labels: np.ndarray, probs: np.ndarray, name: str = "probs") -> NoiseEstimate:
    """Every confident-learning estimate from given labels (N,) and predicted probabilities (N, C).

    Refuses bad inputs first (`check_inputs`, its errors calling the probabilities `name`), so a caller
    that passes them on unchanged needs no check.
    """
    labels, probs = check_inputs(labels, probs, name)
    num_classes = probs.shape[1]
    t = _thresholds(labels, probs)
    counts = np.bincount(labels, minlength=num_classes)
    cj = _confident_joint(labels, probs, t)
    q = calibrate(cj, counts)
    prior = q.sum(axis=0)
    noise_matrix = np.divide(q, prior[None, :], out=np.zeros_like(q), where=prior[None, :] > 0)
    given = q.sum(axis=1)
    clean_share = np.divide(np.diagonal(q), given, out=np.ones(num_classes), where=given > 0)
    return NoiseEstimate(
        thresholds=t,
        confident_joint=cj,
        joint=q,
        noise_matrix=noise_matrix,
        prior=prior,
        noise_rates=1.0 - clean_share,
        label_counts=counts,
    )
