"""Stage 6, `group_regularize`: GRIP fine-tuning (docs/algorithms.md §4) of every network it is given.

Each network keeps its own class soft-label matrix S (C, C) and JS memory D (N,). The networks arrive
trained, so S starts from one evaluation pass and D fills from the first batch. Per batch, the training
forward's detached prediction p̄ gives d = JS(p̄, S[ỹ]), stored in D. From epoch E_warm − 1 a sample with
d above the threshold (mean + α·std of D, taken per batch) is revised to argmax p̄ if
JS(p̄, S[argmax]) ≤ τ_relabel, else discarded for this step. The loss is (1−w)·CE + w·CE(z, S[y]) over
the kept samples + γ·NE over the whole batch. At the end of each epoch S moves toward the class-average
prediction of the samples whose argmax equals their label (EMA m; an empty class keeps its row). The
learning rate warms up only over `lr_warmup_epochs` (0 by default: the networks are already trained), or
continues the model's schedule (`schedule: continue`).

With `epochs: 0` the networks pass through unchanged with S from the evaluation pass, so `purify`
always finds soft labels. Outputs: ``net{k}.pt``, ``networks.json``, ``soft_labels.npy`` (K, C, C),
``js_memory.npy`` (K, N), ``history.json``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from labelsieve.atomic import atomic_dir, write_json, write_npy
from labelsieve.config import Params
from labelsieve.engine import distributed, loop
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.engine.device import autocast, resolve_device
from labelsieve.engine.resident import TrainingData
from labelsieve.engine.stream import prefetch
from labelsieve.maths import grip
from labelsieve.progress import progress


def group_lr(epoch: float, params: Params) -> float:
    """The learning rate at fractional GRIP epoch `epoch`.

    schedule grip: GRIP's own shape, a linear warm-up over `lr_warmup_epochs`, then cosine to 0 at `epochs`.
    schedule continue: the model's schedule (`loop.lr_at`) at the same point of the whole budget, as if
    the CE or SSL epochs before had gone on into GRIP's.
    """
    cfg = params.group_regularize
    if cfg.schedule == "continue":  # the budget ends with these epochs
        return loop.lr_at(params.total_epochs - cfg.epochs + epoch, params.model, params.total_epochs)
    warm = min(cfg.lr_warmup_epochs, cfg.epochs)
    if epoch < warm:
        return cfg.lr * (epoch + 1e-3) / warm
    span = max(cfg.epochs - warm, 1e-9)
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * min((epoch - warm) / span, 1.0)))


def grip_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainingData,
    state: grip.SoftLabelState,
    memory: grip.JsMemory,
    *,
    params: Params,
    epoch: int,
    generators: loop.Generators,
    desc: str,
) -> dict[str, float]:
    """One GRIP epoch of `model`; updates `state` and the JS `memory` in place.

    The threshold is taken per batch from the memory as it stands after this batch's divergences are
    stored (§4 steps 1 and 3); the returned ``threshold`` is its mean over the epoch's batches.

    Data-parallel: each rank trains on its slice of every batch; the divergences of the whole batch are
    all-gathered into every rank's memory (so every rank takes the same threshold), and S's accumulators
    and the decision counts are summed over the ranks.
    """
    cfg = params.group_regularize
    model.train()
    trainer = distributed.wrap(model)
    purifying = state.initialised and grip.purification_active(epoch, warmup_epochs=cfg.warmup_epochs)
    thresholds = []
    order = distributed.shard(loop.batches(len(data.train_labels), params.model.batch_size, generators.cpu))
    prefetch(data.train_images, [idx for idx, _ in order])
    counts = torch.zeros(3, dtype=torch.int64)
    total = 0.0
    for step, (idx, size) in enumerate(
        progress(order, total=len(order), desc=desc, mode=params.runtime.progress)
    ):
        loop.set_lr(optimizer, group_lr(epoch + step / len(order), params))
        idx = idx.to(data.train_labels.device)
        x = loop.views(data.train_images[idx], params.model, data.mean, data.std, generators.device)
        labels = data.train_labels[idx]
        with autocast(x.device, params.runtime.precision):
            logits = trainer(x).float()
        probs = F.softmax(logits, dim=1).detach()  # the selection reuses the training forward
        soft = state.soft_labels  # the identity until the first update, so the soft term is plain CE then
        if state.initialised:
            d = grip.js_divergence(probs, soft[labels])
            memory.write(distributed.gather_rows(idx, size), distributed.gather_rows(d, size))
        if purifying:
            threshold = memory.threshold(cfg.threshold_alpha)
            thresholds.append(threshold)
            decision, labels, _ = grip.purify_batch(
                probs, labels, soft, threshold=threshold, relabel_tau=cfg.relabel_tau
            )
        else:
            decision = torch.full_like(labels, grip.CLEAN, dtype=torch.int8)
        keep = decision != grip.DISCARDED
        terms = grip.grip_loss(logits, labels, keep, soft, w=cfg.soft_weight, gamma=cfg.entropy_weight)
        loss = distributed.scaled(terms["total"], len(idx), size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.accumulate(probs[keep], labels[keep])
        counts += torch.bincount(decision.long().cpu(), minlength=3)
        total += float(loss.detach())
    state.accum, state.counts = distributed.sum_tensor(state.accum), distributed.sum_tensor(state.counts)
    state.end_epoch(momentum=cfg.momentum)
    clean, revised, discarded = distributed.sum_tensor(counts).tolist()
    return {
        "loss": distributed.mean(total) / max(len(order), 1),
        "clean": clean,
        "revised": revised,
        "discarded": discarded,
        "threshold": sum(thresholds) / len(thresholds) if thresholds else math.inf,
    }


def initial_state(model: torch.nn.Module, data: TrainingData, params: Params) -> grip.SoftLabelState:
    """S from one evaluation pass: the class-average prediction of samples whose argmax is their label."""
    logits = loop.logits_on(model, data.train_images, data, params)
    state = grip.SoftLabelState.create(data.num_classes, device=logits.device)
    state.accumulate(F.softmax(logits, dim=1), data.train_labels)
    state.end_epoch(momentum=params.group_regularize.momentum)
    return state


def run(
    params: Params,
    *,
    dataset_dir: str | Path,
    labels_dir: str | Path,
    networks_dir: str | Path,
    out_dir: str | Path,
) -> dict[str, Any]:
    """Fine-tune the networks in `networks_dir` with GRIP for `group_regularize.epochs` epochs; resumable."""
    cfg = params.group_regularize
    device = distributed.setup(resolve_device(params.runtime.device))
    data = TrainingData.load(dataset_dir, labels_dir, device, params.runtime.data_path)
    networks = loop.load_networks(networks_dir, params, data, device)
    optimizers = [loop.make_optimizer(m, params.model) for m in networks]
    generators = loop.Generators(params.runtime.seed, "group_regularize", device)
    # The networks come trained: S starts from an evaluation pass, so the JS memory fills from epoch 0
    # and the first purifying epoch has a full epoch of memory behind it.
    states = [initial_state(model, data, params) for model in networks]
    memory = [grip.JsMemory.create(len(data.train_labels), device) for _ in networks]
    initial = sum(float(p.detach().double().sum()) for m in networks for p in m.parameters())
    key = {
        "stage": "group_regularize",
        "data": data.key,
        "cfg": cfg,
        "model": params.model,
        "seed": params.runtime.seed,
        "init": initial,
    }  # the input networks are part of the run's identity
    checkpoint = Checkpoint(out_dir, key, stage="group_regularize")
    start, history = 0, []
    if (saved := checkpoint.load()) is not None:
        start, history = loop.restore_training_state(saved, networks, optimizers, generators)
        for m, (values, sums) in zip(memory, saved["memory"], strict=True):
            m.values, m.sums = values.to(device), sums.to(device)
        for state, (soft, initialised) in zip(states, saved["soft_labels"], strict=True):
            state.soft_labels, state.initialised = soft.to(device), bool(initialised)
    for epoch in range(start, cfg.epochs):
        generators.begin_epoch(epoch)
        record: dict[str, Any] = {"epoch": epoch}
        with loop.Timer() as timer:
            results = [
                grip_epoch(
                    networks[k],
                    optimizers[k],
                    data,
                    states[k],
                    memory[k],
                    params=params,
                    epoch=epoch,
                    generators=generators,
                    desc=f"grip {epoch + 1}/{cfg.epochs} net{k + 1}",
                )
                for k in range(len(networks))
            ]
        for name in results[0]:
            record[name] = [r[name] for r in results]
        record["train_seconds"] = timer.seconds
        record.update(loop.evaluate(networks, data, params))
        history.append(record)
        loop.log_epoch("group_regularize", record)
        state_dict = loop.training_state(networks, optimizers, generators, epoch, history)
        soft = [(s.soft_labels.cpu(), torch.tensor(s.initialised)) for s in states]
        saved_memory = [(m.values.cpu(), m.sums.cpu()) for m in memory]
        checkpoint.save({**state_dict, "memory": saved_memory, "soft_labels": soft})
    soft_labels = torch.stack([state.soft_labels for state in states])
    if distributed.is_main():
        with atomic_dir(out_dir) as tmp:
            loop.save_networks(tmp, networks, params, data)
            write_npy(tmp / "soft_labels.npy", soft_labels.cpu().numpy().astype(np.float32))
            write_npy(tmp / "js_memory.npy", torch.stack([m.values for m in memory]).cpu().numpy())
            write_json(tmp / "history.json", history)
    checkpoint.clear()  # waits for rank 0's outputs
    return {"epochs": cfg.epochs, "networks": len(networks), **(history[-1] if history else {})}
