"""One Kubeflow lightweight component per registered stage, keyed like `labelsieve.stages.STAGES`.

Each takes `params_yaml` (only the params its stage reads: `labelsieve.runner.stage_params_text`) and one
typed input artifact per stage input (named like the stage's run() keyword), and writes `out` (Dataset or
Model) and `metrics`. `publish` is the one pipeline step that is not a stage (`PIPELINE_STEPS`).

`TORCHRUN_COMPONENTS`: the data-parallel stages (`labelsieve.cli.DATA_PARALLEL`) again, each with a
`launcher` input, run under it (`labelsieve.launch`); the pipeline uses them when compiled with more than
one GPU per stage. `PYTORCHJOB_COMPONENTS`: the four training stages as launchers of a multi-node
PyTorchJob (`labelsieve.pytorchjob`), used when compiled for more than one node.
"""

from components.co_divide import co_divide, co_divide_torchrun
from components.evaluate import evaluate
from components.group_regularize import (
    group_regularize,
    group_regularize_pytorchjob,
    group_regularize_torchrun,
)
from components.ingest import ingest
from components.inject_noise import inject_noise
from components.publish import publish
from components.purify import purify, purify_torchrun
from components.retrain import retrain, retrain_pytorchjob, retrain_torchrun
from components.ssl_train import ssl_train, ssl_train_pytorchjob, ssl_train_torchrun
from components.warmup import warmup, warmup_pytorchjob, warmup_torchrun

COMPONENTS = {
    "ingest": ingest,
    "inject_noise": inject_noise,
    "warmup": warmup,
    "co_divide": co_divide,
    "ssl_train": ssl_train,
    "group_regularize": group_regularize,
    "purify": purify,
    "retrain": retrain,
    "evaluate": evaluate,
    "publish": publish,
}

TORCHRUN_COMPONENTS = {
    "warmup": warmup_torchrun,
    "co_divide": co_divide_torchrun,
    "ssl_train": ssl_train_torchrun,
    "group_regularize": group_regularize_torchrun,
    "purify": purify_torchrun,
    "retrain": retrain_torchrun,
}

PYTORCHJOB_COMPONENTS = {
    "warmup": warmup_pytorchjob,
    "ssl_train": ssl_train_pytorchjob,
    "group_regularize": group_regularize_pytorchjob,
    "retrain": retrain_pytorchjob,
}
