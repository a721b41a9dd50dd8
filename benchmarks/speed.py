"""Epoch cost of each co-training stage against a plain CE epoch, CPU profile, in one process.

On the params.yaml defaults (Fashion-MNIST 10k subset, sym50, small_cnn) it warms two networks up for
`warmup.epochs` epochs (mixup, as SMR does), then times, `--repeats` times each and interleaved:
- a plain CE epoch of one network (`loop.supervised_epoch`);
- an SSL epoch: the co-divide of both networks (evaluation pass + GMM) plus a MixMatch epoch of each
  network on the partition from its peer (BENCHMARKS.md target: at most 25 s on 2 cores; the published
  DivideMix code takes 72 to 82 s there);
- a GRIP epoch of one network (target: at most 1.2x a CE epoch).

Ratios are only meaningful on an idle machine; the load average is recorded. Writes
benchmarks/results/speed.json. The SSSL retrain epoch has its own script, benchmarks/retrain_speed.py.

    uv run python benchmarks/speed.py              # about 3 minutes on 2 idle cores
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labelsieve.atomic import write_json  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import resolve_device, use_bf16  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import grip  # noqa: E402
from labelsieve.stages import co_divide, group_regularize, ingest, inject_noise, ssl_train  # noqa: E402


def timed(fn) -> float:
    """Seconds taken by fn()."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed.json"))
    args = parser.parse_args()
    params = load_params(args.params, overrides=["runtime.progress=never"])
    device = resolve_device(params.runtime.device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="labelsieve-speed-") as tmp:
        ingest.run(params, out_dir=Path(tmp) / "dataset")
        inject_noise.run(params, dataset_dir=Path(tmp) / "dataset", out_dir=Path(tmp) / "labels")
        data = TrainingData.load(Path(tmp) / "dataset", Path(tmp) / "labels", device)
    networks = loop.build_networks(params, data, 2, device)
    optimizers = [loop.make_optimizer(m, params.model) for m in networks]
    generators = loop.Generators(params.runtime.seed, "speed", device)
    for epoch in range(params.warmup.epochs):
        for model, optimizer in zip(networks, optimizers, strict=True):
            loop.supervised_epoch(
                model,
                optimizer,
                data,
                params=params,
                epoch=epoch,
                loss=params.warmup.loss,
                alpha=params.warmup.alpha,
                penalty=0.0,
                generators=generators,
                desc="",
            )
    epoch = params.warmup.epochs
    labeled_fraction: list[float] = []

    def ce_epoch() -> None:
        loop.supervised_epoch(
            networks[0],
            optimizers[0],
            data,
            params=params,
            epoch=epoch,
            loss="ce",
            alpha=1.0,
            penalty=0.0,
            generators=generators,
            desc="",
        )

    def ssl_epoch() -> None:
        split = co_divide.divide(networks, data, params, tag="speed", min_size=params.ssl_train.batch_size)
        labeled_fraction.append(float(split.labeled.float().mean()))
        for k in range(2):
            ssl_train.mixmatch_epoch(
                networks[k],
                networks[1 - k],
                optimizers[k],
                data,
                clean_prob=split.clean_prob[1 - k],
                labeled=split.labeled[1 - k],
                params=params,
                epoch=epoch,
                generators=generators,
                desc="",
            )

    state = grip.SoftLabelState.create(data.num_classes, device=device)
    memory = torch.full((len(data.train_labels),), float("nan"), device=device)

    def grip_epoch() -> None:
        group_regularize.grip_epoch(
            networks[0],
            optimizers[0],
            data,
            state,
            memory,
            params=params,
            epoch=params.group_regularize.warmup_epochs,
            generators=generators,
            desc="",
        )

    times: dict[str, list[float]] = {"ce": [], "ssl": [], "grip": []}
    grip_epoch()  # sets the soft labels, so the timed GRIP epochs purify as they would in a run
    for _ in range(args.repeats):
        for name, fn in (("ce", ce_epoch), ("ssl", ssl_epoch), ("grip", grip_epoch)):
            times[name].append(timed(fn))
    ce = statistics.median(times["ce"])
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "device": str(device),
        "bf16": use_bf16(device, params.runtime.precision),
        "threads": torch.get_num_threads(),
        "train_samples": len(data.train_labels),
        "ce_epoch_seconds": ce,
        "ssl_epoch_seconds": statistics.median(times["ssl"]),
        "ssl_ratio": statistics.median(times["ssl"]) / ce,
        "ssl_labeled_fraction": statistics.mean(labeled_fraction),
        "grip_epoch_seconds": statistics.median(times["grip"]),
        "grip_ratio": statistics.median(times["grip"]) / ce,
        "all_times": times,
        "load_before": load_before,
        "load_after": os.getloadavg(),
    }
    write_json(args.out, result)
    print({k: v for k, v in result.items() if k != "all_times"})


if __name__ == "__main__":
    main()
