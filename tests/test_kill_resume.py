"""Fault: a training stage killed by SIGKILL mid-way leaves no output directory and resumes on re-run."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from labelsieve.config import load_params
from labelsieve.stages import STAGES

pytestmark = pytest.mark.integration

EPOCHS = 6
OVERRIDES = (
    "runtime.progress=never",
    "runtime.device=cpu",
    "runtime.threads=1",
    "ingest.per_class_limit=60",
    f"warmup.epochs={EPOCHS}",
)


def _warmup_cli(tmp_path, out):
    """`labelsieve warmup` as its own process (the way dvc.yaml and a Kubeflow pod run it)."""
    sets = [arg for item in OVERRIDES for arg in ("--set", item)]
    command = [sys.executable, "-m", "labelsieve.cli", "warmup", "--preset", "digits", *sets]
    command += ["--dataset-dir", str(tmp_path / "dataset"), "--labels-dir", str(tmp_path / "labels")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [*command, "--out-dir", str(out)], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )


def _epochs_logged(stderr: str) -> int:
    return sum(1 for line in stderr.splitlines() if line.startswith('{"stage": "warmup"'))


def test_warmup_killed_by_sigkill_resumes_from_checkpoint(tmp_path):
    params = load_params(None, presets=["digits"], overrides=OVERRIDES)
    STAGES["ingest"].run(params, out_dir=tmp_path / "dataset")
    STAGES["inject_noise"].run(params, dataset_dir=tmp_path / "dataset", out_dir=tmp_path / "labels")
    out, checkpoint = tmp_path / "warmup", tmp_path / "warmup.ckpt" / "last.pt"

    process = _warmup_cli(tmp_path, out)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    _, first_log = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL, f"the stage ended before the kill:\n{first_log}"
    assert checkpoint.exists()
    assert not out.exists()  # no half-written output directory for the next stage to take as output
    assert _epochs_logged(first_log) < EPOCHS

    process = _warmup_cli(tmp_path, out)
    _, second_log = process.communicate(timeout=300)
    assert process.returncode == 0, second_log
    assert _epochs_logged(first_log) + _epochs_logged(second_log) == EPOCHS  # resumed, not restarted
    assert not checkpoint.parent.exists()  # cleared once the outputs are written
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".warmup")) == []

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the CLI runs did (runtime.threads)
    try:
        inputs = {"dataset_dir": tmp_path / "dataset", "labels_dir": tmp_path / "labels"}
        STAGES["warmup"].run(params, **inputs, out_dir=tmp_path / "whole")
    finally:
        torch.set_num_threads(threads)
    for net in ("net1.pt", "net2.pt"):
        resumed = torch.load(out / net, weights_only=True)
        whole = torch.load(tmp_path / "whole" / net, weights_only=True)
        for name in whole:
            torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=f"{net}:{name}")
