"""Atomic writes: outputs follow the process umask (mkstemp / mkdtemp alone would give 0600 / 0700)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from labelsieve import atomic


@pytest.fixture
def set_umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run the test under the umask it is parametrised with; restore the old one and the cache after."""
    old = os.umask(request.param)
    atomic.umask.cache_clear()
    try:
        yield request.param
    finally:
        os.umask(old)
        atomic.umask.cache_clear()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("set_umask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)],
    indirect=["set_umask"],
)
def test_atomic_outputs_follow_the_umask(tmp_path, set_umask, file_mode, dir_mode):
    assert atomic.umask() == set_umask
    atomic.write_json(tmp_path / "a.json", {"x": 1})
    atomic.write_npy(tmp_path / "a.npy", np.zeros(3))
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        atomic.write_text(tmp / "inner.txt", "hello")
    assert _mode(tmp_path / "a.json") == file_mode
    assert _mode(tmp_path / "a.npy") == file_mode
    assert _mode(tmp_path / "out") == dir_mode
    assert _mode(tmp_path / "out" / "inner.txt") == file_mode


def test_atomic_dir_replaces_the_old_folder_and_leaves_no_temporaries(tmp_path):
    atomic.write_text(tmp_path / "out" / "old.txt", "old")
    with atomic.atomic_dir(tmp_path / "out") as tmp:
        atomic.write_text(tmp / "new.txt", "new")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_csv_streams_rows_and_keeps_the_old_file_when_they_fail(tmp_path):
    path = tmp_path / "table.csv"
    atomic.write_csv(path, ["a", "b"], ([i, f"x,{i}"] for i in range(3)))  # a generator, quoted commas
    assert path.read_text(encoding="utf-8") == 'a,b\n0,"x,0"\n1,"x,1"\n2,"x,2"\n'

    def failing() -> Iterator[list[int]]:
        yield [9, 9]
        raise RuntimeError("row source broke")

    with pytest.raises(RuntimeError, match="row source broke"):
        atomic.write_csv(path, ["a", "b"], failing())
    assert path.read_text(encoding="utf-8").startswith("a,b\n0,")  # the old table, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]  # no temporary left
