"""Forward loss correction (Patrini et al., CVPR 2017; docs/algorithms.md §5.2): a network that predicts the
true class learns from labels that are still partly wrong through the noise matrix of those labels.

With T[i, j] = P(label = i | y* = j) and p the network's prediction of the true class, the label's own
probability is (T p)_i, so a label costs −log (T p)_label instead of −log p_label: a label that T says is
often given to another class pulls the prediction less towards itself. `retrain.forward_correction`.
"""

from __future__ import annotations

import numpy as np
import torch

from labelsieve.maths import chunks, purification

# Floor of (T p)_i under the log: a label T says no class ever gets would otherwise cost +inf.
MIN_LABEL_PROB = 1e-12


def expected_noise_matrix(
    labels: np.ndarray, given: np.ndarray, probs: np.ndarray, estimate: np.ndarray
) -> np.ndarray:
    """(C, C) float64 T[i, j] = P(label = i | y* = j) of the labels a stage trains on, in expectation under
    purify's posterior.

    Each sample's true class is uncertain: P(y* = j | x, ỹ) ∝ p_j T̂[ỹ, j] (`purification.posterior_rows`).
    Sample n adds that posterior to row `labels[n]`; each column is then divided by its total. A column no
    sample can be is the identity's.

    Args:
        labels: (N,) the labels trained on (purify's, or retrain's at its own τ), the dropped left out.
        given: (N,) the given labels ỹ of the same samples.
        probs: (N, C) the probabilities purify's posterior was computed from (its `train_probs`).
        estimate: (C, C) purify's noise matrix T̂ of the given labels.
    """
    classes = estimate.shape[0]
    totals = np.zeros((classes, classes), dtype=np.float64)
    for rows in chunks.row_chunks(len(labels), classes):
        np.add.at(totals, labels[rows], purification.posterior_rows(given[rows], probs[rows], estimate))
    mass = totals.sum(axis=0)
    return np.where(mass > 0, totals / np.where(mass > 0, mass, 1.0), np.eye(classes))


def forward_corrected_ce(
    logits: torch.Tensor,
    label_targets: torch.Tensor,
    belief_targets: torch.Tensor,
    weight: torch.Tensor,
    noise_matrix: torch.Tensor,
) -> torch.Tensor:
    """Weighted mean over the rows of −Σ_i a_i log (T p)_i − Σ_j b_j log p_j, p = softmax(z).

    Args:
        logits: (B, C) outputs z.
        label_targets: (B, C) a, the target mass of the labels (corrected through T).
        belief_targets: (B, C) b, the target mass of beliefs about the true class, such as a distilled
            ensemble prediction (not corrected).
        weight: (B,) loss weight of each row; the mean is over Σ weight.
        noise_matrix: (C, C) T of the labels, columns summing to 1.

    With T the identity this is `retrain.weighted_soft_ce` on the targets a + b.
    """
    log_p = torch.log_softmax(logits, dim=1)
    log_label = torch.log((log_p.exp() @ noise_matrix.T.to(log_p.dtype)).clamp_min(MIN_LABEL_PROB))
    per_row = -(label_targets * log_label).sum(dim=1) - (belief_targets * log_p).sum(dim=1)
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)
