"""Synthetic label noise (docs/algorithms.md §1): exact counts, seeded, pure NumPy.

Exactly ⌊rate·N⌋ indices are chosen with the seeded generator and only those are redrawn; there is
no per-sample Bernoulli draw, because the published protocols fix the count.

Conventions: `labels` are the true labels (N,) in 0..C-1; `noise_matrix[i, j] = P(label = i | true = j)`.
"""

from __future__ import annotations

import math

import numpy as np

from labelsieve.errors import LabelsieveError

MODES = ("symmetric", "symmetric_exclusive", "asymmetric", "pairflip", "instance")

# Visually closest pairs; Trouser, Dress and Bag map to themselves.
FASHION_MNIST_MAP = {
    "T-shirt/top": "Shirt",
    "Pullover": "Coat",
    "Coat": "Pullover",
    "Shirt": "T-shirt/top",
    "Sandal": "Sneaker",
    "Sneaker": "Sandal",
    "Ankle boot": "Sneaker",
}
CIFAR10_MAP = {"bird": "airplane", "truck": "automobile", "cat": "dog", "dog": "cat", "deer": "horse"}


class NoiseError(LabelsieveError, ValueError):
    """A noise request that cannot be honoured (unknown mode, a class map that does not fit)."""


def noise_count(n: int, rate: float) -> int:
    """⌊rate·n⌋, robust to float error (0.29 * 100 is 28.999999999999996 in binary)."""
    return math.floor(round(rate * n, 9))


