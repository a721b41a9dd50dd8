"""Data-parallel training (labelsieve/engine/distributed.py): two gloo ranks on the CPU, launched once by
torchrun on 127.0.0.1 (tests/engine/ddp_worker.py), against one process on the same digits set.

Tolerances: two ranks change the augmentation stream, the mixup partners and the BatchNorm batches, so a
world of 2 is another draw of the same training, not the same numbers. The gaps allowed are the largest
measured between one process at seeds 0, 1 and 2 on this set (README, "Training on several GPUs or
processes"), with margin; a real fault (a rank training on the wrong rows, unscaled gradients, ranks with
different partitions) moves these figures well beyond them or fails `distributed.check_same`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsieve.cli import main
from labelsieve.config import load_params
from labelsieve.engine import distributed, loop
from labelsieve.stages import STAGES
from tests.conftest import TINY_PIPELINE, free_port
from tests.engine import ddp_worker

OVERRIDES = (*TINY_PIPELINE, "warmup.epochs=2", "ssl_train.epochs=2", "runtime.precision=fp32")
CHAIN = ("warmup", "co_divide", "ssl_train", "group_regularize", "purify", "retrain")
# Largest gap measured (seeds 0, 1, 2: world 2 against one process) on three machines -> allowed; README has
# the figures. fp32 is forced so that no CPU runs bf16 where it is native; the kernels (AVX2, AVX-512) still
# differ. Retrain's synthetic epoch mixes in-batch neighbours, found within a rank's half of the batch: its
# loss is higher with two ranks on every seed (README), so its allowance is not a seed spread.
LOSS_GAP = {"warmup": 0.05, "ssl": 0.4, "model": 0.5}  # 0.038, 0.33, 0.388: per-epoch mean training loss
FRACTION_GAP = {"divide": 0.3, "ssl": 0.03}  # 0.24, 0.020: labeled fraction per network
ACCURACY_GAP = {"ssl": 0.04, "group": 0.04, "model": 0.09}  # 0.020, 0.025, 0.070: final test accuracy


def test_one_process_leaves_every_batch_tensor_and_loss_as_they_are():
    assert not distributed.active() and (distributed.rank(), distributed.world_size()) == (0, 1)
    order = loop.batches(10, 4, torch.Generator().manual_seed(0))
    assert [(rows, size) for rows, size in distributed.shard(order)] == [(b, len(b)) for b in order]
    assert all(rows is batch for (rows, _), batch in zip(distributed.shard(order), order, strict=True))
    loss, perm, block = torch.tensor(2.5), torch.tensor([2, 0, 1]), torch.ones(3, 2)
    assert distributed.scaled(loss, 3, 10) is loss
    assert loop.local_permutation(perm) is perm
    assert distributed.gather_rows(block, 3) is block
    assert distributed.mean(0.25) == 0.25
    distributed.check_same(torch.arange(3), "anything")  # nothing to compare with
    assert distributed.wrap(torch.nn.Linear(2, 2)).__class__ is torch.nn.Linear
    assert distributed.setup(torch.device("cpu")) == torch.device("cpu") and not distributed.active()


def test_under_torchrun_the_other_ranks_skip_stages_that_are_not_data_parallel(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    missing = str(tmp_path / "nothing")
    assert main(["evaluate", "--dataset-dir", missing, "--out-dir", str(tmp_path / "out")]) == 0
    assert not (tmp_path / "out").exists()
    assert main(["run"]) == 2
    assert "launch each stage on its own" in capsys.readouterr().err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One process: the whole chain, and a warm-up stopped after its first epoch. Then one torchrun launch of
    two ranks: that warm-up resumed (1 -> 2), a warm-up stopped after its first epoch, and the whole chain.
    Finally one process resumes the two ranks' stopped warm-up (2 -> 1)."""
    root = tmp_path_factory.mktemp("ddp")
    params = load_params(None, presets=["digits"], overrides=OVERRIDES)
    STAGES["ingest"].run(params, out_dir=root / "dataset")
    STAGES["inject_noise"].run(params, dataset_dir=root / "dataset", out_dir=root / "labels")
    spec = {"dataset": str(root / "dataset"), "labels": str(root / "labels"), "overrides": list(OVERRIDES)}
    dirs = {name: root / name for name in ("single", "double", "resume12", "resume21")}
    assert not distributed.active()
    assert ddp_worker.run_job(spec, {"out": dirs["single"], "stages": CHAIN})
    stopped = {"out": dirs["resume12"], "stages": ["warmup"], "stop_after_saves": 1}
    assert not ddp_worker.run_job(spec, stopped)
    jobs = [
        {"out": str(root / "probe"), "probe": True},
        {"out": str(dirs["resume12"]), "stages": ["warmup"]},
        {"out": str(dirs["resume21"]), "stages": ["warmup"], "stop_after_saves": 1},
        {"out": str(dirs["double"]), "stages": CHAIN},
    ]
    (root / "spec.json").write_text(json.dumps({**spec, "jobs": jobs}))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [*launcher, str(Path(ddp_worker.__file__)), str(root / "spec.json")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    dirs["stopped21"] = root / "stopped21.pt"
    shutil.copyfile(dirs["resume21"] / "warmup.ckpt" / "last.pt", dirs["stopped21"])
    assert ddp_worker.run_job(spec, {"out": dirs["resume21"], "stages": ["warmup"]})
    return {**dirs, "labels": root / "labels", "log": done.stderr, "probe": root / "probe"}


def _history(out: Path, stage: str) -> list[dict]:
    return json.loads((out / stage / "history.json").read_text())


def _fractions(out: Path, stage: str) -> list[float]:
    return [n["labeled_fraction"] for n in json.loads((out / stage / "summary.json").read_text())["networks"]]


def _gap(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float))))


