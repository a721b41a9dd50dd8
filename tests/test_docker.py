"""The compiled pipeline run in the project image by kfp's local DockerRunner gives what the
SubprocessRunner gives, bit for bit (same CPU, same locked torch wheel, one thread).

The container run needs a Docker engine (one answers, or this is root with `dockerd` installed, and
scripts/docker_engine.sh starts it) and the project image (`make image`: about 3 min cold here). Without
either it skips, saying which. With them it builds `labelsieve:test` from this working tree first: only the
code layers, seconds, since `make image` cached the dependency layers, so the image never runs older code.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsieve import kfp_client
from labelsieve.cli import main
from tests.conftest import TINY_PIPELINE

ROOT = Path(__file__).resolve().parents[1]
TEST_IMAGE = "labelsieve:test"

# As tests/test_pipeline_local.py: digits, one epoch per training stage, one thread, deterministic on the CPU.
TINY = (*TINY_PIPELINE, "ingest.per_class_limit=40")


def _engine_answers() -> bool:
    """Whether a Docker engine answers a ping."""
    import docker

    try:
        client = docker.from_env()
        try:
            return bool(client.ping())
        finally:
            client.close()
    except docker.errors.DockerException:
        return False


def _image_exists(image: str) -> bool:
    import docker

    client = docker.from_env()
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False
    finally:
        client.close()


def _engine_or_skip() -> None:
    """Skip unless an engine answers, starting one as root when `dockerd` is installed."""
    if not _engine_answers():
        if os.geteuid() != 0 or shutil.which("dockerd") is None:
            pytest.skip("no Docker engine answers, and starting one needs root and dockerd (docker.io)")
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "docker_engine.sh")], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0 or not _engine_answers():
            pytest.fail(f"dockerd is installed but did not start: {done.stderr.strip()}")


def _docker_or_skip() -> None:
    """Skip unless an engine answers (`_engine_or_skip`) and the project image has been built."""
    _engine_or_skip()
    image = kfp_client.default_image()
    if not _image_exists(image):
        pytest.skip(
            f"the image {image} is not built: `make image` builds it (about 3 min cold, 6 GB; README "
            "'Containers'); CI runs it before the tests"
        )


@pytest.fixture(scope="module")
def test_image() -> str:
    """`labelsieve:test` built from this working tree (incremental on `make image`'s layers)."""
    _docker_or_skip()
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "docker_build.sh"), "--tag", TEST_IMAGE],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return TEST_IMAGE


def test_run_local_refuses_an_unknown_runner(tmp_path):
    with pytest.raises(ValueError, match="runner 'kubernetes'"):
        kfp_client.run_local({}, pipeline_root=tmp_path, runner="kubernetes")


def test_docker_runner_without_an_engine_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-such.sock'}")
    with pytest.raises(kfp_client.DockerUnavailableError, match="no Docker engine answers"):
        kfp_client.docker_runner()
    (tmp_path / "params.yaml").write_text("# built-in defaults\n")
    command = ["pipeline", "run-local", "--runner", "docker", "--params", str(tmp_path / "params.yaml")]
    assert main([*command, "--pipeline-root", str(tmp_path / "kfp")]) == 2
    assert "scripts/docker_engine.sh" in capsys.readouterr().err


@pytest.mark.integration
def test_docker_runner_refuses_a_missing_image(tmp_path):
    _engine_or_skip()
    package = kfp_client.compile_pipeline(tmp_path / "pipeline.yaml", image="labelsieve-absent:never")
    with pytest.raises(kfp_client.DockerUnavailableError, match="labelsieve-absent:never.*make image"):
        kfp_client.docker_runner(package)


def _numbers(path: Path) -> dict[str, float]:
    figures = json.loads(path.read_text())
    return {k: v for k, v in figures.items() if isinstance(v, (int, float)) and not k.endswith("seconds")}


@pytest.mark.integration
def test_docker_runner_equals_subprocess_runner(test_image, tmp_path, capsys):
    package = kfp_client.compile_pipeline(tmp_path / "pipeline.yaml", image=test_image)
    (tmp_path / "params.yaml").write_text("# built-in defaults\n")
    command = ["pipeline", "run-local", "--params", str(tmp_path / "params.yaml"), "--preset", "digits"]
    command += ["--package", str(package), *(arg for item in TINY for arg in ("--set", item))]
    runs = {}
    for runner in kfp_client.RUNNERS:
        assert main([*command, "--runner", runner, "--pipeline-root", str(tmp_path / runner)]) == 0
        outputs = json.loads(capsys.readouterr().out)["outputs"]
        runs[runner] = {name: Path(path) for name, path in outputs.items()}
    here, there = runs["subprocess"], runs["docker"]
    assert set(there) == set(here) and "evaluate" in there
    # The container ran as this user (the default), so this user owns what it wrote.
    assert (there["evaluate"] / "metrics.json").stat().st_uid == os.getuid()

    assert _numbers(there["evaluate"] / "metrics.json") == _numbers(here["evaluate"] / "metrics.json")
    for key, value in np.load(here["purify"] / "labels.npz").items():
        np.testing.assert_array_equal(np.load(there["purify"] / "labels.npz")[key], value)
    weights = [torch.load(run["retrain"] / "weights.pt", weights_only=True) for run in (there, here)]
    for name in weights[1]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0, msg=name)
