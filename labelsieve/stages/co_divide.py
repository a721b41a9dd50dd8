"""Stage 4, `co_divide` (§2.1): per-sample evaluation losses of each network -> min-max normalisation
-> seeded 2-component GMM -> clean probability -> labeled/unlabeled partition, with the guard that
falls back to top-k / bottom-k instead of crashing. Network k trains on the partition from the
*other* network's losses (co-divide).

Outputs ``partition.npz`` (per network k: ``losses`` (K, N), ``normalised`` (K, N), ``clean_prob``
(K, N), ``labeled`` (K, N) bool) and ``histogram.json`` (loss histogram per network, split by the true
clean/noisy status where known, and the fitted GMM parameters).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelsieve.atomic import atomic_dir, write_json, write_npz
from labelsieve.config import Params
from labelsieve.engine import loop
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import division
from labelsieve.seeding import numpy_rng

HISTOGRAM_BINS = 50


@dataclass(frozen=True)
class Division:
    """The co-divide of K networks over the N training samples (all tensors on the data's device)."""

    losses: torch.Tensor  # (K, N) raw CE against the given labels
    normalised: torch.Tensor  # (K, N) the GMM's input (min-max normalised, history-averaged)
    clean_prob: torch.Tensor  # (K, N) w from network k's losses
    labeled: torch.Tensor  # (K, N) bool, X from network k's losses
    gmms: list[division.Gmm1d]
    fell_back: list[bool]


def divide(
    networks: list[torch.nn.Module],
    data: TrainingData,
    params: Params,
    *,
    tag: str,
    history: list[torch.Tensor] | None = None,
    min_size: int,
) -> Division:
    """Co-divide: evaluation pass, normalise, (history-average), GMM and partition for each network.

    Args:
        tag: names this division's seed stream (e.g. the epoch), so every GMM fit is seeded.
        history: per network, (H, N) normalised losses of earlier epochs, or None.
        min_size: the smallest acceptable labeled or unlabeled set (one batch).
    """
    cfg = params.co_divide
    rows = {name: [] for name in ("losses", "normalised", "clean_prob", "labeled")}
    gmms, fell_back = [], []
    for k, model in enumerate(networks):
        logits = loop.logits_on(model, data.train_images, data, params)
        losses = division.per_sample_loss(logits, data.train_labels)
        normalised = division.minmax_normalise(losses)
        if history is not None and len(history[k]):
            normalised = torch.cat([history[k].to(normalised), normalised[None]]).mean(dim=0)
        seed = int(numpy_rng(params.runtime.seed, "co_divide", tag, str(k)).integers(0, 2**31 - 1))
        gmm = division.fit_gmm_1d(
            normalised, max_iter=cfg.gmm_max_iter, tol=cfg.gmm_tol, reg_covar=cfg.gmm_reg_covar, seed=seed
        )
        clean_prob = division.posterior(gmm, normalised)
        labeled, guarded = division.partition(clean_prob, threshold=cfg.threshold, min_size=min_size)
        if guarded:
            warnings.warn(
                f"co-divide network {k + 1} ({tag}): labeled or unlabeled set smaller than one batch; "
                "fell back to the top/bottom-k by clean probability",
                stacklevel=2,
            )
        for name, value in (
            ("losses", losses),
            ("normalised", normalised),
            ("clean_prob", clean_prob),
            ("labeled", labeled),
        ):
            rows[name].append(value)
        gmms.append(gmm)
        fell_back.append(guarded)
    return Division(
        **{name: torch.stack(values) for name, values in rows.items()}, gmms=gmms, fell_back=fell_back
    )


def labeled_quality(labeled: torch.Tensor, data: TrainingData) -> dict[str, float]:
    """Precision and recall of a labeled set against the true clean samples (logged, never trained on)."""
    if data.train_true_labels is None:
        return {}
    clean = data.train_labels == data.train_true_labels
    hits = float((labeled & clean).sum())
    return {
        "labeled_precision": hits / max(float(labeled.sum()), 1.0),
        "labeled_recall": hits / max(float(clean.sum()), 1.0),
    }


def summarise(result: Division, data: TrainingData) -> dict[str, Any]:
    """Headline figures of a division: labeled share and, with ground truth, its precision/recall."""
    per_network = []
    for k in range(len(result.gmms)):
        labeled = result.labeled[k]
        per_network.append(
            {
                "labeled_fraction": float(labeled.float().mean()),
                "fell_back": result.fell_back[k],
                **labeled_quality(labeled, data),
            }
        )
    return {"networks": per_network}


def histogram(result: Division, data: TrainingData) -> dict[str, Any]:
    """Loss-histogram data per network (normalised losses in [0, 1]) and the fitted GMM."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    clean = (
        None
        if data.train_true_labels is None
        else (data.train_labels == data.train_true_labels).cpu().numpy()
    )
    out = {"bin_edges": edges.tolist(), "networks": []}
    for k, gmm in enumerate(result.gmms):
        values = result.normalised[k].cpu().numpy()
        entry = {
            "all": np.histogram(values, edges)[0].tolist(),
            "weights": gmm.weights.tolist(),
            "means": gmm.means.tolist(),
            "variances": gmm.variances.tolist(),
        }
        if clean is not None:
            entry["truly_clean"] = np.histogram(values[clean], edges)[0].tolist()
            entry["truly_noisy"] = np.histogram(values[~clean], edges)[0].tolist()
        out["networks"].append(entry)
    return out


def write(directory: Path, result: Division, data: TrainingData) -> dict[str, Any]:
    """Write partition.npz and histogram.json into `directory`; returns the summary."""
    write_npz(
        directory / "partition.npz",
        **{
            name: getattr(result, name).cpu().numpy()
            for name in ("losses", "normalised", "clean_prob", "labeled")
        },
    )
    write_json(directory / "histogram.json", histogram(result, data))
    summary = summarise(result, data)
    write_json(directory / "summary.json", summary)
    return summary


def read(directory: str | Path, device: torch.device) -> dict[str, torch.Tensor]:
    """The arrays of a partition.npz as tensors on `device`."""
    with np.load(Path(directory) / "partition.npz") as arrays:
        return {name: torch.from_numpy(arrays[name]).to(device) for name in arrays.files}


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    warmup_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Co-divide the training set with the warmed-up networks."""
    device = resolve_device(params.runtime.device)
    data = TrainingData.load(dataset_dir, labels_dir, device)
    networks = loop.load_networks(warmup_dir, params, data, device)
    result = divide(networks, data, params, tag="co_divide", min_size=params.ssl_train.batch_size)
    with atomic_dir(out_dir) as tmp:
        summary = write(tmp, result, data)
    return summary
