"""Tests for labelsieve.maths.division: per-sample loss, GMM co-divide and the partition guard."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.mixture import GaussianMixture

from labelsieve.maths import chunks
from labelsieve.maths.division import (
    Gmm1d,
    clean_probability,
    fit_gmm_1d,
    group_members,
    minmax_normalise,
    partition,
    per_sample_loss,
    posterior,
)


def planted_losses(n_clean: int, n_noisy: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-loss-like sample: clean ~ N(0.15, 0.05²), noisy ~ N(0.65, 0.12²), clipped to [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    clean = 0.15 + 0.05 * torch.randn(n_clean, generator=gen, dtype=torch.float64)
    noisy = 0.65 + 0.12 * torch.randn(n_noisy, generator=gen, dtype=torch.float64)
    x = torch.cat([clean, noisy]).clamp(0.0, 1.0)
    is_clean = torch.cat([torch.ones(n_clean, dtype=torch.bool), torch.zeros(n_noisy, dtype=torch.bool)])
    return x, is_clean


def bayes_clean_posterior(gmm: Gmm1d, x: np.ndarray) -> np.ndarray:
    """Float64 reference: w_k N(x | μ_k, σ²_k) / Σ_j w_j N(x | μ_j, σ²_j) for the lower-mean k."""
    weights, means, variances = (t.numpy() for t in (gmm.weights, gmm.means, gmm.variances))
    joint = np.stack(
        [
            weights[k]
            * np.exp(-((x - means[k]) ** 2) / (2 * variances[k]))
            / np.sqrt(2 * np.pi * variances[k])
            for k in range(2)
        ]
    )
    return joint[np.argmin(means)] / joint.sum(axis=0)


# --- per_sample_loss / minmax_normalise --------------------------------------------------------------


def test_per_sample_loss_hand_computed() -> None:
    # Row 0: softmax(0, 0) = (½, ½) → −log ½. Row 1: softmax(ln 3, 0) = (¾, ¼), label 1 → −log ¼.
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]], dtype=torch.float64)
    losses = per_sample_loss(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(losses, torch.tensor([math.log(2.0), math.log(4.0)], dtype=torch.float64))


def test_per_sample_loss_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        per_sample_loss(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))


def test_minmax_normalise_hand_computed() -> None:
    torch.testing.assert_close(minmax_normalise(torch.tensor([2.0, 4.0, 3.0])), torch.tensor([0.0, 1.0, 0.5]))


def test_minmax_normalise_constant_input_gives_zeros() -> None:
    out = minmax_normalise(torch.full((5,), 3.7))
    torch.testing.assert_close(out, torch.zeros(5))


def test_minmax_normalise_per_group_hand_computed() -> None:
    losses = torch.tensor([2.0, 10.0, 4.0, 20.0, 3.0, 5.0])
    groups = group_members(torch.tensor([0, 1, 0, 1, 0, 2]))  # group 2 is constant -> 0
    out = minmax_normalise(losses, groups=groups)
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.0]))


def test_group_members_lists_each_group_in_order() -> None:
    members = group_members(torch.tensor([3, 0, 3, 1, 0]))
    assert [m.tolist() for m in members] == [[1, 4], [3], [0, 2]]


@pytest.mark.parametrize("groups", [torch.tensor([0.0, 1.0]), torch.tensor([[0, 1], [1, 0]])])
def test_group_members_rejects_float_or_misshaped_groups(groups: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="groups must be"):
        group_members(groups)


# --- GMM -----------------------------------------------------------------------------------------------


def test_posterior_matches_bayes_rule_reference() -> None:
    x, _ = planted_losses(600, 400, seed=0)
    gmm = fit_gmm_1d(x, seed=0)
    expected = bayes_clean_posterior(gmm, x.numpy())
    torch.testing.assert_close(posterior(gmm, x), torch.from_numpy(expected), rtol=1e-10, atol=1e-12)


def test_posterior_hand_built_mixture_picks_lower_mean_component() -> None:
    # Lower-mean component stored second: the posterior must still be of the lower mean.
    gmm = Gmm1d(
        weights=torch.tensor([0.3, 0.7], dtype=torch.float64),
        means=torch.tensor([0.8, 0.1], dtype=torch.float64),
        variances=torch.tensor([0.02, 0.01], dtype=torch.float64),
        converged=True,
        n_iter=1,
        lower_bound=0.0,
    )
    x = torch.tensor([0.0, 0.3, 0.45, 0.6, 1.0], dtype=torch.float64)
    expected = torch.from_numpy(bayes_clean_posterior(gmm, x.numpy()))
    torch.testing.assert_close(posterior(gmm, x), expected, rtol=1e-10, atol=1e-12)
    assert gmm.clean_component == 1


def test_fit_gmm_1d_separates_planted_mixture() -> None:
    x, is_clean = planted_losses(1400, 600, seed=1)
    gmm = fit_gmm_1d(x, seed=0)
    w = posterior(gmm, x)
    assert (w[is_clean] > 0.5).double().mean().item() > 0.95
    assert (w[~is_clean] < 0.5).double().mean().item() > 0.95
    assert gmm.means.min().item() == pytest.approx(0.15, abs=0.02)
    assert gmm.means.max().item() == pytest.approx(0.65, abs=0.03)
    assert gmm.weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fit_gmm_1d_agrees_with_sklearn(seed: int) -> None:
    x, _ = planted_losses(2000, 1000, seed=10 + seed)
    gmm = fit_gmm_1d(x, max_iter=10, tol=1e-2, reg_covar=5e-4, seed=seed)
    sk = GaussianMixture(n_components=2, max_iter=10, tol=1e-2, reg_covar=5e-4, random_state=seed)
    sk.fit(x.numpy()[:, None])
    sk_clean = sk.predict_proba(x.numpy()[:, None])[:, np.argmin(sk.means_.ravel())]
    torch.testing.assert_close(posterior(gmm, x), torch.from_numpy(sk_clean), rtol=0, atol=1e-6)
    order = np.argsort(sk.means_.ravel())
    torch.testing.assert_close(gmm.means.sort().values, torch.from_numpy(sk.means_.ravel()[order]))
    assert gmm.n_iter == sk.n_iter_
    assert gmm.converged == sk.converged_


def test_fit_gmm_1d_same_seed_is_deterministic() -> None:
    x, _ = planted_losses(500, 500, seed=3)
    first, second = fit_gmm_1d(x, seed=7), fit_gmm_1d(x, seed=7)
    for a, b in ((first.weights, second.weights), (first.means, second.means)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(posterior(first, x), posterior(second, x), rtol=0, atol=0)


@pytest.mark.parametrize("value", [0.0, 3.0])
def test_fit_gmm_1d_constant_input_does_not_crash(value: float) -> None:
    x = torch.full((50,), value)
    gmm = fit_gmm_1d(x, seed=0)
    w = posterior(gmm, x)
    assert torch.isfinite(gmm.variances).all() and torch.isfinite(gmm.means).all()
    assert torch.isfinite(w).all() and ((w >= 0) & (w <= 1)).all()


def test_fit_gmm_1d_respects_max_iter() -> None:
    x, _ = planted_losses(300, 300, seed=4)
    one = fit_gmm_1d(x, max_iter=1, seed=0)
    assert one.n_iter == 1 and not one.converged  # the first change is from −inf, never below tol
    assert fit_gmm_1d(x, max_iter=0, seed=0).n_iter == 0


def test_fit_gmm_1d_variance_includes_reg_covar() -> None:
    # Two tight clusters: the fitted variances are ≈ the ridge alone.
    x = torch.cat([torch.zeros(20), torch.ones(20)])
    gmm = fit_gmm_1d(x, reg_covar=0.01, seed=0)
    torch.testing.assert_close(
        gmm.variances, torch.full((2,), 0.01, dtype=torch.float64), rtol=1e-6, atol=1e-9
    )


@pytest.mark.parametrize("bad", [torch.zeros(1), torch.tensor([0.0, float("nan"), 1.0]), torch.zeros(2, 2)])
def test_fit_gmm_1d_invalid_input_raises(bad: torch.Tensor) -> None:
    with pytest.raises(ValueError):
        fit_gmm_1d(bad, seed=0)


@pytest.mark.parametrize(("max_iter", "tol"), [(10, 1e-2), (60, 0.0)])
def test_fit_gmm_1d_and_posterior_chunked_equal_unchunked(monkeypatch, max_iter: int, tol: float) -> None:
    # N = 4300: four full chunks of 1000 and a ragged one; the unchunked run is a single chunk.
    x, _ = planted_losses(2700, 1600, seed=4)
    whole = fit_gmm_1d(x, max_iter=max_iter, tol=tol, seed=5)
    whole_posterior = posterior(whole, x)
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 1000)
    chunked = fit_gmm_1d(x, max_iter=max_iter, tol=tol, seed=5)
    for got, expected in (
        (chunked.weights, whole.weights),
        (chunked.means, whole.means),
        (chunked.variances, whole.variances),
    ):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=0)
    assert (chunked.n_iter, chunked.converged) == (whole.n_iter, whole.converged)
    assert chunked.lower_bound == pytest.approx(whole.lower_bound, rel=1e-12)
    # The same mixture gives the same posterior chunk by chunk; the refitted one, up to its round-off.
    torch.testing.assert_close(posterior(whole, x), whole_posterior, rtol=1e-12, atol=0)
    torch.testing.assert_close(posterior(chunked, x), whole_posterior, rtol=1e-12, atol=1e-13)


def test_fit_gmm_1d_chunked_constant_input_does_not_crash(monkeypatch) -> None:
    # Every k-means++ distance is 0 in every chunk. (Which component ends up empty is a tie decided by
    # round-off, so it is not compared with the unchunked fit.)
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 1000)
    x = torch.full((2500,), 0.3, dtype=torch.float64)
    gmm = fit_gmm_1d(x, seed=0)
    w = posterior(gmm, x)
    assert torch.isfinite(gmm.means).all() and torch.isfinite(gmm.variances).all()
    assert torch.isfinite(w).all() and ((w >= 0) & (w <= 1)).all()


# --- clean_probability -----------------------------------------------------------------------------------


def test_clean_probability_composes_normalise_gmm_posterior() -> None:
    x, _ = planted_losses(300, 200, seed=5)
    losses = 3.0 * x + 0.2
    expected = posterior(fit_gmm_1d(minmax_normalise(losses), seed=1), minmax_normalise(losses))
    torch.testing.assert_close(clean_probability(losses, seed=1), expected, rtol=0, atol=0)


def test_clean_probability_invariant_to_affine_loss_scale() -> None:
    x, _ = planted_losses(300, 200, seed=6)
    torch.testing.assert_close(clean_probability(x, seed=0), clean_probability(5.0 * x + 2.0, seed=0))


def test_clean_probability_averages_history_with_current() -> None:
    x, _ = planted_losses(300, 200, seed=7)
    history = torch.stack([minmax_normalise(x.roll(k)) for k in (1, 2)])  # (H=2, N)
    averaged = torch.cat([history, minmax_normalise(x)[None]]).mean(dim=0)
    expected = posterior(fit_gmm_1d(averaged, seed=0), averaged)
    got = clean_probability(x, history=history, seed=0)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.allclose(got, clean_probability(x, seed=0))


def test_clean_probability_history_wrong_shape_raises() -> None:
    with pytest.raises(ValueError):
        clean_probability(torch.rand(10), history=torch.rand(2, 9), seed=0)


def test_clean_probability_constant_losses_are_finite() -> None:
    w = clean_probability(torch.full((64,), 2.5), seed=0)
    assert w.shape == (64,) and torch.isfinite(w).all()


def test_clean_probability_keeps_input_dtype() -> None:
    x, _ = planted_losses(100, 100, seed=8)
    assert clean_probability(x.float(), seed=0).dtype == torch.float32


# --- partition -------------------------------------------------------------------------------------------


def test_partition_threshold_is_strict_without_fallback() -> None:
    w = torch.tensor([0.9, 0.5, 0.2, 0.7, 0.51, 0.1])
    mask, fell_back = partition(w, threshold=0.5, min_size=2)
    assert mask.tolist() == [True, False, False, True, True, False]
    assert not fell_back


def test_partition_all_clean_keeps_bottom_k_unlabeled() -> None:
    w = torch.linspace(0.6, 0.99, 100)
    mask, fell_back = partition(w, threshold=0.5, min_size=16)
    assert fell_back
    assert int((~mask).sum()) == 16
    assert (~mask[:16]).all() and mask[16:].all()  # the 16 lowest clean probabilities


def test_partition_all_noisy_takes_top_k_labeled() -> None:
    w = torch.linspace(0.4, 0.01, 100)
    mask, fell_back = partition(w, threshold=0.5, min_size=16)
    assert fell_back
    assert int(mask.sum()) == 16
    assert mask[:16].all() and (~mask[16:]).all()  # the 16 highest clean probabilities


def test_partition_tiny_n_splits_both_sides_nonempty() -> None:
    w = torch.tensor([0.9, 0.8, 0.95, 0.99, 0.7])
    mask, fell_back = partition(w, min_size=64)
    assert fell_back
    assert int(mask.sum()) == 3 and int((~mask).sum()) == 2
    assert mask.tolist() == [True, False, True, True, False]


def test_partition_single_sample_is_labeled() -> None:
    mask, _ = partition(torch.tensor([0.1]), min_size=8)
    assert mask.tolist() == [True]


def test_partition_negative_min_size_raises() -> None:
    with pytest.raises(ValueError):
        partition(torch.rand(4), min_size=-1)


@settings(max_examples=200, deadline=None)
@given(
    probs=st.lists(st.floats(0.0, 1.0), min_size=0, max_size=60),
    min_size=st.integers(0, 40),
    threshold=st.floats(0.05, 0.95),
)
def test_partition_property_sizes_and_order(probs: list[float], min_size: int, threshold: float) -> None:
    w = torch.tensor(probs, dtype=torch.float64)
    n = w.numel()
    mask, fell_back = partition(w, threshold=threshold, min_size=min_size)
    assert mask.shape == (n,) and mask.dtype == torch.bool
    n_x = int(mask.sum())
    assert n_x >= min(min_size, n - n // 2)
    assert n - n_x >= min(min_size, n // 2)
    if fell_back:
        # Top-k / bottom-k: every labeled sample is at least as clean as every unlabeled one.
        if 0 < n_x < n:
            assert w[mask].min() >= w[~mask].max()
    else:
        assert torch.equal(mask, w > threshold)
