"""Tests for labelsieve.maths.grip: JS, soft labels, purification and the loss on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from labelsieve.maths import chunks
from labelsieve.maths.grip import (
    CLEAN,
    DISCARDED,
    REVISED,
    SoftLabelState,
    accumulate,
    grip_loss,
    js_divergence,
    js_threshold,
    purification_active,
    purify_batch,
    update_soft_labels,
)


def f64(rows: list[list[float]] | list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def js_reference(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Float64 JS in bits with the convention 0·log(0/x) = 0, one row at a time."""

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        support = a > 0
        return float(np.sum(a[support] * np.log2(a[support] / b[support])))

    out = []
    for a, b in zip(p, q, strict=True):
        m = 0.5 * (a + b)
        out.append(0.5 * kl(a, m) + 0.5 * kl(b, m))
    return np.array(out)


def _normalise(row: list[float]) -> list[float]:
    total = sum(row)
    return [v / total for v in row] if total > 0 else [0.0] * len(row)


# Rows of probabilities that may contain exact zeros (and, rarely, be all zero).
def prob_pairs(max_classes: int = 6) -> st.SearchStrategy[tuple[list[list[float]], list[list[float]]]]:
    entry = st.one_of(st.just(0.0), st.floats(1e-6, 1.0))
    return st.integers(2, max_classes).flatmap(
        lambda c: st.integers(1, 5).flatmap(
            lambda n: st.tuples(
                st.lists(st.lists(entry, min_size=c, max_size=c).map(_normalise), min_size=n, max_size=n),
                st.lists(st.lists(entry, min_size=c, max_size=c).map(_normalise), min_size=n, max_size=n),
            )
        )
    )


# --- js_divergence ------------------------------------------------------------------------------------


def test_js_divergence_hand_computed() -> None:
    # p = (1, 0), q = (½, ½): m = (¾, ¼); KL(p‖m) = log2(4/3), KL(q‖m) = ½·log2(2/3) + ½·log2(2).
    expected = 0.5 * (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5)
    assert js_divergence(f64([[1.0, 0.0]]), f64([[0.5, 0.5]])).item() == pytest.approx(expected, rel=1e-12)


def test_js_divergence_matches_numpy_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(20, 7, generator=gen, dtype=torch.float64)
    # Far from uniform, but no entry under the 1e-8 floor, which is the one place the two may differ.
    q = torch.rand(20, 7, generator=gen, dtype=torch.float64) ** 4 + 1e-6
    p, q = p / p.sum(1, keepdim=True), q / q.sum(1, keepdim=True)
    p[3, :4] = 0.0  # exact zeros in the support
    p[3] /= p[3].sum()
    expected = torch.from_numpy(js_reference(p.numpy(), q.numpy()))
    torch.testing.assert_close(js_divergence(p, q), expected, rtol=1e-9, atol=1e-12)


