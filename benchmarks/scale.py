"""Scale of co-divide and purify beyond the forward passes (docs/benchmarks.md "Scale": must be O(N)).

For each N, in a fresh subprocess so that the peak RSS is that N's own, it builds seeded synthetic outputs
of K = 2 networks on C = 10 classes with 45% of the given labels wrong: logits with a margin on the true
class, so the per-sample losses form a small-loss clean mode (55%) and a large-loss noisy mode (45%). From
those inputs it times, `--repeats` times each (median reported):
- co-divide as `stages.co_divide.divide` does it after the evaluation pass (`co_divide.divide_losses`),
  for each network: min-max normalisation, the seeded 2-component GMM fit (one per given class with
  `co_divide.per_class`, the default), the clean-probability posterior and the partition;
- purify as `stages.purify` does it after the forward passes: `stages.purify.purify` (confident
  learning's thresholds, confident joint and noise matrix, the posterior that each label is wrong and the
  flag at τ, the relabel gate, and the JS divergence to the averaged class soft labels S).
The losses, the softmax and S (which `group_regularize` estimates) are inputs, not timed.

Times are the process's CPU seconds (`time.process_time`), which a busy machine inflates far less than
wall seconds; with one thread they equal wall time on an idle core. Wall, user and kernel seconds and
the minor page faults are kept beside them: past 32 MiB glibc serves every temporary from fresh mmap'd
pages, so at N = 1e7 much of the time is the kernel's, not the maths'. Writes scale.json and scale.md to
`--out` (default benchmarks/results).

    OMP_NUM_THREADS=1 uv run python benchmarks/scale.py                    # N = 1e5, 1e6, 1e7: 2 min, 4.3 GiB
    OMP_NUM_THREADS=1 uv run python benchmarks/scale.py --sizes 1e4,1e5    # smoke run, seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import cpu_model, git_commit, parse_sizes, peak_rss_mib  # noqa: E402
from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.config import Params, load_params  # noqa: E402
from labelsieve.maths import division, grip, purification  # noqa: E402
from labelsieve.package import labelsieve_version  # noqa: E402
from labelsieve.seeding import torch_generator  # noqa: E402
from labelsieve.stages import co_divide, purify  # noqa: E402

NUM_NETWORKS = 2  # K: co-divide and purify both run over the two co-trained networks
NUM_CLASSES = 10  # C
NOISE_RATE = 0.45  # share of given labels that are wrong (sym50 flips about 45%)
MARGIN = 4.0  # logit added to the true class; noise is N(0, 1) per logit
CHUNK = 1 << 20  # rows generated at a time, so that building the inputs never sets the peak RSS
WARMUP_N = 4096  # one untimed pass at this size first, so lazy initialisation is not timed


def synthetic_outputs(n: int, *, seed: int) -> dict[str, torch.Tensor]:
    """Seeded stand-ins for what the forward passes give the two stages.

    Returns:
        ``labels`` (N,) int64 given labels, ``true_labels`` (N,), ``losses`` (K, N) float32 CE against
        the given labels, ``probs`` (K, N, C) float32 softmax, ``soft_labels`` (K, C, C) float32 S per
        network, estimated from ``probs`` as `group_regularize.initial_state` does.
    """
    g = torch_generator(seed, "scale", str(n), "labels")
    true_labels = torch.randint(NUM_CLASSES, (n,), generator=g)
    wrong = torch.rand(n, generator=g) < NOISE_RATE
    # A wrong label is any other class: shift by 1..C-1.
    shift = torch.randint(1, NUM_CLASSES, (n,), generator=g)
    labels = torch.where(wrong, (true_labels + shift) % NUM_CLASSES, true_labels)
    losses = torch.empty(NUM_NETWORKS, n)
    probs = torch.empty(NUM_NETWORKS, n, NUM_CLASSES)
    soft_labels = []
    for k in range(NUM_NETWORKS):
        g = torch_generator(seed, "scale", str(n), "network", str(k))
        state = grip.SoftLabelState.create(NUM_CLASSES)
        for start in range(0, n, CHUNK):
            rows = slice(start, min(start + CHUNK, n))
            logits = torch.randn(rows.stop - start, NUM_CLASSES, generator=g)  # (B, C)
            logits[torch.arange(rows.stop - start), true_labels[rows]] += MARGIN
            losses[k, rows] = division.per_sample_loss(logits, labels[rows])
            probs[k, rows] = torch.softmax(logits, dim=1)
            state.accumulate(probs[k, rows], labels[rows])
        state.end_epoch()
        soft_labels.append(state.soft_labels)
    return {
        "labels": labels,
        "true_labels": true_labels,
        "losses": losses,
        "probs": probs,
        "soft_labels": torch.stack(soft_labels),
    }


def co_divide_part(losses: torch.Tensor, labels: torch.Tensor, params: Params, *, tag: str) -> Any:
    """`co_divide.divide` from its per-sample losses (K, N) on: `co_divide.divide_losses`, history off."""
    return co_divide.divide_losses(losses, labels, params, tag=tag, min_size=params.ssl_train.batch_size)


def purify_part(
    probs: torch.Tensor, soft_labels: torch.Tensor, labels: torch.Tensor, params: Params
) -> tuple[np.ndarray, np.ndarray]:
    """`purify.purify` after the forward passes, as `purify.run` does it: the ensemble mean is both the
    final prediction and the training-dynamics stand-in (its probabilities and margins).

    Args:
        probs: (K, N, C) softmax of each network.
        soft_labels: (K, C, C) class soft labels S of each network.
        labels: (N,) given labels.

    Returns:
        decision (N,) int8 and new_labels (N,) int64.
    """
    final = probs.mean(dim=0)
    mean = final.double().numpy()
    dynamics = {"probs": mean, "margin": purification.margins(labels.numpy(), mean)}
    result = purify.purify(labels, final, soft_labels, dynamics, params)
    return result.decision, result.new_labels


def timed(fn: Callable[[], Any], repeats: int) -> tuple[dict[str, list[float]], Any]:
    """Run fn() `repeats` times; per run: CPU, user, system and wall seconds and minor page faults.

    Returns:
        ``({"cpu": [...], "user": [...], "sys": [...], "wall": [...], "page_faults": [...]}, last result)``.
    """
    runs: dict[str, list[float]] = {"cpu": [], "user": [], "sys": [], "wall": [], "page_faults": []}
    result = None
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_SELF)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        result = fn()
        runs["wall"].append(time.perf_counter() - wall_start)
        runs["cpu"].append(time.process_time() - cpu_start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        runs["user"].append(after.ru_utime - before.ru_utime)
        runs["sys"].append(after.ru_stime - before.ru_stime)
        runs["page_faults"].append(after.ru_minflt - before.ru_minflt)
    return runs, result


def figures(name: str, runs: dict[str, list[float]], n: int) -> dict[str, Any]:
    """Medians of one part's runs, named ``<name>_...``; the per-run lists go under ``<name>_runs``."""
    cpu = statistics.median(runs["cpu"])
    return {
        f"{name}_cpu_s": cpu,
        f"{name}_ns_per_sample": cpu / n * 1e9,
        # The fastest run is the one least disturbed by other processes (cache evictions, preemption).
        f"{name}_min_cpu_s": min(runs["cpu"]),
        f"{name}_wall_s": statistics.median(runs["wall"]),
        # User time alone is the maths itself, free of the kernel's page-fault cost.
        f"{name}_user_s": statistics.median(runs["user"]),
        # Kernel time is mostly page faults: fresh pages for temporaries the allocator got from mmap.
        f"{name}_sys_s": statistics.median(runs["sys"]),
        f"{name}_page_faults_per_sample": statistics.median(runs["page_faults"]) / n,
        f"{name}_runs": runs,
    }


