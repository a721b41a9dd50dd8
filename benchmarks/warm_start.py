"""Does `warmup.init_from: latest` help a scheduled run on a second crawl? Digits, cold against warm.

Per seed (``--seeds``), with the `digits` preset (symmetric noise 0.4 injected) and one thread:

1. crawl 1 (the first half of each digits class, written as PNG folders) is ingested into an
   accumulated store, the whole DAG trains cold and `publish` publishes v1 to a local folder;
2. crawl 2 (the other half) is appended, then the DAG runs on the grown store three ways:
   ``cold`` (fresh networks), ``warm`` (the warmup networks start from v1, same epochs) and
   ``warm_short`` (from v1, ``--short-epochs`` warmup epochs instead of the preset's 4).

Each run's figures: the final test accuracy (evaluate's ``test_acc``, on the grown store's test split),
warmup's test accuracy, and the seconds of the warmup stage and of the whole DAG, as CPU seconds of
this process (the stages run in it on one torch thread, so these hardly move with other load on the
machine) and as wall seconds. Writes `--out` (default benchmarks/results/warm_start.json) with every run
and the means per variant. Run from the repository root:

    uv run python benchmarks/warm_start.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labelsieve import publish
from labelsieve.atomic import write_json
from labelsieve.config import Params, load_params
from labelsieve.crawls import ingest_new_crawls
from labelsieve.engine.device import apply_threads
from labelsieve.stages import STAGES

VARIANTS = ("cold", "warm", "warm_short")


def write_crawls(root: Path) -> None:
    """Digits as two crawls of PNG folders: each class's first half in crawl 1, the rest in crawl 2."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for label in range(10):
        rows = np.flatnonzero(digits.target == label)
        half = len(rows) // 2
        for crawl, part in (("2026-11-20", rows[:half]), ("2026-11-21", rows[half:])):
            folder = root / crawl / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for row in part:
                Image.fromarray(images[row], mode="L").save(folder / f"{row}.png")


def train(params: Params, dataset_dir: Path, work: Path) -> dict[str, Any]:
    """Every stage after ingest on `dataset_dir`; evaluate's headline figures plus the timings."""
    produced = {STAGES["ingest"].out_dir: dataset_dir}
    seconds: dict[str, dict[str, float]] = {}
    summary: dict[str, Any] = {}
    for name, stage in list(STAGES.items())[1:]:
        inputs = {key: produced[path] for key, path in stage.inputs.items()}
        produced[stage.out_dir] = work / name
        cpu, wall = time.process_time(), time.perf_counter()
        summary = stage.run(params, **inputs, out_dir=work / name)
        seconds[name] = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    init = json.loads((work / "warmup" / "init.json").read_text())
    history = json.loads((work / "warmup" / "history.json").read_text())
    return {
        "test_acc": summary["test_acc"],
        "warmup_test_acc": history[-1]["test_acc"] if history else None,
        "init_version": init["version"],
        "warmup_cpu_s": seconds["warmup"]["cpu"],
        "warmup_wall_s": seconds["warmup"]["wall"],
        "total_cpu_s": sum(s["cpu"] for s in seconds.values()),
        "total_wall_s": sum(s["wall"] for s in seconds.values()),
    }


def one_seed(seed: int, crawls: Path, work: Path, short_epochs: int) -> dict[str, Any]:
    """v1 on crawl 1, then the three variants on crawls 1 + 2."""
    store, models = work / "store", work / "models"
    base = ["runtime.progress=never", "runtime.device=cpu", "runtime.threads=1", f"runtime.seed={seed}"]
    base += [f"ingest.append_to={store}", f"publish.to={models}", "publish.max_drop=1"]
    params = load_params(None, presets=["digits"], overrides=base)
    (crawls_1 := work / "crawl1").mkdir()
    (crawls_1 / "2026-11-20").symlink_to(crawls / "2026-11-20", target_is_directory=True)
    ingest_new_crawls(params, str(crawls_1), out_dir=work / "dataset1")
    first = train(params, work / "dataset1", work / "run1")
    evaluate_dir, model_dir = work / "run1" / "evaluate", work / "run1" / "retrain"
    published = publish.run(
        params,
        dataset_dir=work / "dataset1",
        model_dir=model_dir,
        evaluate_dir=evaluate_dir,
        out_dir=work / "p1",
    )
    ingest_new_crawls(params, str(crawls), out_dir=work / "dataset2")
    runs = {"v1": {**first, "version": published["version"]}}
    settings = {
        "cold": [],
        "warm": ["warmup.init_from=latest"],
        "warm_short": ["warmup.init_from=latest", f"warmup.epochs={short_epochs}"],
    }
    for variant in VARIANTS:
        varied = load_params(None, presets=["digits"], overrides=[*base, *settings[variant]])
        runs[variant] = train(varied, work / "dataset2", work / variant)
        print(json.dumps({"seed": seed, "variant": variant, **runs[variant]}), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--short-epochs", type=int, default=1, help="warm_short's warmup epochs")
    parser.add_argument("--out", default="benchmarks/results/warm_start.json")
    args = parser.parse_args()
    apply_threads(1)
    results: dict[str, Any] = {"seeds": {}, "short_epochs": args.short_epochs}
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        crawls = Path(tmp) / "crawls"
        write_crawls(crawls)
        for seed in args.seeds:
            (work := Path(tmp) / f"seed{seed}").mkdir()
            results["seeds"][str(seed)] = one_seed(seed, crawls, work, args.short_epochs)
    keys = ("test_acc", "warmup_test_acc", "warmup_cpu_s", "total_cpu_s", "warmup_wall_s", "total_wall_s")
    runs = results["seeds"].values()
    results["mean"] = {
        variant: {key: float(np.mean([r[variant][key] for r in runs])) for key in keys}
        for variant in ("v1", *VARIANTS)
    }
    write_json(args.out, results)
    print(json.dumps(results["mean"], indent=2))


if __name__ == "__main__":
    main()
