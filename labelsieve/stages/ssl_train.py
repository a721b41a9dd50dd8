"""Stage 5, `ssl_train`: DivideMix co-training (§2.2) with SMR recalibration (§3.2).

Each epoch: co-divide both networks (the first SSL epoch reuses the `co_divide` stage's output), then
train network 1 by MixMatch on the partition from network 2's losses with network 2 frozen, then
network 2 against the updated network 1. Every P-th epoch ((epoch + 1) % P == 0, global epoch count)
is instead one plain CE epoch on the full noisy set for each network (SMR recalibration; P = 0 is plain
DivideMix). Outputs ``net{1,2}.pt``, ``networks.json``, ``history.json``, the final co-divide
(``partition.npz``, ``histogram.json``, ``summary.json``) and ``dynamics.npz`` for `purify`: every
fresh co-divide's predictions averaged over the epochs and both networks (`labelsieve.maths.dynamics`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.atomic import atomic_dir, write_json, write_npz
from labelsieve.config import Params
from labelsieve.engine import distributed, loop
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.engine.device import autocast, resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.engine.stream import prefetch
from labelsieve.errors import LabelsieveError
from labelsieve.maths import mixmatch
from labelsieve.maths.dynamics import TrainingDynamics
from labelsieve.stages import co_divide


def mixmatch_epoch(
    net: torch.nn.Module,
    peer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    *,
    clean_prob: torch.Tensor,
    labeled: torch.Tensor,
    params: Params,
    epoch: int,
    generators: loop.Generators,
    desc: str,
) -> dict[str, float]:
    """One MixMatch epoch of `net` with co-guessing and co-refinement by the frozen `peer` (§2.2).

    Args:
        clean_prob: (N,) w from the peer's co-divide; labeled: (N,) bool, X from the peer's co-divide.
        epoch: the global epoch (warm-up included), for the schedule and the λ_u ramp.

    Data-parallel: each rank takes its slice of every labeled and unlabeled batch, mixes within its
    rows (`loop.local_permutation` of the shared draw) and scales its loss by its share of the batch.
    """
    cfg, model_cfg = params.ssl_train, params.model
    device = data.train_labels.device
    net.train()
    peer.eval()
    trainer = distributed.wrap(net)
    labeled_idx = labeled.nonzero().squeeze(1).cpu()
    unlabeled_idx = (~labeled).nonzero().squeeze(1).cpu()
    steps = math.ceil(len(labeled_idx) / cfg.batch_size)
    labeled_order = labeled_idx[torch.randperm(len(labeled_idx), generator=generators.cpu)]
    # The unlabeled set is cycled through in fresh permutations, as many as the epoch needs.
    laps = math.ceil(steps * cfg.batch_size / max(len(unlabeled_idx), 1))
    unlabeled_order = torch.cat(
        [unlabeled_idx[torch.randperm(len(unlabeled_idx), generator=generators.cpu)] for _ in range(laps)]
    )
    # A step asks for its labeled batch, then as many unlabeled rows (each twice: served once).
    # Data-parallel: this rank's slices of the steps it takes (`distributed.shard`).
    prefetch(
        data.train_images,
        *(
            [rows for rows, _ in distributed.shard(order.split(cfg.batch_size))]
            for order in (labeled_order, unlabeled_order[: len(labeled_order)])
        ),
    )
    # λ_u = 0 (web scale): the unlabeled rows still take part in the mix; only their forward and L_u go.
    web_scale = cfg.lambda_u == 0
    sums = {"lx": 0.0, "lu": 0.0, "lreg": 0.0, "loss": 0.0}

    def view(idx: torch.Tensor) -> torch.Tensor:
        return loop.views(data.train_images[idx], model_cfg, data.mean, data.std, generators.device)

    for step in progress_steps(steps, params, desc):
        t = epoch + step / steps
        loop.set_lr(optimizer, loop.lr_at(t, model_cfg, params.total_epochs))
        xb = labeled_order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
        ub = unlabeled_order[step * cfg.batch_size : step * cfg.batch_size + len(xb)]
        if len(xb) < distributed.world_size():
            continue  # a last batch smaller than the world (never with one process)
        sizes = len(xb), len(ub)
        xb, ub = distributed.local_rows(xb).to(device), distributed.local_rows(ub).to(device)
        b, bu = len(xb), len(ub)
        x1, x2 = view(xb), view(xb)
        u1, u2 = view(ub), view(ub)
        with torch.no_grad(), autocast(x1.device, params.runtime.precision):
            # Two fused no-grad calls instead of six: net on all four views, peer on the unlabeled two.
            own = F.softmax(net(torch.cat([u1, u2, x1, x2])).float(), dim=1)
            pu1, pu2, px1, px2 = own.split([bu, bu, b, b])
            refined = mixmatch.co_refine(
                px1, px2, data.train_labels[xb], clean_prob[xb].float(), data.num_classes, cfg.temperature
            )
            if bu:
                qu1, qu2 = F.softmax(peer(torch.cat([u1, u2])).float(), dim=1).split(bu)
                guessed = mixmatch.co_guess(pu1, pu2, qu1, qu2, cfg.temperature)
            else:
                guessed = refined[:0]
        inputs, targets = torch.cat([x1, x2, u1, u2]), torch.cat([refined, refined, guessed, guessed])
        lam = mixmatch.sample_lambda(cfg.alpha, generators.cpu)
        perm = torch.randperm(2 * sum(sizes), generator=generators.cpu)
        perm = loop.local_permutation(perm, _mix_positions(sizes)).to(device)
        mixed_x, mixed_t = mixmatch.mix(inputs, targets, lam, perm)
        rows = 2 * b  # the labeled rows come first; at web scale only they are forwarded
        if web_scale:
            mixed_x, mixed_t = mixed_x[:rows], mixed_t[:rows]
        with autocast(mixed_x.device, params.runtime.precision):
            logits = trainer(mixed_x).float()
        terms = mixmatch.mixmatch_losses(logits, mixed_t, rows)
        lambda_u = mixmatch.lambda_u_ramp(cfg.lambda_u, t, params.warmup.epochs, cfg.lambda_u_ramp_epochs)
        loss = terms["lx"] + lambda_u * terms["lu"] + cfg.prior_weight * terms["lreg"]
        loss = distributed.scaled(loss, b, sizes[0])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for name, value in (*terms.items(), ("loss", loss)):
            sums[name] += float(value.detach())
    return {name: distributed.mean(total) / max(steps, 1) for name, total in sums.items()}


def _mix_positions(sizes: tuple[int, int]) -> torch.Tensor | None:
    """This rank's rows in the global mixing layout [x1 | x2 | u1 | u2] of a (labeled, unlabeled) batch of
    `sizes`; None (every row) with one process."""
    if distributed.world_size() == 1:
        return None
    b, bu = sizes
    x, u = distributed.row_block(b), distributed.row_block(bu)
    starts = ((x, 0), (x, b), (u, 2 * b), (u, 2 * b + bu))
    return torch.cat([torch.arange(block.start, block.stop) + offset for block, offset in starts])


def progress_steps(steps: int, params: Params, desc: str) -> Any:
    """range(steps) with a progress bar when one is wanted."""
    from labelsieve.progress import progress

    return progress(range(steps), total=steps, desc=desc, mode=params.runtime.progress)


def is_recalibration(epoch: int, period: int, *, step: int = 0, last_step: int | None = None) -> bool:
    """SMR: every P-th global epoch, (epoch + 1) % P == 0, is a plain CE epoch; P = 0 turns it off.

    `step` is the epoch's 0-based SSL step; from `last_step` on (when given) no epoch recalibrates, so a
    short budget does not re-memorise the noisy labels just before the final division (docs/algorithms.md §9).
    """
    barred = last_step is not None and step >= last_step
    return period > 0 and (epoch + 1) % period == 0 and not barred


def recalibrates(params: Params, step: int) -> bool:
    """Whether SSL step `step` (0-based) is a recalibration epoch under `params` (`is_recalibration`)."""
    cfg = params.ssl_train
    last_step = math.floor(cfg.recalibration_until * cfg.epochs + 1e-9)
    epoch = params.warmup.epochs + step  # global epoch: the schedule spans warm-up + SSL
    return is_recalibration(epoch, cfg.recalibration_period, step=step, last_step=last_step)


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    warmup_dir: str | Path,
    divide_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Co-train the two warmed-up networks for `params.ssl_train.epochs` epochs; resumable.

    Raises:
        LabelsieveError: the warm-up produced one network but SSL epochs were asked for.
    """
    cfg = params.ssl_train
    device = distributed.setup(resolve_device(params.runtime.device))
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    networks = loop.load_networks(warmup_dir, params, data, device)
    if cfg.epochs > 0 and len(networks) != 2:
        raise LabelsieveError(
            f"ssl_train needs two networks, the warm-up made {len(networks)} (set warmup.networks: 2)"
        )
    optimizers = [loop.make_optimizer(m, params.model) for m in networks]
    generators = loop.Generators(params.runtime.seed, "ssl_train", device)
    first = co_divide.read(divide_dir, device)
    checkpoint = Checkpoint(
        out_dir,
        {
            "stage": "ssl_train",
            "data": data.key,
            "model": params.model,
            "ssl": cfg,
            "co_divide": params.co_divide,
            "warmup": params.warmup,
            "seed": params.runtime.seed,
            "init": first["losses"].sum().item(),
        },
    )
    start, history = 0, []
    loss_history = [first["normalised"][k][None] for k in range(len(networks))]
    dynamics = TrainingDynamics.create(len(data.train_labels), data.num_classes, device)
    held_out = None  # (K, N): where each network trained on a guessed label, not ỹ, last epoch
    if (state := checkpoint.load()) is not None:
        start, history = loop.restore_training_state(state, networks, optimizers, generators)
        loss_history = [h.to(device) for h in state["loss_history"]]
        dynamics = TrainingDynamics.from_state(state["dynamics"], device)
        held_out = None if state["held_out"] is None else state["held_out"].to(device)
    for step in range(start, cfg.epochs):
        epoch = params.warmup.epochs + step  # global epoch: the schedule spans warm-up + SSL
        generators.begin_epoch(epoch)
        record: dict[str, Any] = {"epoch": epoch}
        with loop.Timer() as timer:
            if recalibrates(params, step):
                record["kind"] = "recalibration"
                held_out = None
                record["loss"] = [
                    loop.supervised_epoch(
                        m,
                        o,
                        data,
                        params=params,
                        epoch=epoch,
                        loss="ce",
                        alpha=1.0,
                        penalty=0.0,
                        generators=generators,
                        desc=f"recalibrate {epoch + 1} net{k + 1}",
                        fraction=cfg.recalibration_fraction,
                    )["loss"]
                    for k, (m, o) in enumerate(zip(networks, optimizers, strict=True))
                ]
            else:
                record["kind"] = "mixmatch"
                split = _division(
                    first if step == 0 else None,
                    networks,
                    data,
                    params,
                    epoch,
                    loss_history,
                    dynamics,
                    held_out,
                )
                held_out = ~split["labeled"].flip(0)  # network k trained on the peer's labeled set
                record["labeled_fraction"] = [float(m.float().mean()) for m in split["labeled"]]
                quality = [co_divide.labeled_quality(m, data) for m in split["labeled"]]
                if quality[0]:
                    record["labeled_precision"] = [q["labeled_precision"] for q in quality]
                    record["labeled_recall"] = [q["labeled_recall"] for q in quality]
                terms = []
                for k in range(2):  # net 1 first, then net 2 against the updated net 1
                    peer = 1 - k
                    terms.append(
                        mixmatch_epoch(
                            networks[k],
                            networks[peer],
                            optimizers[k],
                            data,
                            clean_prob=split["clean_prob"][peer],
                            labeled=split["labeled"][peer],
                            params=params,
                            epoch=epoch,
                            generators=generators,
                            desc=f"ssl {epoch + 1} net{k + 1}",
                        )
                    )
                for name in terms[0]:
                    record[name] = [t[name] for t in terms]
        record["train_seconds"] = timer.seconds
        record.update(loop.evaluate(networks, data, params))
        history.append(record)
        loop.log_epoch("ssl_train", record)
        state = loop.training_state(networks, optimizers, generators, step, history)
        checkpoint.save(
            {
                **state,
                "loss_history": [h.cpu() for h in loss_history],
                "dynamics": dynamics.state(),
                "held_out": None if held_out is None else held_out.cpu(),
            }
        )
    final = co_divide.divide(networks, data, params, tag="ssl_train_final", min_size=cfg.batch_size)
    dynamics.add(final.probs, data.train_labels, held_out)
    if distributed.is_main():
        with atomic_dir(out_dir) as tmp:
            loop.save_networks(tmp, networks, params, data)
            write_json(tmp / "history.json", history)
            co_divide.write(tmp, final, data)
            write_dynamics(tmp / "dynamics.npz", dynamics)
    checkpoint.clear()  # waits for rank 0's outputs
    best = loop.best_epoch(history)
    return {"epochs": cfg.epochs, **(history[-1] if history else {}), "best_val_epoch": best.get("epoch")}


