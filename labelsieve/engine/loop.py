"""The training machinery every training stage shares: networks, optimiser, schedule, batches,
no-grad prediction, the CE / mixup epoch, evaluation and per-epoch logging."""

from __future__ import annotations

import json
import math
import pickle
import sys
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from labelsieve.atomic import save_torch, write_json
from labelsieve.config import ModelConfig, Params
from labelsieve.engine import distributed
from labelsieve.engine.augment import augment, to_float
from labelsieve.engine.device import autocast
from labelsieve.engine.resident import TrainingData
from labelsieve.engine.stream import prefetch, row_range
from labelsieve.errors import LabelsieveError
from labelsieve.maths.mixmatch import confidence_penalty, mixup_warmup_loss, sample_lambda
from labelsieve.models import Classifier, build_model, load_pretrained
from labelsieve.progress import epoch_line, progress
from labelsieve.seeding import torch_generator


def build_networks(params: Params, data: TrainingData, count: int, device: torch.device) -> list[Classifier]:
    """`count` freshly initialised networks, each from its own seeded stream."""
    networks = []
    for k in range(count):
        torch.manual_seed(torch_generator(params.runtime.seed, "network", str(k)).initial_seed())
        model = build_model(
            params.model.name,
            num_classes=data.num_classes,
            in_channels=data.in_channels,
            pretrained_path=params.model.pretrained_path,
        )
        networks.append(_to_device(model, device))
    return networks


def _to_device(model: Classifier, device: torch.device) -> Classifier:
    # channels_last pays on both: oneDNN's CPU convolutions ran ~2x faster forward here, cuDNN's too.
    return model.to(device).to(memory_format=torch.channels_last)


def save_networks(out_dir: Path, networks: Sequence[Classifier], params: Params, data: TrainingData) -> None:
    """Write ``net{k}.pt`` (state dicts, loadable with weights_only=True) and ``networks.json``."""
    for k, model in enumerate(networks, start=1):
        save_torch(out_dir / f"net{k}.pt", {name: t.detach().cpu() for name, t in model.state_dict().items()})
    write_json(
        out_dir / "networks.json",
        {
            "model": params.model.name,
            "count": len(networks),
            "num_classes": data.num_classes,
            "in_channels": data.in_channels,
            "classes": data.dataset.classes,
            "mean": data.mean,
            "std": data.std,
        },
    )


def load_networks(
    directory: str | Path, params: Params, data: TrainingData, device: torch.device
) -> list[Classifier]:
    """The networks a previous training stage wrote to `directory`.

    Raises:
        LabelsieveError: a ``net<k>.pt`` is truncated or not a state dict of this model, naming it.
    """
    meta = json.loads((Path(directory) / "networks.json").read_text())
    networks = []
    for k in range(1, meta["count"] + 1):
        model = build_model(meta["model"], num_classes=meta["num_classes"], in_channels=meta["in_channels"])
        path = Path(directory) / f"net{k}.pt"
        try:
            load_pretrained(model, path)
        except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LabelsieveError(f"{path} cannot be loaded as network weights ({why})") from err
        networks.append(_to_device(model, device))
    return networks


def make_optimizer(model: nn.Module, cfg: ModelConfig) -> torch.optim.SGD:
    """SGD with the configured momentum, Nesterov and weight decay; the lr is set per step."""
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )


def lr_at(epoch: float, cfg: ModelConfig, total_epochs: int) -> float:
    """The learning rate at fractional epoch `epoch` of a `total_epochs` budget.

    onecycle: linear rise from lr/25 to lr over `warmup_fraction` of the budget, then linear decay to 0
    (the tuned CE baseline of docs/benchmarks.md). step: lr, then lr/10 from half the budget (DivideMix).
    """
    t = min(max(epoch / max(total_epochs, 1), 0.0), 1.0)
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr if t < 0.5 else cfg.lr / 10
    rise = cfg.warmup_fraction
    if t < rise:
        return cfg.lr * (0.04 + 0.96 * t / rise)
    return cfg.lr * (1.0 - t) / (1.0 - rise)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr


def batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation of range(n) cut into batches (the last one may be shorter)."""
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def views(
    images: torch.Tensor,
    cfg: ModelConfig,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
) -> torch.Tensor:
    """One augmented float view of a uint8 batch (random crop + optional flip + normalise), on its device."""
    x = augment(images, padding=cfg.crop_padding, flip=cfg.flip, mean=mean, std=std, generator=generator)
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int,
    precision: str = "auto",
) -> torch.Tensor:
    """(N, C) float32 logits of `model` in eval mode on unaugmented uint8 images (N, C, H, W)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], mean, std)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, precision):
            outputs.append(model(x).float())
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def logits_on(model: nn.Module, images: torch.Tensor, data: TrainingData, params: Params) -> torch.Tensor:
    """(N, C) eval-mode logits of `model` on unaugmented uint8 `images`, in the run's batch and precision.

    Data-parallel: each rank predicts its block of rows and every rank gets all N (`distributed.gather_rows`).
    """
    sharded = len(images) >= distributed.world_size() > 1
    rows = distributed.row_block(len(images)) if sharded else None
    logits = predict_logits(
        model,
        row_range(images, rows) if sharded else images,
        mean=data.mean,
        std=data.std,
        batch_size=params.model.eval_batch_size,
        precision=params.runtime.precision,
    )
    return distributed.gather_rows(logits, len(images)) if sharded else logits


def ensemble_logits(
    networks: Sequence[nn.Module], images: torch.Tensor, data: TrainingData, params: Params
) -> torch.Tensor:
    """(N, C) sum of the networks' logits: the DivideMix test prediction is its argmax."""
    return sum(logits_on(m, images, data, params) for m in networks)


def evaluate(networks: Sequence[nn.Module], data: TrainingData, params: Params) -> dict[str, float]:
    """Validation accuracy (noisy labels; used to choose an epoch) and test accuracy (logged only)."""
    result = {}
    for name, images, labels in (
        ("val_acc", data.val_images, data.val_labels),
        ("test_acc", data.test_images, data.test_labels),
    ):
        if len(labels) == 0:
            result[name] = float("nan")
            continue
        predicted = ensemble_logits(networks, images, data, params).argmax(dim=1)
        result[name] = float((predicted == labels).float().mean())
    return result


def supervised_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    *,
    params: Params,
    epoch: int,
    loss: str,
    alpha: float,
    penalty: float,
    generators: Generators,
    desc: str,
    fraction: float = 1.0,
) -> dict[str, float]:
    """One epoch over the full noisy training set: plain CE or the SMR mixup loss (§3.1), + penalty·NE.

    Used by the warm-up, by SMR recalibration epochs and by the plain-CE baseline. With `fraction` < 1
    only the first ceil(fraction · steps) batches of the epoch's order are trained, at the learning rates
    of those steps (a recalibration scaled to a short budget). Data-parallel: each rank trains on its
    slice of every batch (`distributed.shard`); the logged loss is the global mean.
    """
    model.train()
    cfg = params.model
    trainer = distributed.wrap(model)
    full = batches(len(data.train_labels), cfg.batch_size, generators.cpu)
    steps = len(full)
    order = distributed.shard(full[: max(1, math.ceil(fraction * steps - 1e-9))])
    prefetch(data.train_images, [idx for idx, _ in order])
    total, bar = 0.0, progress(order, total=len(order), desc=desc, mode=params.runtime.progress)
    for step, (idx, size) in enumerate(bar):
        set_lr(optimizer, lr_at(epoch + step / steps, cfg, params.total_epochs))
        idx = idx.to(data.train_labels.device)
        x = views(data.train_images[idx], cfg, data.mean, data.std, generators.device)
        y = data.train_labels[idx]
        with autocast(x.device, params.runtime.precision):
            if loss == "mixup":
                lam = sample_lambda(alpha, generators.cpu)
                perm = local_permutation(torch.randperm(size, generator=generators.cpu))
                perm = perm.to(x.device)
                logits = trainer(lam * x + (1 - lam) * x[perm]).float()
                value = mixup_warmup_loss(logits, y, y[perm], lam)
            else:
                logits = trainer(x).float()
                value = F.cross_entropy(logits, y)
            if penalty > 0:
                value = value + penalty * confidence_penalty(F.softmax(logits, dim=1))
            value = distributed.scaled(value, len(idx), size)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total += float(value.detach())
    return {"loss": distributed.mean(total) / max(len(order), 1)}


