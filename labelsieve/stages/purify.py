"""Stage 7, `purify`: score every training sample and decide keep / relabel / drop.

The rule is `labelsieve.maths.purification` (docs/purification.md). Its probabilities are the average
of two predictions of the co-trained networks: their final one, and their training dynamics from
`ssl_train` (``dynamics.npz``: every co-divide's prediction averaged over the epochs and both networks).
Confident learning on them estimates the noise matrix; with it, Bayes' rule gives each sample's
posterior over its true class. A sample is flagged when its given label is wrong with probability at
least τ = `purify.flag_threshold` under the same posterior computed from the final prediction alone (its
own noise estimate); a flagged sample is relabelled to the averaged posterior's most probable true class
when that class is right with probability above 1 − τ, else dropped. The final networks flag more
precisely; the early divisions in the average keep swapped samples from being relabelled to the swap
partner (docs/purification.md, "Flags from the final networks, relabels from the average"). The flag score
is the mean of two readings of the final prediction, as the belief and unmixed as a noisy-label model's
(docs/purification.md, "Two readings of the final networks"). Where the final networks are GRIP's, or
`ssl_train`'s last epoch was a CE recalibration that fits every given label (the published SMR schedules),
the average flags too.
The final networks are `ssl_train`'s (`purify.relabel_from: ssl`, measured better) or GRIP's. Without SSL
epochs (the `grip` preset) every network was fitted to the given labels, so the rule unmixes their
probabilities first (`probs_from="noisy_labels"`; docs/purification.md). GRIP's JS
divergences, the last co-divide's clean probability and the training-dynamics margin are reported beside
the decision.

Outputs:
- ``scores.npz``: every per-sample score as numbers (`SCORE_FILE_FIELDS`), for `evaluate` and users;
- ``manifest.csv``: one row per training sample: ``id``, ``index``, ``source``, ``given_label``,
  ``decision`` (keep | relabel | drop), ``new_label`` (empty if dropped), ``noise_score``,
  ``predicted_label``, ``confidence``, ``js_given``, ``clean_prob``, and ``true_label`` where the truth
  is known (benchmarks);
- ``labels.npz``: ``train_labels`` (int64 (N,), the purified label, -1 if dropped),
  ``train_decision`` (int8 (N,): 0 keep, 1 relabel, 2 drop) and ``train_probs`` (float32 (N, C), the final
  networks' mean softmax, which `retrain` can distil), for `retrain` and `export`;
- ``summary.json``: counts per class and decision, the estimated noise matrix and per-class noise rates;
  with ground truth also the injected noise matrix and the error of the estimate, precision / recall /
  F1 of the flagged samples, AUROC of each score, the accuracy of the relabels, and the label error rate
  before and after purification.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.atomic import atomic_dir, write_csv, write_json, write_npz
from labelsieve.config import Params
from labelsieve.engine import distributed, loop
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import grip, metrics, noise, purification
from labelsieve.stages import ssl_train

MANIFEST_COLUMNS = (
    "id",
    "index",
    "source",
    "given_label",
    "decision",
    "new_label",
    "noise_score",
    "predicted_label",
    "confidence",
    "js_given",
    "clean_prob",
)
# scores.npz: the decision, the labels and every per-sample score.
SCORE_FILE_FIELDS = (
    "given_label",
    "decision",
    "new_label",
    "noise_score",
    "posterior_score",
    "self_confidence",
    "predicted",
    "confidence",
    "js_given",
    "clean_prob",
    "dynamics_margin",
)


def final_probs(
    networks: list[torch.nn.Module],
    data: TrainingData,
    params: Params,
    images: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, C) the mean softmax of `networks` on unaugmented uint8 `images` (default: the training images)."""
    images = data.train_images if images is None else images
    probs = [F.softmax(loop.logits_on(m, images, data, params), dim=1) for m in networks]
    return torch.stack(probs).mean(dim=0)


