"""Tests for labelsieve.maths.neighbours: kNN against a brute-force reference, SSSL mixing on hand cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from labelsieve.maths.neighbours import (
    is_correction_epoch,
    knn_dataset,
    knn_within_batch,
    mixing_weights,
    scaled_epoch,
    soft_cross_entropy,
    soft_target_update,
    synthesize,
)


def f64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def brute_force_knn(
    query: torch.Tensor, bank: torch.Tensor, k: int, query_ids: torch.Tensor | None = None
) -> torch.Tensor:
    """Reference: every pair's squared L2 distance in float64, sorted by (distance, bank index)."""
    q_rows, b_rows = query.double().tolist(), bank.double().tolist()
    result = []
    for i, q in enumerate(q_rows):
        candidates = []
        for j, b in enumerate(b_rows):
            if query_ids is not None and j == int(query_ids[i]):
                continue  # a sample is not its own neighbour
            candidates.append((sum((u - v) ** 2 for u, v in zip(q, b, strict=True)), j))
        candidates.sort()
        result.append([j for _, j in candidates[:k]])
    return torch.tensor(result, dtype=torch.long).reshape(len(q_rows), k)


def random_features(n: int, d: int, seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def grid_features(n: int, d: int, seed: int) -> torch.Tensor:
    """Integer points in {0, 1, 2}^d: many exactly equal distances and duplicate rows."""
    return torch.randint(0, 3, (n, d), generator=torch.Generator().manual_seed(seed)).double()


# --- knn_within_batch ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 19])
def test_knn_within_batch_matches_brute_force(k: int) -> None:
    features = random_features(20, 5, seed=0)
    expected = brute_force_knn(features, features, k, query_ids=torch.arange(20))
    torch.testing.assert_close(knn_within_batch(features, k), expected)


@pytest.mark.parametrize("k", [1, 2, 5, 29])
def test_knn_within_batch_ties_match_brute_force_order(k: int) -> None:
    # 30 rows on a 3x3 grid: ties at every rank, including the k-th place, resolved by index.
    features = grid_features(30, 2, seed=1)
    expected = brute_force_knn(features, features, k, query_ids=torch.arange(30))
    torch.testing.assert_close(knn_within_batch(features, k), expected)


def test_knn_within_batch_equal_distances_broken_by_index() -> None:
    # Sample 0 sits at 0 with samples 1 (at +1) and 2 (at −1) equally far: the lower index wins.
    features = f64([[0.0], [1.0], [-1.0], [5.0]])
    torch.testing.assert_close(knn_within_batch(features, 1)[0], torch.tensor([1]))
    torch.testing.assert_close(knn_within_batch(features, 2)[0], torch.tensor([1, 2]))


def test_knn_within_batch_excludes_self_among_duplicates() -> None:
    features = f64([[1.0, 1.0], [1.0, 1.0], [4.0, 0.0]])
    torch.testing.assert_close(knn_within_batch(features, 1), torch.tensor([[1], [0], [0]]))


def test_knn_within_batch_k_zero_is_empty() -> None:
    assert knn_within_batch(random_features(4, 2, seed=2), 0).shape == (4, 0)


@pytest.mark.parametrize("k", [5, -1])
def test_knn_within_batch_k_out_of_range_raises(k: int) -> None:
    with pytest.raises(ValueError, match="k must be in"):
        knn_within_batch(random_features(5, 3, seed=3), k)


def test_knn_within_batch_half_precision_matches_reference() -> None:
    # bfloat16 holds small integers exactly; the distances are computed in float32.
    features = grid_features(12, 3, seed=4)
    expected = brute_force_knn(features, features, 3, query_ids=torch.arange(12))
    torch.testing.assert_close(knn_within_batch(features.bfloat16(), 3), expected)


def test_knn_within_batch_float32_matches_float64_reference() -> None:
    features = random_features(40, 8, seed=5, dtype=torch.float32)
    expected = brute_force_knn(features, features, 4, query_ids=torch.arange(40))
    torch.testing.assert_close(knn_within_batch(features, 4), expected)


# --- knn_dataset ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 10, 4096])
def test_knn_dataset_with_query_ids_matches_brute_force(chunk_size: int) -> None:
    bank = random_features(40, 6, seed=6)
    ids = torch.tensor([7, 0, 39, 12, 5, 21, 33, 18, 2, 26])  # M = 10: chunks 3 and 4 do not divide it
    expected = brute_force_knn(bank[ids], bank, 5, query_ids=ids)
    got = knn_dataset(bank[ids], bank, 5, query_ids=ids, chunk_size=chunk_size)
    torch.testing.assert_close(got, expected)
    assert not (got == ids[:, None]).any()


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_knn_dataset_without_query_ids_matches_brute_force(chunk_size: int) -> None:
    bank, query = random_features(30, 4, seed=7), random_features(11, 4, seed=8)
    for k in (1, 6, 30):  # k = N is allowed when no query is excluded
        got = knn_dataset(query, bank, k, chunk_size=chunk_size)
        torch.testing.assert_close(got, brute_force_knn(query, bank, k))


@pytest.mark.parametrize("chunk_size", [1, 4, 9, 64])
def test_knn_dataset_ties_same_for_every_chunk_size(chunk_size: int) -> None:
    bank = grid_features(50, 2, seed=9)
    ids = torch.arange(0, 50, 3)  # M = 17
    expected = brute_force_knn(bank[ids], bank, 7, query_ids=ids)
    torch.testing.assert_close(
        knn_dataset(bank[ids], bank, 7, query_ids=ids, chunk_size=chunk_size), expected
    )


def test_knn_dataset_query_returns_duplicate_but_never_itself() -> None:
    # Row 2 duplicates row 0: its distance 0 makes it the nearest, but row 0 itself is excluded.
    bank = f64([[0.0, 0.0], [3.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    got = knn_dataset(bank[:1], bank, 2, query_ids=torch.tensor([0]))
    torch.testing.assert_close(got, torch.tensor([[2, 3]]))


def test_knn_dataset_computes_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    rows_seen: list[int] = []
    real_cdist = torch.cdist

    def recording_cdist(a: torch.Tensor, b: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        rows_seen.append(a.shape[0])
        return real_cdist(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "cdist", recording_cdist)
    bank = random_features(25, 3, seed=10)
    knn_dataset(bank, bank, 2, query_ids=torch.arange(25), chunk_size=7)
    assert rows_seen == [7, 7, 7, 4]


def test_knn_dataset_mixed_dtypes_match_reference() -> None:
    bank, query = random_features(20, 4, seed=11), random_features(6, 4, seed=12, dtype=torch.float32)
    got = knn_dataset(query, bank, 3)
    assert got.dtype == torch.long
    torch.testing.assert_close(got, brute_force_knn(query, bank, 3))


def test_knn_dataset_k_equal_to_n_with_query_ids_raises() -> None:
    bank = random_features(6, 2, seed=13)
    with pytest.raises(ValueError, match="k must be in"):
        knn_dataset(bank[:2], bank, 6, query_ids=torch.tensor([0, 1]))


@pytest.mark.parametrize("ids", [[0, 6], [-1, 2]])
def test_knn_dataset_query_ids_out_of_range_raises(ids: list[int]) -> None:
    bank = random_features(6, 2, seed=14)
    with pytest.raises(ValueError, match="query_ids must lie"):
        knn_dataset(bank[:2], bank, 1, query_ids=torch.tensor(ids))


def test_knn_dataset_feature_width_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="features"):
        knn_dataset(random_features(3, 2, seed=15), random_features(5, 3, seed=16), 1)


def test_knn_dataset_nonpositive_chunk_size_raises() -> None:
    bank = random_features(5, 2, seed=17)
    with pytest.raises(ValueError, match="chunk_size"):
        knn_dataset(bank, bank, 1, chunk_size=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_knn_dataset_cuda_matches_cpu() -> None:
    bank = grid_features(3000, 3, seed=18)  # ties everywhere: the tie resolution must agree too
    ids = torch.arange(0, 3000, 7)
    cpu = knn_dataset(bank[ids], bank, 8, query_ids=ids, chunk_size=100)
    gpu = knn_dataset(bank[ids].cuda(), bank.cuda(), 8, query_ids=ids.cuda(), chunk_size=100)
    assert gpu.is_cuda
    torch.testing.assert_close(gpu.cpu(), cpu)


# --- mixing_weights ------------------------------------------------------------------------------------


def test_mixing_weights_hand_computed() -> None:
    lam = mixing_weights(f64([[0.6, 0.5]])[0], f64([[0.2, 0.2], [0.5, 0.0]]))
    torch.testing.assert_close(lam, f64([[0.6, 0.2, 0.2], [0.5, 0.5, 0.0]]))
    torch.testing.assert_close(lam.sum(dim=1), torch.ones(2, dtype=torch.float64))


def test_mixing_weights_clean_sample_dominates_noisy_neighbour() -> None:
    lam = mixing_weights(f64([[0.98]])[0], f64([[0.01]]))
    torch.testing.assert_close(lam, f64([[0.98 / 0.99, 0.01 / 0.99]]))
    assert lam[0, 0] > 0.98


def test_mixing_weights_all_zero_is_uniform_not_nan() -> None:
    lam = mixing_weights(torch.zeros(2), torch.zeros(2, 3))
    assert torch.isfinite(lam).all()
    torch.testing.assert_close(lam, torch.full((2, 4), 0.25))


def test_mixing_weights_no_neighbours_is_all_self() -> None:
    torch.testing.assert_close(
        mixing_weights(f64([[0.3, 0.0]])[0], torch.zeros(2, 0)), torch.ones(2, 1, dtype=torch.float64)
    )


def test_mixing_weights_negative_raises() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mixing_weights(torch.tensor([0.5]), torch.tensor([[-0.1]]))


def test_mixing_weights_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="expected w_self"):
        mixing_weights(torch.rand(3), torch.rand(2, 1))


weight_rows = st.integers(1, 5).flatmap(
    lambda k: st.lists(
        st.lists(st.sampled_from([0.0, 1e-12]) | st.floats(0.0, 1.0), min_size=k, max_size=k),
        min_size=1,
        max_size=6,
    )
)


@settings(max_examples=100, deadline=None)
@given(rows=weight_rows)
def test_mixing_weights_property_rows_on_simplex_and_ordered_like_w(rows: list[list[float]]) -> None:
    w = f64(rows)
    lam = mixing_weights(w[:, 0], w[:, 1:])
    assert (lam >= 0).all()
    torch.testing.assert_close(lam.sum(dim=1), torch.ones(len(rows), dtype=torch.float64))
    # λ is non-decreasing in w within a row: the cleaner member always weighs at least as much.
    for w_row, lam_row in zip(w.tolist(), lam.tolist(), strict=True):
        for a in range(len(w_row)):
            for b in range(len(w_row)):
                if w_row[a] > w_row[b]:
                    assert lam_row[a] >= lam_row[b]


# --- synthesize ----------------------------------------------------------------------------------------


def test_synthesize_hand_computed() -> None:
    x = f64([[0.0], [10.0], [20.0]])
    targets = f64([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    neighbours = torch.tensor([[1], [2], [0]])
    weights = f64([[0.75, 0.25], [0.5, 0.5], [1.0, 0.0]])
    x_mixed, t_mixed = synthesize(x, targets, neighbours, weights)
    torch.testing.assert_close(x_mixed, f64([[2.5], [15.0], [20.0]]))
    torch.testing.assert_close(t_mixed, f64([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]))


def test_synthesize_matches_explicit_loop() -> None:
    gen = torch.Generator().manual_seed(19)
    batch, num_classes, k_minus_1 = 6, 4, 3
    x = torch.randn(batch, 3, 4, 4, generator=gen, dtype=torch.float64)
    targets = torch.softmax(torch.randn(batch, num_classes, generator=gen, dtype=torch.float64), dim=1)
    neighbours = knn_within_batch(x.flatten(1), k_minus_1)
    w = torch.rand(batch, generator=gen, dtype=torch.float64)
    weights = mixing_weights(w, w[neighbours])
    x_mixed, t_mixed = synthesize(x, targets, neighbours, weights)

    x_loop, t_loop = torch.zeros_like(x), torch.zeros_like(targets)
    for b in range(batch):
        for k, j in enumerate([b, *neighbours[b].tolist()]):
            x_loop[b] += weights[b, k] * x[j]
            t_loop[b] += weights[b, k] * targets[j]
    torch.testing.assert_close(x_mixed, x_loop)
    torch.testing.assert_close(t_mixed, t_loop)


def test_synthesize_clean_sample_dominates_its_synthetic_sample() -> None:
    # Sample 0 is clean (w = 1, target class 0); its neighbour 1 is noisy (w = 0, target class 1).
    x = f64([[1.0, 1.0], [9.0, -9.0]])
    targets = f64([[1.0, 0.0], [0.0, 1.0]])
    neighbours = torch.tensor([[1], [0]])
    w = f64([[1.0, 0.0]])[0]
    x_mixed, t_mixed = synthesize(x, targets, neighbours, mixing_weights(w, w[neighbours]))
    # Both groups are {0, 1}: each synthetic sample is the clean member, up to ~1e-10.
    torch.testing.assert_close(x_mixed, x[[0, 0]])
    torch.testing.assert_close(t_mixed, f64([[1.0, 0.0], [1.0, 0.0]]))


def test_synthesize_neighbours_from_pool_beyond_batch() -> None:
    # Dataset-wide mode: the batch (rows 0-1) is followed by neighbours fetched from the dataset.
    x = f64([[0.0], [1.0], [4.0], [8.0]])
    targets = f64([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    x_mixed, t_mixed = synthesize(x, targets, torch.tensor([[2], [3]]), f64([[0.5, 0.5], [0.75, 0.25]]))
    torch.testing.assert_close(x_mixed, f64([[2.0], [2.75]]))
    torch.testing.assert_close(t_mixed, f64([[0.5, 0.5], [0.75, 0.25]]))


def test_synthesize_gradient_flows_to_x() -> None:
    x = f64([[1.0], [2.0]]).requires_grad_()
    x_mixed, _ = synthesize(x, f64([[1.0], [1.0]]), torch.tensor([[1], [0]]), f64([[0.75, 0.25], [0.5, 0.5]]))
    x_mixed.sum().backward()
    torch.testing.assert_close(x.grad, f64([[1.25], [0.75]]))


def test_synthesize_neighbour_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match="neighbour_idx must lie"):
        synthesize(torch.zeros(2, 3), torch.ones(2, 1), torch.tensor([[1], [2]]), torch.ones(2, 2) / 2)


def test_synthesize_weights_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="weights must have shape"):
        synthesize(torch.zeros(2, 3), torch.ones(2, 1), torch.tensor([[1], [0]]), torch.ones(2, 3) / 3)


def test_synthesize_integer_inputs_raise() -> None:
    with pytest.raises(ValueError, match="floating"):
        synthesize(
            torch.zeros(2, 3, dtype=torch.uint8), torch.ones(2, 1), torch.tensor([[1], [0]]), torch.ones(2, 2)
        )


@settings(max_examples=100, deadline=None)
@given(
    batch=st.integers(2, 6),
    num_classes=st.integers(2, 5),
    k_minus_1=st.integers(0, 3),
    seed=st.integers(0, 2**31 - 1),
    zero_weights=st.booleans(),
)
def test_synthesize_property_targets_stay_on_simplex(
    batch: int, num_classes: int, k_minus_1: int, seed: int, zero_weights: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    k_minus_1 = min(k_minus_1, batch - 1)
    x = torch.randn(batch, 3, generator=gen, dtype=torch.float64)
    # Soft targets with some exact zeros, as one-hot initial targets have.
    raw = torch.rand(batch, num_classes, generator=gen, dtype=torch.float64)
    targets = torch.where(raw > 0.5, 0.0, raw)
    targets[:, 0] = raw[:, 0] + 1e-3  # keep every row's mass positive
    targets = targets / targets.sum(dim=1, keepdim=True)
    w = torch.zeros(batch, dtype=torch.float64) if zero_weights else torch.rand(batch, generator=gen).double()
    neighbours = knn_within_batch(x, k_minus_1)
    _, t_mixed = synthesize(x, targets, neighbours, mixing_weights(w, w[neighbours]))
    assert (t_mixed >= 0).all()
    torch.testing.assert_close(t_mixed.sum(dim=1), torch.ones(batch, dtype=torch.float64))


# --- soft_target_update ----------------------------------------------------------------------------------


def test_soft_target_update_hand_computed() -> None:
    targets = f64([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    before = targets.clone()
    probs = f64([[0.2, 0.8], [0.5, 0.5]])
    updated = soft_target_update(targets, probs, torch.tensor([2, 0]), momentum=0.9)
    # Row 2: 0.9·(1, 0) + 0.1·(0.2, 0.8); row 0: 0.9·(1, 0) + 0.1·(0.5, 0.5); row 1 untouched.
    torch.testing.assert_close(updated, f64([[0.95, 0.05], [0.0, 1.0], [0.92, 0.08]]))
    torch.testing.assert_close(targets, before)  # pure: the input is not modified


@pytest.mark.parametrize(
    ("momentum", "expected_row"), [(1.0, [1.0, 0.0]), (0.0, [0.3, 0.7]), (0.5, [0.65, 0.35])]
)
def test_soft_target_update_momentum_extremes(momentum: float, expected_row: list[float]) -> None:
    updated = soft_target_update(f64([[1.0, 0.0]]), f64([[0.3, 0.7]]), torch.tensor([0]), momentum=momentum)
    torch.testing.assert_close(updated, f64([expected_row]))


def test_soft_target_update_detaches_probs() -> None:
    probs = f64([[0.3, 0.7]]).requires_grad_()
    assert not soft_target_update(f64([[1.0, 0.0]]), probs, torch.tensor([0])).requires_grad


def test_soft_target_update_repeated_ids_raise() -> None:
    with pytest.raises(ValueError, match="repeat"):
        soft_target_update(torch.eye(3), torch.eye(3)[:2], torch.tensor([1, 1]))


def test_soft_target_update_momentum_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match="momentum"):
        soft_target_update(torch.eye(3), torch.eye(3)[:1], torch.tensor([0]), momentum=1.5)


def test_soft_target_update_id_out_of_range_raises() -> None:
    with pytest.raises(ValueError, match="idx must lie"):
        soft_target_update(torch.eye(3), torch.eye(3)[:1], torch.tensor([3]))


# --- schedule -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch", "expected"),
    [
        (0, False),
        (50, False),
        (59, False),
        (60, True),
        (61, False),
        (65, False),
        (69, False),
        (70, True),
        (290, True),
    ],
)
def test_is_correction_epoch_every_tenth_from_start(epoch: int, expected: bool) -> None:
    assert is_correction_epoch(epoch, start_epoch=60) is expected


def test_is_correction_epoch_custom_period() -> None:
    assert [e for e in range(12) if is_correction_epoch(e, start_epoch=2, period=3)] == [2, 5, 8, 11]


def test_is_correction_epoch_nonpositive_period_raises() -> None:
    with pytest.raises(ValueError, match="period"):
        is_correction_epoch(10, start_epoch=0, period=0)


@pytest.mark.parametrize(
    ("published_epoch", "published_budget", "budget", "expected"),
    [
        (60, 300, 300, 60),
        (60, 300, 30, 6),
        (60, 300, 25, 5),
        (60, 300, 7, 1),  # 1.4 rounds down
        (60, 300, 8, 2),  # 1.6 rounds up
        (1, 2, 1, 1),  # 0.5: halves round up (Python's round() would give 0)
        (60, 300, 0, 0),
        (400, 300, 10, 10),  # beyond the published budget: clamped to ours
        (-5, 300, 10, 0),  # clamped at 0
    ],
)
def test_scaled_epoch_rounds_and_clamps(
    published_epoch: int, published_budget: int, budget: int, expected: int
) -> None:
    assert scaled_epoch(published_epoch, published_budget, budget) == expected


@pytest.mark.parametrize(("published_budget", "budget"), [(0, 10), (300, -1)])
def test_scaled_epoch_invalid_budget_raises(published_budget: int, budget: int) -> None:
    with pytest.raises(ValueError, match="budget"):
        scaled_epoch(60, published_budget, budget)


# --- soft_cross_entropy -----------------------------------------------------------------------------------


def test_soft_cross_entropy_hand_computed() -> None:
    # Row 0: softmax(0, ln 3) = (¼, ¾), target (½, ½): −½(ln ¼ + ln ¾). Row 1: uniform logits, one-hot: ln 2.
    logits = f64([[0.0, math.log(3.0)], [5.0, 5.0]])
    targets = f64([[0.5, 0.5], [0.0, 1.0]])
    row0 = -0.5 * (math.log(0.25) + math.log(0.75))
    expected = torch.tensor((row0 + math.log(2.0)) / 2, dtype=torch.float64)
    torch.testing.assert_close(soft_cross_entropy(logits, targets), expected)


def test_soft_cross_entropy_one_hot_equals_cross_entropy() -> None:
    gen = torch.Generator().manual_seed(20)
    logits = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 5, (8,), generator=gen)
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(labels, 5).double()), expected)


def test_soft_cross_entropy_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="logits and targets"):
        soft_cross_entropy(torch.zeros(2, 3), torch.zeros(2, 4))
