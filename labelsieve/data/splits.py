"""Seeded, stratified hold-out splits and the per-class subset (pure functions on label arrays)."""

from __future__ import annotations

import numpy as np


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Mask (N,) bool choosing round(fraction * n_c) samples of each class c to hold out.

    Every class keeps at least one sample outside the hold-out, so a tiny class is never emptied.
    """
    held = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        count = min(round(fraction * len(members)), len(members) - 1)
        if count > 0:
            held[rng.choice(members, size=count, replace=False)] = True
    return held


def first_per_class(labels: np.ndarray, limit: int) -> np.ndarray:
    """Mask (N,) bool keeping the first `limit` samples of each class in the given order; 0 keeps all."""
    if limit <= 0:
        return np.ones(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts  # position of each sample within its class
    return rank < limit
