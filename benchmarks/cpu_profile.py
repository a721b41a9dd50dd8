"""CPU-profile benchmark of the co-training core (BENCHMARKS.md): ce, clean, dividemix and smr at sym50 and
asym40 on the Fashion-MNIST 10k subset with small_cnn, one seed, one 15-epoch budget.

Prints and writes, from one process: the last-epoch test accuracy, the test accuracy at the epoch chosen on
the noisy validation split, the SSL epoch time (co-divide of both networks + MixMatch for both) and the
warm-up epoch time as ratios to a plain CE epoch of the same network, and wall time per run.

    uv run python benchmarks/cpu_profile.py                      # everything (about 40 min on 2 cores)
    uv run python benchmarks/cpu_profile.py --methods ce,smr --noise sym50

Each finished run is saved to benchmarks/results/cpu_profile/<noise>-<method>.json and skipped next time,
so the table can be built over several sittings; --fresh reruns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.stages import co_divide, ingest, inject_noise, ssl_train, warmup  # noqa: E402

NOISE = {
    "sym50": ["inject_noise.mode=symmetric", "inject_noise.rate=0.5"],
    "asym40": [
        "inject_noise.mode=asymmetric",
        "inject_noise.rate=0.4",
        "inject_noise.class_map=fashion_mnist",
    ],
    "inst40": ["inject_noise.mode=instance", "inject_noise.rate=0.4"],
    "sym80": ["inject_noise.mode=symmetric", "inject_noise.rate=0.8"],
}
METHODS = ("ce", "clean", "dividemix", "smr")


def run_method(method: str, noise: str, work: Path) -> dict:
    """Run ingest (shared) -> inject_noise -> warmup -> co_divide -> ssl_train for one method and noise."""
    noise_overrides = [] if method == "clean" else NOISE[noise]
    params = load_params(
        REPO / "params.yaml", presets=[method], overrides=["runtime.progress=never", *noise_overrides]
    )
    dataset = work / "dataset"
    if not dataset.exists():
        ingest.run(params, out_dir=dataset)
    run_dir = work / f"{noise}-{method}"
    start = time.perf_counter()
    inject_noise.run(params, dataset_dir=dataset, out_dir=run_dir / "labels")
    inputs = {"dataset_dir": dataset, "labels_dir": run_dir / "labels"}
    warmup.run(params, **inputs, out_dir=run_dir / "warmup")
    co_divide.run(params, **inputs, warmup_dir=run_dir / "warmup", out_dir=run_dir / "divide")
    ssl_train.run(
        params,
        **inputs,
        warmup_dir=run_dir / "warmup",
        divide_dir=run_dir / "divide",
        out_dir=run_dir / "ssl",
    )
    wall = time.perf_counter() - start
    history = json.loads((run_dir / "warmup" / "history.json").read_text())
    history += json.loads((run_dir / "ssl" / "history.json").read_text())
    best = max(history, key=lambda h: h["val_acc"])
    ssl = [h["train_seconds"] for h in history if h.get("kind") == "mixmatch"]
    warm = [h["train_seconds"] for h in history[: params.warmup.epochs]]
    return {
        "method": method,
        "noise": noise,
        "last_test_acc": history[-1]["test_acc"],
        "best_val_epoch": best["epoch"],
        "best_val_test_acc": best["test_acc"],
        "warmup_epoch_seconds": statistics.median(warm) / params.warmup.networks if warm else None,
        "ssl_epoch_seconds": statistics.median(ssl) if ssl else None,
        "wall_seconds": wall,
        "epochs": params.total_epochs,
        "threads": torch.get_num_threads(),
    }


def table(results: list[dict], ce_epoch: float | None) -> str:
    """A markdown table of the runs, with epoch times as ratios to the plain CE epoch."""
    lines = [
        "| noise | method | last-epoch test acc | test acc, best-val epoch | SSL epoch s (x CE) | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        ssl = "" if r["ssl_epoch_seconds"] is None else f"{r['ssl_epoch_seconds']:.1f}"
        if ssl and ce_epoch:
            ssl += f" ({r['ssl_epoch_seconds'] / ce_epoch:.1f}x)"
        lines.append(
            f"| {r['noise']} | {r['method']} | {100 * r['last_test_acc']:.2f} | "
            f"{100 * r['best_val_test_acc']:.2f} | {ssl} | {r['wall_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--noise", default="sym50,asym40")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_profile"))
    parser.add_argument("--fresh", action="store_true", help="rerun runs that already have results")
    args = parser.parse_args()
    out = Path(args.out)
    results = []
    with tempfile.TemporaryDirectory(prefix="labelsieve-bench-") as tmp:
        for noise in args.noise.split(","):
            for method in args.methods.split(","):
                path = out / f"{noise}-{method}.json"
                if path.exists() and not args.fresh:
                    results.append(json.loads(path.read_text()))
                    continue
                result = run_method(method, noise, Path(tmp))
                write_json(path, result)
                results.append(result)
                print(json.dumps(result), flush=True)
    ce = [
        r["warmup_epoch_seconds"]
        for r in results
        if r["method"] in ("ce", "clean") and r["warmup_epoch_seconds"]
    ]
    ce_epoch = statistics.median(ce) if ce else None
    text = table(results, ce_epoch)
    if ce_epoch:
        text += f"\nPlain CE epoch (small_cnn, 9,500 images, median): {ce_epoch:.2f} s\n"
    write_text(out / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
