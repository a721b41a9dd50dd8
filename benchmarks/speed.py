"""Epoch cost of every training stage against a plain CE epoch of the same network, in one process.

The project's one speed benchmark (docs/benchmarks.md, "Figures per run", "Speed" and "GPU"). It ingests the
data of `--params` (default: the Fashion-MNIST CPU profile, 9,500 training images, sym50, small_cnn),
warms two networks up for `warmup.epochs` epochs, runs every stage once untimed (kernel caches, cuDNN
autotuning, GRIP's first soft labels), then times `--repeats` interleaved rounds of:

- ce: a plain CE epoch of one network (`loop.supervised_epoch`), the reference of every ratio;
- warmup-mixup: an SMR mixup warm-up epoch of one network (target ratio: none);
- ssl: the co-divide of both networks (evaluation pass + GMM) plus a MixMatch epoch of each on the
  partition from its peer (CPU-profile target: at most 25 s; the published DivideMix code takes 72-82 s);
- co-divide: that co-divide alone;
- grip: a GRIP epoch of one network, purifying (target: at most 1.2x CE);
- retrain-<scope>: an SSSL retrain epoch after e_s (evaluation pass, soft-target correction, GMM, then
  neighbour-mixed training), for each `--scopes` kNN scope (target: at most 2x CE).

Per stage: the median seconds per epoch, its ratio to the median CE epoch, samples per second (median
over repeats), the peak RSS while the stage ran and, on CUDA, the peak of torch.cuda.max_memory_allocated.
A sample is one training row forwarded and back-propagated: N per CE, mixup or GRIP epoch; M (the samples
retrain trains on) per retrain epoch; for ssl, B labeled + B unlabeled rows per MixMatch step, summed over
both networks (2|X_1| + 2|X_2|; the co-divide's no-grad rows are not counted); for co-divide, which trains
nothing, the N rows each network's evaluation pass forwards (2N).

It also counts the FLOPs of one CE training step (forward + backward, torch.utils.flop_counter) and
divides them by the measured step time (CE epoch / steps, so augmentation and the optimiser are in it):
achieved TFLOP/s, and on a known CUDA device its share of the dense bf16 peak.

Ratios are only meaningful on an idle machine; the load average before and after is recorded. Writes
speed.json and speed.md to `--out` (default benchmarks/results). Run from the repository root:

    uv run python benchmarks/speed.py                          # a few minutes on 2 idle cores
    uv run python benchmarks/speed.py --smoke --out /tmp/speed # digits, seconds: checks that it runs
    uv run python benchmarks/speed.py --set model.name=preact_resnet18 \\
        --set data.image_size=32 --set data.channels=3         # GPU: Fashion-MNIST resized to 32x32 RGB
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import (  # noqa: E402
    clock,
    cpu_model,
    device_name,
    git_commit,
    peak_rss_mib,
    reset_peak_rss,
)
from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.config import Params, RetrainConfig, load_params  # noqa: E402
from labelsieve.engine import loop  # noqa: E402
from labelsieve.engine.device import apply_threads, prepare_process, resolve_device, use_bf16  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import grip  # noqa: E402
from labelsieve.stages import (  # noqa: E402
    co_divide,
    group_regularize,
    ingest,
    inject_noise,
    retrain,
    ssl_train,
)

# Dense bf16 tensor-core peaks in TFLOP/s (an FMA counts 2), from NVIDIA's datasheets: H100 SXM 1,979 and
# H100 PCIe 1,513 "with sparsity" (dense is half), H200 SXM the same as H100 SXM, A100 312 dense (624 with
# sparsity). Matched against torch.cuda.get_device_name in order; NVL parts and anything else are unknown.
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100 PCIe", 756.0),
    (r"H100 (SXM|80GB HBM3)", 989.0),
    (r"H200(?! NVL)", 989.0),
    (r"A100", 312.0),
)
# docs/benchmarks.md targets, stated for the CPU profile on the 2-core machine.
TARGETS = {"ce": "≤ 6 s", "ssl": "≤ 25 s", "grip": "≤ 1.2× CE", "retrain": "≤ 2× CE"}
# On top of the digits preset (950 training images): a check that every stage runs, not a figure to quote.
SMOKE = ("warmup.epochs=1", "ingest.per_class_limit=100")
KNN_SCOPES = typing.get_args(typing.get_type_hints(RetrainConfig)["knn_scope"])


@dataclasses.dataclass(frozen=True)
class Epoch:
    """One timed epoch: wall seconds, training rows processed, and named sub-timings in seconds."""

    seconds: float
    samples: int
    parts: dict[str, float] = dataclasses.field(default_factory=dict)


class Bench:
    """Warmed-up networks and data, and one method per stage that runs and times one epoch of it."""

    def __init__(self, params: Params, data: TrainingData, device: torch.device, scopes: list[str]):
        self.params, self.data, self.device = params, data, device
        self.networks = loop.build_networks(params, data, 2, device)
        self.optimizers = [loop.make_optimizer(m, params.model) for m in self.networks]
        self.generators = loop.Generators(params.runtime.seed, "speed", device)
        for epoch in range(params.warmup.epochs):
            for k in range(2):
                self._supervised(k, epoch, params.warmup.loss)
        self.epoch = params.warmup.epochs
        # Retrain trains its own network, here a copy of a warmed-up one, as it would be at e_s.
        self.student = copy.deepcopy(self.networks[0])
        self.student_optimizer = loop.make_optimizer(self.student, params.model)
        self.retrain_params = {
            scope: dataclasses.replace(
                params,
                retrain=dataclasses.replace(params.retrain, knn_scope=scope, use_purified=False),
            )
            for scope in scopes
        }
        self.retrain_labels = retrain.read_labels(self.retrain_params[scopes[0]], data, None)
        # As the stage starts: S from an evaluation pass of the warmed-up network, an empty JS memory.
        self.soft_labels = group_regularize.initial_state(self.networks[0], data, params)
        self.js_memory = grip.JsMemory.create(len(data.train_labels), device)
        self.labeled_fraction: list[float] = []

    @property
    def n(self) -> int:
        """N, the training samples."""
        return len(self.data.train_labels)

    def stages(self) -> dict[str, Callable[[], Epoch]]:
        """Stage name -> a function timing one epoch of it, in the order of each round."""
        stages: dict[str, Callable[[], Epoch]] = {
            "ce": self.ce,
            "warmup-mixup": self.warmup_mixup,
            "ssl": self.ssl,
            "co-divide": self.co_divide,
            "grip": self.grip,
        }
        for scope in self.retrain_params:
            stages[f"retrain-{scope}"] = lambda scope=scope: self.retrain(scope)
        return stages

    def _supervised(self, k: int, epoch: int, loss: str) -> None:
        loop.supervised_epoch(
            self.networks[k],
            self.optimizers[k],
            self.data,
            params=self.params,
            epoch=epoch,
            loss=loss,
            alpha=self.params.warmup.alpha,
            penalty=0.0,
            generators=self.generators,
            desc="",
        )

    def ce(self) -> Epoch:
        """A plain CE epoch of network 1."""
        start = clock(self.device)
        self._supervised(0, self.epoch, "ce")
        return Epoch(clock(self.device) - start, self.n)

    def warmup_mixup(self) -> Epoch:
        """An SMR mixup warm-up epoch of network 1."""
        start = clock(self.device)
        self._supervised(0, self.epoch, "mixup")
        return Epoch(clock(self.device) - start, self.n)

    def _divide(self) -> co_divide.Division:
        return co_divide.divide(
            self.networks, self.data, self.params, tag="speed", min_size=self.params.ssl_train.batch_size
        )

    def ssl(self) -> Epoch:
        """Co-divide of both networks, then a MixMatch epoch of each on its peer's partition."""
        start = clock(self.device)
        split = self._divide()
        middle = clock(self.device)
        self.labeled_fraction.append(float(split.labeled.float().mean()))
        for k in range(2):
            ssl_train.mixmatch_epoch(
                self.networks[k],
                self.networks[1 - k],
                self.optimizers[k],
                self.data,
                clean_prob=split.clean_prob[1 - k],
                labeled=split.labeled[1 - k],
                params=self.params,
                epoch=self.epoch,
                generators=self.generators,
                desc="",
            )
        end = clock(self.device)
        rows = 2 * int(split.labeled.sum())  # B labeled + B unlabeled per step, both networks
        return Epoch(end - start, rows, {"co-divide": middle - start, "mixmatch": end - middle})

    def co_divide(self) -> Epoch:
        """The co-divide of both networks alone (evaluation passes + GMM + partition)."""
        start = clock(self.device)
        self._divide()
        return Epoch(clock(self.device) - start, len(self.networks) * self.n)

    def grip(self) -> Epoch:
        """A GRIP epoch of network 1, past E_warm - 1 so that it purifies."""
        start = clock(self.device)
        group_regularize.grip_epoch(
            self.networks[0],
            self.optimizers[0],
            self.data,
            self.soft_labels,
            self.js_memory,
            params=self.params,
            epoch=self.params.group_regularize.warmup_epochs,
            generators=self.generators,
            desc="",
        )
        return Epoch(clock(self.device) - start, self.n)

    def retrain(self, scope: str) -> Epoch:
        """A retrain epoch at e_s (a correction epoch) with the given kNN scope, from fresh soft targets."""
        params = self.retrain_params[scope]
        state = retrain.initial_state(self.retrain_labels, self.data.num_classes, params.retrain, self.device)
        epoch = params.retrain.synthetic_start
        start = clock(self.device)
        w, table, _ = retrain.prepare_epoch(self.student, self.data, state, params=params, epoch=epoch)
        middle = clock(self.device)
        retrain.train_epoch(
            self.student,
            self.student_optimizer,
            self.data,
            state,
            params=params,
            epoch=epoch,
            w=w,
            table=table,
            generators=self.generators,
        )
        end = clock(self.device)
        return Epoch(end - start, len(state.train_ids), {"prepare": middle - start, "train": end - middle})

    def ce_step_flops(self) -> int:
        """FLOPs of one CE training step (forward + backward) at `model.batch_size`.

        Runs `loop.supervised_epoch` on a copy of network 1 over a one-batch slice of the data, so the
        counted step is the real one (augmentation, autocast, loss); the optimiser's update is not counted.
        """
        batch = self.params.model.batch_size
        one_batch = dataclasses.replace(
            self.data,
            train_images=self.data.train_images[:batch],
            train_labels=self.data.train_labels[:batch],
        )
        model = copy.deepcopy(self.networks[0])
        counter = FlopCounterMode(display=False)
        with counter:
            loop.supervised_epoch(
                model,
                loop.make_optimizer(model, self.params.model),
                one_batch,
                params=self.params,
                epoch=self.epoch,
                loss="ce",
                alpha=1.0,
                penalty=0.0,
                generators=self.generators,
                desc="",
            )
        return int(counter.get_total_flops())


