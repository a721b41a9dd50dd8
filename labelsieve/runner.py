"""The stage runner under the Kubeflow components: params text in, the registered stage's `run()` out.

It imports neither kfp nor `pipelines/` (the client side is `labelsieve/kfp_client.py`), so the import
chain components -> labelsieve -> pipelines -> components has no loop, and a task's image needs no kfp
client code to run a stage.

Each task receives only the params its stage reads (`stage_params_text`, from `Stage.params` in the
registry, the same declaration DVC's params follow), so a task's kfp cache key changes when, and only
when, one of those params changes.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from labelsieve.config import Params, load_params
from labelsieve.stages import HOW, PIPELINE_STEPS, STAGES


def resolve_params(params_yaml: str, presets: Sequence[str] = (), overrides: Sequence[str] = ()) -> Params:
    """Params from YAML text (empty: built-in defaults; missing keys: defaults), then presets and overrides.

    Raises:
        ConfigError: the text, a preset or an override is invalid.
    """
    if not params_yaml.strip():
        return load_params(None, presets=presets, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params_yaml, encoding="utf-8")
        return load_params(path, presets=presets, overrides=overrides)


def stage_params(params: Params, name: str) -> dict[str, dict[str, Any]]:
    """The part of `params` stage `name` reads: its `Stage.params` (or `PIPELINE_STEPS` entry) plus `HOW`.

    Every task gets `HOW` so it runs as `dvc repro` would; unlike DVC, changing one of them therefore
    changes every task's cache key. Sections and keys keep the order of `Params`: equal params, equal text.
    """
    wanted = {*(STAGES[name].params if name in STAGES else PIPELINE_STEPS[name]), *HOW}
    out: dict[str, dict[str, Any]] = {}
    for section, values in params.to_dict().items():
        if section in wanted:
            out[section] = values
            continue
        keys = {key: value for key, value in values.items() if f"{section}.{key}" in wanted}
        if keys:
            out[section] = keys
    return out


def params_text(params: Params | Mapping[str, Any]) -> str:
    """Params (resolved, or a slice of them) as YAML text, the form a component's `params_yaml` takes."""
    import yaml

    data = params.to_dict() if isinstance(params, Params) else dict(params)
    return yaml.safe_dump(data, sort_keys=False)


def stage_params_text(params: Params, name: str) -> str:
    """`stage_params` as YAML text: what the pipeline hands to stage `name`'s task."""
    return params_text(stage_params(params, name))


def run_stage(
    name: str, params_yaml: str, metrics: Any | None = None, *, out_dir: str, **inputs: str
) -> dict[str, Any]:
    """Run the registered stage `name` on artifact paths; log its numeric headline figures to `metrics`.

    Args:
        name: a key of `labelsieve.stages.STAGES`.
        params_yaml: the stage's params as YAML text (see `resolve_params`).
        metrics: a kfp `Metrics` artifact (anything with `log_metric(key, value)`), or None.
        out_dir: the stage's output directory (the output artifact's path).
        **inputs: the stage's input directories by run() keyword.
    """
    params = resolve_params(params_yaml)
    from labelsieve.engine.device import prepare_process  # torch: imported only to run a stage

    prepare_process(params.runtime.threads)
    summary = STAGES[name].run(params, **inputs, out_dir=out_dir)
    log_metrics(metrics, summary)
    return summary


def run_ingest(
    params_yaml: str,
    crawl_root: str,
    metrics: Any | None = None,
    *,
    out_dir: str,
) -> bool:
    """`ingest`: of `ingest.source`, or with `crawl_root` of the crawls the accumulated dataset lacks.

    Returns whether anything new was ingested (the pipeline goes on only then).
    """
    if crawl_root:
        from labelsieve.crawls import ingest_new_crawls

        summary = ingest_new_crawls(resolve_params(params_yaml), crawl_root, out_dir=out_dir)
        log_metrics(metrics, summary)
        return bool(summary["new_crawls"])
    run_stage("ingest", params_yaml, metrics, out_dir=out_dir)
    return True


def run_publish(params_yaml: str, metrics: Any | None = None, *, out_dir: str, **inputs: str) -> str:
    """The `publish` step (labelsieve/publish.py) on artifact paths; logs ``published`` (1 or 0) and the
    accuracies to `metrics`. Returns the decision: "published", "refused" or "off" (publish.to empty).

    Args:
        **inputs: ``dataset_dir``, ``model_dir`` and ``evaluate_dir``.
    """
    from labelsieve import publish
    from labelsieve.engine.device import apply_threads  # torch: imported only to run the step

    params = resolve_params(params_yaml)
    apply_threads(params.runtime.threads)
    record = publish.run(params, **inputs, out_dir=out_dir)
    figures = {"published": float(record["decision"] == publish.PUBLISHED)}
    if record["decision"] != publish.OFF:
        figures["test_accuracy"] = record["gate"]["candidate"]
        if record["gate"]["previous"] is not None:
            figures["previous_test_accuracy"] = record["gate"]["previous"]
    log_metrics(metrics, figures)
    return str(record["decision"])


def log_metrics(metrics: Any | None, summary: Mapping[str, Any]) -> None:
    """Log the numeric leaves of `summary` to a kfp `Metrics` artifact (nothing if `metrics` is None)."""
    if metrics is not None:
        for key, value in flatten_numbers(summary).items():
            metrics.log_metric(key, value)


def flatten_numbers(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a nested summary as {"a.b": float}; booleans and text are left out."""
    out: dict[str, float] = {}
    for key, value in summary.items():
        if isinstance(value, Mapping):
            out.update(flatten_numbers(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def publish_evaluation(evaluate_dir: str | Path, *, confusion: Any, report_path: str | Path) -> None:
    """Hand `evaluate`'s outputs to Kubeflow's viewers: the test confusion matrix and report.html.

    Args:
        evaluate_dir: the evaluate stage's output directory.
        confusion: a kfp `ClassificationMetrics` artifact.
        report_path: where the kfp `HTML` artifact's file goes.
    """
    evaluation = json.loads((Path(evaluate_dir) / "evaluation.json").read_text(encoding="utf-8"))
    confusion.log_confusion_matrix(evaluation["classes"], evaluation["test"]["confusion_matrix"])
    from labelsieve.atomic import write_bytes  # numpy: not needed to build the CLI parser

    write_bytes(report_path, (Path(evaluate_dir) / "report.html").read_bytes())
