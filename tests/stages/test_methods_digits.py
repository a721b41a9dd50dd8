"""End to end on digits with 40% symmetric noise: SMR must beat plain CE by a clear, seeded margin.

Both run in fp32: bf16 matmuls take different paths on AMD (AVX-512 BF16) and Intel (AMX) CPUs, and a
seeded bf16 run gave CE 92.5% on one and 94.7% on the other. fp32 avoids the bf16 units; it was measured
only on AMD here, so the asserted margin is also kept under the smallest gap seen on either CPU.
"""

import pytest

from labelsieve.config import load_params
from labelsieve.stages import co_divide, ingest, inject_noise, ssl_train, warmup

pytestmark = pytest.mark.integration

BUDGET = 30  # epochs for both. At 14, one-cycle CE barely memorises digits' noise (97.2%, seed 0, bf16);
# at 30 it does (95.5% in fp32), while SMR holds 98.6% (seed 0, AMD EPYC, 2 cores).


def test_smr_beats_ce_on_digits_at_40_percent_symmetric_noise(tmp_path):
    base = ["runtime.progress=never", "runtime.precision=fp32"]
    params = load_params(None, presets=["digits"], overrides=base)
    assert (params.inject_noise.mode, params.inject_noise.rate) == ("symmetric", 0.4)
    inputs = {"dataset_dir": tmp_path / "dataset", "labels_dir": tmp_path / "labels"}
    ingest.run(params, out_dir=inputs["dataset_dir"])
    inject_noise.run(params, dataset_dir=inputs["dataset_dir"], out_dir=inputs["labels_dir"])

    ce_params = load_params(None, presets=["digits", "ce"], overrides=[*base, f"warmup.epochs={BUDGET}"])
    ce = warmup.run(ce_params, **inputs, out_dir=tmp_path / "ce")

    smr_params = load_params(
        None,
        presets=["smr", "digits"],
        overrides=[*base, f"ssl_train.epochs={BUDGET - 4}", "ssl_train.recalibration_period=10"],
    )
    assert smr_params.total_epochs == BUDGET == ce_params.total_epochs
    warmup.run(smr_params, **inputs, out_dir=tmp_path / "warmup")
    co_divide.run(smr_params, **inputs, warmup_dir=tmp_path / "warmup", out_dir=tmp_path / "divide")
    smr = ssl_train.run(
        smr_params,
        **inputs,
        warmup_dir=tmp_path / "warmup",
        divide_dir=tmp_path / "divide",
        out_dir=tmp_path / "ssl",
    )

    # fp32, seed 0: SMR 98.6% vs CE 95.5% (AMD EPYC). bf16 gave 96.7% vs 94.7% on an Intel Xeon with AMX and
    # 98.9% vs 92.5% on AMD: the smallest gap seen anywhere was 1.9 points, so 1.5 must hold on any x86 CPU.
    assert smr["test_acc"] > ce["test_acc"] + 0.015, (smr["test_acc"], ce["test_acc"])
    assert smr["test_acc"] > 0.96
