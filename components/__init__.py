"""One Kubeflow lightweight component per registered stage, keyed like `labelsieve.stages.STAGES`.

Each takes `params_yaml` (only the params its stage reads: `labelsieve.runner.stage_params_text`) and one
typed input artifact per stage input (named like the stage's run() keyword), and writes `out` (Dataset or
Model) and `metrics`. `publish` is the one pipeline step that is not a stage (`PIPELINE_STEPS`).
"""

from components.co_divide import co_divide
from components.evaluate import evaluate
from components.group_regularize import group_regularize
from components.ingest import ingest
from components.inject_noise import inject_noise
from components.publish import publish
from components.purify import purify
from components.retrain import retrain
from components.ssl_train import ssl_train
from components.warmup import warmup

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
