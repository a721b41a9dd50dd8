import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from labelsieve.maths import metrics


def test_detection_hand_computed():
    flagged = np.array([1, 1, 1, 0, 0, 0], dtype=bool)
    noisy = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    result = metrics.detection(flagged, noisy)
    assert result["precision"] == pytest.approx(2 / 3)
    assert result["recall"] == pytest.approx(2 / 3)
    assert result["f1"] == pytest.approx(2 / 3)


def test_detection_edge_cases():
    assert metrics.detection(np.zeros(3, bool), np.array([1, 0, 0], bool)) == {
        "precision": 1.0,
        "recall": 0.0,
        "f1": 0.0,
    }
    assert metrics.detection(np.ones(2, bool), np.zeros(2, bool))["recall"] == 1.0


def test_auroc_hand_computed_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5), (0.9>0.1), (0.5=0.5 -> 1/2), (0.5>0.1) -> 3.5/4
    assert metrics.auroc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], bool)) == pytest.approx(0.875)
    assert np.isnan(metrics.auroc(np.array([0.1, 0.2]), np.array([1, 1], bool)))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 200), st.integers(1, 6))
def test_auroc_matches_sklearn(seed, n, levels):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, size=n).astype(float)  # few levels: many ties
    positives = rng.random(n) < 0.4
    if positives.all() or not positives.any():
        return
    assert metrics.auroc(scores, positives) == pytest.approx(roc_auc_score(positives, scores), abs=1e-12)


def test_roc_curve_runs_from_origin_to_one():
    rng = np.random.default_rng(0)
    curve = metrics.roc_curve(rng.random(500), rng.random(500) < 0.3)
    assert curve["fpr"][0] == curve["tpr"][0] == 0.0
    assert curve["fpr"][-1] == pytest.approx(1.0) and curve["tpr"][-1] == pytest.approx(1.0)
    assert np.all(np.diff(curve["tpr"]) >= 0)


def test_confusion_matrix_and_per_class_hand_computed():
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 1, 0])
    matrix = metrics.confusion_matrix(true, pred, 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 2, 0], [1, 0, 0]])
    scores = metrics.per_class(matrix)
    np.testing.assert_allclose(scores["precision"], [0.5, 2 / 3, 0.0])
    np.testing.assert_allclose(scores["recall"], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(scores["f1"], [0.5, 0.8, 0.0])