def measure_one(n: int, params: Params, *, seed: int, repeats: int) -> dict[str, Any]:
    """Time both parts at one N and read the peak RSS; meant to run alone in its own process."""
    warm = synthetic_outputs(WARMUP_N, seed=seed)
    split = co_divide_part(warm["losses"], warm["labels"], params, tag="warmup")
    purify_part(warm["probs"], warm["soft_labels"], warm["labels"], params)
    del warm, split
    baseline = peak_rss_mib()

    inputs = synthetic_outputs(n, seed=seed)
    input_mib = sum(t.numel() * t.element_size() for t in inputs.values()) / 2**20
    divide_runs, split = timed(
        lambda: co_divide_part(inputs["losses"], inputs["labels"], params, tag="scale"), repeats
    )
    peak_after_divide = peak_rss_mib()
    purify_runs, (decision, _) = timed(
        lambda: purify_part(inputs["probs"], inputs["soft_labels"], inputs["labels"], params),
        repeats,
    )
    peak = peak_rss_mib()

    clean = inputs["labels"] == inputs["true_labels"]
    labeled = split.labeled
    return {
        "n": n,
        "threads": torch.get_num_threads(),
        **figures("co_divide", divide_runs, n),
        **figures("purify", purify_runs, n),
        "baseline_rss_mib": baseline,
        "input_mib": input_mib,
        "peak_rss_after_co_divide_mib": peak_after_divide,
        "peak_rss_mib": peak,
        "above_baseline_mib": peak - baseline,
        # Sanity figures: the synthetic mix behaves like a noisy training set.
        "gmm_iterations": [max(fit.gmm.n_iter for fit in fits) for fits in split.fits],
        "labeled_fraction": float(labeled.float().mean()),
        "labeled_precision": float((labeled & clean).sum() / labeled.sum().clamp_min(1)),
        "decisions": {
            name: int((decision == code).sum()) for code, name in enumerate(purification.DECISION_NAMES)
        },
    }


