"""CPU-profile benchmark (BENCHMARKS.md): every method on the Fashion-MNIST 10k subset with small_cnn,
one seed, one 15-epoch budget per training role, run through the whole DAG in one process.

Methods are presets (`labelsieve` is params.yaml as it is: the full pipeline). Per run it records the
last-epoch test accuracy of the final model, the test accuracy at the epoch chosen on the noisy
validation split, purify's detection figures (F1, AUROC, relabel accuracy) where purify decided
anything, the seconds per epoch of each training stage and the wall time. Epoch times are printed as
ratios to the plain CE epoch measured in the same process (the `ce`/`clean` runs).

    uv run python benchmarks/cpu_profile.py         # 7 methods x sym50, asym40 (~35 min on 2 cores)
    uv run python benchmarks/cpu_profile.py --methods ce,smr --noise sym50

Each finished run is saved to benchmarks/results/cpu_profile/<noise>-<method>.json and skipped next time,
so the table can be built over several sittings; --fresh reruns.
"""

from __future__ import annotations

import argparse
import json
import shutil
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
from labelsieve.stages import (  # noqa: E402
    co_divide,
    group_regularize,
    ingest,
    inject_noise,
    purify,
    retrain,
    ssl_train,
    warmup,
)

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
METHODS = ("ce", "clean", "dividemix", "smr", "grip", "sssl", "labelsieve")
TRAINING = ("warmup", "ssl", "group", "model")  # output folders of the training stages, in DAG order


def run_method(method: str, noise: str, work: Path) -> dict:
    """Run the whole DAG (ingest shared) for one method and noise setting; returns the figures."""
    noise_overrides = [] if method == "clean" else NOISE[noise]
    presets = [] if method == "labelsieve" else [method]
    params = load_params(
        REPO / "params.yaml", presets=presets, overrides=["runtime.progress=never", *noise_overrides]
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
    group_regularize.run(params, **inputs, networks_dir=run_dir / "ssl", out_dir=run_dir / "group")
    purified = purify.run(
        params, **inputs, ssl_dir=run_dir / "ssl", group_dir=run_dir / "group", out_dir=run_dir / "purified"
    )
    retrain.run(params, **inputs, purified_dir=run_dir / "purified", out_dir=run_dir / "model")
    wall = time.perf_counter() - start
    histories = {name: json.loads((run_dir / name / "history.json").read_text()) for name in TRAINING}
    final = [h for name in TRAINING for h in histories[name][-1:]][-1]  # the last training stage that ran
    last_stage = [name for name in TRAINING if histories[name]][-1]
    best = max(histories[last_stage], key=lambda h: h["val_acc"])

    def seconds(name: str, kind: str | None = None) -> float | None:
        times = [h["train_seconds"] for h in histories[name] if kind is None or h.get("kind") == kind]
        return statistics.median(times) if times else None

    ran_purify = params.ssl_train.epochs > 0 or params.group_regularize.epochs > 0
    return {
        "method": method,
        "noise": noise,
        "final_stage": last_stage,
        "last_test_acc": final["test_acc"],
        "best_val_epoch": best["epoch"],
        "best_val_test_acc": best["test_acc"],
        "ce_epoch_seconds": seconds("warmup") / params.warmup.networks if histories["warmup"] else None,
        "ssl_epoch_seconds": seconds("ssl", "mixmatch"),
        "grip_epoch_seconds": seconds("group"),
        "retrain_epoch_seconds": seconds("model"),
        "purify": {
            k: purified.get(k)
            for k in (
                "f1",
                "precision",
                "recall",
                "auroc_clean_prob",
                "auroc_js",
                "relabel_accuracy",
                "noise_rate_after",
                "kept_fraction",
            )
        }
        if ran_purify
        else None,
        "wall_seconds": wall,
        "threads": torch.get_num_threads(),
    }


def _ratio(seconds: float | None, ce_epoch: float | None) -> str:
    if seconds is None:
        return ""
    return f"{seconds:.1f}" + (f" ({seconds / ce_epoch:.1f}x)" if ce_epoch else "")


def table(results: list[dict], ce_epoch: float | None) -> str:
    """A markdown table of the runs, with epoch times as ratios to the plain CE epoch."""
    lines = [
        "| noise | method | last-epoch test acc | test acc, best-val epoch | detect F1 / AUROC / relabel acc "
        "| SSL epoch s | GRIP epoch s | retrain epoch s | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r.get("purify")
        detection = (
            ""
            if not p
            else (
                f"{p['f1']:.3f} / {p['auroc_clean_prob']:.4f} / "
                + ("-" if p["relabel_accuracy"] is None else f"{p['relabel_accuracy']:.3f}")
            )
        )
        epochs = [_ratio(r[f"{name}_epoch_seconds"], ce_epoch) for name in ("ssl", "grip", "retrain")]
        cells = [
            r["noise"],
            r["method"],
            f"{100 * r['last_test_acc']:.2f}",
            f"{100 * r['best_val_test_acc']:.2f}",
            detection,
            *epochs,
            f"{r['wall_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--noise", default="sym50,asym40")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cpu_profile"))
    parser.add_argument("--fresh", action="store_true", help="rerun runs that already have results")
    parser.add_argument("--params", default=str(REPO / "params.yaml"), help="base params (copied at start)")
    args = parser.parse_args()
    out = Path(args.out)
    results = []
    with tempfile.TemporaryDirectory(prefix="labelsieve-bench-") as tmp:
        shutil.copy(args.params, Path(tmp) / "params.yaml")  # immune to edits while it runs
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
