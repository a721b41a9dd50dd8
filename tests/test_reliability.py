"""Bad data, faults and misuse: one clear error (never a traceback), no silent loss, no stray write.

Each test here backs one line of the README's Reliability section.
"""

from __future__ import annotations

import csv
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsieve import atomic
from labelsieve.cli import main
from labelsieve.config import ConfigError, IngestConfig, load_params
from labelsieve.data import sources, store
from labelsieve.data.paths import class_folder, class_name
from labelsieve.data.store import DatasetError, load_dataset
from labelsieve.engine.checkpoint import Checkpoint
from labelsieve.engine.resident import TrainingData
from labelsieve.export import export
from labelsieve.maths.purification import DROP, KEEP, RELABEL
from labelsieve.predict import list_inputs
from labelsieve.stages import STAGES
from tests.conftest import random_png

QUIET = ("runtime.progress=never", "runtime.threads=1")


def _cli(*args: str, cwd: Path, preexec_fn=None, prefix=()) -> subprocess.CompletedProcess[str]:
    """`labelsieve ARGS` as its own process (no params.yaml in `cwd`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "labelsieve.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=preexec_fn,
        timeout=300,
    )


def _folder_source(root: Path, classes: int = 3, per_class: int = 4) -> Path:
    """root/<c>/<i>.png with distinct images."""
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            (root / f"c{c}" / f"{i}.png").write_bytes(random_png(100 * c + i))
    return root


def _digits(tmp: Path, name: str, *overrides: str) -> tuple[Path, Path]:
    """Ingest digits into tmp/name and inject noise into tmp/name-labels."""
    params = load_params(None, presets=["digits"], overrides=[*QUIET, *overrides])
    STAGES["ingest"].run(params, out_dir=tmp / name)
    STAGES["inject_noise"].run(params, dataset_dir=tmp / name, out_dir=tmp / f"{name}-labels")
    return tmp / name, tmp / f"{name}-labels"


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A digits dataset with 40% noise: (dataset_dir, labels_dir). Tests copy before damaging it."""
    return _digits(tmp_path_factory.mktemp("digits"), "dataset")


# --------------------------------------------------------------------------- 1. a full disk


def _no_traceback_one_error(done: subprocess.CompletedProcess[str], command: str) -> str:
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith(f"labelsieve {command}: error:")]
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_ingest_past_the_file_size_limit_exits_2_naming_the_file_and_the_bytes(tmp_path):
    source = _folder_source(tmp_path / "images")

    def limit_file_size() -> None:  # writes past 16 kB fail with EFBIG instead of raising SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16_000, resource.RLIM_INFINITY))

    out = tmp_path / "out" / "ds"
    sets = [
        "--set",
        f"ingest.source={source}",
        "--set",
        "data.image_size=64",
        "--set",
        "runtime.progress=never",
    ]
    done = _cli("ingest", *sets, "--out-dir", str(out), cwd=tmp_path, preexec_fn=limit_file_size)
    assert done.returncode == 2, done.stderr
    line = _no_traceback_one_error(done, "ingest")
    assert "work.npy" in line and f"{12 * 64 * 64 + 128:,} bytes needed" in line
    assert list((tmp_path / "out").iterdir()) == []  # no output, no temporary left


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    with tempfile.TemporaryDirectory() as where:
        probe = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"]
        return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs `unshare -rm` to mount a small tmpfs")
