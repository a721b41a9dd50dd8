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
