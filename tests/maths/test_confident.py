"""Confident learning (`labelsieve.maths.confident`) against cleanlab's own functions and float64 maths."""

import numpy as np
import pytest
from cleanlab.count import compute_confident_joint, estimate_joint

from labelsieve.maths import confident


def noisy_predictions(seed: int, n: int = 400, c: int = 4, rate: float = 0.3):
    """Seeded hand-made probabilities: a bump on the true class, labels flipped at `rate`."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, c, n)
    labels = true.copy()
    flip = rng.random(n) < rate
    labels[flip] = rng.integers(0, c, flip.sum())
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), true] += 2.0
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True), true


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confident_joint_equals_cleanlab(seed):
    labels, probs, _ = noisy_predictions(seed)
    expected = compute_confident_joint(labels, probs, calibrate=False)
    np.testing.assert_array_equal(confident.confident_joint(labels, probs), expected)


@pytest.mark.parametrize("seed", [0, 1])
def test_calibrated_joint_equals_cleanlab_up_to_its_integer_rounding(seed):
    labels, probs, _ = noisy_predictions(seed)
    ours = confident.estimate(labels, probs).joint
    # cleanlab rounds the calibrated counts to integers that keep the row totals: at most one count off.
    np.testing.assert_allclose(ours, estimate_joint(labels, probs), rtol=0, atol=1.0 / len(labels))


def test_hand_case_thresholds_joint_and_noise_matrix():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    est = confident.estimate(labels, probs)
    np.testing.assert_allclose(est.thresholds, [0.55, 0.6])  # (0.9 + 0.2) / 2, (0.9 + 0.7 + 0.2) / 3
    np.testing.assert_array_equal(est.confident_joint, [[1, 1], [1, 2]])
    np.testing.assert_allclose(est.joint, [[0.2, 0.2], [0.2, 0.4]])  # rows already sum to 2 and 3
    np.testing.assert_allclose(est.prior, [0.4, 0.6])
    np.testing.assert_allclose(est.noise_matrix, [[0.5, 1 / 3], [0.5, 2 / 3]])  # Q / prior, column-wise
    np.testing.assert_allclose(est.noise_rates, [0.5, 1 / 3])
    np.testing.assert_array_equal(est.flag_counts(), [1, 1])


def test_a_sample_with_no_class_above_threshold_is_not_counted_and_the_diagonal_is_at_least_one():
    labels = np.array([0, 1, 1])
    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.4, 0.6]])  # t = (0.2, 0.5)
    # Sample 0: p0 = 0.2 >= 0.2 and p1 >= 0.5 -> the larger, 1. Sample 1: 0.6 >= 0.2 -> 0 (0.4 < 0.5).
    # Sample 2: both above -> 1. Diagonal (0, 0) would be 0: clipped to 1.
    np.testing.assert_array_equal(confident.confident_joint(labels, probs), [[1, 1], [1, 1]])
    assert confident.confident_class(np.array([[0.1, 0.2]]), np.array([0.5, 0.5])).tolist() == [-1]


def test_noise_matrix_recovers_a_known_transition_within_two_points():
    rng = np.random.default_rng(3)
    n, c = 20_000, 3
    true = rng.integers(0, c, n)
    transition = np.array([[0.8, 0.0, 0.3], [0.2, 0.9, 0.0], [0.0, 0.1, 0.7]])  # P(label i | true j)
    labels = np.array([rng.choice(c, p=transition[:, j]) for j in true])
    probs = np.full((n, c), 0.1)
    probs[np.arange(n), true] = 0.8  # a model that knows the truth, uncalibrated
    est = confident.estimate(labels, probs)
    np.testing.assert_allclose(est.noise_matrix, transition, atol=0.02)
    np.testing.assert_allclose(est.noise_matrix.sum(axis=0), 1.0)
    # The noise rate of a given class is 1 - P(true = i | label = i), by Bayes from the transition.
    prior = np.bincount(true, minlength=c) / n
    joint = transition * prior[None, :]
    np.testing.assert_allclose(est.noise_rates, 1 - np.diag(joint) / joint.sum(axis=1), atol=0.02)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="NaN"):
        confident.estimate(np.array([0, 1]), np.array([[np.nan, 1.0], [0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        confident.estimate(np.array([0, 1, 1]), np.ones((2, 2)))


def test_logits_scores_and_fractional_labels_are_refused_naming_the_row():
    labels, probs, _ = noisy_predictions(0, n=10, c=3)
    logits = np.log(probs)
    with pytest.raises(ValueError, match=r"probs row 0 has a negative entry .*not logits"):
        confident.estimate(labels, logits)
    scores = probs.copy()
    scores[7] *= 2.0
    with pytest.raises(ValueError, match=r"probs row 7 sums to 2, not 1"):
        confident.estimate(labels, scores)
    halves = labels.astype(np.float64)
    halves[4] = 0.5
    with pytest.raises(ValueError, match=r"labels\[4\] is 0.5"):
        confident.estimate(halves, probs)
    with pytest.raises(ValueError, match="integer class indices, got dtype <U1"):
        confident.estimate(np.array(list("abcabcabca")), probs)
    with pytest.raises(ValueError, match="real numbers"):
        confident.estimate(labels, probs.astype(object))


def test_whole_float_labels_and_rounded_rows_are_accepted():
    labels, probs, _ = noisy_predictions(1, n=50, c=4)
    rounded = probs.astype(np.float16)  # rows sum to 1 within float16 rounding
    expected = confident.estimate(labels, probs.astype(np.float16).astype(np.float64))
    got = confident.estimate(labels.astype(np.float32), rounded)
    np.testing.assert_array_equal(got.confident_joint, expected.confident_joint)
    np.testing.assert_allclose(got.noise_matrix, expected.noise_matrix, rtol=0, atol=1e-12)
