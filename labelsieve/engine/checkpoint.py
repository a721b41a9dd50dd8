"""Per-epoch checkpoints that make a killed training stage resume where it stopped.

The checkpoint lives beside the stage's output directory (``<out_dir>.ckpt/last.pt``), because the
output directory itself is only written, atomically, when the stage succeeds. It carries a key (a hash
of the inputs and params); a checkpoint with another key is ignored, so a stale one is never resumed.
Files hold tensors and plain containers only and load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from labelsieve.atomic import save_torch


class Checkpoint:
    """The resumable state of one stage run."""

    def __init__(self, out_dir: str | Path, key_material: dict[str, Any]):
        self.directory = Path(f"{Path(out_dir)}.ckpt")
        self.path = self.directory / "last.pt"
        self.key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()

    def load(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this run (same key), else None."""
        if not self.path.is_file():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        return state if state.get("key") == self.key else None

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically, stamped with this run's key."""
        save_torch(self.path, {**state, "key": self.key})

    def clear(self) -> None:
        """Remove the checkpoint once the stage's outputs are written."""
        shutil.rmtree(self.directory, ignore_errors=True)