def measure(bench: Bench, repeats: int) -> tuple[dict[str, list[Epoch]], dict[str, float], dict[str, float]]:
    """Time every stage `repeats` times, interleaved, after one untimed round.

    Returns:
        (epochs per stage, peak RSS MiB per stage, peak CUDA memory MiB per stage; empty off CUDA).
    """
    stages = bench.stages()
    for run in stages.values():
        run()
    bench.labeled_fraction.clear()  # report the timed rounds only
    epochs: dict[str, list[Epoch]] = {name: [] for name in stages}
    rss: dict[str, float] = {}
    gpu: dict[str, float] = {}
    cuda = bench.device.type == "cuda"
    for _ in range(repeats):
        for name, run in stages.items():
            reset_peak_rss()
            if cuda:
                torch.cuda.reset_peak_memory_stats(bench.device)
            epochs[name].append(run())
            rss[name] = max(rss.get(name, 0.0), peak_rss_mib())
            if cuda:
                gpu[name] = max(gpu.get(name, 0.0), torch.cuda.max_memory_allocated(bench.device) / 2**20)
    return epochs, rss, gpu


def peak_bf16_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of a device from PEAK_BF16_TFLOPS, or None when it is not listed."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops
    return None


def ce_step_figures(flops: int, ce_seconds: float, params: Params, n: int, device_name: str | None) -> dict:
    """Achieved TFLOP/s of the CE step and, for a listed CUDA device, its share of the bf16 peak."""
    batch = params.model.batch_size
    steps = math.ceil(n / batch)
    achieved = flops * (n / batch) / ce_seconds / 1e12  # FLOPs grow linearly with the batch rows
    peak = peak_bf16_tflops(device_name) if device_name else None
    return {
        "batch_size": batch,
        "flops_per_step": flops,
        "step_seconds": ce_seconds / steps,
        "achieved_tflops": achieved,
        "peak_bf16_tflops": peak,
        "bf16_peak_share": achieved / peak if peak else None,
    }


