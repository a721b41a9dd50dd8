"""DVC remotes and the raw data: `dvc push` and `dvc pull` round-trip a tracked input and a stage's outputs
through an S3 remote (moto on 127.0.0.1) and through the default remote of the repo's `.dvc/config`, and
scripts/raw_data.sh (bootstrap's data step) leaves `dvc status` clean with data.dvc unchanged."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from tests.conftest import free_port, random_png

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps: [data/raw, make.py]
    outs: [artifacts/made]
"""
MAKE = """\
from pathlib import Path
out = Path("artifacts/made")
out.mkdir(parents=True, exist_ok=True)
for file in sorted(Path("data/raw").iterdir()):
    (out / f"{file.name}.rev").write_bytes(file.read_bytes()[::-1])
"""
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _env(home: Path) -> dict[str, str]:
    """This interpreter first on PATH (the stage's `python`), a private HOME, fake AWS credentials."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    identity = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t.invalid", "GIT_COMMITTER_NAME": "t"}
    return {**env, **AWS, **identity, "GIT_COMMITTER_EMAIL": "t@t.invalid", "PATH": path, "HOME": str(home)}


def _run(cwd: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def _dvc(cwd: Path, env: dict[str, str], *args: str) -> str:
    return _run(cwd, env, sys.executable, "-m", "dvc", *args)


def _project(root: Path, env: dict[str, str]) -> None:
    """A git + DVC repo with the project's .dvc/config, a tracked data/raw and one stage run."""
    root.mkdir()
    _run(root, env, "git", "init", "-q")
    _dvc(root, env, "init", "-q")
    shutil.copy(REPO / ".dvc" / "config", root / ".dvc" / "config")
    (root / "data" / "raw").mkdir(parents=True)
    for i in range(3):
        (root / "data" / "raw" / f"{i}.png").write_bytes(random_png(i, size=64))
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "make.py").write_text(MAKE)
    _dvc(root, env, "add", "-q", "data/raw")
    _dvc(root, env, "repro", "-q")


def _files(root: Path) -> dict[str, bytes]:
    """The bytes of every file DVC tracks: data/raw and the stage output artifacts/made."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in ("data/raw", "artifacts/made")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file()
    }


def _wipe_and_pull(root: Path, env: dict[str, str]) -> dict[str, bytes]:
    """Delete the cache and the tracked files, `dvc pull`, and return the files it brought back."""
    before = _files(root)
    assert len(before) == 6
    for folder in (".dvc/cache", "data/raw", "artifacts/made"):
        shutil.rmtree(root / folder)
    _dvc(root, env, "pull", "-q")
    assert _dvc(root, env, "status").strip() == "Data and pipelines are up to date."
    return before


def test_dvc_push_and_pull_through_an_s3_remote(tmp_path, moto_server):
    env = _env(tmp_path / "home")
    root = tmp_path / "project"
    _project(root, env)
    bucket = f"dvc-{free_port()}"
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
    )
    s3.create_bucket(Bucket=bucket)
    # the README's commands for an S3 remote (MinIO, SeaweedFS or moto: with an endpointurl)
    _dvc(root, env, "remote", "add", "-d", "s3store", f"s3://{bucket}/labelsieve")
    _dvc(root, env, "remote", "modify", "s3store", "endpointurl", moto_server)
    _dvc(root, env, "push", "-q")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert len(keys) >= 6 and all(k.startswith("labelsieve/files/md5/") for k in keys)
    before = _wipe_and_pull(root, env)
    assert _files(root) == before
    assert not (tmp_path / "home" / ".local" / "share" / "labelsieve").exists()  # nothing went elsewhere


def test_dvc_default_remote_needs_no_credentials_and_round_trips(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in _env(home).items() if not k.startswith("AWS_")}
    root = tmp_path / "project"
    _project(root, env)
    assert _dvc(root, env, "remote", "default").strip() == "machine"
    _dvc(root, env, "push", "-q")
    store = home / ".local" / "share" / "labelsieve" / "dvc-remote" / "files" / "md5"
    assert len([p for p in store.rglob("*") if p.is_file()]) >= 6  # ~ is the user's home
    before = _wipe_and_pull(root, env)
    assert _files(root) == before


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_bootstrap_data_step_leaves_dvc_status_clean_and_data_dvc_unchanged(tmp_path):
    env = _env(tmp_path / "home")
    root = tmp_path / "project"
    root.mkdir()
    _run(root, env, "git", "init", "-q")
    _dvc(root, env, "init", "-q")
    (root / "scripts").mkdir()
    for name in ("scripts/raw_data.sh", "data.dvc", ".dvc/config"):
        shutil.copy(REPO / name, root / name)
    _run(root, {**env, "DVC": f"{sys.executable} -m dvc"}, "bash", "scripts/raw_data.sh")
    assert sorted(p.name for p in (root / "data" / "raw").iterdir()) == sorted(
        p.name for p in FASHION_MNIST.glob("*-ubyte.gz")
    )
    assert _dvc(root, env, "status", "data.dvc").strip() == "Data and pipelines are up to date."
    assert (root / "data.dvc").read_bytes() == (REPO / "data.dvc").read_bytes()  # md5 = Debian's files
    # a data/raw that is not the recorded version (a new crawl) is left alone, and data.dvc with it
    (root / "data" / "raw" / "new.png").write_bytes(random_png(7))
    result = subprocess.run(
        ["bash", "scripts/raw_data.sh"],
        cwd=root,
        env={**env, "DVC": f"{sys.executable} -m dvc"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and "data/raw is not cached: it differs from data.dvc" in result.stderr
    assert (root / "data.dvc").read_bytes() == (REPO / "data.dvc").read_bytes()
