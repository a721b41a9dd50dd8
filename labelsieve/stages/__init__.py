"""The stage registry: every stage's `run` function, its inputs and its output directory.

Each stage is `run(params, *, <inputs>..., out_dir) -> dict` on plain paths; the CLI, the DVC stages,
the Kubeflow components and the tests all call these same functions. Default paths are the ones
dvc.yaml uses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labelsieve.stages import (
    co_divide,
    evaluate,
    group_regularize,
    ingest,
    inject_noise,
    purify,
    retrain,
    ssl_train,
    warmup,
)


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `inputs` maps each run() keyword to its default path."""

    name: str
    run: Callable[..., dict[str, Any]]
    inputs: dict[str, str]
    out_dir: str


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
        Stage("ingest", ingest.run, {}, DATASET),
        Stage("inject_noise", inject_noise.run, {"dataset_dir": DATASET}, LABELS),
        Stage("warmup", warmup.run, {"dataset_dir": DATASET, "labels_dir": LABELS}, WARMUP),
        Stage(
            "co_divide",
            co_divide.run,
            {"dataset_dir": DATASET, "labels_dir": LABELS, "warmup_dir": WARMUP},
            DIVIDE,
        ),
        Stage(
            "ssl_train",
            ssl_train.run,
            {"dataset_dir": DATASET, "labels_dir": LABELS, "warmup_dir": WARMUP, "divide_dir": DIVIDE},
            SSL,
        ),
        Stage(
            "group_regularize",
            group_regularize.run,
            {"dataset_dir": DATASET, "labels_dir": LABELS, "networks_dir": SSL},
            GROUP,
        ),
        Stage(
            "purify",
            purify.run,
            {"dataset_dir": DATASET, "labels_dir": LABELS, "ssl_dir": SSL, "group_dir": GROUP},
            PURIFIED,
        ),
        Stage(
            "retrain",
            retrain.run,
            {"dataset_dir": DATASET, "labels_dir": LABELS, "purified_dir": PURIFIED},
            MODEL,
        ),
        Stage(
            "evaluate",
            evaluate.run,
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
