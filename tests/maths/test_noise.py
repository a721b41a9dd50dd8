import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelsieve.data.idx import FASHION_MNIST_CLASSES
from labelsieve.maths import noise

MODES_WITHOUT_FEATURES = ["symmetric", "symmetric_exclusive", "pairflip", "asymmetric"]


def _labels(n: int, num_classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, size=n)


def _inject(labels, mode, rate, num_classes, seed, **kwargs):
    if mode == "asymmetric" and "class_map" not in kwargs:
        kwargs["class_map"] = (np.arange(num_classes) + 3) % num_classes
    if mode == "instance" and "features" not in kwargs:
        kwargs["features"] = np.random.default_rng(seed + 1).random((len(labels), 12))
    return noise.inject(
        labels, mode=mode, rate=rate, num_classes=num_classes, rng=np.random.default_rng(seed), **kwargs
    )


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    num_classes=st.integers(2, 12),
    rate=st.floats(0, 0.99),
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from([*MODES_WITHOUT_FEATURES, "instance"]),
)
def test_inject_exact_count_and_only_chosen_change(n, num_classes, rate, seed, mode):
    labels = _labels(n, num_classes, seed)
    noisy, chosen = _inject(labels, mode, rate, num_classes, seed)
    assert chosen.sum() == int(np.floor(round(rate * n, 9)))
    assert np.array_equal(noisy[~chosen], labels[~chosen])
    assert noisy.min() >= 0 and noisy.max() < num_classes


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), mode=st.sampled_from([*MODES_WITHOUT_FEATURES, "instance"]))
def test_inject_same_seed_same_labels(seed, mode):
    labels = _labels(300, 7, 1)
    first, _ = _inject(labels, mode, 0.4, 7, seed)
    second, _ = _inject(labels, mode, 0.4, 7, seed)
    assert np.array_equal(first, second)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_classes=st.integers(2, 10))
def test_inject_exclusive_pairflip_and_instance_always_change_chosen(seed, num_classes):
    labels = _labels(200, num_classes, seed)
    for mode in ("symmetric_exclusive", "pairflip", "instance"):
        noisy, chosen = _inject(labels, mode, 0.5, num_classes, seed)
        assert np.all(noisy[chosen] != labels[chosen]), mode
    noisy, chosen = _inject(labels, "pairflip", 0.5, num_classes, seed)
    assert np.array_equal(noisy[chosen], (labels[chosen] + 1) % num_classes)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_inject_asymmetric_respects_the_map(seed):
    class_map = noise.class_map_array("fashion_mnist", FASHION_MNIST_CLASSES)
    labels = _labels(500, 10, seed)
    noisy, chosen = _inject(labels, "asymmetric", 0.4, 10, seed, class_map=class_map)
    assert np.array_equal(noisy[chosen], class_map[labels[chosen]])


def test_inject_symmetric_wrong_fraction_is_rate_times_c_minus_1_over_c():
    # With the true class drawable, E[wrong] = r (C-1)/C: 0.45 at r = 0.5, C = 10. Binomial sd at
    # n = 25,000 chosen is about 0.002 of N, so 0.01 is a 5-sigma band.
    labels = _labels(50_000, 10, 0)
    noisy, _ = _inject(labels, "symmetric", 0.5, 10, 123)
    assert noise.actual_rate(labels, noisy) == pytest.approx(0.45, abs=0.01)
    noisy, _ = _inject(labels, "symmetric_exclusive", 0.5, 10, 123)
    assert noise.actual_rate(labels, noisy) == 0.5


def test_inject_symmetric_redraws_uniformly_over_classes():
    labels = np.zeros(40_000, dtype=np.int64)
    noisy, chosen = _inject(labels, "symmetric", 0.5, 4, 5)
    shares = np.bincount(noisy[chosen], minlength=4) / chosen.sum()
    np.testing.assert_allclose(shares, np.full(4, 0.25), atol=0.015)


