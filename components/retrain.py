"""Kubeflow component for stage 8, `retrain`:
SSSL: one deployable network on the purified labels (a model package).

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def retrain(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    purified_dir: Input[Dataset],
    ssl_dir: Input[Model],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `retrain`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "retrain",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        purified_dir=purified_dir.path,
        ssl_dir=ssl_dir.path,
    )
