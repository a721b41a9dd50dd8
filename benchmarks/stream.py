"""Training throughput with the images streamed from the store against the images resident
(`runtime.data_path`, docs/design.md "Data larger than the device").

For each store shape it times real training steps of small_cnn (`loop.supervised_epoch`: CE, random crops
and flips on the device, SGD with the one-cycle schedule) with the training images resident and with them
streamed from the memory-mapped .npy (`StreamedImages`, the epoch's batches prefetched by its worker
thread), in `--repeats` interleaved rounds (the first path alternates) after one untimed epoch of each. The
shapes: `fmnist`, the Fashion-MNIST CPU profile (the ingested store in artifacts/dataset with its labels
when present, else a synthetic store of its shape, 9,500 x 1x28x28); `rgb64`, a synthetic 4,096 x 3x64x64
store, closer to real crawls. Every timed run starts from the same seeded network and streams, so the two
paths' losses must be identical; that is checked.

Per shape and path: the median samples/s (training rows per wall second), CPU seconds (all threads:
streaming moves the gathers to a second thread) and the cost of fetching an epoch's batches alone; the
ratio stream / resident is the median of the rounds' ratios (target: at least 0.9), and the CPU ratio the
same for CPU seconds (less disturbed by other load). Writes stream.json and stream.md to `--out` (default
benchmarks/results). Run from the repository root:

    uv run python benchmarks/stream.py                            # about 8 minutes on 2 idle cores
    uv run python benchmarks/stream.py --smoke --out /tmp/stream  # seconds: checks that it runs
    uv run python benchmarks/stream.py --device cuda --out DIR     # on a GPU (the store stays on the host)
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import clock, cpu_model, device_name, peak_rss_mib  # noqa: E402
from labelsieve.atomic import write_json, write_npy, write_text  # noqa: E402
from labelsieve.config import Params, load_params  # noqa: E402
from labelsieve.data.store import Dataset  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import resolve_device, use_bf16  # noqa: E402
from labelsieve.engine.resident import TrainingData, channel_stats  # noqa: E402
from labelsieve.engine.stream import StreamedImages, prefetch  # noqa: E402
from labelsieve.errors import LabelsieveError  # noqa: E402

PATHS = ("resident", "stream")
TARGET = 0.9
CLASSES = 10
# name -> (N, C, H, W) of the training split and timed steps per run
SHAPES = {"fmnist": ((9500, 1, 28, 28), 150), "rgb64": ((4096, 3, 64, 64), 32)}
SMOKE_SHAPES = {"fmnist": ((256, 1, 28, 28), 4), "rgb64": ((256, 3, 64, 64), 2)}


def synthetic(root: Path, shape: tuple[int, ...], seed: int, device: torch.device) -> TrainingData:
    """A seeded random uint8 training split of `shape` written to root/train.npy, with random labels,
    resident on `device`."""
    rng = np.random.default_rng(seed)
    write_npy(root / "train.npy", rng.integers(0, 256, shape, dtype=np.uint8))
    dataset = Dataset(root=root, classes=[str(c) for c in range(CLASSES)], meta={}, samples={})
    images = dataset.images("train")
    mean, std = channel_stats(images)
    none = torch.empty((0, *shape[1:]), dtype=torch.uint8, device=device)
    return TrainingData(
        train_images=torch.from_numpy(np.array(images)).to(device),
        train_labels=torch.from_numpy(rng.integers(0, CLASSES, shape[0])).to(device),
        val_images=none,
        val_labels=torch.empty(0, dtype=torch.int64, device=device),
        test_images=none,
        test_labels=torch.empty(0, dtype=torch.int64, device=device),
        train_true_labels=None,
        mean=mean,
        std=std,
        dataset=dataset,
        key="synthetic",
    )


def fashion_mnist(
    root: Path, shape: tuple[int, ...], seed: int, smoke: bool, device: torch.device
) -> tuple[TrainingData, str]:
    """The ingested CPU profile from artifacts/ (not in a smoke run), else a synthetic store of `shape`."""
    if not smoke:
        try:
            data = TrainingData.load(REPO / "artifacts/dataset", REPO / "artifacts/labels", device)
            return data, "artifacts/dataset (ingested Fashion-MNIST, CPU profile)"
        except (LabelsieveError, OSError) as err:
            print(f"stream benchmark: artifacts/dataset unusable ({err}); a synthetic store", file=sys.stderr)
    return synthetic(root, shape, seed, device), "synthetic"


def on_path(data: TrainingData, path: str) -> TrainingData:
    """`data` with its training images resident (as loaded) or streamed from the store's memmap."""
    if path == "resident":
        return data
    device = data.train_labels.device
    return dataclasses.replace(data, train_images=StreamedImages(data.dataset.images("train"), device))


