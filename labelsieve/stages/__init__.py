"""The stage registry: every stage's `run` function, its inputs and its output directory.

Each stage is `run(params, *, <inputs>..., out_dir) -> dict` on plain paths; the CLI, the DVC stages,
the Kubeflow components and the tests all call these same functions. Default paths are the ones
dvc.yaml uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labelsieve.stages import ingest, inject_noise


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `inputs` maps each run() keyword to its default path."""

    name: str
    run: Callable[..., dict[str, Any]]
    inputs: dict[str, str]
    out_dir: str


ARTIFACTS = "artifacts"

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("ingest", ingest.run, {}, f"{ARTIFACTS}/dataset"),
        Stage(
            "inject_noise", inject_noise.run, {"dataset_dir": f"{ARTIFACTS}/dataset"}, f"{ARTIFACTS}/labels"
        ),
    )
}
