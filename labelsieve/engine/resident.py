"""A training context: the dataset's splits on the device as uint8, with their labels.

Every training stage starts from `TrainingData.load`, so they all see the same images, the same
normalisation and the same (possibly noisy) labels. The images are resident device tensors, or with
``runtime.data_path`` stream, `StreamedImages` that bring each batch from the memory-mapped store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from labelsieve.data.store import SPLITS, Dataset, load_dataset, load_labels
from labelsieve.engine.stream import StreamedImages, choose_data_path


@dataclass(frozen=True)
class TrainingData:
    """Splits on the device. `train_labels`/`val_labels` are the given (possibly noisy) labels.

    Attributes:
        train_images, val_images, test_images: uint8 (N_split, C, H, W) on the device, or streamed there
            per batch (`StreamedImages`: indexing and slicing give device tensors).
        train_labels, val_labels, test_labels: int64 (N_split,) on the device.
        train_true_labels: int64 (N,) or None when no ground truth exists (real, un-injected data).
        mean, std: per-channel normalisation in 0..1 pixel units, from the training images.
        dataset: the dataset on disk; key: identity of data + labels, for checkpoints.
    """

    train_images: torch.Tensor | StreamedImages
    train_labels: torch.Tensor
    val_images: torch.Tensor | StreamedImages
    val_labels: torch.Tensor
    test_images: torch.Tensor | StreamedImages
    test_labels: torch.Tensor
    train_true_labels: torch.Tensor | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: Dataset
    key: str

    @property
    def num_classes(self) -> int:
        """C."""
        return self.dataset.num_classes

    @property
    def in_channels(self) -> int:
        """Image channels."""
        return int(self.train_images.shape[1])

    @classmethod
    def load(
        cls,
        dataset_dir: str | Path,
        labels_dir: str | Path,
        device: torch.device,
        data_path: str = "resident",
    ) -> TrainingData:
        """Load the dataset and the labels of `inject_noise` onto `device`.

        Args:
            data_path: ``runtime.data_path``: resident, stream or auto (`choose_data_path`).

        Raises:
            DatasetError: a damaged dataset, or a labels folder made for another dataset.
        """
        dataset = load_dataset(dataset_dir)
        labels, noise = load_labels(labels_dir, dataset)
        arrays = {split: dataset.images(split) for split in SPLITS}
        mean, std = channel_stats(arrays["train"])
        path = choose_data_path(data_path, sum(a.nbytes for a in arrays.values()), device)

        def put(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(array, copy=True)).to(device)  # memmaps are read-only

        def images(split: str) -> torch.Tensor | StreamedImages:
            return StreamedImages(arrays[split], device) if path == "stream" else put(arrays[split])

        has_truth = noise["rate"] > 0  # with rate 0 the "true" labels are only the given ones
        return cls(
            train_images=images("train"),
            train_labels=put(labels["train_labels"].astype(np.int64)),
            val_images=images("val"),
            val_labels=put(labels["val_labels"].astype(np.int64)),
            test_images=images("test"),
            test_labels=put(dataset.labels("test")),
            train_true_labels=put(labels["train_true_labels"].astype(np.int64)) if has_truth else None,
            mean=mean,
            std=std,
            dataset=dataset,
            key=f"{dataset.meta['content_hash']}:{noise['key']}",
        )


def channel_stats(
    images: np.ndarray, chunk_bytes: int = 64 * 2**20
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images in 0..1 units, float64.

    The images are read in blocks of at most `chunk_bytes` of float64 (one image at the least), so the
    memory this takes does not depend on N or grow with the image size: a fixed 8,192-image block needed
    2.4 GB of temporaries at 64 px RGB and would need 30 GB at 224 px.
    """
    channels = images.shape[1]
    per_image = max(int(np.prod(images.shape[1:])) * 8, 1)
    chunk = max(chunk_bytes // per_image, 1)
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), chunk):
        block = images[start : start + chunk].astype(np.float64)
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.einsum("nchw,nchw->c", block, block)  # the squares without a second block
    count = max(len(images) * images.shape[2] * images.shape[3], 1)
    mean = total / count / 255.0
    std = np.sqrt(np.maximum(total_sq / count / 255.0**2 - mean**2, 1e-12))
    return tuple(mean.tolist()), tuple(std.tolist())