def js_given(probs: torch.Tensor, soft_labels: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """GRIP's instance score JS(p, S[ỹ]) with S the networks' soft labels averaged, rows renormalised."""
    soft = soft_labels.to(probs).mean(dim=0)
    soft = soft / soft.sum(dim=1, keepdim=True)
    return grip.js_divergence(probs, soft[labels]).double().cpu().numpy()


def purify(
    labels: torch.Tensor,
    final: torch.Tensor,
    soft_labels: torch.Tensor,
    dynamics: dict[str, np.ndarray] | None,
    params: Params,
) -> purification.Purification:
    """The decisions and scores for every training sample (the module docstring's rule).

    Args:
        labels: (N,) given labels.
        final: (N, C) the final networks' mean softmax (`final_probs`).
        soft_labels: (K, C, C) GRIP's class soft labels of each network.
        dynamics: `ssl_train.read_dynamics`, or None without SSL epochs.
    """
    given = labels.cpu().numpy()
    final_np = final.double().cpu().numpy()
    threshold = params.purify.flag_threshold
    # Without SSL epochs every network was fitted to the given labels (warm-up CE, GRIP): P(ỹ | x).
    probs_from = "noisy_labels" if params.ssl_train.epochs == 0 else "robust"
    if dynamics is None:
        result = purification.find_label_issues(given, final_np, threshold=threshold, probs_from=probs_from)
    else:
        source = "held_out_probs" if params.purify.pred_probs == "held_out" else "probs"
        averaged = dynamics[source].astype(np.float64) + final_np  # one (N, C) temporary, halved in place
        averaged /= 2.0
        # Flags by the final networks' posterior, relabels by the average's (docs/purification.md), unless
        # the final networks are not ssl_train's or its last epoch fitted every given label (recalibration).
        flag_final = params.purify.relabel_from == "ssl" and not ssl_train.recalibrates(
            params, params.ssl_train.epochs - 1
        )
        result = purification.find_label_issues(
            given,
            averaged,
            threshold=threshold,
            probs_from=probs_from,
            flag_probs=final_np if flag_final else None,
        )
        result.scores["dynamics_margin"] = dynamics["margin"].astype(np.float64, copy=False)
    result.scores["js_given"] = js_given(final, soft_labels, labels)
    return result


def summarise(
    result: purification.Purification, data: TrainingData, clean_prob: np.ndarray
) -> dict[str, Any]:
    """Counts per class and decision, the noise estimate and, where the truth is known, its error and the
    detection metrics."""
    decision, new_labels, scores = result.decision, result.new_labels, result.scores
    given = data.train_labels.cpu().numpy()
    classes = data.dataset.classes
    estimate = result.noise
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
        "noise_estimate": {
            "noise_rate": float(np.sum(estimate.noise_rates * estimate.label_counts) / max(len(given), 1)),
            "noise_rates": dict(zip(classes, np.round(estimate.noise_rates, 6).tolist(), strict=True)),
            "noise_matrix": np.round(estimate.noise_matrix, 6).tolist(),
            "convention": "noise_matrix[i][j] = P(given label i | true class j); columns sum to 1",
            "probs_unmixed": result.unmixed,
        },
    }
    if data.train_true_labels is None:
        return summary
    truth = data.train_true_labels.cpu().numpy()
    noisy = given != truth
    injected = noise.noise_matrix(truth, given, len(classes))
    summary["noise_estimate"]["injected_noise_matrix"] = np.round(injected, 6).tolist()
    summary["noise_estimate"]["noise_matrix_mae"] = float(np.abs(estimate.noise_matrix - injected).mean())
    relabelled = decision == purification.RELABEL
    kept_or_relabelled = decision != purification.DROP
    summary["detection"] = {
        **metrics.detection(decision != purification.KEEP, noisy),
        "auroc": metrics.auroc(scores["noise_score"], noisy),
        "auroc_js": metrics.auroc(scores["js_given"], noisy),
        "auroc_dynamics_margin": metrics.auroc(-scores["dynamics_margin"], noisy)
        if "dynamics_margin" in scores
        else None,
        "auroc_clean_prob": metrics.auroc(1.0 - clean_prob, noisy) if clean_prob.size else None,
        "relabel_accuracy": float(np.mean(new_labels[relabelled] == truth[relabelled]))
        if relabelled.any()
        else None,
        "noise_matrix_mae": summary["noise_estimate"]["noise_matrix_mae"],
        "noise_rate_before": float(noisy.mean()),
        "noise_rate_after": float(np.mean(new_labels[kept_or_relabelled] != truth[kept_or_relabelled])),
        "kept_fraction": float(kept_or_relabelled.mean()),
    }
    return summary


