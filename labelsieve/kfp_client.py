"""The Kubeflow client: compile the pipeline, run it here with kfp local, submit it, schedule it.

The components call `labelsieve.runner`, never this module; only this module imports `pipelines/`
(through `pipeline_module`), so there is no import loop. The pipeline (`pipelines/labelsieve_pipeline.py`)
is compiled to `pipelines/labelsieve_pipeline.yaml`, which `run-local`, `submit` and `schedule` use.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from labelsieve.config import Params
from labelsieve.errors import LabelsieveError
from labelsieve.runner import stage_params_text
from labelsieve.stages import PIPELINE_STEPS, STAGES


def _repo_root() -> Path:
    """The checkout holding `pipelines/`: next to the package in development, else the working directory
    (the image's /app, where the package itself is installed into site-packages)."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pipelines").is_dir() else Path.cwd()


REPO_ROOT = _repo_root()
PACKAGE = REPO_ROOT / "pipelines" / "labelsieve_pipeline.yaml"
PIPELINE_NAME = "labelsieve"
TOKEN_ENV = "KF_PIPELINES_TOKEN"  # bearer token for `submit` / `schedule`, never a command-line flag


class KubeflowError(LabelsieveError):
    """The Kubeflow Pipelines host cannot be reached or refused the request."""


class DefaultImageError(LabelsieveError):
    """The package still names the local default image, which a cluster cannot pull."""


class DockerUnavailableError(LabelsieveError):
    """`run-local --runner docker`: no Docker engine answers, or the package's image is not built."""


def arguments(params: Params, *, crawl_root: str = "") -> dict[str, str]:
    """Pipeline arguments: `<step>_params`, the resolved params each step reads, and `crawl_root`."""
    texts = {f"{name}_params": stage_params_text(params, name) for name in (*STAGES, *PIPELINE_STEPS)}
    return texts | {"crawl_root": crawl_root}


def describe(result: Mapping[str, Any]) -> str:
    """One JSON document for the CLI to print."""
    return json.dumps(result, indent=2, default=str)


# --------------------------------------------------------------------------- compile


def _import_from_repo(module: str) -> Any:
    """Import `module` from the repository (`pipelines/` and `components/` are not part of the wheel)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    return importlib.import_module(module)


def pipeline_module() -> Any:
    """`pipelines.labelsieve_pipeline`."""
    return _import_from_repo("pipelines.labelsieve_pipeline")


def default_image() -> str:
    """The image `components/image.py` names: the Dockerfile's local tag."""
    return str(_import_from_repo("components.image").IMAGE)


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


def package_images(package: str | Path) -> set[str]:
    """The container images the compiled package's executors run."""
    import yaml

    spec = next(yaml.safe_load_all(Path(package).read_text(encoding="utf-8")))
    executors = spec["deploymentSpec"]["executors"].values()
    return {e["container"]["image"] for e in executors if "container" in e}


def check_image(package: str | Path, *, allow_default: bool = False) -> None:
    """Refuse a package whose tasks run the local default image, unless `allow_default`.

    Raises:
        DefaultImageError: naming the image and how to compile with a pushed one.
    """
    image = default_image()
    if not allow_default and image in package_images(package):
        raise DefaultImageError(
            f"{package} runs the local image {image!r}, which a cluster cannot pull; compile with "
            "`labelsieve pipeline compile --image REGISTRY/labelsieve:TAG --output PATH` and pass "
            "--package PATH (or --allow-default-image if the cluster has that image)"
        )


# --------------------------------------------------------------------------- run here


RUNNERS = ("subprocess", "docker")


def docker_runner(package: str | Path = PACKAGE, *, user: str | None = None) -> Any:
    """kfp's DockerRunner for `package`: each task in its image, run as `user` on the host network.

    `user` ("UID[:GID]", default this process's uid:gid) owns what the tasks write: the DockerRunner
    mounts the pipeline root at its host path, so the image's own user (uid 1000) could not write a
    folder the caller owns. The image keeps HOME and kfp's working folders writable by any uid.
    The host network: an engine started by scripts/docker_engine.sh has no bridge.

    Raises:
        DockerUnavailableError: no engine answers, or an image the package runs is not here (kfp would
            try to pull it).
    """
    import docker
    from kfp import local

    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as err:
        raise DockerUnavailableError(
            f"no Docker engine answers ({err}); start one with scripts/docker_engine.sh (as root)"
        ) from err
    try:
        for image in sorted(package_images(package)):
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound as err:
                raise DockerUnavailableError(
                    f"image {image!r} (from {package}) is not built here; build it with `make image`"
                ) from err
    finally:
        client.close()
    return local.DockerRunner(user=user or f"{os.getuid()}:{os.getgid()}", network_mode="host")


def run_local(
    arguments: Mapping[str, Any],
    *,
    pipeline_root: str | Path,
    package: str | Path = PACKAGE,
    progress: IO[str] | None = None,
    runner: str = "subprocess",
    docker_user: str | None = None,
) -> dict[str, Any]:
    """Run the compiled pipeline here with kfp local: SubprocessRunner, or DockerRunner in the image.

    `runner` "subprocess": every task is a subprocess of this Python (no venv, no pip install, no
    container). "docker": every task runs in the package's image (`docker_runner`, as `docker_user`).
    GPU requests, retries and secrets are cluster settings the local runners ignore. `progress` (default
    stderr) gets one line per task; kfp's own output, each executor's full input included, goes to the
    log file `<pipeline_root>/run-local-<time>.log`.

    Returns:
        ``run_dir`` (this run's folder under `pipeline_root`), ``log`` and ``outputs``: task -> its `out`
        directory, for the tasks that ran; ``publish`` (decision, version, reason) when that step ran.

    Raises:
        RuntimeError: a task failed (the message names it and the log).
        DockerUnavailableError: `runner` "docker" without an engine or the image.
        ValueError: an unknown `runner`.
    """
    from kfp import components, local

    if runner not in RUNNERS:
        raise ValueError(f"runner {runner!r}: expected one of {', '.join(RUNNERS)}")
    chosen = (
        docker_runner(package, user=docker_user)
        if runner == "docker"
        else local.SubprocessRunner(use_venv=False)
    )
    progress = progress or sys.stderr
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(root.iterdir())
    log = root / f"run-local-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}.log"
    print(f"kfp local: tasks' full output in {log}", file=progress, flush=True)
    local.init(runner=chosen, pipeline_root=str(root))
    with (
        open(log, "w", encoding="utf-8") as handle,
        contextlib.redirect_stdout(handle),
        contextlib.redirect_stderr(handle),
        warnings.catch_warnings(),
        _task_progress(progress),
        _local_conditions(),
    ):
        # Running the project image's components in this environment is the point here, not an accident.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        try:
            components.load_component_from_file(str(package))(**arguments)
        except RuntimeError as err:
            raise RuntimeError(f"{err} (full output: {log})") from err
    (run_dir,) = {path for path in set(root.iterdir()) - before if path.is_dir()}
    found = {  # tasks under dsl.If sit deeper; a package compiled for N GPUs names its tasks <stage>-torchrun
        path.parent.name.removesuffix("-torchrun"): path for path in run_dir.glob("**/out")
    }
    outputs = {name: found.get(name.replace("_", "-"), run_dir / "-") for name in (*STAGES, *PIPELINE_STEPS)}
    return {
        "run_dir": str(run_dir),
        "log": str(log),
        "outputs": {name: str(path) for name, path in outputs.items() if path.exists()},
        **publish_outcome(outputs.get("publish"), progress),
    }


def publish_outcome(out: Path | None, progress: IO[str]) -> dict[str, Any]:
    """``{"publish": decision, version, reason}`` from the publish step's output, its line printed to
    `progress`; empty when the step did not run (the run ended early)."""
    if out is None or not out.is_dir():
        return {}
    from labelsieve.publish import describe, read_record

    record = read_record(out)
    print(describe(record), file=progress, flush=True)
    return {"publish": {key: record.get(key) for key in ("decision", "version", "reason")}}


@contextlib.contextmanager
def _task_progress(stream: IO[str]) -> Iterator[None]:
    """Print `<task>  <status>  <seconds>s` to `stream` as each kfp local task ends."""
    from kfp.local import task_dispatcher

    original: Callable[..., Any] = task_dispatcher.run_single_task_implementation

    def timed(*args: Any, **kwargs: Any) -> Any:
        name = str(kwargs.get("component_name", args[1] if len(args) > 1 else "?")).removeprefix("comp-")
        start = time.perf_counter()
        status = "FAILURE"
        try:
            outputs, state = original(*args, **kwargs)
            status = getattr(state, "name", str(state))
            return outputs, state
        finally:
            print(f"{name:<18} {status:<8} {time.perf_counter() - start:8.1f}s", file=stream, flush=True)

    task_dispatcher.run_single_task_implementation = timed
    try:
        yield
    finally:
        task_dispatcher.run_single_task_implementation = original


@contextlib.contextmanager
def _local_conditions() -> Iterator[None]:
    """Let kfp 2.16's local runner evaluate the compiler's `dsl.If` conditions.

    It substitutes a channel's value inside ``inputs.parameter_values['<channel>']``, which leaves invalid
    Python, so every condition is false; the bare channel name is what it can substitute.
    """
    from kfp.local.orchestrator import enhanced_dag_orchestrator as dag

    original = dag.ConditionEvaluator.evaluate_condition
    pattern = re.compile(r"inputs\.parameter_values\['(pipelinechannel--[\w\-]+)'\]")

    def evaluate(condition: str, io_store: Any) -> bool:
        return original(pattern.sub(r"\1", condition), io_store)

    dag.ConditionEvaluator.evaluate_condition = staticmethod(evaluate)
    try:
        yield
    finally:
        dag.ConditionEvaluator.evaluate_condition = staticmethod(original)


# --------------------------------------------------------------------------- a cluster


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


def _client(host: str, token: str | None, namespace: str | None) -> Any:
    import kfp

    extra = {"namespace": namespace} if namespace else {}
    return kfp.Client(host=host, existing_token=token, **extra)


def submit(
    host: str,
    arguments: Mapping[str, Any],
    *,
    token: str | None = None,
    experiment: str = PIPELINE_NAME,
    run_name: str | None = None,
    caching: bool = True,
    package: str | Path = PACKAGE,
    namespace: str | None = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
    allow_default_image: bool = False,
) -> str:
    """Start one run of the compiled pipeline on a Kubeflow Pipelines host; returns the run id.

    Raises:
        DefaultImageError: the package runs the local default image (see `check_image`).
        KubeflowError: the host is unreachable or refused the run.
    """
    check_image(package, allow_default=allow_default_image)
    with _talking_to(host):
        result = _client(host, token, namespace).create_run_from_pipeline_package(
            str(package),
            arguments=dict(arguments),
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
            pipeline_root=pipeline_root,
            # None keeps the compiled settings (ingest uncached); True would turn ingest's cache on
            enable_caching=None if caching else False,
            service_account=service_account,
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
    namespace: str | None = None,
    service_account: str | None = None,
    pipeline_root: str | None = None,
    allow_default_image: bool = False,
) -> str:
    """Create a recurring run: at most one at a time, no catch-up of missed slots; returns its id.

    Raises:
        DefaultImageError: the package runs the local default image (see `check_image`).
        KubeflowError: the host is unreachable or refused the schedule.
        ValueError: `cron` is not a cron expression.
    """
    cron = kfp_cron(cron)
    check_image(package, allow_default=allow_default_image)
    with _talking_to(host):
        client = _client(host, token, namespace)
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        job = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=1,
            no_catchup=True,
            params=dict(arguments),
            pipeline_package_path=str(package),
            pipeline_root=pipeline_root,
            service_account=service_account,
        )
    return str(job.recurring_run_id)
