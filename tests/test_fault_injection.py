"""Fault injection over the whole DAG: a write killed mid-rename, training killed at fixed epochs, damaged
inputs through the CLI, and an object store that dies mid-listing.

One tiny digits run of all nine stages (module fixture) is the previous good output and the
uninterrupted reference. Each test backs one line of the README's Reliability section.
"""

from __future__ import annotations

import http.server
import os
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from labelsieve import atomic
from labelsieve.cli import main
from labelsieve.config import load_params
from labelsieve.data import s3
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.stages import STAGES
from tests.conftest import XmlHandler

pytestmark = pytest.mark.integration

TINY = (
    "runtime.progress=never",
    "runtime.device=cpu",
    "runtime.threads=1",
    "ingest.per_class_limit=40",
    "warmup.epochs=2",
    "ssl_train.epochs=3",
    "ssl_train.recalibration_period=0",
    "group_regularize.epochs=3",
    "group_regularize.warmup_epochs=2",
    "retrain.epochs=3",
    "retrain.warmup_epochs=1",
    "model.eval_batch_size=4096",
)
# Epochs each training stage runs under TINY (its checkpoint is saved once per epoch).
EPOCHS = {"warmup": 2, "ssl_train": 3, "group_regularize": 3, "retrain": 3}
FIRST_EPOCH = {"ssl_train": 2}  # ssl_train counts its epochs after warmup's (the schedule is global)
SENTINEL = "previous-run.txt"


def _params():
    return load_params(None, presets=["digits"], overrides=TINY)


