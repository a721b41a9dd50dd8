"""Kubeflow component for stage 9, `evaluate`:
test accuracy, per-class metrics, confusion matrix, detection figures, plots and an HTML report.

A thin adapter: artifact paths in, the registered stage's `run()`, artifacts out.
"""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate(
    params_yaml: str,
    dataset_dir: Input[Dataset],
    labels_dir: Input[Dataset],
    warmup_dir: Input[Model],
    divide_dir: Input[Dataset],
    ssl_dir: Input[Model],
    group_dir: Input[Model],
    purified_dir: Input[Dataset],
    model_dir: Input[Model],
    out: Output[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
):
    """Run `evaluate`; `out` holds metrics.json, plots/ and figures/; `report` is report.html."""
    from labelsieve.runner import publish_evaluation, run_stage

    run_stage(
        "evaluate",
        params_yaml,
        metrics,
        out_dir=out.path,
        dataset_dir=dataset_dir.path,
        labels_dir=labels_dir.path,
        warmup_dir=warmup_dir.path,
        divide_dir=divide_dir.path,
        ssl_dir=ssl_dir.path,
        group_dir=group_dir.path,
        purified_dir=purified_dir.path,
        model_dir=model_dir.path,
    )
    publish_evaluation(out.path, confusion=confusion, report_path=report.path)
