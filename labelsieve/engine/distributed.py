"""Data-parallel training under ``torchrun`` (torch.distributed, DistributedDataParallel).

A stage launched as ``torchrun --nproc_per_node N -m labelsieve.cli <stage> ...`` (WORLD_SIZE > 1) joins
one process group: nccl on CUDA, each rank on ``cuda:LOCAL_RANK``; gloo on the CPU. Without the torchrun
environment every function here is the identity or a no-op, so the single-process path is unchanged.

Sharding: every rank draws the same epoch order from the same cpu generator and takes its contiguous
slice of every global batch (`shard`); the loss of the slice is scaled by W·b/B (`scaled`), so DDP's
gradient average is the mean over the global batch B. A world of N with per-rank batch B/N therefore
trains as one process with batch B except for (1) BatchNorm statistics, per rank on the CPU
(SyncBatchNorm raises on CPU tensors in torch 2.15) and synchronised (SyncBatchNorm) on CUDA, (2) the
float summation order of the gradient all-reduce, (3) the augmentation stream, folded with the rank, and
(4) in-batch partners (mixup, in-batch neighbours), drawn within each rank's slice. A global batch
smaller than the world is skipped (it only happens when N mod B < W).

No-grad passes over the training set (`gather_rows`) are split into contiguous row blocks and
all-gathered, so every rank holds the same per-sample vectors, fits the same GMM and the same partition
(`check_same` verifies it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

_WRAPPED: weakref.WeakKeyDictionary[nn.Module, DistributedDataParallel] = weakref.WeakKeyDictionary()


def launched() -> bool:
    """Whether torchrun started this process as one of several (WORLD_SIZE > 1 in the environment)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def env_rank() -> int:
    """RANK from the environment (0 without torchrun); readable before `setup`."""
    return int(os.environ.get("RANK", "0"))


def setup(device: torch.device) -> torch.device:
    """Join the torchrun process group (once per process) and return the device this rank trains on.

    Without torchrun (or with WORLD_SIZE 1) `device` is returned unchanged and nothing else happens.
    """
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        atexit.register(teardown)
    return device


def teardown() -> None:
    """Leave the process group (registered at exit by `setup`; safe to call twice)."""
    _WRAPPED.clear()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is in a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 with one process)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """The number of ranks (1 with one process)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this rank writes outputs, checkpoints and logs (rank 0)."""
    return rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op with one process)."""
    if active():
        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the others (e.g. a checkpoint read that may move a file)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def local_rows(batch: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous slice of one global batch (the batch itself with one process)."""
    return batch if not active() else batch.tensor_split(world_size())[rank()]


def shard(order: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, int]]:
    """(this rank's slice, global batch size) for every batch of an epoch's batch list.

    Every rank must pass the same list (drawn from the same cpu generator). Batches with fewer rows than
    ranks are skipped, so no rank ever steps on an empty slice.
    """
    world = world_size()
    return [(local_rows(batch), len(batch)) for batch in order if len(batch) >= world]


def scaled(loss: torch.Tensor, rows: int, total: int) -> torch.Tensor:
    """A rank's mean loss over `rows` rows of a `total`-row global batch, times W·rows/total: DDP averages
    gradients over the ranks, so the step follows the global batch mean. Unchanged with one process."""
    world = world_size()
    return loss if world == 1 else loss * (world * rows / total)


def mean(value: float) -> float:
    """The mean of a float over the ranks (`value` itself with one process)."""
    if not active():
        return value
    total = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return float(total) / world_size()


def sum_tensor(value: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of a tensor over the ranks (`value` itself with one process)."""
    if not active():
        return value
    total = value.detach().clone().to(_collective_device())
    dist.all_reduce(total)
    return total.to(value.device)


def row_block(n: int, r: int | None = None) -> slice:
    """Rank `r`'s (default: this rank's) contiguous block of `n` rows in a sharded no-grad pass
    (`tensor_split` boundaries)."""
    world, r = world_size(), rank() if r is None else r
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's `row_block(n)` rows, concatenated in rank order: (n, ...) on every rank, byte-identical.

    `local` is this rank's block; blocks are padded to the largest for the all-gather and trimmed after.
    """
    if not active():
        return local
    world, size = world_size(), -(-n // world_size())
    padded = local.new_zeros((size, *local.shape[1:]))
    padded[: len(local)] = local
    padded = padded.to(_collective_device())
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    blocks = [part[: (block := row_block(n, r)).stop - block.start] for r, part in enumerate(parts)]
    return torch.cat(blocks).to(local.device)


def check_same(value: torch.Tensor, what: str) -> None:
    """Raise unless `value` is identical on every rank (e.g. the co-divide partition); no-op alone.

    Raises:
        RuntimeError: a rank holds a different `value`, naming `what`.
    """
    if not active():
        return
    reference = value.detach().clone().to(_collective_device())
    dist.broadcast(reference, src=0)
    same = torch.tensor([int(torch.equal(reference, value.detach().to(reference.device)))])
    same = same.to(_collective_device())
    dist.all_reduce(same, op=dist.ReduceOp.MIN)
    if not int(same):
        raise RuntimeError(f"{what} differs between ranks (rank {rank()} of {world_size()})")


def wrap(model: nn.Module) -> nn.Module:
    """The module to run a training forward/backward through: `model` itself with one process, else its
    DistributedDataParallel wrapper (made once per model; on CUDA its BatchNorm layers become
    SyncBatchNorm first, in place, sharing their parameters and buffers).

    Call no-grad passes and ``features``/``head`` on `model`, never on the wrapper.
    """
    if not active():
        return model
    if (wrapper := _WRAPPED.get(model)) is None:
        device = next(model.parameters()).device
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        wrapper = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        _WRAPPED[model] = wrapper
    return wrapper


def _collective_device() -> torch.device:
    """Where collective tensors must live: the rank's GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