def local_permutation(perm: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """This rank's mixing permutation from `perm`, a permutation of the global batch drawn from the shared
    cpu stream: the local rows (global `positions`, default this rank's `distributed.row_block`) in the
    order `perm` visits them, as local indices. `perm` itself with one process.
    """
    if distributed.world_size() == 1:
        return perm
    if positions is None:
        block = distributed.row_block(len(perm))
        positions = torch.arange(block.start, block.stop)
    local = torch.full((len(perm),), -1, dtype=torch.long)
    local[positions] = torch.arange(len(positions))
    mapped = local[perm]
    return mapped[mapped >= 0]


class Generators:
    """The stage's random streams: `cpu` for orders, λ and permutations; `device` for augmentation."""

    def __init__(self, seed: int, stage: str, device: torch.device):
        self.seed, self.stage = seed, stage
        self.cpu = torch_generator(seed, stage, "cpu")
        self.device = torch_generator(seed, stage, "device", device=device)

    def begin_epoch(self, epoch: int) -> None:
        """Data-parallel only: reseed the augmentation stream from (seed, stage, epoch, rank), so the ranks
        augment their slices independently and a resume on any world size continues the same streams.
        No-op with one process (the stream then runs on across epochs, as it always has)."""
        if distributed.world_size() > 1:
            tags = (self.stage, "device", str(epoch), f"rank{distributed.rank()}")
            self.device = torch_generator(self.seed, *tags, device=self.device.device)

    def state(self) -> dict[str, torch.Tensor]:
        """Both generator states, for a checkpoint."""
        return {"cpu": self.cpu.get_state(), "device": self.device.get_state()}

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        """Restore both generators from `state()`."""
        self.cpu.set_state(state["cpu"])
        self.device.set_state(state["device"])


def training_state(
    networks: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    generators: Generators,
    epoch: int,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything needed to resume after `epoch` (the next epoch to run is `epoch + 1`)."""
    return {
        "epoch": epoch,
        "networks": [m.state_dict() for m in networks],
        "optimizers": [o.state_dict() for o in optimizers],
        "generators": generators.state(),
        "history": json.dumps(history),
    }


def restore_training_state(
    state: dict[str, Any],
    networks: Sequence[nn.Module],
    optimizers: Sequence[torch.optim.Optimizer],
    generators: Generators,
) -> tuple[int, list]:
    """Load a `training_state` back; returns (next epoch, history)."""
    for model, saved in zip(networks, state["networks"], strict=True):
        model.load_state_dict(saved)
    for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    generators.restore(state["generators"])
    return int(state["epoch"]) + 1, json.loads(state["history"])


def log_epoch(stage: str, record: dict[str, Any]) -> None:
    """One line per epoch on stderr (stdout carries the stage's final summary): the JSON record when
    stderr is a log file or a pipe, a short human line on a terminal, where the JSON would wrap between
    the progress bars. Data-parallel: rank 0 only."""
    if not distributed.is_main():
        return
    if sys.stderr.isatty():
        line = epoch_line(stage, record)
    else:
        line = json.dumps({"stage": stage, **record}, default=float)
    print(line, file=sys.stderr, flush=True)


class Timer:
    """Wall time of a block, in seconds."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def best_epoch(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The history entry with the highest noisy-validation accuracy (never chosen on the test set)."""
    valid = [h for h in history if not math.isnan(h.get("val_acc", float("nan")))]
    return max(valid, key=lambda h: h["val_acc"]) if valid else {}
