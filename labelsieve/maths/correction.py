"""Forward loss correction (Patrini et al., CVPR 2017; docs/algorithms.md §5.2): learn the true class
through a known noise matrix.

A network's softmax p is read as the belief about the true class; the label it is scored against was drawn
through the noise, so its probability is q_i = Σ_j T[i, j] p_j with T[i, j] = P(given label i | true class j)
(the convention of `noise.noise_matrix` and `confident.estimate`). The corrected loss is −log q_ỹ. When T is
the true noise matrix and invertible, its minimiser over p is the clean posterior, so a network trained on
noisy labels with it learns the true classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# q is clamped from below before the log: a label that T says can never occur (q = 0) would give an
# infinite loss; this floor bounds it at −log(1e-12) ≈ 27.6.
MIN_PROBABILITY = 1e-12


def forward_nll(logits: torch.Tensor, labels: torch.Tensor, noise_matrix: torch.Tensor) -> torch.Tensor:
    """Per-sample −log (T softmax(z))_ỹ.

    Args:
        logits: (B, C) network outputs z.
        labels: (B,) int64 given labels ỹ in [0, C).
        noise_matrix: (C, C) T, columns summing to 1.

    Returns:
        (B,) losses, differentiable in ``logits``. With T = I it equals CE(z, ỹ).
    """
    z = logits if logits.dtype == torch.float64 else logits.float()  # bf16 autocast outputs in float32
    probs = F.softmax(z, dim=1)  # (B, C) belief about the true class
    rows = noise_matrix.to(probs)[labels]  # (B, C): T[ỹ_b, j]
    return -(rows * probs).sum(dim=1).clamp_min(MIN_PROBABILITY).log()
