"""benchmarks/speed.py: the smoke run covers every stage, and the bf16 peak table reads device names."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
STAGES = {"ce", "warmup-mixup", "ssl", "co-divide", "grip", "retrain-batch", "retrain-dataset"}


@functools.cache
def _speed_module() -> ModuleType:
    """benchmarks/speed.py as a module (it is a script, not part of the package)."""
    name = "labelsieve_speed_benchmark"
    spec = importlib.util.spec_from_file_location(name, SPEED)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_speed_smoke_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    subprocess.run(
        [sys.executable, str(SPEED), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads((out / "speed.json").read_text())
    stages = result["stages"]
    assert set(stages) == STAGES
    for name, figures in stages.items():
        assert figures["seconds"] > 0, name
        assert math.isfinite(figures["ratio_to_ce"]) and figures["ratio_to_ce"] > 0, name
        assert figures["samples_per_second"] > 0, name
        assert figures["peak_rss_mib"] > 0, name
    assert stages["ce"]["ratio_to_ce"] == pytest.approx(1.0)
    assert set(stages["retrain-dataset"]["parts_seconds"]) == {"prepare", "train"}
    assert result["ce_step"]["flops_per_step"] > 0
    table = (out / "speed.md").read_text()
    assert all(f"| {name} |" in table for name in STAGES)


@pytest.mark.parametrize(
    ("device_name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_bf16_tflops_by_device_name(device_name: str, tflops: float | None) -> None:
    assert _speed_module().peak_bf16_tflops(device_name) == tflops
