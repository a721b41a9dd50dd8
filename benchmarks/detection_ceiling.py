"""How well could any detector do with this network and budget? Probabilities fitted to the true labels.

The detection targets (F1 ≥ 0.93 at sym50 and inst40, ≥ 0.80 at asym40) are met or missed by the
networks' probabilities and by the rule that reads them. This study asks what the rule would reach if the
probabilities were as good as `small_cnn` can make them at the `ce` preset's budget: it cross-fits the
network on the *true* labels (`cleanlab_peer.cross_fit`: 5 folds, 15 epochs each, every sample scored by
the network that did not train on it) and applies Bayes' rule of `purification.posterior` with the
*injected* noise matrix, which no real run knows. Nothing here is a method; it is the bar a method trained
on the noisy labels would have to clear.

The true labels are the same under every noise setting of a seed, so one cross-fit per seed serves every
setting. Figures per setting, against the training-set truth: AUROC of P(y* ≠ ỹ | x, ỹ), F1 at the default
τ = 0.4, and F1 at the best τ of a grid (an oracle threshold, chosen on the truth).

    uv run python benchmarks/detection_ceiling.py --data profile --seeds 0,1,2
    uv run python benchmarks/detection_ceiling.py --data /tmp/fm-tune/manifest.csv --seeds 0,1

``profile`` is the quality benchmark's own training set (the first 1,000 images of each Fashion-MNIST
class, less the validation split); a manifest is, for example, the tuning slice
(`benchmarks/tuning_slice.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import cleanlab_peer, noisy_label_probs  # noqa: E402
from benchmarks.quality import NOISE  # noqa: E402
from labelsieve.atomic import write_json, write_text  # noqa: E402
from labelsieve.engine.device import resolve_device  # noqa: E402
from labelsieve.engine.resident import TrainingData  # noqa: E402
from labelsieve.maths import metrics, purification  # noqa: E402
from labelsieve.maths.noise import noise_matrix  # noqa: E402
from labelsieve.stages import ingest, inject_noise  # noqa: E402

THRESHOLDS = np.round(np.arange(0.05, 0.96, 0.05), 2)
RESULTS = REPO / "benchmarks" / "results" / "detection_ceiling.json"


def ceiling(given: np.ndarray, truth: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The rule's figures on probabilities of the true class with the injected noise matrix."""
    matrix = noise_matrix(truth, given, probs.shape[1])
    post = purification.posterior(given, probs, matrix)
    noisy = given != truth
    f1 = {float(t): metrics.detection(post.wrong >= t, noisy)["f1"] for t in THRESHOLDS}
    best = max(f1, key=f1.get)
    decision, _ = purification.decide(
        given, post.wrong, post.best, post.best_prob, purification.WRONG_THRESHOLD
    )
    return {
        "noise_rate": float(noisy.mean()),
        "auroc": metrics.auroc(post.wrong, noisy),
        "f1_default": metrics.detection(decision != purification.KEEP, noisy)["f1"],
        "f1_best": f1[best],
        "best_threshold": best,
        "clean_accuracy": float((probs.argmax(axis=1) == truth).mean()),
    }


def one_seed(data: str, noises: list[str], seed: int) -> list[dict[str, Any]]:
    """Cross-fit once on the true labels, then score every noise setting of `seed`."""
    runs, probs = [], None
    with tempfile.TemporaryDirectory(prefix="labelsieve-ceiling-") as tmp:
        work = Path(tmp)
        ingest.run(noisy_label_probs.run_params(data, noises[0], seed), out_dir=work / "dataset")
        for noise in noises:
            params = noisy_label_probs.run_params(data, noise, seed)
            labels = work / f"labels-{noise}"
            inject_noise.run(params, dataset_dir=work / "dataset", out_dir=labels)
            loaded = TrainingData.load(work / "dataset", labels, resolve_device("cpu"))
            given, truth = loaded.train_labels.numpy(), loaded.train_true_labels.numpy()
            if probs is None:
                clean = dataclasses.replace(loaded, train_labels=loaded.train_true_labels)
                probs = cleanlab_peer.cross_fit(clean, params)
            runs.append({"data": data, "noise": noise, "seed": seed, **ceiling(given, truth, probs)})
            print(json.dumps(runs[-1]), flush=True)
    return runs


def table(runs: list[dict[str, Any]]) -> str:
    """Markdown: mean over seeds per data and noise setting."""
    keys = ("auroc", "f1_default", "f1_best", "best_threshold", "clean_accuracy")
    lines = ["| data | noise | seeds | " + " | ".join(keys) + " |", "|---" * (len(keys) + 3) + "|"]
    for data, noise in sorted(
        {(r["data"], r["noise"]) for r in runs}, key=lambda c: (c[0], list(NOISE).index(c[1]))
    ):
        group = [r for r in runs if (r["data"], r["noise"]) == (data, noise)]
        name = data if data == "profile" else Path(data).parent.name
        values = [f"{np.mean([r[k] for r in group]):.3f}" for k in keys]
        lines.append(f"| {name} | {noise} | {len(group)} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="profile", help="profile, or a manifest such as the tuning slice's")
    parser.add_argument("--noise", default="sym50,asym40,inst40,sym80")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    noises = args.noise.split(",")
    for seed in map(int, args.seeds.split(",")):
        new = one_seed(args.data, noises, seed)
        old = json.loads(out.read_text())["runs"] if out.is_file() else []
        done = {(r["data"], r["noise"], r["seed"]) for r in new}
        runs = [r for r in old if (r["data"], r["noise"], r["seed"]) not in done] + new
        write_json(out, {"runs": runs})
        write_text(out.with_suffix(".md"), table(runs))
    print(table(json.loads(out.read_text())["runs"]))


if __name__ == "__main__":
    main()
