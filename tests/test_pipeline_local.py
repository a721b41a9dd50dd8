"""The compiled pipeline run by kfp's local SubprocessRunner gives what the stage functions give directly."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsieve.cli import main
from labelsieve.config import load_params
from labelsieve.stages import STAGES
from tests.conftest import TINY_PIPELINE

pytestmark = pytest.mark.integration

# Digits, one epoch per training stage, one thread: seconds per stage, deterministic on the CPU.
TINY = (*TINY_PIPELINE, "ingest.per_class_limit=40")


def _numbers(path):
    figures = json.loads(path.read_text())
    return {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not k.endswith("seconds")}


def test_pipeline_run_local_equals_direct_stage_runs(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("# built-in defaults\n")
    command = ["pipeline", "run-local", "--params", str(tmp_path / "params.yaml"), "--preset", "digits"]
    sets = [arg for item in TINY for arg in ("--set", item)]
    assert main([*command, *sets, "--pipeline-root", str(tmp_path / "kfp")]) == 0
    result = json.loads(capsys.readouterr().out)
    local = {name: Path(path) for name, path in result["outputs"].items()}
    params = load_params(tmp_path / "params.yaml", presets=["digits"], overrides=TINY)
    assert all(path.is_dir() for path in local.values())

    threads = torch.get_num_threads()
    torch.set_num_threads(params.runtime.threads)
    try:
        produced = {}
        for name, stage in STAGES.items():
            inputs = {key: produced[path] for key, path in stage.inputs.items()}
            produced[stage.out_dir] = tmp_path / "direct" / name
            stage.run(params, **inputs, out_dir=produced[stage.out_dir])
    finally:
        torch.set_num_threads(threads)
    direct = {name: tmp_path / "direct" / name for name in STAGES}

    assert _numbers(local["evaluate"] / "metrics.json") == _numbers(direct["evaluate"] / "metrics.json")
    for key, value in np.load(direct["purify"] / "labels.npz").items():
        np.testing.assert_array_equal(np.load(local["purify"] / "labels.npz")[key], value)
    weights = [torch.load(d["retrain"] / "weights.pt", weights_only=True) for d in (local, direct)]
    for name in weights[1]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)
