"""Kubeflow component for stage 7, `purify`:
keep / relabel / drop for every training sample.

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def purify(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    ssl_dir: Input[Model],
    group_dir: Input[Model],
    out: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run `purify`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "purify",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        ssl_dir=ssl_dir.path,
        group_dir=group_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def purify_torchrun(
    params_yaml: str,
    launcher: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    ssl_dir: Input[Model],
    group_dir: Input[Model],
    out: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run `purify` under `launcher` (`torchrun --standalone --nproc_per_node N`): data-parallel."""
    from labelsieve.launch import run_stage_launched

    run_stage_launched(
        "purify",
        params_yaml,
        metrics,
        launcher=launcher,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        ssl_dir=ssl_dir.path,
        group_dir=group_dir.path,
    )
