"""Tests for labelsieve.maths.mixmatch: every loss term on tiny hand-computed tensors, plus properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from labelsieve.maths.mixmatch import (
    co_guess,
    co_refine,
    confidence_penalty,
    lambda_u_ramp,
    mix,
    mixmatch_losses,
    mixup_warmup_loss,
    sample_lambda,
    sharpen,
)


def f64(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


prob_rows = st.lists(
    st.lists(st.floats(0.01, 1.0), min_size=2, max_size=6).map(lambda r: [v / sum(r) for v in r]),
    min_size=1,
    max_size=5,
).filter(lambda rows: len({len(r) for r in rows}) == 1)


# --- sharpen / co-guess / co-refine ------------------------------------------------------------------


def test_sharpen_hand_computed() -> None:
    # (0.6², 0.4²) = (0.36, 0.16), normalised by 0.52 → (9/13, 4/13).
    torch.testing.assert_close(sharpen(f64([[0.6, 0.4]]), T=0.5), f64([[9 / 13, 4 / 13]]))


def test_sharpen_temperature_one_is_identity() -> None:
    p = f64([[0.2, 0.3, 0.5], [0.7, 0.2, 0.1]])
    torch.testing.assert_close(sharpen(p, 1.0), p)


def test_sharpen_nonpositive_temperature_raises() -> None:
    with pytest.raises(ValueError):
        sharpen(f64([[0.5, 0.5]]), T=0.0)


@settings(max_examples=100, deadline=None)
@given(rows=prob_rows, T=st.floats(0.1, 1.0))
def test_sharpen_property_rows_sum_to_one_and_keep_argmax(rows: list[list[float]], T: float) -> None:
    p = f64(rows)
    q = sharpen(p, T)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(len(rows), dtype=torch.float64))
    # The set of maximal entries is preserved and the top probability never decreases for T ≤ 1.
    assert torch.equal(p == p.max(dim=1, keepdim=True).values, q == q.max(dim=1, keepdim=True).values)
    assert (q.max(dim=1).values >= p.max(dim=1).values - 1e-12).all()


def test_co_guess_hand_computed() -> None:
    # Mean of the four = (0.65, 0.35); sharpened with T = ½: (0.4225, 0.1225) / 0.545.
    q = co_guess(f64([[0.8, 0.2]]), f64([[0.6, 0.4]]), f64([[0.7, 0.3]]), f64([[0.5, 0.5]]), T=0.5)
    torch.testing.assert_close(q, f64([[0.4225 / 0.545, 0.1225 / 0.545]]))


def test_co_guess_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        co_guess(torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 3), torch.rand(2, 4), T=0.5)


def test_co_refine_hand_computed() -> None:
    probs_v1 = f64([[0.2, 0.8], [0.2, 0.8], [0.2, 0.8]])
    probs_v2 = f64([[0.4, 0.6], [0.4, 0.6], [0.4, 0.6]])  # p̄ = (0.3, 0.7) for every row
    labels = torch.tensor([0, 1, 0])
    w = f64([[0.5, 1.0, 0.0]])[0]
    refined = co_refine(probs_v1, probs_v2, labels, w, num_classes=2, T=0.5)
    expected = f64(
        [
            [0.4225 / 0.545, 0.1225 / 0.545],  # ½·(1, 0) + ½·(0.3, 0.7) = (0.65, 0.35), sharpened
            [0.0, 1.0],  # w = 1: the given label alone
            [0.09 / 0.58, 0.49 / 0.58],  # w = 0: the prediction alone, (0.3², 0.7²) / 0.58
        ]
    )
    torch.testing.assert_close(refined, expected)


def test_co_refine_wrong_num_classes_raises() -> None:
    with pytest.raises(ValueError):
        co_refine(
            torch.rand(2, 3), torch.rand(2, 3), torch.tensor([0, 1]), torch.rand(2), num_classes=4, T=0.5
        )


# --- sample_lambda / mix ---------------------------------------------------------------------------------


def test_sample_lambda_is_reproducible_from_generator() -> None:
    first = [sample_lambda(4.0, torch.Generator().manual_seed(3)) for _ in range(2)]
    gen = torch.Generator().manual_seed(3)
    again = sample_lambda(4.0, gen)
    assert first[0] == first[1] == again
    assert sample_lambda(4.0, gen) != again  # the generator advanced


@pytest.mark.parametrize("alpha", [4.0, 0.5])
def test_sample_lambda_follows_folded_beta(alpha: float) -> None:
    gen = torch.Generator().manual_seed(0)
    draws = np.array([sample_lambda(alpha, gen) for _ in range(1500)])
    assert ((draws >= 0.5) & (draws <= 1.0)).all()

    # max(λ, 1 − λ) for a symmetric Beta has CDF 2F(x) − 1 on [½, 1].
    def folded_cdf(x: np.ndarray) -> np.ndarray:
        return 2.0 * stats.beta.cdf(x, alpha, alpha) - 1.0

    assert stats.kstest(draws, folded_cdf).pvalue > 1e-3


def test_sample_lambda_nonpositive_alpha_raises() -> None:
    with pytest.raises(ValueError):
        sample_lambda(0.0, torch.Generator().manual_seed(0))


def test_mix_hand_computed() -> None:
    x = f64([[1.0], [3.0]])
    targets = f64([[1.0, 0.0], [0.0, 1.0]])
    x_mixed, t_mixed = mix(x, targets, lam=0.75, perm=torch.tensor([1, 0]))
    torch.testing.assert_close(x_mixed, f64([[1.5], [2.5]]))
    torch.testing.assert_close(t_mixed, f64([[0.75, 0.25], [0.25, 0.75]]))


@settings(max_examples=50, deadline=None)
@given(rows=st.integers(1, 8), seed=st.integers(0, 2**16), lam=st.floats(0.5, 1.0))
def test_mix_property_lam_one_or_identity_perm_is_identity(rows: int, seed: int, lam: float) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(rows, 3, 4, 4, generator=gen)  # image-shaped rows
    targets = torch.rand(rows, 5, generator=gen).softmax(dim=1)
    perm = torch.randperm(rows, generator=gen)
    x_same, t_same = mix(x, targets, 1.0, perm)
    torch.testing.assert_close(x_same, x)
    torch.testing.assert_close(t_same, targets)
    x_id, t_id = mix(x, targets, lam, torch.arange(rows))
    torch.testing.assert_close(x_id, x)
    torch.testing.assert_close(t_id, targets)
    # Mixed targets stay distributions.
    torch.testing.assert_close(mix(x, targets, lam, perm)[1].sum(dim=1), torch.ones(rows))


# --- mixmatch_losses --------------------------------------------------------------------------------------


def test_mixmatch_losses_hand_computed_uniform_logits() -> None:
    # softmax(0, 0) = (½, ½): L_x = log 2; L_u = mean((½ − 1)², (½ − 0)²) = ¼; p̂ uniform → L_reg = 0.
    logits = torch.zeros(2, 2, dtype=torch.float64)
    targets = f64([[1.0, 0.0], [1.0, 0.0]])
    out = mixmatch_losses(logits, targets, num_labeled_rows=1)
    assert out["lx"].item() == pytest.approx(math.log(2.0))
    assert out["lu"].item() == pytest.approx(0.25)
    assert out["lreg"].item() == pytest.approx(0.0, abs=1e-12)


def test_mixmatch_losses_hand_computed_skewed_prior() -> None:
    # softmax(ln 3, 0) = (¾, ¼) on every row, so p̂ = (¾, ¼):
    # L_reg = ½ log(½ / ¾) + ½ log(½ / ¼) = ½ log(4/3).
    logits = f64([[math.log(3.0), 0.0]] * 4)
    targets = f64([[0.5, 0.5], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    out = mixmatch_losses(logits, targets, num_labeled_rows=2)
    lx = (0.5 * math.log(4 / 3) + 0.5 * math.log(4)) / 2 + math.log(4) / 2  # rows 0 and 1
    lu = ((0.25**2 + 0.25**2) + (0.75**2 + 0.75**2)) / 4  # rows 2 and 3, two classes each
    assert out["lx"].item() == pytest.approx(lx)
    assert out["lu"].item() == pytest.approx(lu)
    assert out["lreg"].item() == pytest.approx(0.5 * math.log(4 / 3))


def numpy_mixmatch_reference(logits: np.ndarray, targets: np.ndarray, n_x: int) -> dict[str, float]:
    """Plain float64 re-statement of docs/algorithms.md §2.2, row by row."""
    rows, c = logits.shape
    probs = np.empty_like(logits)
    for i in range(rows):
        e = np.exp(logits[i] - logits[i].max())
        probs[i] = e / e.sum()
    lx = sum(-sum(targets[i, k] * math.log(probs[i, k]) for k in range(c)) for i in range(n_x)) / n_x
    lu_terms = [(probs[i, k] - targets[i, k]) ** 2 for i in range(n_x, rows) for k in range(c)]
    lu = sum(lu_terms) / len(lu_terms) if lu_terms else 0.0
    p_hat = probs.mean(axis=0)
    lreg = sum((1 / c) * math.log((1 / c) / p_hat[k]) for k in range(c))
    return {"lx": lx, "lu": lu, "lreg": lreg}


@pytest.mark.parametrize("n_x", [4, 8])
def test_mixmatch_losses_match_numpy_reference(n_x: int) -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=gen, dtype=torch.float64) * 2
    targets = torch.rand(8, 5, generator=gen, dtype=torch.float64).softmax(dim=1)
    out = mixmatch_losses(logits, targets, num_labeled_rows=n_x)
    ref = numpy_mixmatch_reference(logits.numpy(), targets.numpy(), n_x)
    for name in ("lx", "lu", "lreg"):
        assert out[name].item() == pytest.approx(ref[name], rel=1e-10, abs=1e-12), name


def test_mixmatch_losses_web_scale_has_zero_lu_and_gradients() -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
    targets = torch.full((6, 4), 0.25)
    out = mixmatch_losses(logits, targets, num_labeled_rows=6)
    assert out["lu"].item() == 0.0
    (out["lx"] + out["lu"] + out["lreg"]).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("n_x", [0, 7])
def test_mixmatch_losses_bad_row_count_raises(n_x: int) -> None:
    with pytest.raises(ValueError):
        mixmatch_losses(torch.zeros(6, 3), torch.zeros(6, 3), num_labeled_rows=n_x)


# --- ramp, SMR warm-up, NE ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("epoch_fraction", "expected"),
    [(5.0, 0.0), (10.0, 0.0), (14.0, 6.25), (18.0, 12.5), (26.0, 25.0), (40.0, 25.0)],
)
def test_lambda_u_ramp_hand_computed(epoch_fraction: float, expected: float) -> None:
    # λ_u = 25, E_warm = 10: 25 · clip((t − 10)/16, 0, 1).
    assert lambda_u_ramp(25.0, epoch_fraction, warmup_epochs=10) == pytest.approx(expected)


def test_lambda_u_ramp_custom_length() -> None:
    assert lambda_u_ramp(10.0, 12.0, warmup_epochs=10, ramp_epochs=4) == pytest.approx(5.0)


def test_mixup_warmup_loss_hand_computed() -> None:
    # softmax(ln 3, 0) = (¾, ¼): ¾·(−log ¾) + ¼·(−log ¼).
    logits = f64([[math.log(3.0), 0.0]])
    loss = mixup_warmup_loss(logits, torch.tensor([0]), torch.tensor([1]), lam=0.75)
    assert loss.item() == pytest.approx(0.75 * math.log(4 / 3) + 0.25 * math.log(4))


def test_mixup_warmup_loss_lam_one_is_plain_ce() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 3, generator=gen)
    labels = torch.randint(3, (5,), generator=gen)
    perm_labels = labels.flip(0)
    torch.testing.assert_close(
        mixup_warmup_loss(logits, labels, perm_labels, lam=1.0),
        torch.nn.functional.cross_entropy(logits, labels),
    )


def test_confidence_penalty_hand_computed() -> None:
    # Row 0: 2·½ log ½ = −log 2; row 1 is one-hot: 0 (p = 0 clamped). Mean: −½ log 2.
    assert confidence_penalty(f64([[0.5, 0.5], [1.0, 0.0]])).item() == pytest.approx(-0.5 * math.log(2.0))


def test_confidence_penalty_zero_probability_has_finite_gradient() -> None:
    probs = f64([[1.0, 0.0, 0.0]]).requires_grad_()
    confidence_penalty(probs).backward()
    assert probs.grad is not None and torch.isfinite(probs.grad).all()


@settings(max_examples=100, deadline=None)
@given(rows=prob_rows)
def test_confidence_penalty_property_between_minus_log_c_and_zero(rows: list[list[float]]) -> None:
    p = f64(rows)
    ne = confidence_penalty(p).item()
    assert -math.log(p.shape[1]) - 1e-12 <= ne <= 1e-12
