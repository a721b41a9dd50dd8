"""Stage 7, `purify`: score every training sample and decide keep / relabel / drop.

Scores: (a) the clean probability of the last co-divide (`ssl_train`'s final `partition.npz`), averaged
over the networks; (b) the JS divergence of the ensemble prediction to the soft label of the given
class (GRIP's instance-purification score, with the soft labels of `group_regularize` averaged over the
networks); (c) the ensemble prediction and its confidence. The rule is `labelsieve.maths.purification`.

Outputs:
- ``manifest.csv``: one row per training sample: ``id``, ``index``, ``source``, ``given_label``,
  ``decision`` (keep | relabel | drop), ``new_label`` (empty if dropped), ``clean_prob``,
  ``js_given`` (JS to the given class's soft label), ``predicted_label``, ``confidence``,
  ``js_predicted``, and ``true_label`` where the truth is known (benchmarks).
- ``labels.npz``: ``train_labels`` (int64 (N,), the purified label, -1 if dropped) and
  ``train_decision`` (int8 (N,): 0 keep, 1 relabel, 2 drop), for `retrain` and `export`.
- ``summary.json``: counts per class and decision; with ground truth, precision / recall / F1 of the
  flagged (not kept) samples, AUROC of 1 − clean probability and of the JS score, the accuracy of the
  relabels, and the label error rate before and after purification.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.atomic import atomic_dir, write_csv, write_json, write_npz
from labelsieve.config import Params
from labelsieve.engine import loop
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import metrics, purification
from labelsieve.stages import co_divide

MANIFEST_COLUMNS = (
    "id",
    "index",
    "source",
    "given_label",
    "decision",
    "new_label",
    "clean_prob",
    "js_given",
    "predicted_label",
    "confidence",
    "js_predicted",
)


def score(
    networks: list[torch.nn.Module],
    soft_labels: torch.Tensor,
    clean_prob: torch.Tensor,
    data: TrainingData,
    params: Params,
) -> dict[str, torch.Tensor]:
    """Every score of every training sample, (N,) each, from the ensemble of `networks`."""
    probs = torch.stack(
        [F.softmax(loop.logits_on(m, data.train_images, data, params), dim=1) for m in networks]
    )  # (K, N, C)
    return purification.sample_scores(probs, soft_labels, clean_prob, data.train_labels)


def decide(
    scores: dict[str, torch.Tensor], labels: torch.Tensor, params: Params
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep / relabel / drop from `score`'s output and the `purify` params: (decision, new_labels)."""
    cfg = params.purify
    return purification.decide(
        labels,
        scores["clean_prob"],
        scores["predicted"],
        scores["confidence"],
        scores["js_predicted"],
        keep_threshold=cfg.keep_threshold,
        relabel_confidence=cfg.relabel_confidence,
        relabel_max_js=cfg.relabel_max_js,
    )


def summarise(
    decision: np.ndarray,
    new_labels: np.ndarray,
    scores: dict[str, np.ndarray],
    data: TrainingData,
) -> dict[str, Any]:
    """Counts per class and decision and, where the truth is known, the detection metrics."""
    given = data.train_labels.cpu().numpy()
    classes = data.dataset.classes
    summary: dict[str, Any] = {
        "n": len(decision),
        "decisions": {
            name: int(np.sum(decision == code)) for code, name in enumerate(purification.DECISION_NAMES)
        },
        "per_class": {
            classes[c]: {
                name: int(np.sum((given == c) & (decision == code)))
                for code, name in enumerate(purification.DECISION_NAMES)
            }
            for c in range(len(classes))
        },
    }
    if data.train_true_labels is None:
        return summary
    truth = data.train_true_labels.cpu().numpy()
    noisy = given != truth
    relabelled = decision == purification.RELABEL
    kept_or_relabelled = decision != purification.DROP
    summary["detection"] = {
        **metrics.detection(decision != purification.KEEP, noisy),
        "auroc_clean_prob": metrics.auroc(1.0 - scores["clean_prob"], noisy),
        "auroc_js": metrics.auroc(scores["js_given"], noisy),
        "relabel_accuracy": float(np.mean(new_labels[relabelled] == truth[relabelled]))
        if relabelled.any()
        else None,
        "noise_rate_before": float(noisy.mean()),
        "noise_rate_after": float(np.mean(new_labels[kept_or_relabelled] != truth[kept_or_relabelled])),
        "kept_fraction": float(kept_or_relabelled.mean()),
    }
    return summary


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    ssl_dir: str | Path,
    group_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Score and decide every training sample; write the manifest, labels.npz and summary.json."""
    device = resolve_device(params.runtime.device)
    data = TrainingData.load(dataset_dir, labels_dir, device)
    networks = loop.load_networks(group_dir, params, data, device)
    soft_labels = torch.from_numpy(np.load(Path(group_dir) / "soft_labels.npy"))
    clean_prob = co_divide.read(ssl_dir, device)["clean_prob"]
    scores = score(networks, soft_labels, clean_prob, data, params)
    decision, new_labels = decide(scores, data.train_labels, params)
    decision, new_labels = decision.cpu().numpy(), new_labels.cpu().numpy()
    arrays = {name: value.cpu().numpy() for name, value in scores.items()}
    summary = summarise(decision, new_labels, arrays, data)
    with atomic_dir(out_dir) as tmp:
        write_csv(tmp / "manifest.csv", _header(data), _rows(decision, new_labels, arrays, data))
        write_npz(tmp / "labels.npz", train_labels=new_labels.astype(np.int64), train_decision=decision)
        write_json(tmp / "summary.json", summary)
    return {"decisions": summary["decisions"], **summary.get("detection", {})}


def _header(data: TrainingData) -> list[str]:
    return [*MANIFEST_COLUMNS, *(["true_label"] if data.train_true_labels is not None else [])]


def _rows(
    decision: np.ndarray, new_labels: np.ndarray, scores: dict[str, np.ndarray], data: TrainingData
) -> list[list[Any]]:
    classes = data.dataset.classes
    table = data.dataset.samples["train"]
    given = data.train_labels.cpu().numpy()
    truth = None if data.train_true_labels is None else data.train_true_labels.cpu().numpy()
    rows = []
    for i in range(len(decision)):
        row = [
            table["id"][i],
            i,
            table["source"][i],
            classes[given[i]],
            purification.DECISION_NAMES[decision[i]],
            classes[new_labels[i]] if new_labels[i] >= 0 else "",
            f"{scores['clean_prob'][i]:.6f}",
            f"{scores['js_given'][i]:.6f}",
            classes[scores["predicted"][i]],
            f"{scores['confidence'][i]:.6f}",
            f"{scores['js_predicted'][i]:.6f}",
        ]
        if truth is not None:
            row.append(classes[truth[i]])
        rows.append(row)
    return rows
