"""Per-epoch checkpoints that make a killed training stage resume where it stopped.

The checkpoint lives beside the stage's output directory (``<out_dir>.ckpt/last.pt``), because the
output directory itself is only written, atomically, when the stage succeeds. It carries a key (a hash
of the inputs and params); a checkpoint with another key is ignored, so a stale one is never resumed.
Files hold tensors and plain containers only and load with ``weights_only=True``. A checkpoint that
cannot be loaded (truncated, overwritten) is moved aside as ``<out_dir>.ckpt.last.pt.corrupt`` with a
warning naming both paths, and the stage starts fresh; it is never deleted.

Data-parallel (`labelsieve.engine.distributed`): rank 0 reads first (and moves a corrupt file aside),
then the others; only rank 0 writes and clears, and the others wait for it. The state holds the plain
networks' weights (never a DDP wrapper's), so a checkpoint resumes on any world size.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from labelsieve.atomic import save_torch
from labelsieve.engine import distributed
from labelsieve.engine.timings import move_timings
from labelsieve.errors import LabelsieveError


class Checkpoint:
    """The resumable state of one stage run."""

    def __init__(self, out_dir: str | Path, key_material: dict[str, Any], *, stage: str | None = None):
        self.stage = stage or str(key_material.get("stage") or Path(out_dir).name)  # for the resume line
        self.out_dir = Path(out_dir)
        self.directory = Path(f"{Path(out_dir)}.ckpt")
        self.path = self.directory / "last.pt"
        self.key = hashlib.sha256(json.dumps(key_material, sort_keys=True, default=str).encode()).hexdigest()

    def load(self) -> dict[str, Any] | None:
        """The saved state if it belongs to this run (same key), else None. Says on stderr when it
        resumes: ``resumed warmup from epoch 4 (checkpoint artifacts/warmup.ckpt/last.pt)``."""
        with distributed.main_first():
            state = self._read() if self.path.is_file() else None
        if state is None or state.get("key") != self.key:
            return None
        if distributed.is_main():
            print(
                f"resumed {self.stage} from epoch {resume_epoch(state)} (checkpoint {self.path})",
                file=sys.stderr,
                flush=True,
            )
        return state

    def _read(self) -> dict[str, Any] | None:
        """The file's state; None (after moving the file aside with a warning) if it is corrupt.

        Raises:
            LabelsieveError: the file exists but cannot be read at all (permissions), naming it.
        """
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except OSError as err:
            raise LabelsieveError(f"checkpoint {self.path} cannot be read: {err.strerror}") from err
        except Exception as err:  # truncated zip, bad pickle, foreign globals: all mean corrupt
            problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        else:
            if isinstance(state, dict):
                return state
            problem = f"holds a {type(state).__name__}, not a state dict"
        aside = self.directory.with_name(f"{self.directory.name}.{self.path.name}.corrupt")
        for n in range(1, 1000):
            if not aside.exists():
                break
            aside = aside.with_name(f"{self.directory.name}.{self.path.name}.{n}.corrupt")
        os.replace(self.path, aside)
        warnings.warn(
            f"checkpoint {self.path} is corrupt ({problem}); moved it to {aside} and starting "
            f"{self.stage} from the first epoch",
            stacklevel=3,
        )
        return None

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically, stamped with this run's key (rank 0; the others wait)."""
        if distributed.is_main():
            save_torch(self.path, {**state, "key": self.key})
        distributed.barrier()

    def clear(self) -> None:
        """Remove the checkpoint once the stage's outputs are written, and move the wall-clock timings
        out of them (`labelsieve.engine.timings`), so equal runs leave byte-identical outputs. Rank 0."""
        if distributed.is_main():
            move_timings(self.out_dir)
            shutil.rmtree(self.directory, ignore_errors=True)
        distributed.barrier()


def resume_epoch(state: dict[str, Any]) -> int:
    """The epoch a resumed run starts with, counted from 1 as the per-epoch log lines count it (the last
    saved history record's epoch, which is global in ssl_train, plus one)."""
    history = json.loads(state.get("history", "[]"))
    last = history[-1]["epoch"] if history else state.get("epoch", -1)
    return int(last) + 2
