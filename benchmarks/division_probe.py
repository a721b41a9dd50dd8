"""How well the first co-divide separates clean from noisy samples, under warmup and division variants.

It reruns `warmup` and `co_divide` (about a minute per variant on one thread at the CPU profile) on the
dataset and noisy labels that a `benchmarks/quality.py --work DIR` run kept, once per variant, and reports
the labeled set's precision, recall and size (mean of the two networks) and the AUROC of the clean
probability against the truth. Per given class with noise it also reports the noisy share, the AUROC of the
clean probability and of three scores of the warm-up networks (p_ỹ, the margin p_ỹ − max_{j≠ỹ} p_j and
the ratio p_ỹ / max_j p_j; overall too) within the class, and the share of its clean and of its noisy
samples that the labeled sets keep: where a swap's target class is harder than its source, the
small-loss criterion ranks the source's samples as the cleaner ones (AUROC < 0.5). Later stages start from
this division, so a variant that does not lift it will not lift them. Use the Fashion-MNIST tuning slice
(`benchmarks/tuning_slice.py`), not the benchmark's own runs:

    uv run python benchmarks/division_probe.py /tmp/fm-tune-work/asym40-labelsieve \\
        --variant base --variant ce_warmup:warmup.loss=ce,warmup.confidence_penalty=1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelsieve.atomic import write_json
from labelsieve.config import load_params
from labelsieve.engine import loop
from labelsieve.engine.device import apply_threads
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import metrics, purification
from labelsieve.stages import STAGES, purify


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name`` or ``name:key=value,key=value`` -> (name, overrides)."""
    name, _, overrides = text.partition(":")
    return name, [item for item in overrides.split(",") if item]


def per_class(
    given: np.ndarray, noisy: np.ndarray, labeled: np.ndarray, scores: dict[str, np.ndarray], names: list[str]
) -> dict[str, dict[str, float]]:
    """Per given class with both clean and noisy samples: its noisy share, each score's AUROC of noise
    within the class, and the share of its clean and noisy samples in the labeled sets (`labeled`: (K, N)
    bool, one row per network, averaged)."""
    out = {}
    for c, name in enumerate(names):
        members = given == c
        if not (noisy[members].any() and (~noisy[members]).any()):
            continue
        kept = labeled[:, members].mean(axis=0)
        out[name] = {
            "noisy_share": float(noisy[members].mean()),
            **{key: metrics.auroc(score[members], noisy[members]) for key, score in scores.items()},
            "labeled_clean": float(kept[~noisy[members]].mean()),
            "labeled_noisy": float(kept[noisy[members]].mean()),
        }
    return out


def probe(run: Path, name: str, overrides: list[str], seed: int, out: Path) -> dict[str, Any]:
    """Warmup and co-divide with `overrides` on `run`'s labels; the division's figures."""
    work = run.parent
    params = load_params(
        work / "params.yaml", overrides=["runtime.threads=1", f"runtime.seed={seed}", *overrides]
    )
    apply_threads(1)
    dataset, labels, target = work / "dataset", run / "labels", out / name
    warm, divide = target / "warmup", target / "divide"
    STAGES["warmup"].run(params, dataset_dir=dataset, labels_dir=labels, out_dir=warm)
    STAGES["co_divide"].run(params, dataset_dir=dataset, labels_dir=labels, warmup_dir=warm, out_dir=divide)
    data = TrainingData.load(dataset, labels, torch.device("cpu"), "resident")
    if data.train_true_labels is None:
        raise SystemExit(f"{run}: the truth is unknown (not a benchmark run)")
    noisy = (data.train_labels != data.train_true_labels).numpy()
    networks = json.loads((divide / "summary.json").read_text())["networks"]
    partition = np.load(divide / "partition.npz")
    clean_prob = partition["clean_prob"].mean(axis=0)
    warm_probs = purify.final_probs(loop.load_networks(warm, params, data, torch.device("cpu")), data, params)
    given = data.train_labels.numpy()
    probs = warm_probs.double().numpy()
    posterior = purification.find_label_issues(given, probs, probs_from="robust")
    own, margin = np.take_along_axis(probs, given[:, None], axis=1)[:, 0], purification.margins(given, probs)
    scores = {  # each oriented so that a higher value says noisier
        "auroc_clean_prob": 1.0 - clean_prob,
        "auroc_warmup_own_prob": -own,
        "auroc_warmup_margin": -margin,
        "auroc_warmup_log_ratio": np.log(np.maximum(own, own - margin)) - np.log(own),  # log max_j p_j / p_ỹ
    }
    return {
        "variant": name,
        "overrides": overrides,
        "seed": seed,
        **{
            key: float(np.mean([n[f"labeled_{key}"] for n in networks]))
            for key in ("precision", "recall", "fraction")
        },
        **{key: metrics.auroc(score, noisy) for key, score in scores.items()},
        "auroc_warmup_posterior": metrics.auroc(posterior.scores["noise_score"], noisy),
        "per_class": per_class(given, noisy, partition["labeled"], scores, data.dataset.classes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", help="a quality.py run folder (its labels/, and dataset/ beside it)")
    parser.add_argument("--variant", action="append", required=True, help="name[:key=value,...]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="/tmp/labelsieve-division-probe", help="scratch folder")
    parser.add_argument("--results", help="write the figures here (JSON)")
    args = parser.parse_args()
    rows = []
    for text in args.variant:
        name, overrides = parse_variant(text)
        rows.append(probe(Path(args.run), name, overrides, args.seed, Path(args.out)))
        print(json.dumps(rows[-1]), flush=True)
    if args.results:
        write_json(args.results, rows)


if __name__ == "__main__":
    main()
