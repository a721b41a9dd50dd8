"""Run one stage in a child process under a launcher, e.g. data-parallel under torchrun.

A Kubeflow task compiled with `--gpus-per-stage N` (N > 1) calls `run_stage_launched` with the launcher
`torchrun --standalone --nproc_per_node N`: the stage runs as
``torchrun ... -m labelsieve.cli <stage> --params FILE --<input>-dir DIR ... --out-dir DIR`` (the same
command as on a workstation), and rank 0 hands its headline figures back through ``--summary-json``.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from labelsieve.errors import LabelsieveError
from labelsieve.runner import log_metrics


class LaunchError(LabelsieveError):
    """The launched stage exited with an error, or left no summary behind."""


def standalone_launcher(nproc_per_node: int) -> str:
    """The single-pod launcher: `nproc_per_node` processes on this machine, rendezvous on localhost."""
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    return f"torchrun --standalone --nproc_per_node {nproc_per_node}"


def stage_argv(
    launcher: str, name: str, *, params_file: str, out_dir: str, summary_file: str, **inputs: str
) -> list[str]:
    """The command that runs stage `name` under `launcher` on the given directories.

    Args:
        launcher: a command prefix that takes ``-m MODULE ARGS``, e.g. `standalone_launcher(2)`.
        name: a key of `labelsieve.stages.STAGES`.
        params_file: the stage's params YAML.
        out_dir, summary_file: where the stage writes its outputs and its headline figures (JSON).
        **inputs: the stage's input directories by run() keyword.
    """
    flags = [part for key, path in inputs.items() for part in (f"--{key.replace('_', '-')}", str(path))]
    command = ["-m", "labelsieve.cli", name.replace("_", "-"), "--params", params_file, *flags]
    return [*shlex.split(launcher), *command, "--out-dir", str(out_dir), "--summary-json", summary_file]


def run_stage_launched(
    name: str,
    params_yaml: str,
    metrics: Any | None = None,
    *,
    launcher: str,
    out_dir: str,
    summary_required: bool = True,
    **inputs: str,
) -> dict[str, Any] | None:
    """`labelsieve.runner.run_stage`, but in a child process under `launcher`; logs the same metrics.

    Returns the summary rank 0 wrote; None only with `summary_required` False (a node of a multi-node job
    that holds no rank 0) when there is none.

    Raises:
        LaunchError: the command exited non-zero, or wrote no summary though `summary_required`.
    """
    with tempfile.TemporaryDirectory(prefix="labelsieve-launch-") as tmp:
        params_file = Path(tmp) / "params.yaml"
        params_file.write_text(params_yaml, encoding="utf-8")  # "" is the built-in defaults, as in-process
        summary_file = Path(tmp) / "summary.json"
        argv = stage_argv(
            launcher,
            name,
            params_file=str(params_file),
            out_dir=out_dir,
            summary_file=str(summary_file),
            **inputs,
        )
        print(f"labelsieve: {shlex.join(argv)}", file=sys.stderr, flush=True)
        code = subprocess.run(argv, check=False).returncode
        if code != 0:
            raise LaunchError(f"{name}: `{shlex.join(argv)}` exited with status {code}")
        if not summary_file.is_file():
            if not summary_required:
                return None
            raise LaunchError(f"{name}: `{shlex.join(argv)}` wrote no summary to {summary_file}")
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
    log_metrics(metrics, summary)
    return summary
