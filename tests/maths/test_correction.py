"""Forward loss correction (`maths.correction`, docs/algorithms.md §5.2) against hand-computed values."""

import math

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.maths import correction


def test_forward_nll_by_hand():
    # p = (0.8, 0.2); T[i, j] = P(given i | true j), columns (0.7, 0.3) and (0.4, 0.6).
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]] * 2, dtype=torch.float64)
    matrix = torch.tensor([[0.7, 0.4], [0.3, 0.6]], dtype=torch.float64)
    loss = correction.forward_nll(logits, torch.tensor([0, 1]), matrix)
    # q_0 = 0.7·0.8 + 0.4·0.2 = 0.64; q_1 = 0.3·0.8 + 0.6·0.2 = 0.36
    torch.testing.assert_close(loss, torch.tensor([-math.log(0.64), -math.log(0.36)], dtype=torch.float64))


def test_forward_nll_with_the_identity_is_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 3, 1])
    got = correction.forward_nll(logits, labels, torch.eye(4, dtype=torch.float64))
    torch.testing.assert_close(got, F.cross_entropy(logits, labels, reduction="none"))


def test_a_label_the_matrix_rules_out_costs_a_bounded_loss():
    logits = torch.tensor([[5.0, -5.0]], requires_grad=True)
    loss = correction.forward_nll(logits, torch.tensor([1]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    loss.sum().backward()
    assert math.isfinite(loss.item()) and loss.item() <= -math.log(correction.MIN_PROBABILITY) + 1e-3
    assert torch.isfinite(logits.grad).all()


def test_minimising_the_corrected_loss_recovers_the_true_class():
    """One input of true class 0 whose labels follow T's column 0 (60% 0, 40% 1): plain CE fits p = (0.6,
    0.4); the corrected loss is minimal where T p equals the label distribution, at p = (1, 0)."""
    matrix = torch.tensor([[0.6, 0.3], [0.4, 0.7]], dtype=torch.float64)
    labels = torch.tensor([0] * 6 + [1] * 4)
    fitted = {}
    for name in ("plain", "forward"):
        z = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([z], lr=1.0)
        for _ in range(3000):
            logits = z.expand(len(labels), 2)
            if name == "plain":
                loss = F.cross_entropy(logits, labels)
            else:
                loss = correction.forward_nll(logits, labels, matrix).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        fitted[name] = F.softmax(z.detach(), dim=1)[0].numpy()
    np.testing.assert_allclose(fitted["plain"], [0.6, 0.4], atol=1e-6)
    assert fitted["forward"][0] > 0.95  # the optimum is the boundary p_0 = 1, approached ever more slowly
