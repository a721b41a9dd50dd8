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


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def group_regularize_torchrun(
    params_yaml: str,
    launcher: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    networks_dir: Input[Model],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `group_regularize` under `launcher` (`torchrun --standalone --nproc_per_node N`): data-parallel."""
    from labelsieve.launch import run_stage_launched

    run_stage_launched(
        "group_regularize",
        params_yaml,
        metrics,
        launcher=launcher,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        networks_dir=networks_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def group_regularize_pytorchjob(
    params_yaml: str,
    job: dict,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    networks_dir: Input[Model],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `group_regularize` as a multi-node PyTorchJob (labelsieve/pytorchjob.py) and wait for it."""
    from labelsieve.pytorchjob import run_stage_job

    run_stage_job(
        "group_regularize",
        params_yaml,
        metrics,
        job=job,
        out_dir=out.path,
        out_uri=out.uri,
        inputs={
            "dataset_dir": dataset_dir.uri,
            "labels_dir": labels_dir.uri,
            "networks_dir": networks_dir.uri,
        },
    )
