"""Training dynamics: per-sample predictions averaged over every co-divide of training (pure tensors).

A network that has fitted a sample's label scores it as clean at the end of training, whatever the
truth. The evaluation passes of co-divide, once per network per SSL epoch, already see every sample at
every stage of training; averaging them gives scores that a late memorisation cannot erase. For each
sample the record sums, over every (division, network):

- ``probs``: the softmax (N, C), whose mean feeds confident learning (`labelsieve.maths.confident`);
- ``loss``: CE against the given label; ``margin``: p_ỹ − max_{j≠ỹ} p_j (the area-under-margin idea);
- ``held_out_probs`` / ``held_out_count``: only the (division, network) pairs where the sample was in
  that network's unlabeled set for the whole preceding SSL epoch, so the network was trained on a
  guessed label, not on ỹ. Their mean is the closest thing to an out-of-sample prediction that costs
  no extra forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from labelsieve.maths import chunks

FIELDS = ("probs", "loss", "margin", "held_out_probs", "held_out_count")


@dataclass
class TrainingDynamics:
    """Running sums over divisions and networks (float64 on the data's device) and the number added."""

    probs: torch.Tensor  # (N, C)
    loss: torch.Tensor  # (N,)
    margin: torch.Tensor  # (N,)
    held_out_probs: torch.Tensor  # (N, C)
    held_out_count: torch.Tensor  # (N,)
    count: int = 0

    @classmethod
    def create(cls, n: int, num_classes: int, device: torch.device) -> TrainingDynamics:
        """Empty sums for `n` samples of `num_classes` classes."""
        matrix, vector = (n, num_classes), (n,)
        return cls(
            *(
                torch.zeros(shape, dtype=torch.float64, device=device)
                for shape in (matrix, vector, vector, matrix, vector)
            )
        )

    def add(self, probs: torch.Tensor, labels: torch.Tensor, held_out: torch.Tensor | None = None) -> None:
        """Add one division: `probs` (K, N, C) softmax of each network, `labels` (N,) given labels, and
        `held_out` (K, N) bool, True where network k did not train on the sample's label since the last
        division (None: nowhere)."""
        n, num_classes = self.probs.shape
        if probs.dim() != 3 or probs.shape[1:] != (n, num_classes) or labels.shape != (n,):
            raise ValueError(f"probs must be (K, {n}, {num_classes}) and labels ({n},)")
        for k in range(probs.shape[0]):
            for rows in chunks.row_chunks(n, num_classes):
                p = probs[k, rows].double()
                own = p.gather(1, labels[rows, None]).squeeze(1)
                other = p.scatter(1, labels[rows, None], -1.0).max(dim=1).values
                self.probs[rows] += p
                self.loss[rows] -= own.clamp_min(1e-12).log()
                self.margin[rows] += own - other
                if held_out is not None:
                    mask = held_out[k, rows].double()
                    self.held_out_probs[rows] += p * mask[:, None]
                    self.held_out_count[rows] += mask
            self.count += 1

    def means(self) -> dict[str, torch.Tensor]:
        """The averages: ``probs`` (N, C), ``loss`` (N,), ``margin`` (N,) over every division and network,
        and ``held_out_probs`` (N, C) over the held-out ones, falling back to ``probs`` where a sample
        was never held out."""
        if self.count == 0:
            raise ValueError("no division was recorded")
        probs = self.probs / self.count
        held = self.held_out_count[:, None]
        held_out = torch.where(held > 0, self.held_out_probs / held.clamp_min(1.0), probs)
        return {
            "probs": probs,
            "loss": self.loss / self.count,
            "margin": self.margin / self.count,
            "held_out_probs": held_out,
        }

    def state(self) -> dict[str, torch.Tensor]:
        """The sums as CPU tensors plus ``count``, for a checkpoint or an .npz file."""
        return {name: getattr(self, name).cpu() for name in FIELDS} | {"count": torch.tensor(self.count)}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor], device: torch.device) -> TrainingDynamics:
        """The inverse of `state`."""
        sums = [torch.as_tensor(state[name], dtype=torch.float64).to(device) for name in FIELDS]
        return cls(*sums, count=int(state["count"]))