def train(data: TrainingData, params: Params, epochs: int) -> dict[str, Any]:
    """`epochs` CE epochs of a fresh seeded small_cnn: wall and CPU seconds, rows and losses."""
    device = data.train_labels.device
    (model,) = loop.build_networks(params, data, 1, device)
    optimizer = loop.make_optimizer(model, params.model)
    generators = loop.Generators(params.runtime.seed, "stream-benchmark", device)
    losses = []
    wall, cpu = clock(device), time.process_time()
    for epoch in range(epochs):
        record = loop.supervised_epoch(
            model,
            optimizer,
            data,
            params=params,
            epoch=epoch,
            loss="ce",
            alpha=0.0,
            penalty=0.0,
            generators=generators,
            desc="stream benchmark",
        )
        losses.append(record["loss"])
    wall, cpu = clock(device) - wall, time.process_time() - cpu
    rows = epochs * len(data.train_labels)
    return {"seconds": wall, "cpu_seconds": cpu, "samples_per_second": rows / wall, "losses": losses}


def fetch_seconds(data: TrainingData, params: Params) -> float:
    """Seconds per batch to fetch one epoch's batches of `data.train_images`, as an epoch plans them."""
    order = loop.batches(len(data.train_labels), params.model.batch_size, torch.Generator().manual_seed(0))
    device = data.train_labels.device
    start = clock(device)
    prefetch(data.train_images, order)
    for idx in order:
        data.train_images[idx]
    return (clock(device) - start) / len(order)


def measure(data: TrainingData, params: Params, steps: int, repeats: int) -> dict[str, Any]:
    """Interleaved timed runs of both paths on `data`; the figures of one shape."""
    per_epoch = math.ceil(len(data.train_labels) / params.model.batch_size)
    epochs = max(1, round(steps / per_epoch))
    variants = {path: on_path(data, path) for path in PATHS}
    for path in PATHS:  # page cache, oneDNN kernels
        train(variants[path], params, 1)
    runs: dict[str, list[dict[str, Any]]] = {path: [] for path in PATHS}
    for round_ in range(repeats):
        for path in PATHS if round_ % 2 == 0 else PATHS[::-1]:
            runs[path].append(train(variants[path], params, epochs))
    pairs = list(zip(runs["resident"], runs["stream"], strict=True))
    ratios = [s["samples_per_second"] / r["samples_per_second"] for r, s in pairs]
    cpu_ratios = [r["cpu_seconds"] / s["cpu_seconds"] for r, s in pairs]
    figures: dict[str, Any] = {
        "image_shape": list(data.train_images.shape[1:]),
        "train_samples": len(data.train_labels),
        "store_mib": data.dataset.images("train").nbytes / 2**20,
        "epochs": epochs,
        "steps": epochs * per_epoch,
        "ratio": statistics.median(ratios),
        "all_ratios": ratios,
        "cpu_ratio": statistics.median(cpu_ratios),
        "all_cpu_ratios": cpu_ratios,
        "losses_identical": all(r["losses"] == s["losses"] for r, s in pairs),
    }
    fetch_ms = {path: 1e3 * min(fetch_seconds(variants[path], params) for _ in range(3)) for path in PATHS}
    for path in PATHS:
        figures[path] = {
            "samples_per_second": statistics.median(r["samples_per_second"] for r in runs[path]),
            "cpu_seconds": statistics.median(r["cpu_seconds"] for r in runs[path]),
            "seconds": statistics.median(r["seconds"] for r in runs[path]),
            "all_samples_per_second": [r["samples_per_second"] for r in runs[path]],
            "fetch_ms_per_batch": fetch_ms[path],
        }
    return figures


