"""Kubeflow component for the step after `evaluate`, `publish` (a pipeline step, not a DVC stage):
gate the retrained model against the published one and publish it to `publish.to` if it passes.

A thin adapter: artifact paths in, `labelsieve.publish.run` (through the runner), artifacts out. Never
cached: the published model it compares with changes while its inputs do not.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    model_dir: Input[Model],
    evaluate_dir: Input[Dataset],
    out: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """Run `publish`; `out` holds publish.json; returns the decision: "published", "refused" or "off"."""
    from labelsieve.runner import run_publish

    return run_publish(
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        model_dir=model_dir.path,
        evaluate_dir=evaluate_dir.path,
    )