def run_isolated(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run `measure_one(n)` in a fresh interpreter and return its JSON result.

    Linux hands the launcher's peak RSS to the child's ``ru_maxrss`` at exec, so the child's figures are
    its own only while its baseline exceeds the launcher's peak; `main` checks that.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--one", str(n)]
    command += ["--repeats", str(args.repeats), "--seed", str(args.seed), "--params", args.params]
    command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"N = {n}: subprocess failed with exit status {done.returncode}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def growth(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """time(N2) / time(N1) for consecutive sizes; linear growth gives the size ratio."""
    out = []
    for small, large in itertools.pairwise(rows):
        entry = {"from_n": small["n"], "to_n": large["n"], "size_ratio": large["n"] / small["n"]}
        for key in (
            "co_divide_cpu_s",
            "purify_cpu_s",
            "co_divide_min_cpu_s",
            "purify_min_cpu_s",
            "co_divide_user_s",
            "purify_user_s",
            "co_divide_wall_s",
            "purify_wall_s",
        ):
            entry[key.removesuffix("_s") + "_ratio"] = large[key] / small[key]
        # RSS grows in pages and allocator arenas: below 1 MiB the ratio says nothing.
        small_rss = small["above_baseline_mib"]
        entry["above_baseline_mib_ratio"] = (
            large["above_baseline_mib"] / small_rss if small_rss >= 1 else None
        )
        out.append(entry)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The figures as a markdown table, with the conditions they were taken under."""
    lines = [
        "# Scale: co-divide and purify beyond the forward passes",
        "",
        f"{result['machine']}; torch {result['torch']}; {result['threads']} thread(s); "
        f"seed {result['seed']}; "
        f"commit {result['commit']}; median of {result['repeats']} CPU-time runs; K = {NUM_NETWORKS} "
        f"networks, C = {NUM_CLASSES}; load average {result['load_before'][0]:.2f} before, "
        f"{result['load_after'][0]:.2f} after.",
        "",
        "| N | co-divide s | co-divide ns/sample | purify s | purify ns/sample | kernel share "
        "| wall s | peak RSS MiB | above baseline MiB | inputs MiB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["sizes"]:
        lines.append(
            f"| {row['n']:.0e} | {row['co_divide_cpu_s']:.4f} | {row['co_divide_ns_per_sample']:.1f} "
            f"| {row['purify_cpu_s']:.4f} | {row['purify_ns_per_sample']:.1f} "
            f"| {row['co_divide_sys_s'] / row['co_divide_cpu_s']:.0%} / "
            f"{row['purify_sys_s'] / row['purify_cpu_s']:.0%} "
            f"| {row['co_divide_wall_s']:.3f} / {row['purify_wall_s']:.3f} | {row['peak_rss_mib']:.0f} "
            f"| {row['above_baseline_mib']:.0f} | {row['input_mib']:.0f} |"
        )
    if result["growth"]:
        lines += [
            "",
            "Growth, time(N2) / time(N1): CPU seconds (median) / fastest run / user seconds only "
            "(linear = the size ratio):",
            "",
            "| N1 -> N2 | size ratio | co-divide | purify | RSS above baseline |",
            "|---|---:|---:|---:|---:|",
        ]
        for g in result["growth"]:
            rss_ratio = g["above_baseline_mib_ratio"]
            lines.append(
                f"| {g['from_n']:.0e} -> {g['to_n']:.0e} | {g['size_ratio']:.0f}x "
                f"| {g['co_divide_cpu_ratio']:.2f}x / {g['co_divide_min_cpu_ratio']:.2f}x "
                f"/ {g['co_divide_user_ratio']:.2f}x "
                f"| {g['purify_cpu_ratio']:.2f}x / {g['purify_min_cpu_ratio']:.2f}x "
                f"/ {g['purify_user_ratio']:.2f}x "
                f"| {'n/a' if rss_ratio is None else f'{rss_ratio:.2f}x'} |"
            )
    lines += [
        "",
        "Times are CPU seconds of the process (user + kernel; the kernel share is mostly page faults); "
        "pairs are co-divide / purify. ns/sample should stay flat; it steps up where the working set "
        "leaves the CPU's last-level cache and where temporaries pass glibc's 32 MiB mmap threshold "
        "(from then on every temporary is fresh, page-faulted memory), so judge linearity between "
        "sizes past both steps. Peak RSS is `ru_maxrss` of a fresh process per N; the baseline is "
        "taken after the imports and an untimed warm-up pass.",
    ]
    if result["note"]:
        lines += ["", f"Note: {result['note']}"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=parse_sizes("1e5,1e6,1e7"), help="N values, e.g. 1e4,1e5"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each part per N (median)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 keeps torch's default")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="params file (stage knobs)")
    parser.add_argument("--note", default="", help="conditions to record, e.g. 'machine shared'")
    parser.add_argument(
        "--out", default=str(REPO / "benchmarks" / "results"), help="folder for scale.json and scale.md"
    )
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one N, print JSON
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    """Measure every N in its own process, write scale.json and scale.md, and print the table."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    params = load_params(args.params, overrides=["runtime.progress=never"])
    if args.one is not None:
        print(json.dumps(measure_one(args.one, params, seed=args.seed, repeats=args.repeats)))
        return

    load_before = os.getloadavg()
    launcher_rss = peak_rss_mib()
    rows = []
    for n in args.sizes:
        row = run_isolated(n, args)
        rows.append(row)
        if row["baseline_rss_mib"] <= launcher_rss:
            print(f"warning: N = {n}: baseline RSS may be the launcher's ({launcher_rss:.0f} MiB)")
        print(
            f"N = {n:.0e}: co-divide {row['co_divide_cpu_s']:.4f} s ({row['co_divide_ns_per_sample']:.1f} "
            f"ns/sample), purify {row['purify_cpu_s']:.4f} s ({row['purify_ns_per_sample']:.1f} ns/sample), "
            f"peak RSS {row['peak_rss_mib']:.0f} MiB ({row['above_baseline_mib']:.0f} above baseline)",
            flush=True,
        )
    result = {
        "machine": f"{cpu_model()} ({platform.machine()}, {os.cpu_count()} cores, {platform.system()})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "labelsieve": labelsieve_version(),
        "commit": git_commit(),
        "threads": rows[0]["threads"],
        "seed": args.seed,
        "repeats": args.repeats,
        "timer": "process CPU seconds (time.process_time), median; wall seconds kept beside",
        "sizes": rows,
        "growth": growth(rows),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "launcher_peak_rss_mib": launcher_rss,
        "note": args.note,
    }
    out = Path(args.out)
    write_json(out / "scale.json", result)
    table = markdown(result)
    write_text(out / "scale.md", table)
    print(table)
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")


if __name__ == "__main__":
    main()
