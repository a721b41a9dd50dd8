"""The whole DAG through DVC, in a throwaway git repo: repro, a no-op repro, and an experiment that changes
one late stage's param and re-runs only that stage and the stages after it."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from labelsieve.config import load_params

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
STAGE_ORDER = [
    "ingest",
    "inject_noise",
    "warmup",
    "co_divide",
    "ssl_train",
    "group_regularize",
    "purify",
    "retrain",
    "evaluate",
]
# The repo's params.yaml with the digits preset and one epoch per training stage.
TINY = (
    "runtime.progress=never",
    "model.eval_batch_size=4096",
    "warmup.epochs=1",
    "ssl_train.epochs=1",
    "ssl_train.recalibration_period=0",
    "group_regularize.epochs=1",
    "group_regularize.warmup_epochs=1",
    "retrain.epochs=1",
    "retrain.warmup_epochs=1",
    "retrain.synthetic_start=1",
    "evaluate.gallery_size=8",
)
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "labelsieve tests",
    "GIT_AUTHOR_EMAIL": "tests@labelsieve.invalid",
    "GIT_COMMITTER_NAME": "labelsieve tests",
    "GIT_COMMITTER_EMAIL": "tests@labelsieve.invalid",
}


def _env() -> dict[str, str]:
    # `labelsieve` in dvc.yaml must resolve to the installed command of this interpreter's environment.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, **GIT_IDENTITY, "PATH": path}


def _run(cwd: Path, *args: str) -> str:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", output)


def _skipped(output: str) -> list[str]:
    return re.findall(r"Stage '(\w+)' didn't change, skipping", output)


def _tiny_params() -> dict:
    """The repo's params.yaml with only the digits preset's and TINY's keys changed.

    Not the fully resolved params: every key a dvc.yaml stage names must be in the repo's file itself.
    """
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = yaml.safe_load((REPO / "labelsieve" / "presets" / "digits.yaml").read_text())
    overrides = {}
    for item in TINY:
        key, value = item.split("=", 1)
        section, leaf = key.split(".")
        overrides.setdefault(section, {})[leaf] = yaml.safe_load(value)
    for overlay in (preset, overrides):
        for section, values in overlay.items():
            raw.setdefault(section, {}).update(values)
    return raw


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory):
    """A git + DVC repo holding the project's dvc.yaml, its code (the stages' deps) and a tiny params.yaml."""
    root = tmp_path_factory.mktemp("dvc_repo")
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "labelsieve", root / "labelsieve", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "params.yaml").write_text(yaml.safe_dump(_tiny_params(), sort_keys=False))
    load_params(root / "params.yaml")  # valid before DVC runs anything
    (root / "data" / "raw").mkdir(parents=True)  # ingest's dep; digits come from scikit-learn
    (root / "data" / "raw" / "README").write_text("digits runs read no raw files\n")
    _run(root, "git", "init", "-q")
    _dvc(root, "init", "-q")
    first = _dvc(root, "repro")
    return root, first


def test_dvc_repro_runs_every_stage_in_order_and_declares_metrics_and_plots(dvc_repo):
    root, first = dvc_repo
    assert _ran(first) == STAGE_ORDER
    metrics = json.loads(_dvc(root, "metrics", "show", "--json"))
    flat = json.dumps(metrics)
    assert '"test_acc"' in flat and '"detection.f1"' in flat
    plots = json.loads(_dvc(root, "plots", "show", "--json"))
    assert not plots.get("errors")
    assert any(name.startswith("Confusion matrix") for name in plots["data"])
    assert (root / "artifacts" / "evaluate" / "report.html").is_file()


def test_dvc_repro_again_changes_nothing(dvc_repo):
    root, _ = dvc_repo
    second = _dvc(root, "repro")
    assert _ran(second) == [] and _skipped(second) == STAGE_ORDER


def test_dvc_exp_run_set_late_param_reruns_only_that_stage_and_later(dvc_repo):
    root, _ = dvc_repo
    _run(root, "git", "add", "-A")
    _run(root, "git", "commit", "-q", "-m", "baseline")
    scores = root / "artifacts" / "purified" / "scores.npz"
    before = np.load(scores)["confidence"]
    output = _dvc(root, "exp", "run", "-S", "purify.relabel_from=group")
    # purify scores with other networks, so retrain may train on other labels and evaluate reports on it.
    assert _ran(output) == ["purify", "retrain", "evaluate"]
    assert _skipped(output) == STAGE_ORDER[:6]
    assert not np.array_equal(np.load(scores)["confidence"], before)
    assert yaml.safe_load((root / "params.yaml").read_text())["purify"]["relabel_from"] == "group"
