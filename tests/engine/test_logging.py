"""What a training stage says on stderr: per-epoch lines (JSON or human) and the resume line."""

from __future__ import annotations

import io
import json
import sys

import torch

from labelsieve.engine import loop
from labelsieve.engine.checkpoint import Checkpoint

RECORD = {"epoch": 2, "train_seconds": 2.34, "loss": [0.9123, 0.8871], "val_acc": 0.802, "test_acc": 0.8105}


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_epoch_writes_json_when_stderr_is_not_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    loop.log_epoch("warmup", RECORD)
    assert json.loads(stream.getvalue()) == {"stage": "warmup", **RECORD}


def test_log_epoch_writes_one_short_human_line_on_a_terminal(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    loop.log_epoch("ssl_train", {**RECORD, "kind": "recalibration"})
    assert stream.getvalue() == (
        "ssl_train epoch 3 (recalibration): loss 0.912/0.887, val 80.20%, test 81.05% (2.3 s)\n"
    )


def _state(history: list[dict], epoch: int) -> dict:
    return {"epoch": epoch, "history": json.dumps(history), "weights": torch.zeros(2)}


def test_checkpoint_load_says_which_stage_resumed_from_which_epoch(tmp_path, capsys):
    saved = Checkpoint(tmp_path / "ssl", {"stage": "ssl_train", "seed": 0})
    saved.save(_state([{"epoch": 3}, {"epoch": 4}], epoch=1))  # global epochs 3, 4 = SSL steps 0, 1
    state = Checkpoint(tmp_path / "ssl", {"stage": "ssl_train", "seed": 0}).load()
    assert state is not None and state["epoch"] == 1
    path = tmp_path / "ssl.ckpt" / "last.pt"
    assert capsys.readouterr().err == f"resumed ssl_train from epoch 6 (checkpoint {path})\n"


def test_checkpoint_load_names_the_stage_given_and_ignores_another_key(tmp_path, capsys):
    Checkpoint(tmp_path / "group", {"seed": 0}).save(_state([{"epoch": 0}], epoch=0))
    assert Checkpoint(tmp_path / "group", {"seed": 1}, stage="group_regularize").load() is None
    assert capsys.readouterr().err == ""
    assert Checkpoint(tmp_path / "group", {"seed": 0}, stage="group_regularize").load() is not None
    assert capsys.readouterr().err.startswith("resumed group_regularize from epoch 2 (checkpoint ")


def test_log_epoch_human_line_leaves_out_an_empty_split(monkeypatch):
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    loop.log_epoch("retrain", {"epoch": 0, "loss": 1.0, "val_acc": float("nan"), "test_acc": 0.5})
    assert stream.getvalue() == "retrain epoch 1: loss 1.000, test 50.00%\n"
