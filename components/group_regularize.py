"""Kubeflow component for stage 6, `group_regularize`:
GRIP fine-tuning with class soft labels and maximum entropy.

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def group_regularize(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    networks_dir: Input[Model],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `group_regularize`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "group_regularize",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        networks_dir=networks_dir.path,
    )
