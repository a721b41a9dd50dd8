"""How far two data-parallel ranks land from one process, against the spread between seeds (README, "Training
on several GPUs or processes"; the tolerances of tests/engine/test_distributed.py).

For each seed, the chain warmup -> co_divide -> ssl_train -> group_regularize -> purify -> retrain runs on the
digits preset (tests' TINY_PIPELINE, 2 warm-up and 2 SSL epochs) once in one process and once as two gloo
ranks under torchrun on 127.0.0.1 (tests/engine/ddp_worker.py). Prints, per figure, the largest gap between
the two worlds over the seeds and the largest gap between seeds of the single process, as JSON.

    uv run python benchmarks/distributed_gap.py --seeds 0 1 2 --out /tmp/ddp_gap
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from labelsieve.config import load_params  # noqa: E402
from labelsieve.stages import STAGES  # noqa: E402
from tests.conftest import TINY_PIPELINE  # noqa: E402

WORKER = ROOT / "tests" / "engine" / "ddp_worker.py"
OVERRIDES = (*TINY_PIPELINE, "warmup.epochs=2", "ssl_train.epochs=2", "runtime.precision=fp32")
CHAIN = ("warmup", "co_divide", "ssl_train", "group_regularize", "purify", "retrain")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(root: Path, seed: int, world: int) -> Path:
    """The chain at `seed` in a world of `world` processes; its output folder."""
    out = root / f"seed{seed}-world{world}"
    overrides = [*OVERRIDES, f"runtime.seed={seed}"]
    spec = {"dataset": str(root / "dataset"), "labels": str(root / "labels"), "overrides": overrides}
    path = out.with_suffix(".json")
    path.write_text(json.dumps({**spec, "jobs": [{"out": str(out), "stages": list(CHAIN)}]}))
    command = [sys.executable, str(WORKER), str(path)]
    if world > 1:
        command[1:1] = ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(world)]
        command[7:7] = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(command, env=env, check=True, capture_output=True)
    return out


def figures(out: Path) -> dict[str, np.ndarray]:
    """The compared figures of one run, each flattened."""

    def history(stage: str) -> list[dict]:
        return json.loads((out / stage / "history.json").read_text())

    def fractions(stage: str) -> list[float]:
        summary = json.loads((out / stage / "summary.json").read_text())
        return [n["labeled_fraction"] for n in summary["networks"]]

    found = {f"{s} loss": np.ravel([r["loss"] for r in history(s)]) for s in ("warmup", "ssl", "model")}
    found |= {f"{s} labeled fraction": np.array(fractions(s)) for s in ("divide", "ssl")}
    found |= {f"{s} test accuracy": np.array([history(s)[-1]["test_acc"]]) for s in ("ssl", "group", "model")}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    params = load_params(None, presets=["digits"], overrides=OVERRIDES)
    STAGES["ingest"].run(params, out_dir=args.out / "dataset")
    STAGES["inject_noise"].run(params, dataset_dir=args.out / "dataset", out_dir=args.out / "labels")
    runs = {(s, w): figures(run(args.out, s, w)) for s in args.seeds for w in (1, 2)}
    report = {}

    def gap(a: tuple[int, int], b: tuple[int, int], name: str) -> float:
        return float(np.abs(runs[a][name] - runs[b][name]).max())

    for name in runs[(args.seeds[0], 1)]:
        worlds = max(gap((s, 1), (s, 2), name) for s in args.seeds)
        pairs = itertools.combinations(args.seeds, 2)
        seeds = max((gap((a, 1), (b, 1), name) for a, b in pairs), default=0.0)
        report[name] = {"two_ranks_vs_one": round(worlds, 4), "between_seeds": round(seeds, 4)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
