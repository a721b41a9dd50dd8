"""Kubeflow component for stage 1, `ingest`:
read the source named by `ingest.source` into the dataset store.

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest(
    params_yaml: str,
    presets: list[str],
    overrides: list[str],
    out: Output[Dataset],
    metrics: Output[Metrics],
):
    """Run `ingest`; `out` is its output directory, `metrics` its numeric headline figures."""
    from labelsieve.pipeline import run_stage

    run_stage(
        "ingest",
        params_yaml,
        presets,
        overrides,
        metrics,
        out_dir=out.path,
    )
