"""Run training stages in one process: as one rank of a torchrun world (``torchrun --nproc_per_node 2
ddp_worker.py SPEC``), or alone, in-process through `run_job` (tests/engine/test_distributed.py).

SPEC is a JSON file: ``dataset``, ``labels`` (input folders), ``overrides`` (params on top of the digits
preset) and ``jobs``, each ``{"out", "stages", "stop_after_saves"}``: the stages run in order into
``out/<name>``; with ``stop_after_saves`` the job stops right after that many checkpoint writes (a killed run,
on every rank at the same point) and the next job starts. Every co-divide a job computes is saved as
``out/partition-<tag>-rank<r>.npy`` (its labeled masks). A job ``{"out", "probe": true}`` writes what the
sharding helpers return on fixed inputs instead (`probe`).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelsieve.config import load_params
from labelsieve.engine import checkpoint, distributed, loop
from labelsieve.stages import STAGES, co_divide


class Stopped(Exception):
    """The job's checkpoint budget is spent: the run stops as if killed."""


@contextlib.contextmanager
def recording(out: Path) -> Iterator[None]:
    """Save each rank's labeled masks of every co-divide computed inside the block."""
    real = co_divide.divide

    def divide(*args: Any, tag: str, **kwargs: Any) -> co_divide.Division:
        result = real(*args, tag=tag, **kwargs)
        np.save(out / f"partition-{tag}-rank{distributed.rank()}.npy", result.labeled.cpu().numpy())
        return result

    co_divide.divide = divide
    try:
        yield
    finally:
        co_divide.divide = real


@contextlib.contextmanager
def stopping(saves: int) -> Iterator[None]:
    """Raise `Stopped` right after the `saves`-th checkpoint write inside the block (0: never)."""
    real, count = checkpoint.Checkpoint.save, [0]

    def save(self: checkpoint.Checkpoint, state: dict[str, Any]) -> None:
        real(self, state)
        count[0] += 1
        if count[0] == saves:
            raise Stopped

    checkpoint.Checkpoint.save = save
    try:
        yield
    finally:
        checkpoint.Checkpoint.save = real


def probe(out: Path) -> None:
    """Write ``out/probe-rank<r>.json``: this rank's results of the sharding helpers on fixed inputs."""
    distributed.setup(torch.device("cpu"))
    order = [torch.arange(10), torch.arange(10, 13), torch.arange(13, 14)]  # the last is under the world
    rows = distributed.row_block(7)
    mine = torch.full((rows.stop - rows.start, 2), float(distributed.rank()))
    try:
        distributed.check_same(torch.tensor([distributed.rank()]), "the rank")
        raised = False
    except RuntimeError:
        raised = True
    record = {
        "shards": [[part.tolist(), size] for part, size in distributed.shard(order)],
        "permutation": loop.local_permutation(torch.tensor([4, 2, 5, 0, 3, 1])).tolist(),
        "rows": [rows.start, rows.stop],
        "gathered": distributed.gather_rows(mine, 7)[:, 0].tolist(),
        "mean": distributed.mean(float(distributed.rank())),
        "scaled": float(distributed.scaled(torch.tensor(1.0), 3, 10)),
        "check_same_raised": raised,
    }
    (out / f"probe-rank{distributed.rank()}.json").write_text(json.dumps(record))


def run_job(spec: dict[str, Any], job: dict[str, Any]) -> bool:
    """Run one job of `spec` in this process; True if it ran to the end, False if it stopped."""
    params = load_params(None, presets=["digits"], overrides=spec["overrides"])
    out = Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    if job.get("probe"):
        probe(out)
        return True
    paths = {"dataset_dir": spec["dataset"], "labels_dir": spec["labels"]}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with recording(out), stopping(job.get("stop_after_saves", 0)):
            for name in job["stages"]:
                stage = STAGES[name]
                inputs = {key: paths.get(key, out / Path(path).name) for key, path in stage.inputs.items()}
                stage.run(params, **inputs, out_dir=out / Path(stage.out_dir).name)
    except Stopped:
        return False
    finally:
        torch.set_num_threads(threads)
    return True


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    for job in spec["jobs"]:
        run_job(spec, job)


if __name__ == "__main__":
    main(sys.argv[1])
