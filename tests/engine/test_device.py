"""Tests for labelsieve.engine.device."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from labelsieve.engine.device import autocast, prepare_model, resolve_device, use_bf16

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
without_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")


def _conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")


def test_resolve_device_auto_follows_cuda_availability() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@without_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_resolve_device_cuda_without_cuda_raises(name: str) -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["gpu", "mps", "cuda:x", "CPU", ""])
def test_resolve_device_unknown_name_raises(name: str) -> None:
    with pytest.raises(ValueError, match="allowed"):
        resolve_device(name)


def test_autocast_cpu_fp32_keeps_float32() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "fp32"):
        out = a @ b
    assert out.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")


def test_autocast_cpu_bf16_runs_matmul_in_bfloat16() -> None:
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(torch.device("cpu"), "bf16"):
        assert (a @ b).dtype == torch.bfloat16


def test_autocast_cpu_auto_follows_native_bf16_support() -> None:
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert use_bf16(torch.device("cpu"), "auto") == native
    with autocast(torch.device("cpu")):
        out = torch.randn(4, 4) @ torch.randn(4, 4)
    assert out.dtype == (torch.bfloat16 if native else torch.float32)


def test_prepare_model_cpu_ignores_channels_last() -> None:
    model = prepare_model(_conv_net(), torch.device("cpu"), channels_last=True, compile=False)
    weight = model[0].weight
    assert weight.device.type == "cpu"
    assert weight.is_contiguous()
    assert not weight.is_contiguous(memory_format=torch.channels_last)


def test_prepare_model_no_compile_returns_same_module() -> None:
    model = _conv_net()
    assert prepare_model(model, torch.device("cpu"), channels_last=False, compile=False) is model


@pytest.mark.gpu
@needs_cuda
def test_autocast_cuda_uses_bf16() -> None:
    a, b = torch.randn(4, 4, device="cuda"), torch.randn(4, 4, device="cuda")
    with autocast(torch.device("cuda")):
        out = a @ b
    assert out.dtype == torch.bfloat16


@pytest.mark.gpu
@needs_cuda
def test_prepare_model_cuda_channels_last() -> None:
    model = prepare_model(_conv_net(), torch.device("cuda"), channels_last=True, compile=False)
    weight = model[0].weight
    assert weight.device.type == "cuda"
    assert weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.gpu
@needs_cuda
def test_resolve_device_cuda_index_out_of_range_raises() -> None:
    with pytest.raises(RuntimeError, match="GPU"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.gpu
@needs_cuda
def test_prepare_model_cuda_compile_matches_eager() -> None:
    # On the GPU only: inductor's first compile on the CPU takes tens of seconds, too slow for unit tests.
    model = _conv_net().eval()
    compiled = prepare_model(model, torch.device("cuda"), channels_last=True, compile=True)
    x = torch.randn(2, 3, 8, 8, device="cuda").to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-4)
