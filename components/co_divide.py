"""Kubeflow component for stage 4, `co_divide`:
per-sample losses -> GMM -> clean probability per network.

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def co_divide(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    warmup_dir: Input[Model],
    out: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run `co_divide`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "co_divide",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        warmup_dir=warmup_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def co_divide_torchrun(
    params_yaml: str,
    launcher: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    warmup_dir: Input[Model],
    out: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run `co_divide` under `launcher` (`torchrun --standalone --nproc_per_node N`): data-parallel."""
    from labelsieve.launch import run_stage_launched

    run_stage_launched(
        "co_divide",
        params_yaml,
        metrics,
        launcher=launcher,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        warmup_dir=warmup_dir.path,
    )