def test_ingest_on_a_full_tmpfs_exits_2_instead_of_dying_by_sigbus(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    command = (
        f"mount -t tmpfs -o size=64k tmpfs {disk} && {sys.executable} -m labelsieve.cli ingest "
        f"--preset digits --set runtime.progress=never --out-dir {disk}/ds; code=$?; ls -A {disk}; exit $code"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 2, (done.returncode, done.stderr)  # 135 (SIGBUS) before the fix
    line = _no_traceback_one_error(done, "ingest")
    assert "bytes needed" in line and "No space left on device" in line
    assert done.stdout.strip() == ""  # `ls -A` of the full disk: the temporary folder was removed


# --------------------------------------------------------------------------- 2. temporaries of killed runs


def _killed_inside(kind: str, target: Path) -> int:
    """Run a process that enters atomic_dir / atomic_path for `target`, writes, and is SIGKILLed; its pid."""
    code = (
        "import os, signal\n"
        "from pathlib import Path\n"
        "from labelsieve import atomic\n"
        f"context = atomic.{kind}({str(target)!r})\n"
        "tmp = context.__enter__()\n"
        "(tmp / 'part.txt' if tmp.is_dir() else tmp).write_text('half-written')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    _out, err = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGKILL, err
    return process.pid


@pytest.mark.parametrize("kind", ["atomic_dir", "atomic_path"])
def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path, kind):
    target = tmp_path / "out"
    _killed_inside(kind, target)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".out.") and left[0].endswith(".tmp")
    alive = tmp_path / f".out.{os.getpid()}-{atomic.HOST}.live0000.tmp"  # this process: still running
    alive.mkdir()
    if kind == "atomic_dir":
        with atomic.atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
    else:
        atomic.write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", alive.name])


def test_an_interrupted_replacement_puts_the_old_output_back_before_cleaning(tmp_path):
    dead = _killed_inside("atomic_dir", tmp_path / "scratch")  # any pid that has ended
    old = tmp_path / f".out.{dead}-{atomic.HOST}.abc123.old"
    (old / "out").mkdir(parents=True)
    (old / "out" / "kept.txt").write_text("the previous output")  # killed between the two renames
    assert atomic.remove_stale_temporaries(tmp_path / "out") == [old]
    assert (tmp_path / "out" / "kept.txt").read_text() == "the previous output"


# --------------------------------------------------------------------------- 3. a corrupt checkpoint


def test_a_corrupt_checkpoint_is_named_moved_aside_and_the_run_starts_fresh(tmp_path):
    checkpoint = Checkpoint(tmp_path / "warmup", {"stage": "warmup", "seed": 0})
    checkpoint.save({"epoch": 3, "weights": torch.arange(1000.0)})
    data = checkpoint.path.read_bytes()
    checkpoint.path.write_bytes(data[: len(data) // 2])  # a disk that filled up mid-copy
    with pytest.warns(UserWarning, match=rf"checkpoint {checkpoint.path} is corrupt .* moved it to "):
        assert checkpoint.load() is None
    aside = tmp_path / "warmup.ckpt.last.pt.corrupt"
    assert aside.read_bytes() == data[: len(data) // 2] and not checkpoint.path.exists()
    checkpoint.save({"epoch": 0})
    checkpoint.clear()  # a finished stage removes its checkpoint folder, never the corrupt file
    assert aside.is_file()


@pytest.mark.integration
def test_warmup_with_a_corrupt_checkpoint_warns_and_trains_from_the_first_epoch(digits, tmp_path):
    dataset_dir, labels_dir = digits
    params = load_params(None, presets=["digits"], overrides=[*QUIET, "warmup.epochs=1"])
    out = tmp_path / "warmup"
    (tmp_path / "warmup.ckpt").mkdir()
    (tmp_path / "warmup.ckpt" / "last.pt").write_bytes(b"PK\x03\x04 not a whole zip")
    with pytest.warns(UserWarning, match="warmup.ckpt/last.pt is corrupt"):
        STAGES["warmup"].run(params, dataset_dir=dataset_dir, labels_dir=labels_dir, out_dir=out)
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())] == [0]
    assert (tmp_path / "warmup.ckpt.last.pt.corrupt").is_file()


# --------------------------------------------------------------------------- 4. labels of another dataset


@pytest.mark.parametrize("other", ["runtime.seed=1", "ingest.val_fraction=0.2"], ids=["same-sizes", "sizes"])
def test_labels_made_for_another_dataset_are_refused_naming_both_folders(
    digits, tmp_path, capsys, monkeypatch, other
):
    monkeypatch.chdir(tmp_path)  # no params.yaml
    dataset_dir, labels_dir = digits
    other_dir, _ = _digits(tmp_path, "other", other)
    with pytest.raises(DatasetError, match="made for another dataset") as info:
        TrainingData.load(other_dir, labels_dir, torch.device("cpu"))
    assert str(labels_dir) in str(info.value) and str(other_dir) in str(info.value)
    dirs = ["--dataset-dir", str(other_dir), "--labels-dir", str(labels_dir)]
    assert main(["warmup", "--preset", "digits", *dirs, "--out-dir", str(tmp_path / "w")]) == 2
    assert "made for another dataset" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
    TrainingData.load(dataset_dir, labels_dir, torch.device("cpu"))  # its own dataset still loads
    older = shutil.copytree(labels_dir, tmp_path / "older-labels")  # noise.json before it named its dataset
    noise = json.loads((older / "noise.json").read_text())
    del noise["dataset"]
    (older / "noise.json").write_text(json.dumps(noise))
    TrainingData.load(dataset_dir, older, torch.device("cpu"))
    with pytest.raises(DatasetError, match="made for another dataset"):  # the key is checked instead
        TrainingData.load(other_dir, older, torch.device("cpu"))


# --------------------------------------------------------------------------- 5. a damaged dataset store


def _truncate(path: Path, keep: int | None = None) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


@pytest.mark.parametrize("name", ["train.npy", "test.npy", "dataset.json", "classes.json", "samples.csv"])
def test_a_truncated_store_file_is_named(digits, tmp_path, name):
    copy = shutil.copytree(digits[0], tmp_path / "dataset")
    _truncate(copy / name)
    with pytest.raises(DatasetError, match=rf"{re.escape(str(copy / name))}.* damaged"):
        load_dataset(copy)


def test_samples_csv_cut_mid_row_or_at_a_row_boundary_is_named(digits, tmp_path):
    copy = shutil.copytree(digits[0], tmp_path / "dataset")
    table = copy / "samples.csv"
    text = table.read_text()
    table.write_text(text[:-5])  # the last sha256 loses five digits: loaded silently before
    with pytest.raises(DatasetError, match=r"samples.csv is damaged: it does not end with a full line"):
        load_dataset(copy)
    table.write_text(text[: text.rindex("\n", 0, -1) + 1])  # the last row is gone, whole
    n = json.loads((copy / "dataset.json").read_text())["counts"]["test"]
    message = rf"samples.csv is damaged: {n - 1} test rows, dataset.json counts {n};"
    with pytest.raises(DatasetError, match=message):
        load_dataset(copy)
    table.write_text(text.replace(",", ";", 3))  # a damaged header
    with pytest.raises(DatasetError, match=r"samples.csv is damaged: the header"):
        load_dataset(copy)


def test_samples_csv_read_in_chunks_gives_the_same_tables(digits, tmp_path, monkeypatch):
    whole = load_dataset(digits[0])
    monkeypatch.setattr(store, "_CHUNK_ROWS", 7)  # every split spans several chunks and ends mid-chunk
    chunked = load_dataset(digits[0])
    for split in ("train", "val", "test"):
        assert len(whole.samples[split]["id"]) > 7
        for column, values in whole.samples[split].items():
            assert chunked.samples[split][column].dtype == values.dtype
            assert chunked.samples[split][column].tolist() == values.tolist(), (split, column)
    assert isinstance(whole.samples["train"]["sha256"][0], str)
    assert whole.samples["train"]["index"].dtype == np.int64


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda row: row.replace(",train,0,", ",train,\u00b2,", 1), r"line 2 is damaged: index '\u00b2'"),
        (lambda row: row + ",extra", r"line 2 is damaged: 7 fields, not 6"),
        (lambda row: row.replace(",train,", ",dev,", 1), r"line 2 is damaged: split 'dev'"),
    ],
)
def test_a_bad_samples_csv_row_is_named_by_line(digits, tmp_path, edit, problem):
    copy = shutil.copytree(digits[0], tmp_path / "dataset")
    table = copy / "samples.csv"
    header, first, rest = table.read_text(encoding="utf-8").split("\n", 2)
    assert ",train,0," in first
    table.write_text(f"{header}\n{edit(first)}\n{rest}", encoding="utf-8")
    with pytest.raises(DatasetError, match=problem):
        load_dataset(copy)