def test_js_divergence_identical_rows_are_zero() -> None:
    p = f64([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    torch.testing.assert_close(js_divergence(p, p.clone()), torch.zeros(3, dtype=torch.float64))


def test_js_divergence_disjoint_onehots_are_one() -> None:
    p = f64([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    q = f64([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(js_divergence(p, q), torch.ones(2, dtype=torch.float64))
    # Disjoint supports in general, not only one-hots.
    torch.testing.assert_close(js_divergence(f64([[0.5, 0.5, 0.0]]), f64([[0.0, 0.0, 1.0]])), f64([1.0]))


def test_js_divergence_zero_rows_give_half_or_zero_without_nan() -> None:
    p = f64([[0.0, 0.0, 0.0], [0.2, 0.3, 0.5], [0.0, 0.0, 0.0]])
    q = f64([[0.1, 0.6, 0.3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    d = js_divergence(p, q)
    assert not torch.isnan(d).any()
    torch.testing.assert_close(d, f64([0.5, 0.5, 0.0]))
    torch.testing.assert_close(d, torch.from_numpy(js_reference(p.numpy(), q.numpy())))


def test_js_divergence_float32_onehots_have_no_nan_and_finite_grad() -> None:
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    q = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    d = js_divergence(p, q)
    d.sum().backward()
    torch.testing.assert_close(d.detach(), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(p.grad).all()


def test_js_divergence_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="share one"):
        js_divergence(torch.rand(2, 3), torch.rand(2, 4))
    with pytest.raises(ValueError, match="shape"):
        js_divergence(torch.rand(3), torch.rand(3))


def test_js_divergence_chunked_equals_unchunked(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(1)
    # 997 rows × 7 classes: seven chunks of 142 rows (994 values each) and a ragged one.
    p = torch.randn(997, 7, generator=gen, dtype=torch.float64).mul(3).softmax(dim=1)
    q = torch.randn(997, 7, generator=gen, dtype=torch.float64).mul(3).softmax(dim=1)
    p[5] = torch.nn.functional.one_hot(torch.tensor(2), 7)  # exact zeros hit the eps floor
    whole = js_divergence(p, q)
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 1000)
    torch.testing.assert_close(js_divergence(p, q), whole, rtol=1e-12, atol=0)


def test_js_divergence_chunked_passes_gradients(monkeypatch) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(50, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    q = torch.rand(50, 4, generator=gen, dtype=torch.float64).softmax(dim=1)

    def grad() -> torch.Tensor:
        (g,) = torch.autograd.grad(js_divergence(logits.softmax(dim=1), q).sum(), logits)
        return g

    whole = grad()
    monkeypatch.setattr(chunks, "CHUNK_VALUES", 12)  # three rows per chunk
    torch.testing.assert_close(grad(), whole, rtol=1e-12, atol=1e-15)


@settings(max_examples=200, deadline=None)
@given(pair=prob_pairs())
def test_js_divergence_property_bounded_symmetric_and_matches_reference(
    pair: tuple[list[list[float]], list[list[float]]],
) -> None:
    p, q = f64(pair[0]), f64(pair[1])
    d = js_divergence(p, q)
    assert ((d >= 0) & (d <= 1)).all()
    torch.testing.assert_close(d, js_divergence(q, p), rtol=0, atol=1e-12)
    torch.testing.assert_close(js_divergence(p, p), torch.zeros_like(d), rtol=0, atol=1e-12)
    # The eps floor changes entries below 1e-8 only; they move the result by far less than 1e-6.
    torch.testing.assert_close(d, torch.from_numpy(js_reference(p.numpy(), q.numpy())), rtol=0, atol=1e-6)


# --- accumulate ---------------------------------------------------------------------------------------


def test_accumulate_counts_only_samples_whose_argmax_equals_label() -> None:
    probs = f64(
        [
            [0.7, 0.2, 0.1],  # label 0, argmax 0: counted
            [0.7, 0.2, 0.1],  # label 1, argmax 0: not counted
            [0.1, 0.6, 0.3],  # label 1, argmax 1: counted
            [0.2, 0.3, 0.5],  # label 2, argmax 2: counted
            [0.2, 0.3, 0.5],  # label 0, argmax 2: not counted
        ]
    )
    labels = torch.tensor([0, 1, 1, 2, 0])
    G, n = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)
    counted = accumulate(G, n, probs, labels)
    assert counted.tolist() == [True, False, True, True, False]
    torch.testing.assert_close(G, f64([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5]]))
    assert n.tolist() == [1, 1, 1]


def test_accumulate_sums_repeated_classes_across_calls() -> None:
    # Two agreeing samples of class 0 in one batch must both land (a naive G[idx] += p keeps one).
    G, n = torch.zeros(2, 2, dtype=torch.float64), torch.zeros(2)
    accumulate(G, n, f64([[0.9, 0.1], [0.6, 0.4]]), torch.tensor([0, 0]))
    accumulate(G, n, f64([[0.8, 0.2], [0.3, 0.7]]), torch.tensor([0, 1]))
    torch.testing.assert_close(G, f64([[2.3, 0.7], [0.3, 0.7]]))
    torch.testing.assert_close(n, torch.tensor([3.0, 1.0]))


def test_accumulate_detaches_probs() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    probs = logits.softmax(dim=1)
    G, n = torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.int64)
    accumulate(G, n, probs, probs.argmax(dim=1))
    assert not G.requires_grad
    assert int(n.sum()) == 4


def test_accumulate_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="expected G"):
        accumulate(torch.zeros(3, 3), torch.zeros(2), torch.rand(2, 3), torch.tensor([0, 1]))


# --- update_soft_labels -------------------------------------------------------------------------------

S_OLD = f64([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [0.1, 0.1, 0.8]])
# Class 0: two samples (0.8, 0.1, 0.1) + (0.6, 0.2, 0.2); class 1: none; class 2: one (0.1, 0.2, 0.7).
G_HAND = f64([[1.4, 0.3, 0.3], [0.0, 0.0, 0.0], [0.1, 0.2, 0.7]])
N_HAND = torch.tensor([2, 0, 1])


def test_update_soft_labels_moving_average_with_momentum() -> None:
    S = update_soft_labels(S_OLD, G_HAND, N_HAND, momentum=0.5, first=False)
    # S_new[0] = (0.7, 0.15, 0.15); ½·S_new + ½·S_old; class 1 keeps its old row.
    expected = f64([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.1, 0.15, 0.75]])
    torch.testing.assert_close(S, expected)


def test_update_soft_labels_momentum_weights_the_old_row() -> None:
    S = update_soft_labels(S_OLD, G_HAND, N_HAND, momentum=0.25, first=False)
    # ¾·(0.7, 0.15, 0.15) + ¼·(0.5, 0.25, 0.25) = (0.65, 0.175, 0.175).
    torch.testing.assert_close(S[0], f64([0.65, 0.175, 0.175]))
    torch.testing.assert_close(update_soft_labels(S_OLD, G_HAND, N_HAND, momentum=1.0, first=False), S_OLD)


def test_update_soft_labels_first_update_is_s_new_alone() -> None:
    S = update_soft_labels(S_OLD, G_HAND, N_HAND, momentum=0.5, first=True)
    # S_old is ignored; the empty class 1 gets onehot(1).
    expected = f64([[0.7, 0.15, 0.15], [0.0, 1.0, 0.0], [0.1, 0.2, 0.7]])
    torch.testing.assert_close(S, expected)
    torch.testing.assert_close(update_soft_labels(None, G_HAND, N_HAND, first=True), expected)


def test_update_soft_labels_renormalises_rows() -> None:
    # G[0]/n[0] = (1, 0.5, 0.5) sums to 2 (rows that were not probabilities): renormalised to 1.
    G = f64([[2.0, 1.0, 1.0], [0.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    S = update_soft_labels(None, G, torch.tensor([2, 4, 0]), first=True)
    torch.testing.assert_close(S, f64([[0.5, 0.25, 0.25], [0.0, 0.75, 0.25], [0.0, 0.0, 1.0]]))


def test_update_soft_labels_empty_class_keeps_old_row_not_decayed() -> None:
    S = update_soft_labels(S_OLD, torch.zeros(3, 3, dtype=torch.float64), torch.zeros(3), first=False)
    torch.testing.assert_close(S, S_OLD)


def test_update_soft_labels_missing_old_after_first_raises() -> None:
    with pytest.raises(ValueError, match="S_old is required"):
        update_soft_labels(None, G_HAND, N_HAND, first=False)
    with pytest.raises(ValueError, match="momentum"):
        update_soft_labels(S_OLD, G_HAND, N_HAND, momentum=1.5, first=False)


@settings(max_examples=100, deadline=None)
@given(
    num_classes=st.integers(2, 6),
    seed=st.integers(0, 2**16),
    momentum=st.floats(0.0, 1.0),
    first=st.booleans(),
)
def test_update_soft_labels_property_rows_sum_to_one(
    num_classes: int, seed: int, momentum: float, first: bool
) -> None:
    gen = torch.Generator().manual_seed(seed)
    old = torch.rand(num_classes, num_classes, generator=gen, dtype=torch.float64)
    old /= old.sum(dim=1, keepdim=True)
    probs = torch.rand(30, num_classes, generator=gen, dtype=torch.float64) ** 3
    probs /= probs.sum(dim=1, keepdim=True)
    labels = torch.randint(num_classes, (30,), generator=gen)
    G, n = torch.zeros(num_classes, num_classes, dtype=torch.float64), torch.zeros(num_classes)
    accumulate(G, n, probs, labels)
    S = update_soft_labels(old, G, n, momentum=momentum, first=first)
    torch.testing.assert_close(S.sum(dim=1), torch.ones(num_classes, dtype=torch.float64))
    assert (S >= 0).all()
    empty = n == 0
    reference = torch.eye(num_classes, dtype=torch.float64) if first else old
    torch.testing.assert_close(S[empty], reference[empty])


def test_soft_label_state_two_epochs_then_reset() -> None:
    state = SoftLabelState.create(2, dtype=torch.float64)
    assert not state.initialised
    state.accumulate(f64([[0.8, 0.2], [0.4, 0.6]]), torch.tensor([0, 1]))
    state.end_epoch()
    assert state.initialised
    torch.testing.assert_close(state.soft_labels, f64([[0.8, 0.2], [0.4, 0.6]]))
    assert state.accum.abs().sum().item() == 0 and state.counts.sum().item() == 0
    state.accumulate(f64([[0.6, 0.4]]), torch.tensor([0]))  # class 1 gets nothing this epoch
    state.end_epoch(momentum=0.5)
    torch.testing.assert_close(state.soft_labels, f64([[0.7, 0.3], [0.4, 0.6]]))


# --- threshold, warm-up -------------------------------------------------------------------------------


def test_js_threshold_hand_case_mask_and_nan_are_skipped() -> None:
    memory = f64([0.1, 0.2, 0.3, float("nan"), 0.9])
    valid = torch.tensor([True, True, True, True, False])
    # Over (0.1, 0.2, 0.3): mean 0.2, population std √(0.02/3).
    expected = 0.2 + 0.5 * math.sqrt(0.02 / 3)
    assert js_threshold(memory, valid_mask=valid) == pytest.approx(expected, rel=1e-12)
    assert js_threshold(memory, alpha=2.0, valid_mask=valid) == pytest.approx(0.2 + 2 * math.sqrt(0.02 / 3))


def test_js_threshold_without_mask_uses_all_finite_entries() -> None:
    assert js_threshold(f64([0.0, 1.0, float("nan")]), alpha=1.0) == pytest.approx(1.0)  # 0.5 + 0.5


def test_js_threshold_single_entry_and_empty() -> None:
    assert js_threshold(f64([0.3, float("nan")])) == pytest.approx(0.3)
    assert js_threshold(f64([0.3]), valid_mask=torch.tensor([False])) == math.inf


def test_purification_active_from_epoch_warm_minus_one() -> None:
    assert [purification_active(e) for e in range(6)] == [False] * 4 + [True] * 2
    assert purification_active(0, warmup_epochs=1)


# --- purify_batch -------------------------------------------------------------------------------------

S_HAND = f64([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])


def test_purify_batch_three_way_decision_hand_made() -> None:
    probs = f64(
        [
            [0.8, 0.1, 0.1],  # label 0, equals S[0]: d = 0, clean
            [0.1, 0.8, 0.1],  # label 0, equals S[1]: d ≈ 0.45 > thr, JS to S[1] = 0 → revised to 1
            [0.34, 0.33, 0.33],  # label 0, flat: d ≈ 0.19 > thr, ŷ = 0 and JS still > τ → discarded
            [0.05, 0.05, 0.9],  # label 1, close to S[2]: revised to 2
            [0.1, 0.1, 0.8],  # label 2: clean
            [0.1, 0.1, 0.8],  # label 0, equals S[2]: d ≈ 0.45, JS to S[2] = 0 → revised to 2
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 2, 0])
    decision, new_labels, d = purify_batch(probs, labels, S_HAND, threshold=0.1)
    assert decision.dtype == torch.int8
    assert decision.tolist() == [CLEAN, REVISED, DISCARDED, REVISED, CLEAN, REVISED]
    assert new_labels.tolist() == [0, 1, 0, 2, 2, 2]
    expected_d = js_reference(probs.numpy(), S_HAND[labels].numpy())
    torch.testing.assert_close(d, torch.from_numpy(expected_d))
    assert js_reference(probs[3:4].numpy(), S_HAND[2:3].numpy())[0] < 0.04  # the revision really is close


def test_purify_batch_threshold_is_inclusive_and_tau_decides() -> None:
    probs = f64([[0.34, 0.33, 0.33]])
    d = js_divergence(probs, S_HAND[:1]).item()
    decision, _, _ = purify_batch(probs, torch.tensor([0]), S_HAND, threshold=d)
    assert decision.tolist() == [CLEAN]
    # Just above the threshold: the same sample is revised iff τ admits JS to S[argmax] = d.
    decision, labels, _ = purify_batch(probs, torch.tensor([0]), S_HAND, threshold=d / 2, relabel_tau=d)
    assert decision.tolist() == [REVISED] and labels.tolist() == [0]
    decision, _, _ = purify_batch(probs, torch.tensor([0]), S_HAND, threshold=d / 2, relabel_tau=d / 2)
    assert decision.tolist() == [DISCARDED]


def test_purify_batch_infinite_threshold_marks_all_clean() -> None:
    probs = torch.softmax(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    decision, new_labels, _ = purify_batch(probs, labels, S_HAND.float(), threshold=math.inf)
    assert (decision == CLEAN).all()
    assert torch.equal(new_labels, labels)


def test_purify_batch_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="soft_labels"):
        purify_batch(torch.rand(2, 3), torch.tensor([0, 1]), torch.eye(4), threshold=0.1)
    with pytest.raises(ValueError, match="NaN"):
        purify_batch(torch.rand(2, 3), torch.tensor([0, 1]), torch.eye(3), threshold=float("nan"))


# --- grip_loss ----------------------------------------------------------------------------------------

S_LOSS = f64([[0.9, 0.1], [0.2, 0.8]])
LOGITS = f64([[math.log(3.0), 0.0], [0.0, 0.0]])  # p = (¾, ¼) and (½, ½)
NE_HAND = 0.5 * ((0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + math.log(0.5))


def test_grip_loss_hand_computed_with_one_discarded_sample() -> None:
    out = grip_loss(LOGITS, torch.tensor([0, 1]), torch.tensor([True, False]), S_LOSS, w=0.5, gamma=0.5)
    ce = -math.log(0.75)
    soft = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
    assert out["ce"].item() == pytest.approx(ce, rel=1e-12)
    assert out["soft"].item() == pytest.approx(soft, rel=1e-12)
    assert out["ne"].item() == pytest.approx(NE_HAND, rel=1e-12)
    assert out["total"].item() == pytest.approx(0.5 * ce + 0.5 * soft + 0.5 * NE_HAND, rel=1e-12)


def test_grip_loss_averages_over_kept_set_with_weights() -> None:
    out = grip_loss(LOGITS, torch.tensor([0, 1]), torch.tensor([True, True]), S_LOSS, w=0.2, gamma=1.0)
    ce = 0.5 * (-math.log(0.75) - math.log(0.5))
    soft = 0.5 * (-(0.9 * math.log(0.75) + 0.1 * math.log(0.25)) - (0.2 + 0.8) * math.log(0.5))
    assert out["ce"].item() == pytest.approx(ce, rel=1e-12)
    assert out["soft"].item() == pytest.approx(soft, rel=1e-12)
    assert out["total"].item() == pytest.approx(0.8 * ce + 0.2 * soft + NE_HAND, rel=1e-12)


def test_grip_loss_matches_numpy_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(16, 5, generator=gen, dtype=torch.float64) * 3
    labels = torch.randint(5, (16,), generator=gen)
    keep = torch.rand(16, generator=gen) < 0.6
    S = torch.rand(5, 5, generator=gen, dtype=torch.float64)
    S /= S.sum(dim=1, keepdim=True)
    out = grip_loss(logits, labels, keep, S, w=0.3, gamma=0.7)
    z, y, k, s = logits.numpy(), labels.numpy(), keep.numpy(), S.numpy()
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    per_sample = 0.7 * -logp[np.arange(16), y] + 0.3 * -(s[y] * logp).sum(axis=1)
    expected = per_sample[k].sum() / k.sum() + 0.7 * (np.exp(logp) * logp).sum(axis=1).mean()
    assert out["total"].item() == pytest.approx(expected, rel=1e-12)


def test_grip_loss_empty_kept_set_is_ne_only_and_finite() -> None:
    logits = LOGITS.clone().requires_grad_(True)
    out = grip_loss(logits, torch.tensor([0, 1]), torch.tensor([False, False]), S_LOSS, gamma=0.5)
    assert out["ce"].item() == 0.0 and out["soft"].item() == 0.0
    assert out["total"].item() == pytest.approx(0.5 * NE_HAND, rel=1e-12)
    out["total"].backward()
    assert torch.isfinite(logits.grad).all()


def test_grip_loss_discarded_sample_gets_only_the_entropy_gradient() -> None:
    labels, keep = torch.tensor([0, 1]), torch.tensor([True, False])
    logits = LOGITS.clone().requires_grad_(True)
    grip_loss(logits, labels, keep, S_LOSS, gamma=0.5)["total"].backward()
    ne_only = LOGITS.clone().requires_grad_(True)
    grip_loss(ne_only, labels, torch.tensor([False, False]), S_LOSS, gamma=0.5)["total"].backward()
    torch.testing.assert_close(logits.grad[1], ne_only.grad[1])
    assert not torch.allclose(logits.grad[0], ne_only.grad[0])


def test_grip_loss_positive_gamma_rewards_entropy() -> None:
    # Same kept part, flatter predictions → lower total when γ > 0 (NE ≤ 0, minimised).
    keep = torch.tensor([False, False])
    sharp = grip_loss(f64([[5.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 1]), keep, S_LOSS)["total"]
    flat = grip_loss(f64([[0.5, 0.0], [0.0, 0.5]]), torch.tensor([0, 1]), keep, S_LOSS)["total"]
    assert flat.item() < sharp.item() < 0.0


def test_grip_loss_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="keep"):
        grip_loss(LOGITS, torch.tensor([0, 1]), torch.tensor([True]), S_LOSS)
    with pytest.raises(ValueError, match="w must"):
        grip_loss(LOGITS, torch.tensor([0, 1]), torch.tensor([True, True]), S_LOSS, w=1.5)


def test_js_memory_threshold_equals_js_threshold_after_overwrites():
    from labelsieve.maths.grip import JsMemory

    g = torch.Generator().manual_seed(0)
    memory = JsMemory.create(50)
    assert memory.threshold() == math.inf
    for _ in range(6):  # batches that overwrite earlier entries
        idx = torch.randperm(50, generator=g)[:17]
        memory.write(idx, torch.rand(17, generator=g))
        for alpha in (0.0, 0.5, 2.0):
            assert memory.threshold(alpha) == pytest.approx(
                js_threshold(memory.values, alpha=alpha), rel=1e-9
            )
    assert int(memory.sums[0]) == int(torch.isfinite(memory.values).sum())