def read_scores(directory: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of a purify output's ``scores.npz``, or None when there is none."""
    path = Path(directory) / "scores.npz"
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    ssl_dir: str | Path,
    group_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Score and decide every training sample; write scores.npz, the manifest, labels.npz and summary.json.

    Under torchrun the prediction pass is sharded and all-gathered (`loop.logits_on`); rank 0 writes.
    """
    device = distributed.setup(resolve_device(params.runtime.device))
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    source = group_dir if params.purify.relabel_from == "group" else ssl_dir
    networks = loop.load_networks(source, params, data, device)
    soft_labels = torch.from_numpy(np.load(Path(group_dir) / "soft_labels.npy"))
    partition = Path(ssl_dir) / "partition.npz"
    clean_prob = np.load(partition)["clean_prob"].mean(axis=0) if partition.is_file() else np.empty(0)
    final = final_probs(networks, data, params)
    result = purify(data.train_labels, final, soft_labels, ssl_train.read_dynamics(ssl_dir), params)
    summary = summarise(result, data, clean_prob)
    arrays = {
        "given_label": data.train_labels.cpu().numpy(),
        "decision": result.decision,
        "new_label": result.new_labels,
        **result.scores,
        "clean_prob": clean_prob if clean_prob.size else np.full(len(result.decision), np.nan),
    }
    arrays.setdefault("dynamics_margin", np.full(len(result.decision), np.nan))
    if not distributed.is_main():
        distributed.barrier()
        return {"decisions": summary["decisions"], **summary.get("detection", {})}
    with atomic_dir(out_dir) as tmp:
        write_npz(tmp / "scores.npz", **{name: arrays[name] for name in SCORE_FILE_FIELDS})
        write_csv(tmp / "manifest.csv", _header(data), _rows(arrays, data))
        write_npz(
            tmp / "labels.npz",
            train_labels=result.new_labels.astype(np.int64),
            train_decision=result.decision,
            train_probs=final.float().cpu().numpy(),
        )
        write_json(tmp / "summary.json", summary)
    distributed.barrier()
    return {"decisions": summary["decisions"], **summary.get("detection", {})}


def _header(data: TrainingData) -> list[str]:
    return [*MANIFEST_COLUMNS, *(["true_label"] if data.train_true_labels is not None else [])]


def _rows(arrays: dict[str, np.ndarray], data: TrainingData) -> Iterator[list[Any]]:
    """The manifest's rows, one at a time (`write_csv` streams them): held as a list and written from one
    string, 8 x 10^5 rows peaked at 381 MiB more (`benchmarks/metadata_memory.py`)."""
    classes = data.dataset.classes
    table = data.dataset.samples["train"]
    truth = None if data.train_true_labels is None else data.train_true_labels.cpu().numpy()
    for i in range(len(arrays["decision"])):
        new = arrays["new_label"][i]
        row = [
            table["id"][i],
            i,
            table["source"][i],
            classes[arrays["given_label"][i]],
            purification.DECISION_NAMES[arrays["decision"][i]],
            classes[new] if new >= 0 else "",
            f"{arrays['noise_score'][i]:.6f}",
            classes[arrays["predicted"][i]],
            f"{arrays['confidence'][i]:.6f}",
            f"{arrays['js_given'][i]:.6f}",
            f"{arrays['clean_prob'][i]:.6f}",
        ]
        if truth is not None:
            row.append(classes[truth[i]])
        yield row
