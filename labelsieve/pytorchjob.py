"""Multi-node training stages as Kubeflow training-operator PyTorchJobs (``kubeflow.org/v1``).

kfp v2 has no PyTorchJob task, so a pipeline compiled with `--nodes M` runs each training stage as a
launcher task (components `PYTORCHJOB_COMPONENTS`) whose body, `run_stage_job`:

1. renders the stage's PyTorchJob (`manifest`): one Master and M - 1 Worker replicas of the task's image,
   each with N GPUs, running `python -m labelsieve.pytorchjob_node`, which downloads the stage's inputs,
   runs ``torchrun --nnodes M --nproc_per_node N --node_rank $RANK --rdzv_endpoint
   $MASTER_ADDR:$MASTER_PORT -m labelsieve.cli <stage> ...`` (the training operator sets RANK,
   MASTER_ADDR and MASTER_PORT in every replica) and, on the Master, uploads the outputs;
2. creates it through the Kubernetes API, or adopts the one an earlier attempt of the same task created
   (`submit_and_wait`), and waits until it has succeeded or failed;
3. copies the outputs into its own output artifact and logs the headline figures.

Artifacts travel by URI: the replicas read the input artifacts at their object-storage URIs and write
next to the output artifact's (s3://, or the minio:// of a default Kubeflow install, read as s3:// with
AWS_ENDPOINT_URL from the S3 secret). The launcher's service account must be allowed to create, get and
delete ``pytorchjobs.kubeflow.org`` in its namespace.

Status: rendering, the submit/wait loop (against a fake API) and the replica entry (on one machine) are
tested; none of it has been run against a Kubernetes cluster or a training operator.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from labelsieve.errors import LabelsieveError
from labelsieve.runner import log_metrics

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "pytorchjobs", "PyTorchJob"
PORT = 23456  # the training operator's default rendezvous port, declared as "pytorchjob-port"
PARAMS_ENV = "LABELSIEVE_PARAMS_YAML"  # the stage's params text, for every replica
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PyTorchJobError(LabelsieveError):
    """A PyTorchJob that cannot be made, was refused, or failed; or an artifact URI it cannot reach."""


def multinode_launcher(nodes: int, nproc_per_node: int) -> str:
    """The torchrun prefix every replica runs; each adds its own ``--node_rank`` and ``--rdzv_endpoint``."""
    if nodes < 2 or nproc_per_node < 1:
        raise ValueError(f"need nodes >= 2 and nproc_per_node >= 1, got {nodes} and {nproc_per_node}")
    return f"torchrun --nnodes {nodes} --nproc_per_node {nproc_per_node}"


def job_settings(
    *,
    nodes: int,
    gpus: int,
    image: str,
    accelerator: str,
    s3_secret: str,
    node_selector: Mapping[str, str],
    cpu: str,
    memory: str,
) -> dict[str, Any]:
    """The compile-time settings of every stage's PyTorchJob (a launcher task's `job` input)."""
    return {
        "launcher": multinode_launcher(nodes, max(gpus, 1)),
        "nodes": nodes,
        "gpus": gpus,
        "image": image,
        "accelerator": accelerator,
        "s3_secret": s3_secret,
        "node_selector": dict(node_selector),
        "cpu": cpu,
        "memory": memory,
    }


def object_uri(uri: str) -> str:
    """An artifact URI as the replicas read it: s3:// as is, a default install's minio:// as s3://.

    Raises:
        PyTorchJobError: any other scheme (a local path, gs://): the replicas could not reach it.
    """
    if uri.startswith("s3://"):
        return uri
    if uri.startswith("minio://"):
        return "s3://" + uri.removeprefix("minio://")
    raise PyTorchJobError(
        f"artifact {uri!r} is not in S3-compatible storage; multi-node stages need an s3:// or minio:// "
        "pipeline root"
    )


def staging_uri(out_uri: str) -> str:
    """Where the Master uploads the stage's outputs (``out/``) and figures (``summary.json``)."""
    return f"{object_uri(out_uri).rstrip('/')}.pytorchjob"


def job_name(stage: str, out_uri: str) -> str:
    """The job of one task's output: the same on a retry, so a retried launcher finds it."""
    return f"labelsieve-{stage.replace('_', '-')}-{hashlib.sha256(out_uri.encode()).hexdigest()[:10]}"


def manifest(
    *,
    name: str,
    namespace: str,
    stage: str,
    params_yaml: str,
    inputs: Mapping[str, str],
    output: str,
    job: Mapping[str, Any],
) -> dict[str, Any]:
    """The PyTorchJob that runs `stage` on `job["nodes"]` pods of `job["gpus"]` GPUs each.

    Args:
        name, namespace: the job's.
        stage: a key of `labelsieve.stages.STAGES`.
        params_yaml: the stage's params text.
        inputs: the stage's input directories by run() keyword, as s3:// URIs.
        output: the s3:// prefix the Master writes to (`staging_uri`).
        job: `job_settings` (a kfp Struct may hand its numbers over as floats: 2.0).
    """
    nodes, gpus = int(job["nodes"]), int(job["gpus"])
    command = ["python", "-m", "labelsieve.pytorchjob_node", "--stage", stage, "--launcher", job["launcher"]]
    for key, uri in inputs.items():
        command += ["--input", f"{key}={uri}"]
    env: list[dict[str, Any]] = [{"name": PARAMS_ENV, "value": params_yaml}]
    env += [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": job["s3_secret"], "key": key, "optional": True}}}
        for key in S3_KEYS
    ]
    resources: dict[str, Any] = {"requests": {"cpu": job["cpu"], "memory": job["memory"]}}
    if gpus > 0:
        resources["limits"] = {job["accelerator"]: str(gpus)}
    container = {
        "name": "pytorch",  # the training operator finds the container by this name
        "image": job["image"],
        "command": [*command, "--output", output],
        "env": env,
        "resources": resources,
        "ports": [{"name": "pytorchjob-port", "containerPort": PORT}],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # NCCL needs more than 64 MiB
    }
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if gpus > 0:
        pod["tolerations"] = [{"key": job["accelerator"], "operator": "Exists", "effect": "NoSchedule"}]
    if job["node_selector"]:
        pod["nodeSelector"] = dict(job["node_selector"])
    labels = {"app.kubernetes.io/part-of": "labelsieve", "labelsieve-stage": stage.replace("_", "-")}

    def replicas(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "Never",
            "template": {"metadata": {"labels": labels}, "spec": pod},
        }

    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "None", "ttlSecondsAfterFinished": 86400},
            "pytorchReplicaSpecs": {"Master": replicas(1), "Worker": replicas(nodes - 1)},
        },
    }


