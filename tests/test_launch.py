"""labelsieve/launch.py: a stage run in a child process under a launcher (torchrun), as the Kubeflow tasks
compiled for several GPUs run it; here on the CPU (gloo)."""

import pytest

from labelsieve import runner
from labelsieve.cli import build_parser
from labelsieve.config import load_params
from labelsieve.launch import LaunchError, run_stage_launched, stage_argv, standalone_launcher
from labelsieve.stages import ingest, inject_noise
from tests.conftest import TINY_PIPELINE

TINY = (*TINY_PIPELINE, "ingest.per_class_limit=40")


class Metrics:
    """Stands in for a kfp Metrics artifact."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.logged[key] = value


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A tiny digits dataset and its noisy labels; the params text warmup's task would get."""
    root = tmp_path_factory.mktemp("digits")
    params = load_params(None, presets=["digits"], overrides=TINY)
    ingest.run(params, out_dir=root / "dataset")
    inject_noise.run(params, dataset_dir=root / "dataset", out_dir=root / "labels")
    dirs = {"dataset_dir": str(root / "dataset"), "labels_dir": str(root / "labels")}
    return dirs, runner.stage_params_text(params, "warmup")


def test_stage_argv_is_the_stage_command_under_the_launcher():
    argv = stage_argv(
        standalone_launcher(2),
        "ssl_train",
        params_file="p.yaml",
        out_dir="o",
        summary_file="s.json",
        dataset_dir="d",
        warmup_dir="w",
    )
    head = ["torchrun", "--standalone", "--nproc_per_node", "2", "-m", "labelsieve.cli"]
    assert argv[:6] == head
    assert argv[6:] == [
        "ssl-train",
        "--params",
        "p.yaml",
        "--dataset-dir",
        "d",
        "--warmup-dir",
        "w",
        "--out-dir",
        "o",
        "--summary-json",
        "s.json",
    ]
    args = build_parser().parse_args(argv[6:])  # what labelsieve.cli makes of it
    assert (args.stage, args.params, args.warmup_dir, args.out_dir, args.summary_json) == (
        "ssl_train",
        "p.yaml",
        "w",
        "o",
        "s.json",
    )


def test_standalone_launcher_needs_a_process():
    with pytest.raises(ValueError, match="nproc_per_node must be >= 1"):
        standalone_launcher(0)


@pytest.mark.integration
def test_warmup_under_torchrun_with_two_processes_logs_what_rank_zero_wrote(digits, tmp_path):
    dirs, params_yaml = digits
    metrics = Metrics()
    out = tmp_path / "warmup"
    summary = run_stage_launched(
        "warmup", params_yaml, metrics, launcher=standalone_launcher(2), out_dir=str(out), **dirs
    )
    assert summary["epochs"] == 1 and 0.0 <= summary["test_acc"] <= 1.0
    assert metrics.logged == runner.flatten_numbers(summary)
    assert (out / "net1.pt").is_file() and (out / "networks.json").is_file()


def test_a_failing_launch_names_the_command_and_its_status(tmp_path):
    with pytest.raises(
        LaunchError, match=r"warmup: `false -m labelsieve\.cli warmup --params .*` exited with status 1"
    ):
        run_stage_launched(
            "warmup", "", launcher="false", out_dir=str(tmp_path / "o"), dataset_dir="d", labels_dir="l"
        )


def test_a_launch_without_a_summary_is_an_error_only_where_one_is_required(tmp_path):
    kwargs = {"launcher": "true", "out_dir": str(tmp_path / "o"), "dataset_dir": "d", "labels_dir": "l"}
    with pytest.raises(LaunchError, match="wrote no summary"):
        run_stage_launched("warmup", "", **kwargs)
    assert run_stage_launched("warmup", "", summary_required=False, **kwargs) is None