def stage_figures(
    epochs: dict[str, list[Epoch]], rss: dict[str, float], gpu: dict[str, float]
) -> dict[str, dict[str, Any]]:
    """Medians, ratios to the CE epoch, throughput and memory of every stage."""
    ce = statistics.median(e.seconds for e in epochs["ce"])
    out = {}
    for name, runs in epochs.items():
        seconds = statistics.median(e.seconds for e in runs)
        figures: dict[str, Any] = {
            "seconds": seconds,
            "ratio_to_ce": seconds / ce,
            "samples": statistics.median(e.samples for e in runs),
            "samples_per_second": statistics.median(e.samples / e.seconds for e in runs),
            "peak_rss_mib": rss[name],
            "target": TARGETS.get(name.split("-")[0]),
            "all_seconds": [e.seconds for e in runs],
        }
        if name in gpu:
            figures["peak_cuda_mib"] = gpu[name]
        if runs[0].parts:
            figures["parts_seconds"] = {p: statistics.median(e.parts[p] for e in runs) for p in runs[0].parts}
        out[name] = figures
    return out


def load_data(params: Params, device: torch.device) -> TrainingData:
    """Ingest the source and inject the noise of `params` into a temporary folder; load onto `device`."""
    with tempfile.TemporaryDirectory(prefix="labelsieve-speed-") as tmp:
        ingest.run(params, out_dir=Path(tmp) / "dataset")
        inject_noise.run(params, dataset_dir=Path(tmp) / "dataset", out_dir=Path(tmp) / "labels")
        return TrainingData.load(Path(tmp) / "dataset", Path(tmp) / "labels", device)