def to_markdown(result: dict[str, Any]) -> str:
    """stream.md: the conditions and one table row per shape."""
    lines = [
        "# Streaming data path: training throughput against resident images",
        "",
        f"`{result['command']}`",
        "",
        f"{result['machine']}; torch {result['torch']}, {result['threads']} thread(s), "
        f"bf16 {result['bf16']}; "
        f"small_cnn, batch {result['batch_size']}, median of {result['repeats']} interleaved repeats; "
        f"load average {result['load_before'][0]:.2f} before, {result['load_after'][0]:.2f} after.",
        "",
        "| shape | store | steps | resident samples/s | stream samples/s | stream / resident | "
        "CPU s resident / stream | CPU ratio | fetch ms/batch resident / stream | losses identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in result["shapes"].items():
        r, t = s["resident"], s["stream"]
        lines.append(
            f"| {name} {'x'.join(map(str, s['image_shape']))} | {s['source']}, {s['store_mib']:.0f} MiB | "
            f"{s['steps']} | {r['samples_per_second']:,.0f} | {t['samples_per_second']:,.0f} | "
            f"{s['ratio']:.3f} | {r['cpu_seconds']:.1f} / {t['cpu_seconds']:.1f} | {s['cpu_ratio']:.3f} | "
            f"{r['fetch_ms_per_batch']:.3f} / {t['fetch_ms_per_batch']:.3f} | {s['losses_identical']} |"
        )
    lines += [
        "",
        f"Target: stream / resident at least {TARGET}: the median over rounds of the ratio of samples per "
        "wall second. CPU seconds count every thread of the process (streaming gathers in a worker thread "
        "while the main thread trains); the CPU ratio is resident / stream CPU seconds per round, median, "
        "which a loaded machine disturbs less. Fetch: milliseconds per batch to get one epoch's batches "
        "without training, best of 3 (resident: indexing the tensor; stream: the planned gathers).",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, help="timed runs per path and shape (default 9; smoke 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--smoke", action="store_true", help="256 synthetic images, a few steps")
    parser.add_argument("--out", help="folder for stream.json and stream.md (default benchmarks/results)")
    args = parser.parse_args(argv)
    args.shapes = args.shapes.split(",")
    if bad := [s for s in args.shapes if s not in SHAPES]:
        parser.error(f"--shapes: {', '.join(bad)} not in {', '.join(SHAPES)}")
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 9
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.out is None:
        args.out = (
            Path(tempfile.gettempdir()) / "labelsieve-stream-smoke"
            if args.smoke
            else REPO / "benchmarks/results"
        )
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure, write stream.json and stream.md, and print the table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    params = load_params(None, overrides=["runtime.progress=never", f"runtime.device={args.device}"])
    device = resolve_device(params.runtime.device)
    load_before = os.getloadavg()
    shapes: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="labelsieve-stream-") as tmp:
        for name in args.shapes:
            shape, steps = (SMOKE_SHAPES if args.smoke else SHAPES)[name]
            root = Path(tmp) / name
            root.mkdir()
            if name == "fmnist":
                data, source = fashion_mnist(root, shape, params.runtime.seed, args.smoke, device)
            else:
                data, source = synthetic(root, shape, params.runtime.seed, device), "synthetic"
            shapes[name] = {"source": source, **measure(data, params, steps, args.repeats)}
    result = {
        "command": " ".join(
            ["uv run python benchmarks/stream.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores",
        "device": device_name(device),
        "cpu": cpu_model(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "bf16": use_bf16(device, params.runtime.precision),
        "batch_size": params.model.batch_size,
        "repeats": args.repeats,
        "smoke": args.smoke,
        "target": TARGET,
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "peak_rss_mib": peak_rss_mib(),
        "shapes": shapes,
    }
    out = Path(args.out)
    write_json(out / "stream.json", result)
    write_text(out / "stream.md", to_markdown(result))
    print(to_markdown(result))
    print(f"wrote {out / 'stream.json'} and {out / 'stream.md'}")


if __name__ == "__main__":
    main()
