"""labelsieve/pytorchjob.py and labelsieve/pytorchjob_node.py: the PyTorchJob a multi-node stage's launcher
renders and submits, and what its replicas run.

No Kubernetes cluster or training operator is involved: `FakeApi` stands in for the CustomObjectsApi, and
in the end-to-end test it runs the replicas' commands on this machine against a moto S3 server, with the
variables the training operator would set (RANK, MASTER_ADDR, MASTER_PORT)."""

import os
import re
import subprocess

import pytest
from kubernetes.client.exceptions import ApiException

from labelsieve import runner
from labelsieve.config import load_params
from labelsieve.pytorchjob import (
    PARAMS_ENV,
    PyTorchJobError,
    job_name,
    job_settings,
    manifest,
    object_uri,
    run_stage_job,
    staging_uri,
    submit_and_wait,
)
from labelsieve.pytorchjob_node import main as node_main
from labelsieve.stages import ingest, inject_noise
from labelsieve.storage import open_location, upload_tree
from tests.conftest import TINY_PIPELINE, free_port

SETTINGS = {
    "nodes": 3,
    "gpus": 4,
    "image": "registry.example/ls:1",
    "accelerator": "nvidia.com/gpu",
    "s3_secret": "ls-s3",
    "node_selector": {"pool": "a100"},
    "cpu": "8",
    "memory": "64G",
}


def _manifest(job=None, **changes):
    return manifest(
        name="labelsieve-warmup-0123456789",
        namespace="team",
        stage="warmup",
        params_yaml="warmup: {epochs: 3}\n",
        inputs={"dataset_dir": "s3://b/run/ingest/out", "labels_dir": "s3://b/run/inject-noise/out"},
        output="s3://b/run/warmup/out.pytorchjob",
        job=job or job_settings(**{**SETTINGS, **changes}),
    )


