"""The Kubeflow side of labelsieve: what the components call, and compile / run-local / submit / schedule.

The components in `components/` only adapt kfp artifacts to paths and call `run_stage`, which resolves
the params with the same loader as the CLI and calls the stage's `run()` from the registry. The
pipeline itself (`pipelines/labelsieve_pipeline.py`) is compiled to `pipelines/labelsieve_pipeline.yaml`;
that file is what `run-local`, `submit` and `schedule` use.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from labelsieve.config import Params, load_params
from labelsieve.errors import LabelsieveError
from labelsieve.stages import STAGES


def _repo_root() -> Path:
    """The checkout holding `pipelines/`: next to the package in development, else the working directory
    (the image's /app, where the package itself is installed into site-packages)."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pipelines").is_dir() else Path.cwd()


REPO_ROOT = _repo_root()
PACKAGE = REPO_ROOT / "pipelines" / "labelsieve_pipeline.yaml"
PIPELINE_NAME = "labelsieve"
TOKEN_ENV = "KF_PIPELINES_TOKEN"  # bearer token for `submit` / `schedule`, never a command-line flag


def resolve_params(params_yaml: str, presets: Sequence[str] = (), overrides: Sequence[str] = ()) -> Params:
    """Params from YAML text (empty: built-in defaults), then presets, then overrides, as the CLI does.

    Raises:
        ConfigError: the text, a preset or an override is invalid.
    """
    if not params_yaml.strip():
        return load_params(None, presets=presets, overrides=overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "params.yaml"
        path.write_text(params_yaml, encoding="utf-8")
        return load_params(path, presets=presets, overrides=overrides)


def run_stage(
    name: str,
    params_yaml: str,
    presets: Sequence[str],
    overrides: Sequence[str],
    metrics: Any | None = None,
    *,
    out_dir: str,
    **inputs: str,
) -> dict[str, Any]:
    """Run the registered stage `name` on artifact paths; log its numeric headline figures to `metrics`.

    Args:
        name: a key of `labelsieve.stages.STAGES`.
        params_yaml, presets, overrides: see `resolve_params`.
        metrics: a kfp `Metrics` artifact (anything with `log_metric(key, value)`), or None.
        out_dir: the stage's output directory (the output artifact's path).
        **inputs: the stage's input directories by run() keyword.
    """
    params = resolve_params(params_yaml, presets, overrides)
    from labelsieve.engine.device import apply_threads  # torch: imported only to run a stage

    apply_threads(params.runtime.threads)
    summary = STAGES[name].run(params, **inputs, out_dir=out_dir)
    if metrics is not None:
        for key, value in flatten_numbers(summary).items():
            metrics.log_metric(key, value)
    return summary


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


def params_text(params: Params) -> str:
    """The resolved params as YAML text, the form the pipeline's `params_yaml` parameter takes."""
    import yaml

    return yaml.safe_dump(params.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- compile and run


def pipeline_module() -> Any:
    """Import `pipelines.labelsieve_pipeline` from the repository (it is not part of the wheel)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module("pipelines.labelsieve_pipeline")


def compile_pipeline(out: str | Path = PACKAGE, **options: Any) -> Path:
    """Compile the pipeline to YAML at `out`, atomically; `options` go to `build_pipeline`."""
    from kfp import compiler

    from labelsieve.atomic import atomic_path

    module = pipeline_module()
    with atomic_path(out) as tmp:
        yaml_tmp = tmp.with_suffix(".yaml")
        compiler.Compiler().compile(module.build_pipeline(**options), str(yaml_tmp))
        yaml_tmp.replace(tmp)
    return Path(out)


def run_local(
    arguments: Mapping[str, Any], *, pipeline_root: str | Path, package: str | Path = PACKAGE
) -> dict[str, Any]:
    """Run the compiled pipeline here with kfp's SubprocessRunner in the current environment.

    Every task is a subprocess of this Python (no venv, no pip install, no container); GPU requests,
    retries and secrets are cluster settings the local runner ignores.

    Returns:
        ``run_dir`` (this run's folder under `pipeline_root`) and ``outputs``: task -> its `out` directory.

    Raises:
        RuntimeError: a task failed (kfp's message names it and its log).
    """
    from kfp import components, local

    root = Path(pipeline_root).resolve()
    before = set(root.iterdir()) if root.is_dir() else set()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():  # stdout stays the CLI's JSON
        # Running the project image's components in this environment is the point here, not an accident.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        components.load_component_from_file(str(package))(**arguments)
    (run_dir,) = set(root.iterdir()) - before
    outputs = {name: str(run_dir / name.replace("_", "-") / "out") for name in STAGES}
    return {"run_dir": str(run_dir), "outputs": outputs}


class KubeflowError(LabelsieveError):
    """The Kubeflow Pipelines host cannot be reached or refused the request."""


@contextlib.contextmanager
def _talking_to(host: str) -> Iterator[None]:
    """Turn the SDK's transport and API errors into one KubeflowError naming the host."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    # The SDK prints links to the UI; stdout stays the CLI's JSON.
    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield
        except ApiException as err:
            raise KubeflowError(f"Kubeflow Pipelines at {host} answered {err.status} {err.reason}") from err
        except (HTTPError, OSError) as err:
            raise KubeflowError(f"cannot reach Kubeflow Pipelines at {host}: {err}") from err


def _client(host: str, token: str | None) -> Any:
    import kfp

    return kfp.Client(host=host, existing_token=token)


def submit(
    host: str,
    arguments: Mapping[str, Any],
    *,
    token: str | None = None,
    experiment: str = PIPELINE_NAME,
    run_name: str | None = None,
    caching: bool = True,
    package: str | Path = PACKAGE,
) -> str:
    """Start one run of the compiled pipeline on a Kubeflow Pipelines host; returns the run id.

    Raises:
        KubeflowError: the host is unreachable or refused the run.
    """
    with _talking_to(host):
        result = _client(host, token).create_run_from_pipeline_package(
            str(package),
            arguments=dict(arguments),
            run_name=run_name,
            experiment_name=experiment,
            enable_caching=caching,
        )
    return str(result.run_id)


def kfp_cron(expression: str) -> str:
    """A cron expression in KFP's six-field form (seconds first); five-field input gets second 0.

    Raises:
        ValueError: the expression has neither five nor six fields.
    """
    fields = expression.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise ValueError(
        f"cron {expression!r}: expected 5 fields (min hour day month weekday) or 6 (with seconds)"
    )


def schedule(
    host: str,
    arguments: Mapping[str, Any],
    *,
    cron: str,
    token: str | None = None,
    experiment: str = PIPELINE_NAME,
    job_name: str = f"{PIPELINE_NAME}-retrain",
    package: str | Path = PACKAGE,
) -> str:
    """Create a recurring run: at most one at a time, no catch-up of missed slots; returns its id.

    Raises:
        KubeflowError: the host is unreachable or refused the schedule.
        ValueError: `cron` is not a cron expression.
    """
    with _talking_to(host):
        client = _client(host, token)
        experiment_id = client.create_experiment(name=experiment).experiment_id
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=kfp_cron(cron),
            max_concurrency=1,
            no_catchup=True,
            params=dict(arguments),
            pipeline_package_path=str(package),
        )
    return str(job.recurring_run_id)


def newest_crawl(root: str) -> str:
    """The lexicographically last sub-prefix of an s3:// root or sub-folder of a local folder.

    Crawls named by date (``crawls/2026-11-21/``) therefore resolve to the newest one.

    Raises:
        s3.StorageError: the bucket cannot be listed.
        FileNotFoundError: the root holds no crawl.
    """
    if root.startswith("s3://"):
        from labelsieve.data import s3  # boto3: imported only for an s3:// root

        bucket, prefix = s3.parse_uri(root)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = list(s3.list_prefixes(s3.make_client(), bucket, prefix))
        if found:
            return f"s3://{bucket}/{max(found)}"
    else:
        folders = [p for p in Path(root).expanduser().iterdir() if p.is_dir()] if Path(root).is_dir() else []
        if folders:
            return str(max(folders))
    raise FileNotFoundError(f"no crawl under {root}")


def arguments(params: Params) -> dict[str, Any]:
    """Pipeline arguments carrying already-resolved params (so no preset or override is applied twice)."""
    return {"params_yaml": params_text(params), "presets": [], "overrides": []}


def describe(result: Mapping[str, Any]) -> str:
    """One JSON document for the CLI to print."""
    return json.dumps(result, indent=2, default=str)
