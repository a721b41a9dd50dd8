"""Stage 2, `inject_noise`: synthetic label noise for benchmarks; rate 0 passes the labels through.

Noise goes into `train` and `val` alike (evaluation picks an epoch on the noisy validation split, as a
user with real noisy data would), each split with its own exact count. The test split stays clean.

Outputs in `out_dir`:
- ``labels.npz``: for split in (train, val): ``{split}_labels`` (given, possibly noisy),
  ``{split}_true_labels`` and ``{split}_is_noisy`` (labels != true labels), all (N_split,).
- ``noise.json``: mode, rate, seed, the dataset's content hash (`dataset`, checked whenever the labels are
  loaded), the key (hash of the dataset and every param used), and per split
  the count redrawn, the actual noise rate and the empirical noise matrix M[i, j] = P(label=i | true=j).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from labelsieve.atomic import atomic_dir, write_json, write_npz
from labelsieve.config import Params
from labelsieve.data.store import load_dataset, noise_key
from labelsieve.maths import noise
from labelsieve.seeding import numpy_rng

NOISY_SPLITS = ("train", "val")


def run(params: Params, *, dataset_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Inject noise into the dataset in `dataset_dir`; write labels and noise.json to `out_dir`.

    Raises:
        noise.NoiseError: the class map does not fit the dataset's classes.
    """
    cfg = params.inject_noise
    dataset = load_dataset(dataset_dir)
    seed = params.runtime.seed
    class_map = None
    if cfg.mode == "asymmetric" and cfg.rate > 0:
        class_map = noise.class_map_array(cfg.class_map, dataset.classes, cfg.custom_map)
    settings = {"mode": cfg.mode, "rate": cfg.rate, "class_map": cfg.class_map, "custom_map": cfg.custom_map}
    report: dict[str, Any] = {
        **settings,
        "seed": seed,
        "dataset": dataset.meta["content_hash"],  # checked by store.load_labels
        "key": noise_key(dataset.meta["content_hash"], seed, settings),
    }
    arrays: dict[str, np.ndarray] = {}
    for split in NOISY_SPLITS:
        true_labels = dataset.labels(split)
        features = dataset.images(split) if cfg.mode == "instance" else None
        labels, chosen = noise.inject(
            true_labels,
            mode=cfg.mode,
            rate=cfg.rate,
            num_classes=dataset.num_classes,
            rng=numpy_rng(seed, "inject_noise", split),
            class_map=class_map,
            features=features,
        )
        arrays[f"{split}_labels"] = labels
        arrays[f"{split}_true_labels"] = true_labels
        arrays[f"{split}_is_noisy"] = labels != true_labels
        report[split] = {
            "n": len(labels),
            "redrawn": int(chosen.sum()),
            "actual_noise_rate": noise.actual_rate(true_labels, labels),
            "noise_matrix": noise.noise_matrix(true_labels, labels, dataset.num_classes).round(6).tolist(),
        }
    with atomic_dir(out_dir) as tmp:
        write_npz(tmp / "labels.npz", **arrays)
        write_json(tmp / "noise.json", report)
    return {split: report[split]["actual_noise_rate"] for split in NOISY_SPLITS} | {
        "mode": cfg.mode,
        "rate": cfg.rate,
    }
