"""Kubeflow component for stage 3, `warmup`:
train the networks on the full noisy set (mixup or CE).

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def warmup(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `warmup`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "warmup",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def warmup_torchrun(
    params_yaml: str,
    launcher: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `warmup` under `launcher` (`torchrun --standalone --nproc_per_node N`): data-parallel."""
    from labelsieve.launch import run_stage_launched

    run_stage_launched(
        "warmup",
        params_yaml,
        metrics,
        launcher=launcher,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def warmup_pytorchjob(
    params_yaml: str,
    job: dict,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `warmup` as a multi-node PyTorchJob (labelsieve/pytorchjob.py) and wait for it."""
    from labelsieve.pytorchjob import run_stage_job

    run_stage_job(
        "warmup",
        params_yaml,
        metrics,
        job=job,
        out_dir=out.path,
        out_uri=out.uri,
        inputs={"dataset_dir": dataset_dir.uri, "labels_dir": labels_dir.uri},
    )