def write_dynamics(path: Path, dynamics: TrainingDynamics) -> None:
    """``dynamics.npz``: the averages of `TrainingDynamics.means` (float32) and ``count``."""
    means = {name: value.float().cpu().numpy() for name, value in dynamics.means().items()}
    write_npz(path, **means, count=np.array(dynamics.count))


def read_dynamics(directory: str | Path) -> dict[str, np.ndarray] | None:
    """The arrays of an ssl_train output's ``dynamics.npz``, or None when it has none (no SSL stage)."""
    path = Path(directory) / "dynamics.npz"
    if not path.is_file():
        return None
    with np.load(path) as arrays:
        return {name: arrays[name] for name in arrays.files}


def history_window(past: torch.Tensor, history: int) -> torch.Tensor:
    """The earlier epochs' normalised losses (H, N) that join this epoch's in a `co_divide.history`-epoch
    average: the last history − 1 of them (DivideMix's 5 is this epoch and the 4 before it)."""
    return past[-(history - 1) :] if history > 1 else past[:0]


def _division(
    first: dict[str, torch.Tensor] | None,
    networks: list[torch.nn.Module],
    data: TrainingData,
    params: Params,
    epoch: int,
    loss_history: list[torch.Tensor],
    dynamics: TrainingDynamics,
    held_out: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """This epoch's co-divide: the co_divide stage's output for the first SSL epoch, else a fresh one.

    Keeps `loss_history` (per network, the last `co_divide.history` normalised losses) up to date, and
    adds a fresh division's predictions to `dynamics`.
    """
    if first is not None:
        return first
    keep = params.co_divide.history
    past = [history_window(h, keep) for h in loss_history]
    result = co_divide.divide(
        networks, data, params, tag=f"epoch{epoch}", history=past, min_size=params.ssl_train.batch_size
    )
    loss_history[:] = [
        torch.cat([h, now[None]])[-max(keep, 1) :]
        for h, now in zip(loss_history, result.normalised_now, strict=True)
    ]
    dynamics.add(result.probs, data.train_labels, held_out)
    return {"clean_prob": result.clean_prob, "labeled": result.labeled}