@pytest.fixture(scope="module")
def dag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every stage run once, in order, into root/<stage>; returns root."""
    root = tmp_path_factory.mktemp("dag")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        params = _params()
        for stage in STAGES.values():
            stage.run(params, **_inputs(root, stage.name), out_dir=root / stage.name)
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference run did (runtime.threads)
    yield
    torch.set_num_threads(threads)


def _inputs(root: Path, stage: str) -> dict[str, Path]:
    """The stage's run() input keywords, pointing at root/<producing stage>."""
    producers = {spec.out_dir: name for name, spec in STAGES.items()}
    return {key: root / producers[default] for key, default in STAGES[stage].inputs.items()}


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _siblings(out: Path) -> list[str]:
    """Temporaries (``.<name>.*``) left beside `out`."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _previous_output(dag: Path, stage: str, out: Path) -> dict[str, bytes]:
    """Copy the reference output to `out`, marked so that it differs from what a rerun writes."""
    shutil.copytree(dag / stage, out)
    (out / SENTINEL).write_text("the output of an earlier run\n")
    return _tree(out)


# --------------------------------------------------------------------------- 1. killed mid-write


@pytest.mark.parametrize("rename", ["old-aside", "new-in-place"])
@pytest.mark.parametrize("stage", list(STAGES))
def test_a_stage_killed_during_its_output_rename_keeps_the_previous_output(
    dag, tmp_path, monkeypatch, one_thread, stage, rename
):
    """KeyboardInterrupt at either rename of `atomic_dir` (the old output moved aside, or the new one
    moved in). The previous output survives byte for byte (in place, or in its ``.old`` sibling which the
    next run puts back once the killed process is gone) and the rerun replaces it cleanly."""
    out = tmp_path / stage
    before = _previous_output(dag, stage, out)
    real_replace = os.replace

    def killed(src, dst, *args, **kwargs):
        hit = Path(src) == out if rename == "old-aside" else Path(dst) == out
        if hit:
            raise KeyboardInterrupt(f"killed while renaming {src} -> {dst}")
        return real_replace(src, dst, *args, **kwargs)

    params = _params()
    monkeypatch.setattr(atomic.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        STAGES[stage].run(params, **_inputs(dag, stage), out_dir=out)
    monkeypatch.setattr(atomic.os, "replace", real_replace)

    # The new output's `.tmp` folder is gone; only the `.old` folder made for the previous output is left.
    (old,) = _siblings(out)
    assert old.endswith(".old")
    if rename == "old-aside":
        assert _tree(out) == before
        assert not any((tmp_path / old).iterdir())
    else:
        assert not out.exists()
        assert _tree(tmp_path / old / stage) == before
    # The killed process is gone by the next run, whose first write of `out` puts the old output back
    # (if it was moved aside) and removes the temporaries (`atomic.remove_stale_temporaries`).
    with monkeypatch.context() as dead:
        dead.setattr(atomic, "_alive", lambda pid: False)
        atomic.remove_stale_temporaries(out)
    assert _tree(out) == before
    assert _siblings(out) == []

    STAGES[stage].run(params, **_inputs(dag, stage), out_dir=out)
    assert not (out / SENTINEL).exists()
    assert sorted(_tree(out)) == sorted(_tree(dag / stage))
    assert _siblings(out) == []
    assert not Path(f"{out}.ckpt").exists()


# --------------------------------------------------------------------------- 2. killed mid-training


# warmup killed mid-way (by SIGKILL, in its own process) is tests/test_kill_resume.py; here only its
# last-checkpoint point, and both points for the other training stages.
KILLS = [("warmup", "after-last-checkpoint")] + [
    (stage, point)
    for stage in EPOCHS
    if stage != "warmup"
    for point in ("after-epoch-1", "after-last-checkpoint")
]


@pytest.mark.parametrize(("stage", "point"), KILLS, ids=[f"{s}-{p}" for s, p in KILLS])
def test_training_killed_at_an_epoch_boundary_resumes_to_the_uninterrupted_result(
    dag, tmp_path, monkeypatch, one_thread, stage, point, capsys
):
    """Killed right after the first epoch's checkpoint, or right after the last one (before the output is
    written): no output, the checkpoint kept; the rerun resumes from it and writes the same bytes."""
    kill_at = 1 if point == "after-epoch-1" else EPOCHS[stage]
    saves = []
    real_save = Checkpoint.save

    def save_then_die(self, state):
        real_save(self, state)
        saves.append(self.path)
        if len(saves) == kill_at:
            raise KeyboardInterrupt(f"killed after checkpoint {len(saves)}")

    out = tmp_path / stage
    params = _params()
    monkeypatch.setattr(Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        STAGES[stage].run(params, **_inputs(dag, stage), out_dir=out)
    monkeypatch.setattr(Checkpoint, "save", real_save)
    assert not out.exists() and _siblings(out) == []
    assert (tmp_path / f"{stage}.ckpt" / "last.pt").is_file()

    capsys.readouterr()
    STAGES[stage].run(params, **_inputs(dag, stage), out_dir=out)
    assert f"resumed {stage} from epoch {FIRST_EPOCH.get(stage, 0) + kill_at + 1} " in capsys.readouterr().err
    assert not (tmp_path / f"{stage}.ckpt").exists()
    resumed, whole = _tree(out), _tree(dag / stage)
    assert sorted(resumed) == sorted(whole)
    for name in whole:
        if name.endswith(".pt"):  # compare tensors, so a failure names the layer
            a = torch.load(out / name, weights_only=True)
            b = torch.load(dag / stage / name, weights_only=True)
            for key in b:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{name}:{key}")
        assert resumed[name] == whole[name], f"{stage}/{name} differs from the uninterrupted run"


# --------------------------------------------------------------------------- 3. damaged inputs


CORRUPT = [
    ("co_divide", "warmup_dir", "net1.pt"),
    ("ssl_train", "warmup_dir", "net1.pt"),
    ("purify", "ssl_dir", "net1.pt"),
    ("retrain", "purified_dir", "labels.npz"),
]


@pytest.mark.parametrize(("stage", "input_name", "file"), CORRUPT, ids=[c[0] for c in CORRUPT])
def test_a_truncated_input_file_exits_2_naming_it_and_writes_nothing(
    dag, tmp_path, monkeypatch, capsys, stage, input_name, file
):
    monkeypatch.chdir(tmp_path)  # no params.yaml
    inputs = _inputs(dag, stage)
    damaged = tmp_path / "damaged" / inputs[input_name].name
    shutil.copytree(inputs[input_name], damaged)
    data = (damaged / file).read_bytes()
    (damaged / file).write_bytes(data[: len(data) // 2])
    inputs[input_name] = damaged
    out = tmp_path / "out"
    before = _previous_output(dag, stage, out)

    args = [stage.replace("_", "-"), "--preset", "digits", *(a for s in TINY for a in ("--set", s))]
    args += [a for key, path in inputs.items() for a in (f"--{key.replace('_', '-')}", str(path))]
    capsys.readouterr()
    assert main([*args, "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"labelsieve {stage.replace('_', '-')}: error: ")
    assert str(damaged / file) in lines[0]
    assert _tree(out) == before
    assert _siblings(out) == []
    assert not Path(f"{out}.ckpt").exists()


# --------------------------------------------------------------------------- 4. object store dies


class _DyingListing(XmlHandler):
    """Answers the first ListObjectsV2 page (truncated, 2 keys), then drops every later request."""

    protocol_version = "HTTP/1.1"
    bucket = "crawl"
    requests: ClassVar[list[str]] = []  # each subclass gets its own (see the test)

    def do_GET(self) -> None:
        self.requests.append(self.path)
        if "continuation-token" in self.path:
            self.close_connection = True  # the server "dies": no answer, the socket closes
            return
        keys = "".join(
            f"<Contents><Key>batch/{c}/{i}.png</Key><Size>10</Size></Contents>"
            for c, i in (("cat", 0), ("dog", 1))
        )
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            "<ListBucketResult xmlns='http://s3.amazonaws.com/doc/2006-03-01/'>"
            f"<Name>{self.bucket}</Name><Prefix>batch/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys>"
            f"<IsTruncated>true</IsTruncated><NextContinuationToken>page2</NextContinuationToken>{keys}"
            "</ListBucketResult>"
        ).encode()
        self.reply_xml(200, body)


def test_an_object_store_dying_mid_listing_stops_ingest_with_one_error(tmp_path, monkeypatch, capsys):
    handler = type("Handler", (_DyingListing,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = s3.Config(
        retries={"total_max_attempts": 2, "mode": "standard"}, connect_timeout=1, read_timeout=1
    )
    monkeypatch.setattr(s3, "RETRY_CONFIG", config)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "ds"
    args = ["ingest", "--set", "runtime.progress=never", "--set", "data.image_size=8"]
    args += ["--set", "ingest.source=s3://crawl/batch", "--out-dir", str(out)]
    capsys.readouterr()
    try:
        code = main(args)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    err = capsys.readouterr().err
    assert code == 2, err
    assert "continuation-token" in handler.requests[-1]  # it died after serving the first page
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("labelsieve ingest: error: ") and "s3://crawl/batch/" in lines[0]
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
