"""Stage 4, `co_divide` (§2.1): per-sample evaluation losses of each network -> min-max normalisation
-> seeded 2-component GMM -> clean probability -> labeled/unlabeled partition, with the guard that
falls back to top-k / bottom-k instead of crashing. Network k trains on the partition from the
*other* network's losses (co-divide). With `co_divide.per_class` the normalisation and the GMM are
per given class, so a hard class's clean samples are not judged against the easy classes' losses.

Outputs ``partition.npz`` (per network k: ``losses`` (K, N), ``normalised`` (K, N), ``clean_prob``
(K, N), ``labeled`` (K, N) bool) and ``histogram.json`` (loss histogram per network, split by the true
clean/noisy status where known, and the fitted GMM parameters).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelsieve.atomic import atomic_dir, write_json, write_npz
from labelsieve.config import Params
from labelsieve.engine import distributed, loop
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import division
from labelsieve.seeding import numpy_rng

HISTOGRAM_BINS = 50


@dataclass(frozen=True)
class GroupFit:
    """The GMM fitted to one group of samples (all of them, or one given class) and its share of N."""

    share: float
    gmm: division.Gmm1d


@dataclass(frozen=True)
class Division:
    """The co-divide of K networks over the N training samples (all tensors on the data's device)."""

    losses: torch.Tensor  # (K, N) raw CE against the given labels
    normalised: torch.Tensor  # (K, N) the GMM's input (min-max normalised, history-averaged)
    normalised_now: torch.Tensor  # (K, N) this division's own normalised losses, before the history average
    clean_prob: torch.Tensor  # (K, N) w from network k's losses
    labeled: torch.Tensor  # (K, N) bool, X from network k's losses
    fits: list[list[GroupFit]]  # per network, one GMM per group (one group unless per-class)
    fell_back: list[bool]
    probs: torch.Tensor | None = None  # (K, N, C) softmax of the evaluation pass, when `divide` ran it


def network_logits(networks: list[torch.nn.Module], data: TrainingData, params: Params) -> torch.Tensor:
    """(K, N, C) each network's eval-mode logits on the unaugmented training images (the co-divide's pass)."""
    return torch.stack([loop.logits_on(model, data.train_images, data, params) for model in networks])


def divide(
    networks: list[torch.nn.Module],
    data: TrainingData,
    params: Params,
    *,
    tag: str,
    history: list[torch.Tensor] | None = None,
    min_size: int,
) -> Division:
    """Co-divide: evaluation pass, then `divide_losses`. Data-parallel: the pass is sharded and all-gathered
    (`loop.logits_on`), so every rank fits the same GMMs; the partition is checked to agree on every rank.

    Args:
        tag: names this division's seed stream (e.g. the epoch), so every GMM fit is seeded.
        history: per network, (H, N) normalised losses of earlier epochs, or None.
        min_size: the smallest acceptable labeled or unlabeled set (one batch).
    """
    logits = network_logits(networks, data, params)
    losses = torch.stack([division.per_sample_loss(z, data.train_labels) for z in logits])
    result = divide_losses(losses, data.train_labels, params, tag=tag, history=history, min_size=min_size)
    distributed.check_same(result.labeled, f"co-divide partition ({tag})")
    return dataclasses.replace(result, probs=torch.softmax(logits, dim=2))


def divide_losses(
    losses: torch.Tensor,
    labels: torch.Tensor,
    params: Params,
    *,
    tag: str,
    history: list[torch.Tensor] | None = None,
    min_size: int,
) -> Division:
    """Normalise, (history-average), GMM and partition of each network's per-sample losses (K, N)."""
    cfg = params.co_divide
    rows = {name: [] for name in ("normalised_now", "normalised", "clean_prob", "labeled")}
    fits, fell_back = [], []
    classes = class_members(labels, params)
    for k in range(losses.shape[0]):
        normalised_now = normalised = division.minmax_normalise(losses[k], groups=classes)
        if history is not None and len(history[k]):
            normalised = torch.cat([history[k].to(normalised), normalised[None]]).mean(dim=0)
        clean_prob, network_fits = fit_clean_prob(normalised, classes, labels, params, seed_key=(tag, str(k)))
        labeled, guarded = division.partition(clean_prob, threshold=cfg.threshold, min_size=min_size)
        if guarded:
            warnings.warn(
                f"co-divide network {k + 1} ({tag}): labeled or unlabeled set smaller than one batch; "
                "fell back to the top/bottom-k by clean probability",
                stacklevel=2,
            )
        for name, value in (
            ("normalised_now", normalised_now),
            ("normalised", normalised),
            ("clean_prob", clean_prob),
            ("labeled", labeled),
        ):
            rows[name].append(value)
        fits.append(network_fits)
        fell_back.append(guarded)
    return Division(
        losses=losses,
        **{name: torch.stack(values) for name, values in rows.items()},
        fits=fits,
        fell_back=fell_back,
    )


def class_members(labels: torch.Tensor, params: Params) -> list[torch.Tensor] | None:
    """The sample indices of each given class when `co_divide.per_class` is on (losses are compared within
    a class), else None (one group)."""
    return division.group_members(labels) if params.co_divide.per_class else None


def fit_clean_prob(
    normalised: torch.Tensor,
    classes: list[torch.Tensor] | None,
    labels: torch.Tensor,
    params: Params,
    *,
    seed_key: tuple[str, ...],
) -> tuple[torch.Tensor, list[GroupFit]]:
    """The clean probability of every sample from one GMM over all samples, or one per given class.

    Args:
        normalised: (N,) normalised losses (per class when `classes` is given).
        classes: `class_members`: the sample indices of each given class, or None for one fit.
        labels: (N,) the given labels (they name each class's seed stream).
        seed_key: names this fit's seed stream (the division's tag and the network).

    A class with fewer than two samples cannot be fitted; its samples keep a clean probability of 1.
    """
    cfg = params.co_divide
    groups = classes if classes is not None else [torch.arange(normalised.numel(), device=normalised.device)]
    clean_prob = torch.ones_like(normalised)
    fits = []
    for members in groups:
        if members.numel() < 2:
            continue
        key = seed_key if classes is None else (*seed_key, f"class{int(labels[members[0]])}")
        seed = int(numpy_rng(params.runtime.seed, "co_divide", *key).integers(0, 2**31 - 1))
        values = normalised[members]
        gmm = division.fit_gmm_1d(
            values, max_iter=cfg.gmm_max_iter, tol=cfg.gmm_tol, reg_covar=cfg.gmm_reg_covar, seed=seed
        )
        clean_prob[members] = division.posterior(gmm, values)
        fits.append(GroupFit(share=members.numel() / normalised.numel(), gmm=gmm))
    return clean_prob, fits


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
    for k in range(len(result.fits)):
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
    """Loss-histogram data per network (normalised losses in [0, 1]) and the fitted GMM components."""
    edges = np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)
    clean = (
        None
        if data.train_true_labels is None
        else (data.train_labels == data.train_true_labels).cpu().numpy()
    )
    out = {"bin_edges": edges.tolist(), "networks": []}
    for k, fits in enumerate(result.fits):
        values = result.normalised[k].cpu().numpy()
        entry = {
            "all": np.histogram(values, edges)[0].tolist(),
            # Every fitted component, its weight scaled by its group's share of the samples.
            "weights": [fit.share * w for fit in fits for w in fit.gmm.weights.tolist()],
            "means": [m for fit in fits for m in fit.gmm.means.tolist()],
            "variances": [v for fit in fits for v in fit.gmm.variances.tolist()],
            "clean": [j == fit.gmm.clean_component for fit in fits for j in range(2)],
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
    """Co-divide the training set with the warmed-up networks (data-parallel under torchrun)."""
    device = distributed.setup(resolve_device(params.runtime.device))
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    networks = loop.load_networks(warmup_dir, params, data, device)
    result = divide(networks, data, params, tag="co_divide", min_size=params.ssl_train.batch_size)
    if not distributed.is_main():
        distributed.barrier()
        return summarise(result, data)
    with atomic_dir(out_dir) as tmp:
        summary = write(tmp, result, data)
    distributed.barrier()
    return summary