def class_map_array(kind: str, classes: list[str], custom: dict[str, str] | None = None) -> np.ndarray:
    """The asymmetric map as an index array `target[c]`, built from class names.

    Args:
        kind: ``fashion_mnist``, ``cifar10`` (maps by class name), ``cifar100`` (next id within blocks of
            5 consecutive ids, as in the published code) or ``custom`` (uses `custom`).
        classes: the dataset's class names, C of them.

    Raises:
        NoiseError: the map names classes the dataset does not have, or C does not fit.
    """
    num_classes = len(classes)
    if kind == "cifar100":
        if num_classes != 100:
            raise NoiseError(f"class_map cifar100 needs 100 classes, the dataset has {num_classes}")
        ids = np.arange(num_classes)
        return (ids // 5) * 5 + (ids + 1) % 5
    named = {"fashion_mnist": FASHION_MNIST_MAP, "cifar10": CIFAR10_MAP, "custom": custom or {}}
    if kind not in named:
        raise NoiseError(f"unknown class map {kind!r}; allowed: fashion_mnist, cifar10, cifar100, custom")
    mapping = named[kind]
    if kind == "custom" and not mapping:
        raise NoiseError("class_map custom needs inject_noise.custom_map (class name -> class name)")
    unknown = sorted({name for pair in mapping.items() for name in pair} - set(classes))
    if unknown:
        raise NoiseError(
            f"class map {kind} names class(es) not in the dataset: {', '.join(map(repr, unknown))}"
        )
    index = {name: k for k, name in enumerate(classes)}
    target = np.arange(num_classes)
    for source, dest in mapping.items():
        target[index[source]] = index[dest]
    return target


def inject(
    labels: np.ndarray,
    *,
    mode: str,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    class_map: np.ndarray | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Redraw the labels of exactly ⌊rate·N⌋ samples.

    Args:
        labels: (N,) true labels.
        mode: one of MODES.
        rate: r in [0, 1).
        num_classes: C.
        rng: the seeded generator; the same seed gives the same result.
        class_map: (C,) target class per class, for ``asymmetric``.
        features: (N, ...) per-sample features, for ``instance`` (flattened pixels do).

    Returns:
        (noisy_labels (N,), chosen (N,) bool): the new labels and the indices that were redrawn. A
        redrawn label can equal the true one (``symmetric`` draws the true class too; ``asymmetric``
        maps some classes to themselves).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if not 0.0 <= rate < 1.0:
        raise NoiseError(f"noise rate {rate} is outside [0, 1)")
    noisy = labels.copy()
    chosen = np.zeros(n, dtype=bool)
    count = noise_count(n, rate)
    if count == 0:
        return noisy, chosen
    if mode == "instance":
        if features is None:
            raise NoiseError("instance noise needs per-sample features")
        picked, new = _instance(labels, features, count, num_classes, rng)
    else:
        picked = rng.choice(n, size=count, replace=False)
        old = labels[picked]
        if mode == "symmetric":
            new = rng.integers(0, num_classes, size=count)
        elif mode == "symmetric_exclusive":
            new = (old + rng.integers(1, num_classes, size=count)) % num_classes
        elif mode == "pairflip":
            new = (old + 1) % num_classes
        elif mode == "asymmetric":
            if class_map is None:
                raise NoiseError("asymmetric noise needs a class map")
            new = np.asarray(class_map)[old]
        else:
            raise NoiseError(f"unknown noise mode {mode!r}; allowed: {', '.join(MODES)}")
    noisy[picked] = new
    chosen[picked] = True
    return noisy, chosen


def instance_logits(
    labels: np.ndarray, features: np.ndarray, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, C) logits a_i = x̂_i · W_{y_i}, with one random projection W_c ~ N(0, 1)^(D×C) per class.

    Features are flattened, centred and scaled to unit norm per sample, so the logits are O(1).
    """
    x = features.reshape(len(features), -1).astype(np.float64)
    x = x - x.mean(axis=1, keepdims=True)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    projections = rng.standard_normal((num_classes, x.shape[1], num_classes))
    logits = np.empty((len(x), num_classes))
    for c in range(num_classes):  # one matmul per class, not a (N, D, C) gather
        rows = labels == c
        logits[rows] = x[rows] @ projections[c]
    return logits


def _instance(
    labels: np.ndarray, features: np.ndarray, count: int, num_classes: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Instance-dependent noise after Xia et al. 2020 ("part-dependent"), with an exact count.

    q_i = softmax(a_i) from `instance_logits`. The flip propensity τ_i = 1 - q_i[y_i] is the mass the
    projection puts off the true class; exactly `count` samples are drawn without replacement with
    probability proportional to τ_i (Efraimidis-Spirakis keys), and each takes a class drawn from q_i
    with the true class masked out, so every chosen label changes and the rate is exactly count / N.
    """
    logits = instance_logits(labels, features, num_classes, rng)
    q = np.exp(logits - logits.max(axis=1, keepdims=True))
    q /= q.sum(axis=1, keepdims=True)
    rows = np.arange(len(labels))
    propensity = 1.0 - q[rows, labels] + 1e-12
    keys = np.log(rng.random(len(labels))) / propensity  # larger key = more likely chosen
    picked = np.sort(np.argpartition(-keys, count - 1)[:count])
    off = q[picked].copy()
    off[np.arange(count), labels[picked]] = 0.0
    cdf = np.cumsum(off / off.sum(axis=1, keepdims=True), axis=1)
    new = (cdf < rng.random((count, 1))).sum(axis=1)
    new = np.minimum(new, num_classes - 1)
    # Float round-off can leave the last bin hit for a masked class; fall back to the best other class.
    bad = new == labels[picked]
    new[bad] = np.argmax(off[bad], axis=1)
    return picked, new


def noise_matrix(true_labels: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical (C, C) matrix M[i, j] = P(label = i | true = j); a column with no samples is zero."""
    counts = np.zeros((num_classes, num_classes), dtype=np.float64)
    np.add.at(counts, (labels, true_labels), 1.0)
    totals = counts.sum(axis=0, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def actual_rate(true_labels: np.ndarray, labels: np.ndarray) -> float:
    """The share of labels that differ from the truth."""
    return float(np.mean(true_labels != labels)) if len(labels) else 0.0