def test_inject_instance_rate_exact_and_flips_follow_propensity():
    rng = np.random.default_rng(0)
    n, num_classes = 4000, 5
    labels = rng.integers(0, num_classes, size=n)
    features = rng.random((n, 20))
    noisy, chosen = _inject(labels, "instance", 0.4, num_classes, 9, features=features)
    assert noise.actual_rate(labels, noisy) == pytest.approx(0.4)
    # Reproduce the propensity with the same generator stream: flipped samples must have the larger one.
    logits = noise.instance_logits(labels, features, num_classes, np.random.default_rng(9))
    q = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    propensity = 1 - q[np.arange(n), labels]
    assert propensity[chosen].mean() > propensity[~chosen].mean() + 0.02
    # The target class depends on the features: the most likely off-class target is hit most often.
    off = q.copy()
    off[np.arange(n), labels] = 0
    assert np.mean(noisy[chosen] == off[chosen].argmax(axis=1)) > 1.5 / (num_classes - 1)


def test_inject_rate_zero_passes_labels_through():
    labels = _labels(100, 10, 0)
    noisy, chosen = _inject(labels, "symmetric", 0.0, 10, 0)
    assert np.array_equal(noisy, labels) and not chosen.any()


def test_inject_instance_without_features_is_refused():
    with pytest.raises(noise.NoiseError, match="needs per-sample features"):
        noise.inject(
            np.zeros(10, dtype=np.int64),
            mode="instance",
            rate=0.5,
            num_classes=3,
            rng=np.random.default_rng(0),
        )


def test_noise_count_is_floor_without_float_error():
    assert noise.noise_count(100, 0.29) == 29
    assert noise.noise_count(45, 0.5) == 22
    assert noise.noise_count(7, 0.0) == 0


def test_class_map_array_fashion_mnist_pairs():
    target = noise.class_map_array("fashion_mnist", FASHION_MNIST_CLASSES)
    # T-shirt->Shirt, Trouser stays, Pullover->Coat, Dress stays, Coat->Pullover, Sandal->Sneaker,
    # Shirt->T-shirt, Sneaker->Sandal, Bag stays, Ankle boot->Sneaker.
    assert target.tolist() == [6, 1, 4, 3, 2, 7, 0, 5, 8, 7]


def test_class_map_array_cifar10_and_cifar100():
    cifar10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    assert noise.class_map_array("cifar10", cifar10).tolist() == [0, 1, 0, 5, 7, 3, 6, 7, 8, 1]
    target = noise.class_map_array("cifar100", [str(k) for k in range(100)])
    assert target[:10].tolist() == [1, 2, 3, 4, 0, 6, 7, 8, 9, 5]


def test_class_map_array_custom_and_errors():
    assert noise.class_map_array("custom", ["a", "b", "c"], {"a": "c"}).tolist() == [2, 1, 2]
    with pytest.raises(noise.NoiseError, match="not in the dataset: 'z'"):
        noise.class_map_array("custom", ["a", "b"], {"a": "z"})
    with pytest.raises(noise.NoiseError, match="needs inject_noise.custom_map"):
        noise.class_map_array("custom", ["a", "b"], {})
    with pytest.raises(noise.NoiseError, match="not in the dataset"):
        noise.class_map_array("fashion_mnist", ["0", "1"])


def test_noise_matrix_hand_computed():
    true = np.array([0, 0, 0, 0, 1, 1, 2])
    given = np.array([0, 0, 1, 2, 1, 0, 2])
    expected = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.0], [0.25, 0.0, 1.0]])
    np.testing.assert_allclose(noise.noise_matrix(true, given, 3), expected)
    np.testing.assert_allclose(noise.noise_matrix(true, given, 4)[:, 3], 0.0)  # empty column stays zero
    assert noise.actual_rate(true, given) == pytest.approx(3 / 7)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_noise_matrix_matches_planted_symmetric_transition(seed):
    labels = _labels(30_000, 3, seed)
    noisy, _ = _inject(labels, "symmetric", 0.6, 3, seed)
    # Planted: P(label = i | true = j) = (1 - r) [i = j] + r / C.
    expected = 0.4 * np.eye(3) + 0.6 / 3
    np.testing.assert_allclose(noise.noise_matrix(labels, noisy, 3), expected, atol=0.03)