def test_manifest_is_a_master_and_workers_running_torchrun_over_every_node():
    body = _manifest()
    assert (body["apiVersion"], body["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert body["metadata"]["namespace"] == "team"
    replicas = body["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 2)
    for spec in replicas.values():
        assert spec["restartPolicy"] == "Never"
        pod = spec["template"]["spec"]
        (container,) = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == "registry.example/ls:1"
        assert container["command"] == [
            "python",
            "-m",
            "labelsieve.pytorchjob_node",
            "--stage",
            "warmup",
            "--launcher",
            "torchrun --nnodes 3 --nproc_per_node 4",
            "--input",
            "dataset_dir=s3://b/run/ingest/out",
            "--input",
            "labels_dir=s3://b/run/inject-noise/out",
            "--output",
            "s3://b/run/warmup/out.pytorchjob",
        ]
        assert container["resources"] == {
            "requests": {"cpu": "8", "memory": "64G"},
            "limits": {"nvidia.com/gpu": "4"},
        }
        env = {item["name"]: item for item in container["env"]}
        assert env[PARAMS_ENV]["value"] == "warmup: {epochs: 3}\n"
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
            assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "ls-s3", "key": key, "optional": True}
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
        assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        assert pod["nodeSelector"] == {"pool": "a100"}
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]


def test_manifest_counts_are_integers_though_kfp_may_hand_them_over_as_floats():
    body = _manifest({**job_settings(**SETTINGS), "nodes": 3.0, "gpus": 4.0})  # as the task receives them
    assert body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    assert isinstance(body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"], int)
    container = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "4"}


def test_manifest_without_gpus_requests_none():
    body = _manifest(gpus=0, node_selector={})
    pod = body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert "limits" not in pod["containers"][0]["resources"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    assert "--nproc_per_node 1" in " ".join(pod["containers"][0]["command"])


def test_job_settings_need_two_nodes():
    with pytest.raises(ValueError, match="nodes >= 2"):
        job_settings(**{**SETTINGS, "nodes": 1})


def test_job_name_is_a_dns_label_fixed_by_the_task_output():
    uri = "minio://mlpipeline/v2/artifacts/labelsieve/run-1/group-regularize-pytorchjob/abc/out"
    name = job_name("group_regularize", uri)
    assert name == job_name("group_regularize", uri) != job_name("group_regularize", uri + "2")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name)


def test_object_uri_reads_minio_as_s3_and_refuses_what_replicas_cannot_reach():
    assert object_uri("minio://mlpipeline/v2/artifacts/x") == "s3://mlpipeline/v2/artifacts/x"
    assert object_uri("s3://b/p") == "s3://b/p"
    assert staging_uri("s3://b/run/out/") == "s3://b/run/out.pytorchjob"
    for uri in ("gs://b/p", "/tmp/local/out"):
        with pytest.raises(PyTorchJobError, match="not in S3-compatible storage"):
            object_uri(uri)


class FakeApi:
    """A CustomObjectsApi holding jobs in memory; each get moves a job one step along `states`."""

    def __init__(self, states=("Running", "Succeeded"), existing=None):
        self.jobs = dict(existing or {})
        self.states = list(states)
        self.calls: list[str] = []

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        self.calls.append("create")
        name = body["metadata"]["name"]
        if name in self.jobs:
            raise ApiException(status=409, reason="AlreadyExists")
        self.jobs[name] = {**body, "status": {}}
        self.run(body)

    def run(self, body):
        """What the operator would start; nothing here."""

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("get")
        if name not in self.jobs:
            raise ApiException(status=404, reason="NotFound")
        job = self.jobs[name]
        if self.states and job["status"].get("conditions", [{}])[-1].get("type") not in (
            "Succeeded",
            "Failed",
        ):
            job["status"] = _status(self.states.pop(0))
        return job

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.calls.append("delete")
        del self.jobs[name]


def _status(state: str) -> dict:
    return {"conditions": [{"type": "Created", "status": "True"}, {"type": state, "status": "True"}]}


def test_submit_creates_the_job_and_waits_until_it_succeeds():
    api, naps = FakeApi(states=("Running", "Running", "Succeeded")), []
    submit_and_wait(api, _manifest(), poll_s=7, sleep=naps.append)
    assert api.calls == ["create", "get", "get", "get"] and naps == [7, 7]


def test_submit_reports_a_failed_job_with_where_to_look():
    with pytest.raises(PyTorchJobError, match=r"team/labelsieve-warmup-0123456789 failed; see `kubectl logs"):
        submit_and_wait(FakeApi(states=("Running", "Failed")), _manifest(), sleep=lambda _: None)


def test_submit_waits_on_the_job_an_earlier_attempt_started():
    body = _manifest()
    api = FakeApi(
        states=("Succeeded",), existing={body["metadata"]["name"]: {**body, "status": _status("Running")}}
    )
    submit_and_wait(api, body, sleep=lambda _: None)
    assert "delete" not in api.calls


def test_submit_replaces_the_job_an_earlier_attempt_left_failed():
    body = _manifest()
    name = body["metadata"]["name"]
    api = FakeApi(states=("Succeeded",), existing={name: {**body, "status": _status("Failed")}})
    submit_and_wait(api, body, sleep=lambda _: None)
    assert api.calls == ["create", "get", "delete", "get", "create", "get"]


def test_an_api_refusal_is_one_error():
    class Forbidden(FakeApi):
        def create_namespaced_custom_object(self, *args):
            raise ApiException(status=403, reason="Forbidden")

    with pytest.raises(PyTorchJobError, match="Kubernetes API error 403: Forbidden"):
        submit_and_wait(Forbidden(), _manifest(), sleep=lambda _: None)


def test_a_replica_outside_the_operator_says_so(capsys):
    args = [
        "--stage",
        "warmup",
        "--launcher",
        "torchrun --nnodes 2 --nproc_per_node 1",
        "--output",
        "s3://b/o",
    ]
    env = {k: os.environ.pop(k) for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k in os.environ}
    try:
        assert node_main(args) == 2
    finally:
        os.environ.update(env)
    assert "RANK, MASTER_ADDR, MASTER_PORT not set" in capsys.readouterr().err


class LocalCluster(FakeApi):
    """Runs every replica of a created job here, at once, as the operator would start its pods."""

    def __init__(self):
        super().__init__(states=())

    def run(self, body):
        port = str(free_port())
        replicas = body["spec"]["pytorchReplicaSpecs"]
        pods = [replicas["Master"]["template"]] + [replicas["Worker"]["template"]] * replicas["Worker"][
            "replicas"
        ]
        procs = []
        for rank, pod in enumerate(pods):
            (container,) = pod["spec"]["containers"]
            env = {**os.environ, "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
            env |= {item["name"]: item["value"] for item in container["env"] if "value" in item}
            procs.append(subprocess.Popen(container["command"], env=env))  # AWS_* as the secret would
        codes = [proc.wait(timeout=300) for proc in procs]
        state = "Succeeded" if codes == [0] * len(codes) else "Failed"
        self.jobs[body["metadata"]["name"]]["status"] = _status(state)


@pytest.mark.integration
def test_a_two_node_warmup_job_runs_end_to_end_through_object_storage(s3_bucket, tmp_path):
    params = load_params(None, presets=["digits"], overrides=[*TINY_PIPELINE, "ingest.per_class_limit=20"])
    ingest.run(params, out_dir=tmp_path / "dataset")
    inject_noise.run(params, dataset_dir=tmp_path / "dataset", out_dir=tmp_path / "labels")
    inputs = {}
    for key, folder in (("dataset_dir", "dataset"), ("labels_dir", "labels")):
        inputs[key] = f"minio://{s3_bucket}/run/{folder}/out"  # as a default Kubeflow install names them
        upload_tree(tmp_path / folder, open_location(object_uri(inputs[key])))
    job = job_settings(**{**SETTINGS, "nodes": 2, "gpus": 0, "image": "here"})
    metrics, api, out = {}, LocalCluster(), tmp_path / "out"

    class Metrics:
        def log_metric(self, key, value):
            metrics[key] = value

    summary = run_stage_job(
        "warmup",
        runner.stage_params_text(params, "warmup"),
        Metrics(),
        job=job,
        out_dir=str(out),
        out_uri=f"minio://{s3_bucket}/run/warmup/out",
        inputs=inputs,
        api=api,
        namespace="team",
        poll_s=0,
    )
    assert summary["epochs"] == 1 and metrics == runner.flatten_numbers(summary)
    assert (out / "net1.pt").is_file() and (out / "networks.json").is_file()
    staged = open_location(f"s3://{s3_bucket}/run/warmup/out.pytorchjob").files()
    assert "summary.json" in staged and "out/net1.pt" in staged


def test_a_job_that_left_no_summary_is_an_error(s3_bucket, tmp_path):
    with pytest.raises(PyTorchJobError, match=r"succeeded but left no s3://.*/out\.pytorchjob/summary\.json"):
        run_stage_job(
            "warmup",
            "",
            job=job_settings(**SETTINGS),
            out_dir=str(tmp_path / "out"),
            out_uri=f"s3://{s3_bucket}/run/warmup/out",
            inputs={"dataset_dir": f"s3://{s3_bucket}/d", "labels_dir": f"s3://{s3_bucket}/l"},
            api=FakeApi(states=("Succeeded",)),
            namespace="team",
        )
