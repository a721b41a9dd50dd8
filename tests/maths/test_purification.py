"""The purify rule (`labelsieve.maths.purification`): hand-computed cases and a float64 reference."""

import numpy as np
import pytest

import labelsieve
from labelsieve.config import PurifyConfig
from labelsieve.maths import chunks
from labelsieve.maths.purification import (
    DROP,
    KEEP,
    RELABEL,
    WRONG_THRESHOLD,
    find_label_issues,
    flag_top,
    kept_confidence,
    margins,
    wrong_posterior,
)


def test_hand_case_posteriors_flags_and_relabels():
    # t = (0.55, 0.6); confident classes: 0, 1, 1, 1, 0 -> joint [[1, 1], [1, 2]] -> Q = joint / 5, prior
    # (0.4, 0.6), T = Q / prior = [[1/2, 1/3], [1/2, 2/3]]. P(wrong) = Σ_{j≠ỹ} p_j T[ỹ, j] / Σ_j p_j T[ỹ, j]:
    # sample 0: (0.1/3) / (0.45 + 0.1/3) = 2/29; sample 1: (0.8/3) / (0.1 + 0.8/3) = 8/11;
    # sample 2: 0.05 / 0.65 = 1/13; sample 3: 0.15 / (0.15 + 1.4/3) = 9/37;
    # sample 4: 0.4 / (0.4 + 0.4/3) = 3/4.
    # τ = 0.4 flags samples 1 and 4. The kept members' confidence is 0.9 for class 0 (sample 0) and 0.8
    # for class 1 (samples 2, 3): sample 1's 0.8 for class 1 is as sure as that, so it is relabelled;
    # sample 4's 0.8 for class 0 is not, so it is dropped.
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    result = find_label_issues(labels, probs)
    np.testing.assert_allclose(result.noise.noise_matrix, [[1 / 2, 1 / 3], [1 / 2, 2 / 3]])
    np.testing.assert_allclose(result.scores["noise_score"], [2 / 29, 8 / 11, 1 / 13, 9 / 37, 3 / 4])
    assert result.decision.tolist() == [KEEP, RELABEL, KEEP, KEEP, DROP]
    assert result.new_labels.tolist() == [0, 1, 1, 1, -1]
    # τ is inclusive and moves only the samples it passes: 9/37 ≈ 0.243 is flagged at 0.24, not at 0.25.
    assert find_label_issues(labels, probs, threshold=0.25).decision[3] == KEEP
    assert find_label_issues(labels, probs, threshold=0.24).decision[3] != KEEP
    assert PurifyConfig().flag_threshold == WRONG_THRESHOLD  # the stage's default is the API's
    np.testing.assert_allclose(kept_confidence(probs, labels, result.decision == KEEP), [0.9, 0.8])
    assert labelsieve.find_label_issues is find_label_issues  # the package's API is the stage's rule


def test_flagged_sample_is_dropped_when_its_prediction_is_its_label_or_unsure():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    # The final model still predicts 0 for sample 1 (its label) and is unsure about sample 4 (0.56 for
    # class 0 against 0.9 for the kept sample 0); sample 4 goes to class 0 at 0.95 in the second case.
    final = probs.copy()
    final[1] = [0.6, 0.4]
    final[4] = [0.56, 0.44]
    result = find_label_issues(labels, probs, final_probs=final)
    assert result.decision.tolist() == [KEEP, DROP, KEEP, KEEP, DROP]
    assert result.new_labels.tolist() == [0, -1, 1, 1, -1]
    final[4] = [0.95, 0.05]
    assert find_label_issues(labels, probs, final_probs=final).decision.tolist()[4] == RELABEL


def test_a_class_estimated_clean_has_nothing_flagged():
    rng = np.random.default_rng(0)
    n = 600
    labels = np.repeat([0, 1, 2], n // 3)
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), labels] = 0.9
    # Class 2 is clean, but some of its samples are far less confident than others (a hard class).
    probs[labels == 2] = np.column_stack([np.full(200, 0.2), np.full(200, 0.2), np.full(200, 0.6)])
    probs[np.flatnonzero(labels == 2)[:50]] = [0.3, 0.3, 0.4]
    # Class 1 carries 40 samples of class 0.
    wrong = np.flatnonzero(labels == 1)[rng.permutation(200)[:40]]
    probs[wrong] = [0.9, 0.05, 0.05]
    result = find_label_issues(labels, probs)
    assert result.noise.noise_rates[2] == 0.0 and result.noise.noise_rates[0] == 0.0
    assert not (result.decision[labels != 1] != KEEP).any()
    assert set(np.flatnonzero(result.decision != KEEP)) == set(wrong)
    assert (result.new_labels[wrong] == 0).all()


def test_margins_match_a_float64_reference_across_chunks():
    rng = np.random.default_rng(1)
    n, c = chunks.CHUNK_VALUES // 4 + 7, 4  # more than one chunk
    probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    labels = rng.integers(0, c, n)
    p = probs.astype(np.float64)
    own = p[np.arange(n), labels]
    other = np.where(np.eye(c, dtype=bool)[labels], -np.inf, p).max(axis=1)
    np.testing.assert_allclose(margins(labels, probs), own - other, rtol=0, atol=1e-12)


def test_wrong_posterior_matches_a_float64_bayes_reference_across_chunks():
    rng = np.random.default_rng(2)
    n, c = chunks.CHUNK_VALUES // 4 + 7, 4  # more than one chunk
    probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    labels = rng.integers(0, c, n)
    noise_matrix = rng.dirichlet(np.ones(c), size=c).T  # columns sum to 1: P(ỹ = i | y* = j)
    posterior = np.empty(n)
    for k in range(n):  # P(y* = j | x, ỹ) ∝ p_j P(ỹ | y* = j), one sample at a time
        joint = probs[k].astype(np.float64) * noise_matrix[labels[k]]
        posterior[k] = 1.0 - joint[labels[k]] / joint.sum()
    np.testing.assert_allclose(wrong_posterior(labels, probs, noise_matrix), posterior, rtol=0, atol=1e-12)


def test_flag_top_takes_the_highest_scores_per_class_with_ties_by_index():
    labels = np.array([1, 0, 1, 0, 1, 1])
    score = np.array([0.5, 0.9, 0.7, 0.1, 0.7, 0.2])
    flagged = flag_top(score, labels, np.array([1, 2]))
    assert np.flatnonzero(flagged).tolist() == [1, 2, 4]  # class 0: index 1; class 1: the 0.7 tie, both


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="probs must be"):
        find_label_issues(np.array([0, 1]), np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="final_probs"):
        find_label_issues(np.array([0, 1]), np.ones((2, 2)) / 2, final_probs=np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="labels must lie"):
        find_label_issues(np.array([0, 2]), np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="threshold must lie"):
        find_label_issues(np.array([0, 1]), np.ones((2, 2)) / 2, threshold=1.0)
