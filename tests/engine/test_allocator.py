"""labelsieve's glibc malloc thresholds: accepted by glibc, and left alone when the user sets their own.

What they save is measured in `benchmarks/speed.py` (`--default-malloc` is the A/B), not here: a process's
page faults depend on where ASLR puts its heap, so a small probe cannot tell the two apart reliably.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from labelsieve.engine.allocator import USER_VARIABLES

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")


def _tune(
    code: str = "from labelsieve.engine.allocator import tune_malloc; print(tune_malloc())", **env: str
) -> str:
    """What `code` prints in a fresh process with `env` and none of the user's malloc variables."""
    clean = {k: v for k, v in os.environ.items() if k not in USER_VARIABLES}
    out = subprocess.run([sys.executable, "-c", code], env=clean | env, check=True, capture_output=True)
    return out.stdout.decode().strip()


def test_glibc_accepts_every_threshold():
    assert _tune() == "True"  # mallopt returned 1 for each of the three settings


def test_the_users_own_malloc_variables_win():
    assert _tune(MALLOC_TOP_PAD_="0") == "False"


def test_prepare_process_sets_the_threads_and_the_thresholds():
    code = (
        "import torch; from labelsieve.engine.device import prepare_process; "
        "tuned = prepare_process(1); print(tuned, torch.get_num_threads())"
    )
    assert _tune(code) == "True 1"
    assert _tune(code, MALLOC_ARENA_MAX="2") == "False 1"  # the user's variable still wins