def to_markdown(result: dict[str, Any]) -> str:
    """speed.md: the conditions, one table row per stage, and the CE step's FLOP figures."""
    cond, step = result["conditions"], result["ce_step"]
    cuda = any("peak_cuda_mib" in s for s in result["stages"].values())
    lines = [
        "# Epoch cost per stage",
        "",
        f"`{result['command']}`",
        "",
        f"{result['machine']}; device {result['device']} ({result['device_name']}); torch {result['torch']}, "
        f"{result['threads']} thread(s), bf16 {result['bf16']}, "
        f"malloc tuned {result.get('malloc_tuned', False)}; commit {result['commit']}.",
        f"{cond['model']}, {cond['train_samples']:,} training images {cond['image_shape']}, batch "
        f"{cond['batch_size']} (SSL {cond['ssl_batch_size']}), seed {cond['seed']}; median of "
        f"{cond['repeats']} interleaved repeats; load average {result['load_before'][0]:.2f} before, "
        f"{result['load_after'][0]:.2f} after. SSL labeled share {cond['ssl_labeled_fraction']:.2f}.",
        "",
        "| stage | s / epoch | × CE | samples / s | peak RSS MiB |"
        + (" peak CUDA MiB |" if cuda else "")
        + " parts (s) | CPU-profile target |",
        "|---|---|---|---|---|" + ("---|" if cuda else "") + "---|---|",
    ]
    for name, s in result["stages"].items():
        parts = ", ".join(f"{p} {v:.3g}" for p, v in s.get("parts_seconds", {}).items())
        gpu = f" {s['peak_cuda_mib']:.0f} |" if cuda else ""
        lines.append(
            f"| {name} | {s['seconds']:.3g} | {s['ratio_to_ce']:.2f} | {s['samples_per_second']:,.0f} | "
            f"{s['peak_rss_mib']:.0f} |{gpu} {parts} | {s['target'] or ''} |"
        )
    share = step["bf16_peak_share"]
    lines += [
        "",
        f"CE training step: {step['flops_per_step'] / 1e9:.3g} GFLOP forward + backward at batch "
        f"{step['batch_size']}, {step['step_seconds'] * 1e3:.3g} ms per step, "
        f"{step['achieved_tflops']:.3g} TFLOP/s achieved"
        + (
            f", {100 * share:.1f}% of the dense bf16 peak ({step['peak_bf16_tflops']:g} TFLOP/s)."
            if share is not None
            else " (no listed bf16 peak for this device)."
        ),
        "",
        "Samples: training rows forwarded and back-propagated; SSL counts B labeled + B unlabeled rows per "
        "MixMatch step over both networks; co-divide counts the rows of both evaluation passes. Peak RSS "
        + (
            "is per stage (reset before each)." if result["rss_peak_per_stage"] else "is process-wide so far."
        ),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="params file")
    parser.add_argument(
        "--repeats", type=int, help="timed epochs per stage, interleaved (default 3; smoke 1)"
    )
    parser.add_argument("--scopes", default="batch,dataset", help="retrain.knn_scope values to time")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="params override, e.g. model.name=preact_resnet18 (repeatable)",
    )
    parser.add_argument("--smoke", action="store_true", help="digits and one warm-up epoch: a quick check")
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's malloc defaults instead of labelsieve's (engine/allocator.py): its A/B",
    )
    parser.add_argument(
        "--out", help="folder for speed.json and speed.md (default benchmarks/results; smoke: a temp folder)"
    )
    args = parser.parse_args(argv)
    args.scopes = args.scopes.split(",")
    if bad := [s for s in args.scopes if s not in KNN_SCOPES]:
        parser.error(f"--scopes: {', '.join(bad)} not in {', '.join(KNN_SCOPES)}")
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.out is None:
        smoke_dir = Path(tempfile.gettempdir()) / "labelsieve-speed-smoke"
        args.out = smoke_dir if args.smoke else REPO / "benchmarks" / "results"
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure, write speed.json and speed.md, and print the table."""
    args = parse_args(argv)
    overrides = ["runtime.progress=never", *(SMOKE if args.smoke else ()), *args.overrides]
    params = load_params(args.params, presets=["digits"] if args.smoke else [], overrides=overrides)
    if args.default_malloc:  # the A/B: threads only, glibc's malloc as it comes
        apply_threads(params.runtime.threads)
        malloc_tuned = False
    else:
        malloc_tuned = prepare_process(params.runtime.threads)  # as every labelsieve command does
    device = resolve_device(params.runtime.device)
    name = device_name(device)
    load_before = os.getloadavg()
    data = load_data(params, device)
    bench = Bench(params, data, device, args.scopes)
    setup_rss = peak_rss_mib()
    rss_per_stage = reset_peak_rss()
    epochs, rss, gpu = measure(bench, args.repeats)
    stages = stage_figures(epochs, rss, gpu)
    flops = bench.ce_step_flops()
    load_after = os.getloadavg()
    result = {
        "command": " ".join(
            ["uv run python benchmarks/speed.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores",
        "platform": platform.platform(),
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "bf16": use_bf16(device, params.runtime.precision),
        "commit": git_commit(),
        "conditions": {
            "params": str(args.params),
            "smoke": args.smoke,
            "overrides": overrides,
            "model": params.model.name,
            "train_samples": bench.n,
            "image_shape": list(data.train_images.shape[1:]),
            "batch_size": params.model.batch_size,
            "ssl_batch_size": params.ssl_train.batch_size,
            "ssl_labeled_fraction": statistics.mean(bench.labeled_fraction),
            "retrain_epoch": params.retrain.synthetic_start,
            "retrain_neighbours": params.retrain.neighbours,
            "seed": params.runtime.seed,
            "repeats": args.repeats,
        },
        "load_before": load_before,
        "load_after": load_after,
        "peak_rss_setup_mib": setup_rss,
        "rss_peak_per_stage": rss_per_stage,
        "ce_step": ce_step_figures(
            flops, stages["ce"]["seconds"], params, bench.n, name if device.type == "cuda" else None
        ),
        "stages": stages,
    }
    out = Path(args.out)
    write_json(out / "speed.json", result)
    write_text(out / "speed.md", to_markdown(result))
    print(to_markdown(result))
    print(f"wrote {out / 'speed.json'} and {out / 'speed.md'}")


if __name__ == "__main__":
    main()
