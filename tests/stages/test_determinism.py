"""Two identical runs of a training stage leave byte-identical outputs (so dvc.lock does not change), and
the wall-clock timings live beside the output, not in it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from labelsieve.config import load_params
from labelsieve.engine.timings import timings_path
from labelsieve.stages import evaluate, ingest, inject_noise, warmup

pytestmark = pytest.mark.integration


def _hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_two_identical_warmup_runs_give_byte_identical_outputs(tmp_path):
    params = load_params(
        None,
        presets=["digits"],
        overrides=[
            "runtime.progress=never",
            "warmup.epochs=1",
            "ssl_train.epochs=1",
            "model.eval_batch_size=4096",
        ],
    )
    ingest.run(params, out_dir=tmp_path / "dataset")
    inject_noise.run(params, dataset_dir=tmp_path / "dataset", out_dir=tmp_path / "labels")
    for name in ("first", "second"):
        warmup.run(
            params, dataset_dir=tmp_path / "dataset", labels_dir=tmp_path / "labels", out_dir=tmp_path / name
        )
    first, second = _hashes(tmp_path / "first"), _hashes(tmp_path / "second")
    assert {"net1.pt", "net2.pt", "history.json", "networks.json"} <= set(first)
    assert first == second
    history = json.loads((tmp_path / "first" / "history.json").read_text())
    assert len(history) == 1 and "train_seconds" not in history[0]
    timings = json.loads(timings_path(tmp_path / "first").read_text())
    assert timings[0]["epoch"] == 0 and timings[0]["train_seconds"] > 0
    # readers that want the times (the benchmarks) get them back through read_history
    assert evaluate.read_history(tmp_path / "first")[0]["train_seconds"] == timings[0]["train_seconds"]
    assert "train_seconds" not in evaluate.read_history(tmp_path / "first", timings=False)[0]
