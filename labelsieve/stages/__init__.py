"""The stage registry: every stage's `run` function, its inputs and its output directory.

Each stage is `run(params, *, <inputs>..., out_dir) -> dict` on plain paths; the CLI, the DVC stages,
the Kubeflow components and the tests all call these same functions. Default paths are the ones
dvc.yaml uses.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from labelsieve.config import ModelConfig, Params


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `inputs` maps each run() keyword to its default path; `params` names the params
    sections (``"model"``) and keys (``"ssl_train.epochs"``) its results depend on, the list dvc.yaml
    declares and each Kubeflow task receives (`labelsieve.runner.stage_params`).

    The stage's module (`labelsieve.stages.<name>`, which pulls in torch) is imported only when `run` is
    first used, so building the CLI parser from the registry stays cheap.
    """

    name: str
    inputs: dict[str, str]
    out_dir: str
    params: tuple[str, ...] = ()

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

SECTIONS = tuple(f.name for f in dataclasses.fields(Params))  # every params section
# Params that change how fast a stage runs, never its results: no stage declares them (a change reruns
# nothing), except evaluate, which shows every param.
HOW = (
    "model.eval_batch_size",
    "runtime.device",
    "runtime.threads",
    "runtime.progress",
    "runtime.compile",
    "runtime.data_path",
)
# What the shared training engine (labelsieve/engine/loop.py) reads: the network and its optimisation, the
# schedule's epoch budget (`Params.total_epochs`: warmup + ssl_train epochs, and GRIP's when it continues the
# schedule), the seed and the precision.
ENGINE = (
    *(f"model.{f.name}" for f in dataclasses.fields(ModelConfig) if f"model.{f.name}" not in HOW),
    "warmup.epochs",
    "ssl_train.epochs",
    "group_regularize.epochs",
    "group_regularize.schedule",
    "runtime.seed",
    "runtime.precision",
)


def declared(*items: str) -> tuple[str, ...]:
    """Sections and keys in order, without repeats and without keys whose whole section is listed."""
    unique = tuple(dict.fromkeys(items))
    return tuple(item for item in unique if "." not in item or item.split(".")[0] not in unique)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("ingest", {}, DATASET, ("data", "ingest", "runtime.seed")),
        Stage("inject_noise", {"dataset_dir": DATASET}, LABELS, ("inject_noise", "runtime.seed")),
        Stage(
            "warmup",
            {"dataset_dir": DATASET, "labels_dir": LABELS},
            WARMUP,
            declared("warmup", *ENGINE, "publish.to"),  # publish.to: where warmup.init_from latest looks
        ),
        Stage(
            "co_divide",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "warmup_dir": WARMUP},
            DIVIDE,
            # model.eval_batch_size: the loss pass is cheap to rerun, and the Kubeflow task must get it
            declared("co_divide", "ssl_train.batch_size", "model.eval_batch_size", *ENGINE),
        ),
        Stage(
            "ssl_train",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "warmup_dir": WARMUP, "divide_dir": DIVIDE},
            SSL,
            declared("warmup", "co_divide", "ssl_train", *ENGINE),
        ),
        Stage(
            "group_regularize",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "networks_dir": SSL},
            GROUP,
            declared("group_regularize", *ENGINE),
        ),
        Stage(
            "purify",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "ssl_dir": SSL, "group_dir": GROUP},
            PURIFIED,
            declared("purify", "model.eval_batch_size", *ENGINE),
        ),
        Stage(
            "retrain",
            {"dataset_dir": DATASET, "labels_dir": LABELS, "purified_dir": PURIFIED, "ssl_dir": SSL},
            MODEL,
            declared("retrain", *ENGINE),
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
            SECTIONS,  # the report shows every resolved param; the epochs decide which model is final
        ),
    )
}


# Pipeline steps that are not DVC stages (the Kubeflow pipeline runs them; each has its own CLI command):
# name -> the params it reads, as `Stage.params`.
PIPELINE_STEPS: dict[str, tuple[str, ...]] = {"publish": ("publish", "runtime.precision")}


def producer(path: str) -> Stage | None:
    """The stage whose default output directory is `path`, if any."""
    return next((stage for stage in STAGES.values() if stage.out_dir == path), None)
