"""Forward loss correction: the labels' expected noise matrix and the corrected cross-entropy, against
hand-computed cases and float64 reimplementations."""

import math

import numpy as np
import torch

from labelsieve.maths import forward
from labelsieve.stages.retrain import weighted_soft_ce


def test_expected_noise_matrix_by_hand():
    # Two classes. T̂ says class 1 is given label 0 half the time and class 0 always keeps its label.
    estimate = np.array([[1.0, 0.5], [0.0, 0.5]])
    given = np.array([0, 0, 1])
    probs = np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]])
    # Posteriors ∝ p_j T̂[ỹ, j]: [0.5, 0.25] → [2/3, 1/3]; [1, 0]; [0, 0.4] → [0, 1].
    labels = np.array([0, 0, 1])  # trained on the given labels
    # Column 0 (true class 0): mass 2/3 + 1 on label 0, none on 1. Column 1: 1/3 on label 0, 1 on label 1.
    expected = np.array([[1.0, (1 / 3) / (4 / 3)], [0.0, 1.0 / (4 / 3)]])
    np.testing.assert_allclose(forward.expected_noise_matrix(labels, given, probs, estimate), expected)
    # Relabelling the third sample to 0 moves its whole posterior (class 1) to row 0.
    relabelled = forward.expected_noise_matrix(np.array([0, 0, 0]), given, probs, estimate)
    np.testing.assert_allclose(relabelled, [[1.0, 1.0], [0.0, 0.0]])


def test_expected_noise_matrix_matches_a_float64_loop_and_keeps_empty_columns_identity():
    rng = np.random.default_rng(0)
    n, c = 200, 4
    probs = rng.dirichlet(np.ones(c), size=n)
    estimate = rng.dirichlet(np.ones(c) * 3, size=c).T  # columns on the simplex
    given, labels = rng.integers(0, c, n), rng.integers(0, c, n)
    totals = np.zeros((c, c))
    for label, g, p in zip(labels, given, probs, strict=True):
        joint = p * estimate[g]
        totals[label] += joint / joint.sum()
    np.testing.assert_allclose(
        forward.expected_noise_matrix(labels, given, probs, estimate), totals / totals.sum(axis=0), rtol=1e-12
    )
    # No sample can be class 2 (p_2 = 0 everywhere): its column is the identity's, not 0/0.
    probs[:, 2] = 0.0
    probs /= probs.sum(axis=1, keepdims=True)
    out = forward.expected_noise_matrix(labels, given, probs, estimate)
    np.testing.assert_array_equal(out[:, 2], np.eye(c)[:, 2])
    np.testing.assert_allclose(out.sum(axis=0), 1.0)


def test_forward_corrected_ce_with_the_identity_is_the_soft_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64)
    a = 0.75 * torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3, 0, 1]), 4).double()
    b = 0.25 * torch.softmax(torch.randn(6, 4, dtype=torch.float64), dim=1)
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    corrected = forward.forward_corrected_ce(logits, a, b, weight, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(corrected, weighted_soft_ce(logits, a + b, weight), rtol=1e-12, atol=1e-12)


def test_forward_corrected_ce_by_hand():
    # One row, two classes, p = softmax([0, log 3]) = [1/4, 3/4]; label 0 with mass 0.8, belief [0.2, 0].
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[0.8, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.2, 0.0]], dtype=torch.float64)
    t = torch.tensor([[0.6, 0.3], [0.4, 0.7]], dtype=torch.float64)  # T[i, j] = P(label i | true j)
    loss = forward.forward_corrected_ce(logits, a, b, torch.ones(1, dtype=torch.float64), t)
    # (T p)_0 = 0.6/4 + 0.3·3/4 = 0.375: 0.8·(−log 0.375) + 0.2·(−log 1/4).
    assert math.isclose(loss.item(), 0.8 * math.log(1 / 0.375) + 0.2 * math.log(4.0), rel_tol=1e-12)
    # A perfect swap: label 0 always means class 1, so the loss of label 0 is −log p_1 and pulls p_1 up.
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    one = torch.ones(1, dtype=torch.float64)
    loss = forward.forward_corrected_ce(logits, a + b, torch.zeros_like(a), one, swap)
    assert math.isclose(loss.item(), -math.log(0.75), rel_tol=1e-12)
    (grad,) = torch.autograd.grad(loss, logits)
    assert grad[0, 1] < 0 < grad[0, 0]
