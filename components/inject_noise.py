"""Kubeflow component for stage 2, `inject_noise`:
synthetic label noise for benchmarks (rate 0 passes the labels through).

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def inject_noise(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    out: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run `inject_noise`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.runner import run_stage

    run_stage(
        "inject_noise",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
    )
