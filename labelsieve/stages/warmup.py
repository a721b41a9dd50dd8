"""Stage 3, `warmup`: train the networks on the full noisy set, with the SMR mixup loss (§3.1) or CE
(DivideMix; plain CE with one network is the `ce` baseline). Outputs ``net{k}.pt``, ``networks.json``
and ``history.json`` (one record per epoch).

With ``warmup.init_from: latest`` every network starts from the weights of the model published under
``publish.to`` (labelsieve/registry.py; its head only if the class count is unchanged), or fresh while
none is published; ``init.json`` records which version it started from.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from labelsieve.atomic import atomic_dir, write_json
from labelsieve.config import Params
from labelsieve.engine import distributed, loop
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.engine.device import resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.errors import LabelsieveError
from labelsieve.models import Classifier, load_pretrained


class WarmStartError(LabelsieveError):
    """`warmup.init_from` cannot be followed: publish.to is empty, or the published model does not fit."""


def warm_start(networks: list[Classifier], params: Params) -> dict[str, Any]:
    """Load the published model's weights into every network if ``warmup.init_from`` asks for it.

    Returns:
        ``init_from`` (as configured) and ``version`` (the published version loaded; None: fresh networks).

    Raises:
        WarmStartError: ``init_from: latest`` without ``publish.to``, or weights that do not fit the networks.
        RegistryError, s3.StorageError: the published root cannot be read.
    """
    record: dict[str, Any] = {"init_from": params.warmup.init_from, "version": None}
    if not params.warmup.init_from:
        return record
    if not params.publish.to:
        raise WarmStartError("warmup.init_from: latest needs publish.to, where the published models are")
    from labelsieve.registry import latest_weights

    found = latest_weights(params.publish.to)
    if found is None:
        print(f"warmup: no model published under {params.publish.to} yet; fresh networks", file=sys.stderr)
        return record
    weights, pointer = found
    with tempfile.TemporaryDirectory(prefix="labelsieve-init-") as tmp:
        path = Path(tmp) / "weights.pt"
        path.write_bytes(weights)
        for model in networks:
            try:
                load_pretrained(model, path)
            except ValueError as err:
                raise WarmStartError(
                    f"warmup.init_from: latest: published version {pointer['version']} under "
                    f"{params.publish.to} does not fit a {params.model.name} network: {err}"
                ) from err
    print(f"warmup: networks start from published version {pointer['version']}", file=sys.stderr)
    return {**record, "version": pointer["version"], "test_accuracy": pointer["test_accuracy"]}


def run(
    params: Params, *, dataset_dir: str | Path, labels_dir: str | Path, out_dir: str | Path
) -> dict[str, Any]:
    """Warm up `params.warmup.networks` networks for `params.warmup.epochs` epochs; resumable; data-parallel
    under torchrun (`labelsieve.engine.distributed`)."""
    cfg = params.warmup
    device = distributed.setup(resolve_device(params.runtime.device))
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    networks = loop.build_networks(params, data, cfg.networks, device)
    init = warm_start(networks, params)
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
            "init": init["version"],
        },
    )
    start, history = 0, []
    if (state := checkpoint.load()) is not None:
        start, history = loop.restore_training_state(state, networks, optimizers, generators)
    for epoch in range(start, cfg.epochs):
        generators.begin_epoch(epoch)
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
    if distributed.is_main():
        with atomic_dir(out_dir) as tmp:
            loop.save_networks(tmp, networks, params, data)
            write_json(tmp / "history.json", history)
            write_json(tmp / "init.json", init)
    checkpoint.clear()  # waits for rank 0's outputs
    summary = {"epochs": cfg.epochs, "networks": cfg.networks, **(history[-1] if history else {})}
    return {**summary, "init_version": init["version"]}
