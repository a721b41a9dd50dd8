"""Training dynamics (`labelsieve.maths.dynamics`) against a float64 reference."""

import numpy as np
import pytest
import torch

from labelsieve.maths.dynamics import TrainingDynamics


def test_means_equal_a_float64_reference_and_held_out_falls_back():
    rng = np.random.default_rng(0)
    n, c = 7, 3
    labels = rng.integers(0, c, n)
    divisions = [rng.dirichlet(np.ones(c), size=(2, n)) for _ in range(3)]  # 3 divisions x K = 2
    held = [None, rng.random((2, n)) < 0.5, rng.random((2, n)) < 0.5]
    held[2][:, 0] = False  # sample 0 is never held out
    held[1][:, 0] = False
    dyn = TrainingDynamics.create(n, c, torch.device("cpu"))
    for probs, mask in zip(divisions, held, strict=True):
        dyn.add(
            torch.from_numpy(probs).float(),
            torch.from_numpy(labels),
            None if mask is None else torch.from_numpy(mask),
        )
    stacked = np.concatenate([d.astype(np.float32).astype(np.float64) for d in divisions])  # (6, N, C)
    own = stacked[:, np.arange(n), labels]
    other = np.where(np.eye(c, dtype=bool)[labels][None], -1, stacked).max(axis=2)
    means = dyn.means()
    assert dyn.count == 6
    np.testing.assert_allclose(means["probs"].numpy(), stacked.mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(means["loss"].numpy(), (-np.log(own)).mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(means["margin"].numpy(), (own - other).mean(axis=0), atol=1e-12)
    weights = np.concatenate([np.zeros((2, n)), held[1], held[2]]).astype(np.float64)  # (6, N)
    held_mean = (stacked * weights[..., None]).sum(axis=0) / np.maximum(weights.sum(axis=0), 1)[:, None]
    expected = np.where(weights.sum(axis=0)[:, None] > 0, held_mean, stacked.mean(axis=0))
    np.testing.assert_allclose(means["held_out_probs"].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(means["held_out_probs"][0].numpy(), stacked.mean(axis=0)[0], atol=1e-12)


def test_state_round_trip_and_errors():
    dyn = TrainingDynamics.create(4, 2, torch.device("cpu"))
    with pytest.raises(ValueError, match="no division"):
        dyn.means()
    with pytest.raises(ValueError, match="probs must be"):
        dyn.add(torch.ones(1, 3, 2) / 2, torch.zeros(4, dtype=torch.int64))
    dyn.add(torch.tensor([[[0.7, 0.3], [0.4, 0.6], [0.5, 0.5], [0.1, 0.9]]]), torch.tensor([0, 0, 1, 1]))
    again = TrainingDynamics.from_state(dyn.state(), torch.device("cpu"))
    assert again.count == 1
    for name, value in dyn.means().items():
        torch.testing.assert_close(again.means()[name], value, rtol=0, atol=0)
    np.testing.assert_allclose(dyn.means()["margin"].numpy(), [0.4, -0.2, 0.0, 0.8], atol=1e-7)
