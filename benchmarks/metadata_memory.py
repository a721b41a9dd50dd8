"""Memory per image of the metadata every stage holds: the store's sample table and purify's manifest.

Pixels never count towards a stage's memory (they stay memory-mapped), so at 10^6 and more images the
per-image metadata is what grows (README "Scale"). Two steps, each timed in a fresh process over a
synthetic store of N samples (1 x 1 px images, so only the metadata has size) with 40% symmetric noise:

- `load`: `load_dataset`, which parses and checks samples.csv into the sample table (ids, sources,
  hashes, labels);
- `training_data`: `TrainingData.load` on the streamed path, what every training stage starts with (the
  table, the noisy and true labels, the channel statistics);
- `manifest`: purify's manifest.csv written from the stage's arrays (`labelsieve.stages.purify`).

Per step: seconds, the peak resident memory (VmHWM, reset at the step's start) and the anonymous
memory still held after it, both above the process's memory at the step's start, in MiB and in bytes
per sample. Writes metadata_memory.{json,md} to `--out`.

    uv run python benchmarks/metadata_memory.py                     # 10^6 samples, about a minute
    uv run python benchmarks/metadata_memory.py --rows 1e4 --out /tmp/x   # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.environment import (  # noqa: E402
    cpu_model,
    git_commit,
    parse_sizes,
    reset_peak_rss,
    status_kib,
)
from labelsieve.atomic import write_csv, write_json, write_npy, write_text  # noqa: E402
from labelsieve.config import load_params  # noqa: E402
from labelsieve.data import store  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.stages import inject_noise  # noqa: E402

CLASSES = [f"class{k}" for k in range(10)]
STEPS = ("load", "training_data", "manifest")


def make_store(root: Path, n: int) -> None:
    """A valid dataset store of `n` samples (80% train, 10% val, 10% test) with 1 x 1 px images, and
    `inject_noise`'s labels for it under ``root / "labels"`` (40% symmetric)."""
    counts = {"train": n * 8 // 10, "val": n // 10}
    counts["test"] = n - counts["train"] - counts["val"]

    def rows() -> Any:
        i = 0
        for split, count in counts.items():
            for index in range(count):
                sha = hashlib.sha256(i.to_bytes(8, "little")).hexdigest()
                label = i % len(CLASSES)
                yield sha[:16], split, index, label, f"/crawl/{CLASSES[label]}/img{i:08d}.jpg", sha
                i += 1

    write_csv(root / "samples.csv", store.SAMPLE_COLUMNS, rows())
    for split, count in counts.items():
        write_npy(root / f"{split}.npy", np.zeros((count, 1, 1, 1), np.uint8))
    write_json(root / "classes.json", CLASSES)
    write_json(
        root / "dataset.json",
        {
            "format_version": store.FORMAT_VERSION,
            "source": "synthetic",
            "image_size": 1,
            "channels": 1,
            "num_classes": len(CLASSES),
            "counts": counts,
            "content_hash": "0" * 64,
        },
    )
    params = load_params(None, overrides=["inject_noise.mode=symmetric", "inject_noise.rate=0.4"])
    inject_noise.run(params, dataset_dir=root, out_dir=root / "labels")


def status_mib(field: str) -> float:
    """A memory field of this process's /proc/self/status, MiB."""
    return status_kib("self", field) / 1024


def start_counting() -> tuple[float, float]:
    """Reset the peak resident set (VmHWM) to the current one; return the anon and resident MiB now.

    VmHWM, not `ru_maxrss`: the latter also keeps the peak of the parent this process was forked from.
    """
    if not reset_peak_rss():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): this benchmark needs Linux")
    return status_mib("RssAnon"), status_mib("VmRSS")


def measure(step: str, root: Path) -> dict[str, float]:
    """Run one step in this (fresh) process; its seconds and memory above the start."""
    from labelsieve.stages import purify

    start_anon, start_rss = start_counting()
    begin = time.perf_counter()
    if step == "training_data":
        dataset = TrainingData.load(root, root / "labels", torch.device("cpu"), "stream").dataset
    else:
        dataset = store.load_dataset(root)
    if step == "manifest":
        n = len(dataset.samples["train"]["id"])
        rng = np.random.default_rng(0)
        labels = dataset.samples["train"]["label"]
        arrays = {
            "given_label": labels,
            "decision": rng.integers(0, 3, n).astype(np.int8),
            "new_label": labels,
            "predicted": labels,
            **{name: rng.random(n) for name in ("noise_score", "confidence", "js_given", "clean_prob")},
        }
        data = SimpleNamespace(dataset=dataset, train_true_labels=None)
        start_anon, start_rss = start_counting()  # the table and the arrays are the stage's, not the step's
        begin = time.perf_counter()
        write_csv(root / "manifest.csv", purify._header(data), purify._rows(arrays, data))
    seconds = time.perf_counter() - begin
    return {
        "seconds": seconds,
        "peak_mib": status_mib("VmHWM") - start_rss,
        "held_mib": status_mib("RssAnon") - start_anon,
    }


def main(argv: list[str] | None = None) -> None:
    """Build the store once, measure each step in its own process, write the JSON and the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=lambda text: parse_sizes(text)[0], default=1_000_000)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--measure", nargs=2, metavar=("STEP", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]))))
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        make_store(Path(tmp), args.rows)
        figures = {}
        for step in STEPS:
            command = [sys.executable, __file__, "--measure", step, tmp]
            figures[step] = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
    result = {"rows": args.rows, "cpu": cpu_model(), "commit": git_commit(), "steps": figures}
    lines = [
        f"# Metadata memory at {args.rows:,} samples",
        "",
        f"{result['cpu']}; commit {result['commit']}; each step in a fresh process.",
        "",
        "| step | seconds | peak MiB | held MiB | peak bytes per sample | held bytes per sample |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step, f in figures.items():
        per = {key: f[key] * 2**20 / args.rows for key in ("peak_mib", "held_mib")}
        lines.append(
            f"| {step} | {f['seconds']:.1f} | {f['peak_mib']:.0f} | {f['held_mib']:.0f} | "
            f"{per['peak_mib']:.0f} | {per['held_mib']:.0f} |"
        )
    out = Path(args.out)
    write_json(out / "metadata_memory.json", result)
    write_text(out / "metadata_memory.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
