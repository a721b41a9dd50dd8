"""Device selection and the per-device speed settings (docs/design.md, "Performance principles").

On CUDA: bf16 autocast, channels_last and optionally ``torch.compile``. On the CPU everything stays
float32 in the default layout, so CPU runs are exact and resumable bit for bit.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn

from labelsieve.engine.allocator import tune_malloc

_CUDA_NAME = re.compile(r"cuda(:\d+)?")


def resolve_device(name: str) -> torch.device:
    """Turn a config string into a device.

    Args:
        name: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".

    Returns:
        The device.

    Raises:
        RuntimeError: CUDA was asked for but is not available, or N is not a visible GPU.
        ValueError: any other name.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if _CUDA_NAME.fullmatch(name):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} requested but CUDA is not available; use 'cpu' or 'auto'")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) visible"
            )
        return device
    raise ValueError(f"unknown device {name!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'")


def apply_threads(threads: int) -> None:
    """Run torch's CPU kernels on `threads` threads (`runtime.threads`); 0 keeps torch's default."""
    if threads:
        torch.set_num_threads(threads)


def prepare_process(threads: int) -> bool:
    """Set up a process that trains: `apply_threads`, then glibc's malloc thresholds (engine/allocator.py).
    Returns whether the thresholds were applied."""
    apply_threads(threads)
    return tune_malloc()


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """Whether forwards run in bf16: always on CUDA under "auto", and on CPUs with native bf16 (AVX512-BF16
    or AMX), where it made a small_cnn training step 1.75x faster here. "fp32" and "bf16" force it."""
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return True
    return device.type == "cpu" and (
        torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    )


def autocast(device: torch.device, precision: str = "auto") -> AbstractContextManager[object]:
    """Mixed precision for forward passes: bf16 autocast where `use_bf16`, else nothing.

    bf16 needs no loss scaling, unlike fp16, and its CPU kernels are deterministic, so a resumed CPU run
    still matches an uninterrupted one bit for bit.

    Args:
        device: where the model runs.
        precision: "auto", "fp32" or "bf16" (`runtime.precision`).

    Returns:
        A context manager to wrap forward passes in.
    """
    if use_bf16(device, precision):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_model(model: nn.Module, device: torch.device, *, channels_last: bool, compile: bool) -> nn.Module:
    """Move a model to its device and apply the speed settings.

    Args:
        model: the model; moved in place.
        device: target device.
        channels_last: use NHWC weights, which tensor cores prefer; applied on CUDA only.
        compile: wrap with ``torch.compile``. The wrapper's ``forward`` is compiled; other methods such as
            ``features`` and ``head`` stay eager, and ``state_dict`` keys of the returned object gain an
            ``_orig_mod.`` prefix, so save ``model`` (the argument) rather than the return value.

    Returns:
        ``model`` itself, or its compiled wrapper.
    """
    model.to(device)
    if channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model)
    return model