@pytest.mark.integration
def test_each_rank_takes_its_slice_and_the_collectives_agree(runs):
    first, second = (json.loads((runs["probe"] / f"probe-rank{r}.json").read_text()) for r in (0, 1))
    # Every global batch is split into contiguous slices, rank order; a batch under the world is skipped.
    assert first["shards"] == [[[0, 1, 2, 3, 4], 10], [[10, 11], 3]]
    assert second["shards"] == [[[5, 6, 7, 8, 9], 10], [[12], 3]]
    # The shared permutation [4, 2, 5, 0, 3, 1] visits rank 0's rows 2, 0, 1 and rank 1's 4, 5, 3.
    assert (first["permutation"], second["permutation"]) == ([2, 0, 1], [1, 2, 0])
    assert (first["rows"], second["rows"]) == ([0, 4], [4, 7])
    for probe in (first, second):
        assert probe["gathered"] == [0, 0, 0, 0, 1, 1, 1]  # rank 0's block, then rank 1's, on both
        assert probe["mean"] == 0.5
        assert probe["scaled"] == pytest.approx(0.6)  # 2 ranks x 3 of 10 rows
        assert probe["check_same_raised"]  # the ranks differ, and both of them say so


@pytest.mark.integration
def test_every_rank_holds_the_same_partition(runs):
    double = runs["double"]
    # The co_divide stage, ssl_train's fresh division (global epoch 3) and its final one.
    tags = sorted(p.name.removesuffix("-rank0.npy") for p in double.glob("partition-*-rank0.npy"))
    assert tags == ["partition-co_divide", "partition-epoch3", "partition-ssl_train_final"]
    with np.load(runs["labels"] / "labels.npz") as labels:
        samples = len(labels["train_labels"])
    for tag in tags:
        first = np.load(double / f"{tag}-rank0.npy")
        assert first.shape == (2, samples)
        np.testing.assert_array_equal(first, np.load(double / f"{tag}-rank1.npy"))
    # The stage's output is rank 0's view, and rank 0's equals rank 1's.
    with np.load(double / "divide" / "partition.npz") as written:
        np.testing.assert_array_equal(written["labeled"], np.load(double / "partition-co_divide-rank1.npy"))


@pytest.mark.integration
def test_two_ranks_train_like_one_process_within_the_seed_spread(runs):
    single, double = runs["single"], runs["double"]
    # Only rank 0 wrote: every output is there, and no checkpoint or temporary folder is left.
    assert sorted(p.name for p in double.iterdir() if p.is_dir()) == sorted(
        Path(STAGES[s].out_dir).name for s in CHAIN
    )
    for stage in ("warmup", "ssl", "model"):
        a, b = _history(single, stage), _history(double, stage)
        assert [r["epoch"] for r in a] == [r["epoch"] for r in b]
        for x, y in zip(a, b, strict=True):
            assert _gap(x["loss"], y["loss"]) <= LOSS_GAP[stage], (stage, x["loss"], y["loss"])
    for stage, gap in FRACTION_GAP.items():
        assert _gap(_fractions(single, stage), _fractions(double, stage)) <= gap, stage
    for stage, gap in ACCURACY_GAP.items():
        a, b = _history(single, stage)[-1]["test_acc"], _history(double, stage)[-1]["test_acc"]
        assert abs(a - b) <= gap, (stage, a, b)
    assert runs["log"].count('"stage": "retrain", "epoch": 1') == 1  # rank 0 logs, once


@pytest.mark.integration
def test_a_checkpoint_resumes_on_another_world_size(runs):
    # 2 -> 1: epoch 0 is the two ranks' (from their checkpoint), epoch 1 the single process's.
    stopped = json.loads(torch.load(runs["stopped21"], weights_only=True)["history"])
    history = _history(runs["resume21"], "warmup")
    assert [r["epoch"] for r in stopped] == [0] and [r["epoch"] for r in history] == [0, 1]
    assert history[0]["loss"] == stopped[0]["loss"]
    # 1 -> 2: the single process's epoch 0 (bit for bit the uninterrupted run's), then the two ranks'.
    history = _history(runs["resume12"], "warmup")
    assert [r["epoch"] for r in history] == [0, 1]
    assert history[0]["loss"] == _history(runs["single"], "warmup")[0]["loss"]
    assert history[1]["loss"] != _history(runs["single"], "warmup")[1]["loss"]
    assert runs["log"].count("resumed warmup from epoch 2") == 1  # rank 0 says it, once
    for out in (runs["resume12"], runs["resume21"]):
        assert not (out / "warmup.ckpt").exists()