def job_state(obj: Mapping[str, Any]) -> str | None:
    """ "Succeeded" or "Failed" once the job has ended (from its status conditions), else None."""
    for condition in reversed(obj.get("status", {}).get("conditions") or []):
        if condition.get("type") in ("Succeeded", "Failed") and condition.get("status") == "True":
            return str(condition["type"])
    return None


def submit_and_wait(
    api: Any,
    body: Mapping[str, Any],
    *,
    poll_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Create the job (a kubernetes `CustomObjectsApi`), and wait until it has succeeded.

    A job of that name already there (an earlier attempt of the same task) is waited on; a failed one is
    deleted and created again.

    Raises:
        PyTorchJobError: the API refused the job, or the job failed.
    """
    from kubernetes.client.exceptions import ApiException

    meta = body["metadata"]
    where = (GROUP, VERSION, meta["namespace"], PLURAL)
    label = f"{PLURAL}.{GROUP} {meta['namespace']}/{meta['name']}"
    try:
        try:
            api.create_namespaced_custom_object(*where, body)
            _log(f"created {label}")
        except ApiException as err:
            if err.status != 409:
                raise
            if job_state(api.get_namespaced_custom_object(*where, meta["name"])) == "Failed":
                _log(f"{label} failed in an earlier attempt; deleting it and starting again")
                api.delete_namespaced_custom_object(*where, meta["name"])
                _wait_gone(api, where, meta["name"], poll_s, sleep)
                api.create_namespaced_custom_object(*where, body)
            else:
                _log(f"{label} exists (an earlier attempt); waiting on it")
        while (state := job_state(api.get_namespaced_custom_object(*where, meta["name"]))) is None:
            sleep(poll_s)
    except ApiException as err:
        raise PyTorchJobError(f"{label}: Kubernetes API error {err.status}: {err.reason}") from err
    if state == "Failed":
        raise PyTorchJobError(
            f"{label} failed; see `kubectl logs -n {meta['namespace']} {meta['name']}-master-0`"
        )
    _log(f"{label} succeeded")


def _wait_gone(api: Any, where: tuple[str, ...], name: str, poll_s: float, sleep: Callable) -> None:
    from kubernetes.client.exceptions import ApiException

    while True:
        try:
            api.get_namespaced_custom_object(*where, name)
        except ApiException as err:
            if err.status == 404:
                return
            raise
        sleep(poll_s)


def run_stage_job(
    stage: str,
    params_yaml: str,
    metrics: Any | None = None,
    *,
    job: Mapping[str, Any],
    out_dir: str,
    out_uri: str,
    inputs: Mapping[str, str],
    api: Any | None = None,
    namespace: str | None = None,
    poll_s: float = 30.0,
) -> dict[str, Any]:
    """A launcher task's body: run `stage` as a PyTorchJob; its outputs into `out_dir`, figures to `metrics`.

    Args:
        job: `job_settings`, fixed at compile time.
        out_dir, out_uri: the task's output artifact (local path, object-storage URI).
        inputs: the stage's input artifacts' URIs by run() keyword.
        api, namespace: a `CustomObjectsApi` and namespace (default: in-cluster, the pod's own).

    Raises:
        PyTorchJobError: see `object_uri` and `submit_and_wait`; or the job left no outputs.
    """
    from labelsieve.storage import download_tree, open_location

    staging = staging_uri(out_uri)
    body = manifest(
        name=job_name(stage, out_uri),
        namespace=namespace or NAMESPACE_FILE.read_text(encoding="utf-8").strip(),
        stage=stage,
        params_yaml=params_yaml,
        inputs={key: object_uri(uri) for key, uri in inputs.items()},
        output=staging,
        job=job,
    )
    submit_and_wait(api if api is not None else _in_cluster_api(), body, poll_s=poll_s)
    location = open_location(staging)
    summary = location.read_bytes("summary.json")  # written last: the outputs are complete
    if summary is None:
        raise PyTorchJobError(f"{body['metadata']['name']} succeeded but left no {staging}/summary.json")
    download_tree(location.child("out"), Path(out_dir))
    figures = json.loads(summary)
    log_metrics(metrics, figures)
    return figures


def _in_cluster_api() -> Any:
    from kubernetes import client, config

    config.load_incluster_config()
    return client.CustomObjectsApi()


def _log(line: str) -> None:
    print(f"labelsieve pytorchjob: {line}", file=sys.stderr, flush=True)
