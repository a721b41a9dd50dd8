"""The pipeline compiled for N GPUs per stage (torchrun in one pod) and for M nodes (PyTorchJob launchers):
the compiled IR's tasks, commands and resource requests. Nothing here runs on a cluster."""

import json
from pathlib import Path

import pytest
import yaml

from labelsieve import kfp_client
from labelsieve.cli import DATA_PARALLEL, main
from labelsieve.stages import PIPELINE_STEPS, STAGES

pipeline = kfp_client.pipeline_module()
MULTI_NODE = {"warmup", "ssl_train", "group_regularize", "retrain"}
GPU = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def _compile(tmp_path_factory, *flags: str) -> tuple[dict, dict]:
    out = tmp_path_factory.mktemp("compiled") / "pipeline.yaml"
    assert main(["pipeline", "compile", "--output", str(out), *flags]) == 0
    spec, platform = yaml.safe_load_all(out.read_text())
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


@pytest.fixture(scope="module")
def two_gpus(tmp_path_factory):
    return _compile(tmp_path_factory, "--gpus-per-stage", "2")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    return _compile(tmp_path_factory, "--gpus-per-stage", "2", "--nodes", "2")


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task by stage name (its display name), wherever it sits in the DAG."""
    tasks = {**spec["root"]["dag"]["tasks"], **spec["components"]["comp-condition-1"]["dag"]["tasks"]}
    tasks.pop("condition-1")  # the has_new gate
    return {task["taskInfo"]["name"].replace("-", "_"): task for task in tasks.values()}


def _executor(spec: dict, task: dict) -> str:
    return spec["components"][task["componentRef"]["name"]]["executorLabel"]


def _constant(task: dict, name: str):
    return task["inputs"]["parameters"][name]["runtimeValue"]["constant"]


def test_the_pipeline_data_parallel_stages_are_the_clis():
    assert pipeline.DATA_PARALLEL == DATA_PARALLEL
    assert pipeline.MULTI_NODE == MULTI_NODE and MULTI_NODE <= DATA_PARALLEL


def test_default_flags_compile_the_checked_in_package(tmp_path):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--output", str(out), "--gpus-per-stage", "1", "--nodes", "1"]) == 0
    assert out.read_text() == kfp_client.PACKAGE.read_text()


def test_two_gpus_run_data_parallel_stages_under_torchrun_with_two_gpus(two_gpus):
    spec, platform = two_gpus
    tasks = _tasks(spec)
    assert set(tasks) == {*STAGES, *PIPELINE_STEPS}
    for name, task in tasks.items():
        executor = _executor(spec, task)
        resources = spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        config = platform.get(executor, {})
        if name in ("ingest", "inject_noise", "publish"):
            assert "accelerator" not in resources
            continue
        assert GPU in config["tolerations"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        if name in DATA_PARALLEL:
            assert task["componentRef"]["name"] == f"comp-{name.replace('_', '-')}-torchrun"
            assert _constant(task, "launcher") == "torchrun --standalone --nproc_per_node 2"
            assert resources["accelerator"]["resourceCount"] == "2"
            assert config["emptyDirMounts"] == [
                {"medium": "Memory", "mountPath": "/dev/shm", "volumeName": "dshm"}
            ]
            command = "\n".join(spec["deploymentSpec"]["executors"][executor]["container"]["command"])
            assert f'run_stage_launched(\n        "{name}",' in command
        else:  # evaluate: one process, one GPU
            assert "launcher" not in task["inputs"]["parameters"]
            assert resources["accelerator"]["resourceCount"] == "1"


def test_two_nodes_launch_a_pytorchjob_per_training_stage(two_nodes):
    spec, platform = two_nodes
    tasks = _tasks(spec)
    for name in MULTI_NODE:
        task = tasks[name]
        assert task["componentRef"]["name"] == f"comp-{name.replace('_', '-')}-pytorchjob"
        job = _constant(task, "job")
        assert job["launcher"] == "torchrun --nnodes 2 --nproc_per_node 2"
        assert (job["nodes"], job["gpus"], job["accelerator"]) == (2, 2, "nvidia.com/gpu")
        assert job["image"] == "labelsieve:latest" and job["s3_secret"] == "labelsieve-s3"
        executor = _executor(spec, task)
        assert "accelerator" not in spec["deploymentSpec"]["executors"][executor]["container"]["resources"]
        assert (
            platform[executor]["secretAsEnv"][0]["secretName"] == "labelsieve-s3"
        )  # reads the job's outputs
    for name in ("co_divide", "purify"):  # data-parallel, but one pod of two GPUs
        assert _constant(tasks[name], "launcher") == "torchrun --standalone --nproc_per_node 2"


def test_multi_gpu_compile_needs_an_output_and_leaves_the_package_alone(capsys):
    before = kfp_client.PACKAGE.read_text()
    for flags in (["--gpus-per-stage", "2"], ["--nodes", "2"]):
        assert main(["pipeline", "compile", *flags]) == 2
        assert "need --output PATH" in capsys.readouterr().err
    assert kfp_client.PACKAGE.read_text() == before


def test_nodes_below_one_is_refused(tmp_path, capsys):
    assert main(["pipeline", "compile", "--nodes", "0", "--output", str(tmp_path / "p.yaml")]) == 2
    assert "nodes must be >= 1" in capsys.readouterr().err
    assert not Path(tmp_path / "p.yaml").exists()


def test_compile_cli_prints_the_package(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    assert main(["pipeline", "compile", "--output", str(out), "--gpus", "4"]) == 0
    assert json.loads(capsys.readouterr().out) == {"compiled": str(out)}
    assert "torchrun --standalone --nproc_per_node 4" in out.read_text()
