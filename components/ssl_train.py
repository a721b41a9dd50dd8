"""Kubeflow component for stage 5, `ssl_train`:
co-training epochs (MixMatch, co-guessing, co-refinement, SMR recalibration).

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ssl_train(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    warmup_dir: Input[Model],
    divide_dir: Input[Dataset],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `ssl_train`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "ssl_train",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        warmup_dir=warmup_dir.path,
        divide_dir=divide_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ssl_train_torchrun(
    params_yaml: str,
    launcher: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    warmup_dir: Input[Model],
    divide_dir: Input[Dataset],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `ssl_train` under `launcher` (`torchrun --standalone --nproc_per_node N`): data-parallel."""
    from labelsieve.launch import run_stage_launched

    run_stage_launched(
        "ssl_train",
        params_yaml,
        metrics,
        launcher=launcher,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        warmup_dir=warmup_dir.path,
        divide_dir=divide_dir.path,
    )


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ssl_train_pytorchjob(
    params_yaml: str,
    job: dict,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    warmup_dir: Input[Model],
    divide_dir: Input[Dataset],
    out: Output[Model],
    metrics: Output[Metrics],
):
    """Run `ssl_train` as a multi-node PyTorchJob (labelsieve/pytorchjob.py) and wait for it."""
    from labelsieve.pytorchjob import run_stage_job

    run_stage_job(
        "ssl_train",
        params_yaml,
        metrics,
        job=job,
        out_dir=out.path,
        out_uri=out.uri,
        inputs={
            "dataset_dir": dataset_dir.uri,
            "labels_dir": labels_dir.uri,
            "warmup_dir": warmup_dir.uri,
            "divide_dir": divide_dir.uri,
        },
    )
