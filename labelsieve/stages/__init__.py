"""The stage registry: every stage's `run` function, its inputs and its output directory.

Each stage is `run(params, *, <inputs>..., out_dir) -> dict` on plain paths; the CLI, the DVC stages,
the Kubeflow components and the tests all call these same functions. Default paths are the ones
dvc.yaml uses.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `inputs` maps each run() keyword to its default path.

    The stage's module (`labelsieve.stages.<name>`, which pulls in torch) is imported only when `run` is
    first used, so building the CLI parser from the registry stays cheap.
    """

    name: str
    inputs: dict[str, str]
    out_dir: str

    @property
    def module(self) -> str:
        """Dotted name of the module holding this stage's run()."""
        return f"{__name__}.{self.name}"

    @property
    def run(self) -> Callable[..., dict[str, Any]]:
        """The stage's `run(params, *, <inputs>..., out_dir) -> dict`, imported on first use."""
        return importlib.import_module(self.module).run

    @property
    def doc(self) -> str:
        """The stage module's docstring, read from its source without importing it."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            return ""
        with open(spec.origin, encoding="utf-8") as handle:
            return ast.get_docstring(ast.parse(handle.read())) or ""


ARTIFACTS = "artifacts"
DATASET = f"{ARTIFACTS}/dataset"
LABELS = f"{ARTIFACTS}/labels"
WARMUP = f"{ARTIFACTS}/warmup"
DIVIDE = f"{ARTIFACTS}/divide"
SSL = f"{ARTIFACTS}/ssl"
GROUP = f"{ARTIFACTS}/group"
PURIFIED = f"{ARTIFACTS}/purified"
MODEL = f"{ARTIFACTS}/model"

STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("ingest", {}, DATASET),
        Stage("inject_noise", {"dataset_dir": DATASET}, LABELS),
        Stage("warmup", {"dataset_dir": DATASET, "labels_dir": LABELS}, WARMUP),
        Stage(
            "co_divide",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "warmup_dir": WARMUP},
            DIVIDE,
        ),
        Stage(
            "ssl_train",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "warmup_dir": WARMUP, "divide_dir": DIVIDE},
            SSL,
        ),
        Stage(
            "group_regularize",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "networks_dir": SSL},
            GROUP,
        ),
        Stage(
            "purify",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "ssl_dir": SSL, "group_dir": GROUP},
            PURIFIED,
        ),
        Stage(
            "retrain",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "purified_dir": PURIFIED},
            MODEL,
        ),
        Stage(
            "evaluate",
            {
                "dataset_dir": DATASET,
                "labels_dir": LABELS,
                "warmup_dir": WARMUP,
                "divide_dir": DIVIDE,
                "ssl_dir": SSL,
                "group_dir": GROUP,
                "purified_dir": PURIFIED,
                "model_dir": MODEL,
            },
            f"{ARTIFACTS}/evaluate",
        ),
    )
}


def producer(path: str) -> Stage | None:
    """The stage whose default output directory is `path`, if any."""
    return next((stage for stage in STAGES.values() if stage.out_dir == path), None)
