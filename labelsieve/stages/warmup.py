"""Stage 3, `warmup`: train the networks on the full noisy set, with the SMR mixup loss (§3.1) or CE
(DivideMix; plain CE with one network is the `ce` baseline). Outputs ``net{k}.pt``, ``networks.json``
and ``history.json`` (one record per epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from labelsieve.atomic import atomic_dir, write_json
from labelsieve.config import Params
from labelsieve.engine import loop
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData


def run(
    params: Params, *, dataset_dir: str | Path, labels_dir: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Warm up `params.warmup.networks` networks for `params.warmup.epochs` epochs; resumable."""
    cfg = params.warmup
    device = resolve_device(params.runtime.device)
    data = TrainingData.load(dataset_dir, labels_dir, device)
    networks = loop.build_networks(params, data, cfg.networks, device)
    optimizers = [loop.make_optimizer(m, params.model) for m in networks]
    generators = loop.Generators(params.runtime.seed, "warmup", device)
    checkpoint = Checkpoint(
        out_dir,
        {
            "stage": "warmup",
            "data": data.key,
            "model": params.model,
            "warmup": cfg,
            "seed": params.runtime.seed,
            "total_epochs": params.total_epochs,
        },
    )
    start, history = 0, []
    if (state := checkpoint.load()) is not None:
        start, history = loop.restore_training_state(state, networks, optimizers, generators)
    for epoch in range(start, cfg.epochs):
        losses = []
        with loop.Timer() as timer:
            for k, (model, optimizer) in enumerate(zip(networks, optimizers, strict=True)):
                desc = f"warmup {epoch + 1}/{cfg.epochs} net{k + 1}"
                result = loop.supervised_epoch(
                    model,
                    optimizer,
                    data,
                    params=params,
                    epoch=epoch,
                    loss=cfg.loss,
                    alpha=cfg.alpha,
                    penalty=cfg.confidence_penalty,
                    generators=generators,
                    desc=desc,
                )
                losses.append(result["loss"])
        record = {
            "epoch": epoch,
            "train_seconds": timer.seconds,
            "loss": losses,
            **loop.evaluate(networks, data, params),
        }
        history.append(record)
        loop.log_epoch("warmup", record)
        checkpoint.save(loop.training_state(networks, optimizers, generators, epoch, history))
    with atomic_dir(out_dir) as tmp:
        loop.save_networks(tmp, networks, params, data)
        write_json(tmp / "history.json", history)
    checkpoint.clear()
    return {"epochs": cfg.epochs, "networks": cfg.networks, **(history[-1] if history else {})}