def test_samples_csv_that_is_not_utf8_is_named(digits, tmp_path):
    copy = shutil.copytree(digits[0], tmp_path / "dataset")
    table = copy / "samples.csv"
    table.write_bytes(table.read_bytes().replace(b"digits", b"digits\xff", 1))
    with pytest.raises(DatasetError, match=r"samples.csv is damaged: not UTF-8 text"):
        load_dataset(copy)


def test_cli_on_a_damaged_store_exits_2_naming_the_file(digits, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml
    copy = shutil.copytree(digits[0], tmp_path / "dataset")
    _truncate(copy / "train.npy", keep=200)
    assert main(["inject-noise", "--dataset-dir", str(copy), "--out-dir", str(tmp_path / "labels")]) == 2
    assert f"{copy / 'train.npy'} is damaged" in capsys.readouterr().err


# --------------------------------------------------------------------------- 6. a read-only output folder


def _without_root_powers() -> list[str]:
    """A command prefix under which a folder's mode applies: none for a normal user; for root, a new user
    namespace, where root's files are no longer its own to override (their owner bits still apply)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "-U", "true"]).returncode == 0:
        return ["unshare", "-U"]
    pytest.skip("as root without `unshare -U`, no folder is read-only")


def test_a_read_only_output_folder_is_one_clear_error(tmp_path):
    source = _folder_source(tmp_path / "images")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    sets = ["--set", f"ingest.source={source}", "--set", "runtime.progress=never"]
    prefix = _without_root_powers()
    done = _cli("ingest", *sets, "--out-dir", str(read_only / "ds"), cwd=tmp_path, prefix=prefix)
    assert done.returncode == 2, done.stderr
    line = _no_traceback_one_error(done, "ingest")
    assert f"cannot write {read_only / 'ds'}: the folder {read_only} refuses it (Permission denied)" in line
    assert list(read_only.iterdir()) == []


def test_an_os_error_no_stage_expected_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml
    long_name = "k" * 300  # a 300-character keyword: a legal class, an impossible folder name
    rows = _manifest_dataset(tmp_path, ["short", long_name])
    purified = _purified(tmp_path, [KEEP] * len(rows))
    dirs = ["--dataset-dir", str(tmp_path / "dataset"), "--purified-dir", str(purified)]
    code = main(["export", *dirs, "--out-dir", str(tmp_path / "export")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("labelsieve export: error: File name too long: ") and long_name in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


# --------------------------------------------------------------------------- 7. params


def test_params_refuse_nan_and_inf_everywhere_a_number_goes():
    overrides = ["model.lr=.nan", "warmup.alpha=.inf", "co_divide.gmm_reg_covar=-.inf"]
    with pytest.raises(ConfigError) as info:
        load_params(None, overrides=overrides)
    assert info.value.problems == [
        "model.lr: nan must be a finite number",
        "warmup.alpha: inf must be a finite number",
        "co_divide.gmm_reg_covar: -inf must be a finite number",
    ]


def test_params_report_an_unknown_preset_a_yaml_error_and_bad_values_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml
    presets = ["nope", "digits"]
    overrides = ["ingest.classes=[a, b", "inject_noise.rate=2"]
    with pytest.raises(ConfigError) as info:
        load_params(None, presets=presets, overrides=overrides)
    assert info.value.problems[0].startswith("--preset 'nope': unknown preset; available: ce, clean")
    assert info.value.problems[1:] == [
        "--set 'ingest.classes=[a, b': the value is not valid YAML "
        "(expected ',' or ']', but got '<stream end>' at column 6)",
        "inject_noise.rate: 2 is outside [0, 1)",
    ]
    assert main(["ingest", "--preset", "nope", "--set", "model.lr=[", "--set", "model.lr=.inf"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown preset" in err and "not valid YAML" in err


# --------------------------------------------------------------------------- 8. class names and paths

EVIL = ["..", ".", ".hidden", "_dropped", "T-shirt/top", "50%", "%2E", "a\\b", "x:y?", "näme", "tab\there"]


def test_class_folder_names_are_safe_and_decode_back():
    folders = [class_folder(name) for name in EVIL]
    assert len(set(folders)) == len(EVIL)  # injective
    assert [class_name(f) for f in folders] == EVIL  # reversible
    for folder in folders:
        assert "/" not in folder and "\\" not in folder and not folder.startswith((".", "_"))
    assert class_folder("T-shirt/top") == "T-shirt%2Ftop" and class_folder("näme") == "näme"


def _manifest_dataset(tmp: Path, classes: list[str]) -> list[tuple[str, str]]:
    """Ingest a manifest of 5 images per class (4 train, 1 test) into tmp/dataset; (label, split) rows."""
    (tmp / "src").mkdir()
    rows = []
    for c, name in enumerate(classes):
        for i in range(5):
            (tmp / "src" / f"{c}-{i}.png").write_bytes(random_png(1000 + 10 * c + i))
            rows.append((f"{c}-{i}.png", name, "test" if i == 4 else "train"))
    with open(tmp / "src" / "list.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    overrides = [
        *QUIET,
        "data.image_size=8",
        f"ingest.source={tmp / 'src' / 'list.csv'}",
        "ingest.val_fraction=0",
    ]
    STAGES["ingest"].run(load_params(None, overrides=overrides), out_dir=tmp / "dataset")
    return [(label, split) for _path, label, split in rows]


def _purified(tmp: Path, decision: list[int]) -> Path:
    """A purify output for tmp/dataset: the given decisions, relabels to the next class."""
    dataset = load_dataset(tmp / "dataset")
    given = dataset.samples["train"]["label"]
    decision = np.asarray(decision[: len(given)], dtype=np.int64)
    new = np.where(decision == RELABEL, (given + 1) % dataset.num_classes, given)
    dropped_or_new = np.where(decision == DROP, -1, new)
    atomic.write_npz(tmp / "purified" / "labels.npz", train_labels=dropped_or_new, train_decision=decision)
    return tmp / "purified"


@pytest.mark.parametrize("fmt", ["folder", "csv"])
def test_export_of_dangerous_class_names_stays_inside_and_ingests_back_losslessly(tmp_path, fmt):
    _manifest_dataset(tmp_path, EVIL)
    dataset = load_dataset(tmp_path / "dataset")
    n = len(dataset.samples["train"]["id"])
    decision = [RELABEL, *[KEEP] * (n - 2), DROP]  # a relabel in the first class, a drop in the last
    purified = _purified(tmp_path, decision)
    labels = np.load(purified / "labels.npz")
    expected = {
        "train": {
            sha: dataset.classes[labels["train_labels"][i]]
            for i, sha in enumerate(dataset.samples["train"]["sha256"])
            if labels["train_decision"][i] != DROP
        },
        "test": {  # the test split, under its given labels, stays the test split
            sha: dataset.classes[label]
            for sha, label in zip(
                dataset.samples["test"]["sha256"], dataset.samples["test"]["label"], strict=True
            )
        },
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    export(tmp_path / "dataset", purified, tmp_path / "export" / "out", fmt=fmt, dropped="folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "export"])
    assert [p.name for p in (tmp_path / "export").iterdir()] == ["out"]  # nothing beside the output
    source = tmp_path / "export" / "out" / ("" if fmt == "folder" else "manifest.csv")
    overrides = [*QUIET, "data.image_size=8", f"ingest.source={source}", "ingest.val_fraction=0"]
    STAGES["ingest"].run(load_params(None, overrides=overrides), out_dir=tmp_path / "again")
    again = load_dataset(tmp_path / "again")
    got = {
        split: {
            sha: again.classes[label]
            for sha, label in zip(again.samples[split]["sha256"], again.samples[split]["label"], strict=True)
        }
        for split in ("train", "test")
    }
    assert got == expected
    assert again.classes == dataset.classes


def test_predict_and_ingest_manifests_refuse_the_same_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    inside, outside = tmp_path / "sub" / "in.png", tmp_path / "out.png"
    inside.write_bytes(random_png(1))
    outside.write_bytes(random_png(2))
    refs = ["in.png", str(outside), "../out.png", str(inside)]
    manifest = tmp_path / "sub" / "list.csv"
    manifest.write_text("path,label\n" + "".join(f"{ref},a\n" for ref in refs))
    predicted = [entry.problem[0] if entry.problem else "ok" for entry in list_inputs([manifest])]
    listing = sources.open_source(IngestConfig(source=str(manifest)))
    ingested = [listing.rejected[i][0] if i in listing.rejected else "ok" for i in range(len(listing))]
    assert predicted == ingested == ["ok", "path_escapes_root", "path_escapes_root", "path_escapes_root"]
