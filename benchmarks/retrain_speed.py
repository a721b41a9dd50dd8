"""Cost of a retrain (SSSL) epoch against a plain CE epoch, CPU profile, one process (BENCHMARKS.md: ≤ 2x).

On the params.yaml defaults (Fashion-MNIST 10k subset, sym50, small_cnn, batch 128) it times, alternately
and `--repeats` times each, a plain CE epoch (`loop.supervised_epoch`) and a retrain epoch after e_s (the
eval pass + GMM + soft-target correction + neighbour-mixed training) for each kNN scope, on the same
network and data, and reports medians and ratios. Writes benchmarks/results/retrain_speed.json, with the
load average before and after: background load inflates both kinds of epoch, but not equally, so take
ratios from an idle machine.

    uv run python benchmarks/retrain_speed.py                 # about 1 minute on 2 idle cores
    uv run python benchmarks/retrain_speed.py --repeats 1 --scopes batch
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
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
from labelsieve.engine.device import resolve_device  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.stages import ingest, inject_noise, retrain  # noqa: E402


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each kind (median reported)")
    parser.add_argument("--scopes", default="batch,dataset", help="retrain.knn_scope values to time")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "retrain_speed.json"))
    args = parser.parse_args()
    overrides = ["runtime.progress=never"]
    ce_params = load_params(REPO / "params.yaml", presets=["ce"], overrides=overrides)
    sssl_params = load_params(REPO / "params.yaml", presets=["sssl"], overrides=overrides)
    device = resolve_device(sssl_params.runtime.device)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="labelsieve-retrain-bench-") as tmp:
        work = Path(tmp)
        ingest.run(sssl_params, out_dir=work / "dataset")
        inject_noise.run(sssl_params, dataset_dir=work / "dataset", out_dir=work / "labels")
        data = TrainingData.load(work / "dataset", work / "labels", device)
    labels = retrain.read_labels(sssl_params, data, None)
    (model,) = loop.build_networks(sssl_params, data, 1, device)
    optimizer = loop.make_optimizer(model, sssl_params.model)
    generators = loop.Generators(sssl_params.runtime.seed, "retrain_speed", device)
    e_s = sssl_params.retrain.synthetic_start

    def ce_epoch(epoch: int) -> None:
        loop.supervised_epoch(
            model,
            optimizer,
            data,
            params=ce_params,
            epoch=epoch,
            loss="ce",
            alpha=1.0,
            penalty=0.0,
            generators=generators,
            desc="ce",
        )

    ce_epoch(0)  # untimed: trains the network a little and warms oneDNN's kernel caches
    times: dict[str, list[float]] = {"ce": []}
    parts: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        start = time.perf_counter()
        ce_epoch(e_s)
        times["ce"].append(time.perf_counter() - start)
        for scope in args.scopes.split(","):
            params = dataclasses.replace(
                sssl_params, retrain=dataclasses.replace(sssl_params.retrain, knn_scope=scope)
            )
            state = retrain.initial_state(labels, data.num_classes, params.retrain.dropped, device)
            start = time.perf_counter()
            w, table, _ = retrain.prepare_epoch(model, data, state, params=params, epoch=e_s)
            middle = time.perf_counter()
            retrain.train_epoch(
                model,
                optimizer,
                data,
                state,
                params=params,
                epoch=e_s,
                w=w,
                table=table,
                generators=generators,
            )
            end = time.perf_counter()
            times.setdefault(scope, []).append(end - start)
            split = parts.setdefault(scope, {"prepare": [], "train": []})
            split["prepare"].append(middle - start)
            split["train"].append(end - middle)
    ce = statistics.median(times["ce"])
    result = {
        "ce_epoch_seconds": ce,
        "retrain_epoch_seconds": {s: statistics.median(t) for s, t in times.items() if s != "ce"},
        "ratio_to_ce": {s: statistics.median(t) / ce for s, t in times.items() if s != "ce"},
        "retrain_parts_seconds": {
            s: {name: statistics.median(v) for name, v in split.items()} for s, split in parts.items()
        },
        "target_ratio": 2.0,
        "all_seconds": times,
        "conditions": {
            "train_samples": len(data.train_labels),
            "model": sssl_params.model.name,
            "batch_size": sssl_params.model.batch_size,
            "neighbours": sssl_params.retrain.neighbours,
            "epoch": e_s,
            "seed": sssl_params.runtime.seed,
            "repeats": args.repeats,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.platform(),
            "torch": torch.__version__,
            "commit": _commit(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
    }
    write_json(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
