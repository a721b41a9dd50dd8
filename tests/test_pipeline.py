"""The Kubeflow pipeline: one set of stages everywhere, the compiled IR, per-stage params, the client's
compile / submit / schedule, and run-local's progress and early end."""

import dataclasses
import inspect
import io
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from components import COMPONENTS
from components.image import IMAGE
from labelsieve import kfp_client, runner
from labelsieve.cli import main
from labelsieve.config import Params, load_params
from labelsieve.crawls import LEDGER
from labelsieve.stages import PIPELINE_STEPS, STAGES

ROOT = Path(__file__).resolve().parents[1]
SHARED_SECTIONS = {"data", "model", "runtime", "presets"}
STEPS = (*STAGES, *PIPELINE_STEPS)  # every task of the pipeline


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline compiled with the defaults: (pipeline spec, kubernetes platform spec)."""
    out = kfp_client.compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    spec, platform = yaml.safe_load_all(out.read_text())
    return out, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _task(name: str) -> str:
    return name.replace("_", "-")


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task by name: ingest at the root, the rest (publish too) inside the `has_new` condition."""
    root = spec["root"]["dag"]["tasks"]
    return {**root, **spec["components"]["comp-condition-1"]["dag"]["tasks"]}


def _params_source(spec: dict, name: str) -> str:
    """The pipeline parameter that feeds stage `name`'s `params_yaml`."""
    channel = _tasks(spec)[_task(name)]["inputs"]["parameters"]["params_yaml"]["componentInputParameter"]
    return channel.removeprefix("pipelinechannel--")


def test_stages_components_dvc_and_params_are_one_set():
    stages = set(STAGES)
    dvc = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    sections = set(yaml.safe_load((ROOT / "params.yaml").read_text())) - SHARED_SECTIONS
    fields = {f.name for f in dataclasses.fields(Params)} - SHARED_SECTIONS
    modules = {p.stem for p in (ROOT / "components").glob("*.py")} - {"__init__", "image"}
    assert stages == dvc and not stages & set(PIPELINE_STEPS)  # publish: a pipeline step, not a DVC stage
    assert stages | set(PIPELINE_STEPS) == set(COMPONENTS) == sections == fields == modules


def test_publish_component_takes_the_dataset_the_package_and_the_evaluation():
    spec = COMPONENTS["publish"].component_spec
    assert set(spec.inputs) == {"params_yaml", "dataset_dir", "model_dir", "evaluate_dir"}
    assert {"out", "metrics", "Output"} <= set(spec.outputs)
    assert len(inspect.getsource(COMPONENTS["publish"].python_func).splitlines()) <= 40


@pytest.mark.parametrize("name", list(STAGES))
def test_component_inputs_match_the_stage_registry(name):
    spec = COMPONENTS[name].component_spec
    artifacts = set(spec.inputs) - {"params_yaml", "crawl_root"}
    assert artifacts == set(STAGES[name].inputs)
    assert {"out", "metrics"} <= set(spec.outputs)
    assert spec.implementation.container.image == IMAGE
    assert len(inspect.getsource(COMPONENTS[name].python_func).splitlines()) <= 40  # thin: no logic


def test_compiled_pipeline_matches_checked_in_yaml(compiled):
    out, _, _ = compiled
    assert out.read_text() == kfp_client.PACKAGE.read_text(), "run `labelsieve pipeline compile` and commit"


def test_compiled_pipeline_requests_gpus_on_network_stages_only(compiled):
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name in STEPS:
        resources = executors[f"exec-{_task(name)}"]["container"]["resources"]
        assert resources["resourceCpuRequest"] == "4" and resources["resourceMemoryRequest"] == "16G"
        tolerations = platform.get(f"exec-{_task(name)}", {}).get("tolerations", [])
        if name in ("ingest", "inject_noise", "publish"):
            assert "accelerator" not in resources and not tolerations
        else:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_compiled_pipeline_retries_with_backoff_and_caches_every_task_but_ingest_and_publish(compiled):
    _, spec, _ = compiled
    tasks = _tasks(spec)
    assert set(tasks) == {_task(name) for name in STEPS} | {"condition-1"}
    for name in STEPS:
        task = tasks[_task(name)]
        uncached = name in ("ingest", "publish")  # both depend on object storage, not only on their inputs
        assert task["cachingOptions"] == ({} if uncached else {"enableCache": True}), name
        assert task["retryPolicy"] == {
            "maxRetryCount": 3,
            "backoffDuration": "30s",
            "backoffFactor": 2.0,
            "backoffMaxDuration": "600s",
        }


def test_compiled_pipeline_takes_s3_credentials_from_a_secret(compiled):
    _, _, platform = compiled
    readers = {"exec-ingest", "exec-warmup", "exec-publish"}  # crawls and store; init_from; published models
    for executor in readers:
        (secret,) = platform[executor]["secretAsEnv"]
        assert secret["secretName"] == "labelsieve-s3" and secret["optional"] is True
        assert {item["envVar"] for item in secret["keyToEnv"]} == {
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ENDPOINT_URL",
        }
    assert all("secretAsEnv" not in platform[k] for k in platform if k not in readers)


def test_compiled_pipeline_wires_the_dag_like_dvc(compiled):
    _, spec, _ = compiled
    tasks = _tasks(spec)
    producers = {stage.out_dir: _task(name) for name, stage in STAGES.items()}
    for name, stage in STAGES.items():
        inputs = tasks[_task(name)]["inputs"]
        for key, path in stage.inputs.items():
            if producers[path] == "ingest":  # ingest's artifact enters the condition as its input
                source = inputs["artifacts"][key]["componentInputArtifact"]
                assert source == "pipelinechannel--ingest-out"
            else:
                source = inputs["artifacts"][key]["taskOutputArtifact"]
                assert source == {"producerTask": producers[path], "outputArtifactKey": "out"}
        assert set(inputs["parameters"]) == (
            {"params_yaml", "crawl_root"} if name == "ingest" else {"params_yaml"}
        )
        assert _params_source(spec, name) == f"{name}_params"


def test_compiled_pipeline_publishes_after_evaluate_the_retrained_package(compiled):
    _, spec, _ = compiled
    task = _tasks(spec)["publish"]
    artifacts = {
        key: value.get("taskOutputArtifact", value.get("componentInputArtifact"))
        for key, value in task["inputs"]["artifacts"].items()
    }
    assert artifacts == {
        "dataset_dir": "pipelinechannel--ingest-out",
        "model_dir": {"producerTask": "retrain", "outputArtifactKey": "out"},
        "evaluate_dir": {"producerTask": "evaluate", "outputArtifactKey": "out"},
    }
    assert set(task["dependentTasks"]) == {"retrain", "evaluate"}
    assert _params_source(spec, "publish") == "publish_params"


def test_compiled_pipeline_ends_after_ingest_when_no_crawl_is_new(compiled):
    _, spec, _ = compiled
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"ingest", "condition-1"}
    condition = root["condition-1"]
    assert condition["dependentTasks"] == ["ingest"]
    assert condition["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--ingest-Output'] == 'true'"
    )
    has_new = condition["inputs"]["parameters"]["pipelinechannel--ingest-Output"]
    assert has_new == {"taskOutputParameter": {"outputParameterKey": "Output", "producerTask": "ingest"}}
    assert root["ingest"]["inputs"]["parameters"]["crawl_root"] == {"componentInputParameter": "crawl_root"}


def test_a_late_param_leaves_the_earlier_tasks_inputs_unchanged(compiled):
    _, spec, _ = compiled
    base = load_params(ROOT / "params.yaml", presets=["digits"])
    late = dataclasses.replace(base, purify=dataclasses.replace(base.purify, relabel_from="group"))
    assert late.purify.relabel_from != base.purify.relabel_from
    given = [kfp_client.arguments(p) for p in (base, late)]
    changed = {
        name
        for name in STAGES
        if given[0][_params_source(spec, name)] != given[1][_params_source(spec, name)]
    }
    assert changed == {"purify", "evaluate"}  # ingest .. group_regularize keep their cache keys
    for name in STAGES:
        text = given[1][_params_source(spec, name)]
        assert set(yaml.safe_load(text)) <= {p.split(".")[0] for p in (*STAGES[name].params, *runner.HOW)}
        sliced = runner.resolve_params(text)
        for item in STAGES[name].params:  # the task sees every param its stage reads, as resolved
            section, _, key = item.partition(".")
            got, want = getattr(sliced, section), getattr(late, section)
            if key:
                got, want = getattr(got, key), getattr(want, key)
            assert got == want, (name, item)


def test_the_runner_imports_neither_kfp_nor_the_pipeline():
    code = (
        "import sys, labelsieve.runner, labelsieve.crawls\n"
        "roots = ('kfp', 'pipelines', 'components', 'torch')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in roots or m == 'labelsieve.kfp_client')\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_pipeline_compile_cli_with_options(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    checked_in = kfp_client.PACKAGE.read_bytes(), kfp_client.PACKAGE.stat().st_mtime_ns
    args = ["pipeline", "compile", "--output", str(out), "--gpus", "0", "--image", "registry.example/ls:1"]
    assert main([*args, "--node-selector", "pool=gpu"]) == 0
    assert json.loads(capsys.readouterr().out) == {"compiled": str(out)}
    spec, platform = yaml.safe_load_all(out.read_text())
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == "registry.example/ls:1"
        assert "accelerator" not in executor["container"]["resources"]
    assert "tolerations" not in json.dumps(platform)
    assert (kfp_client.PACKAGE.read_bytes(), kfp_client.PACKAGE.stat().st_mtime_ns) == checked_in


def test_pipeline_compile_another_image_needs_an_output(capsys):
    checked_in = kfp_client.PACKAGE.stat().st_mtime_ns
    assert main(["pipeline", "compile", "--image", "registry.example/ls:1"]) == 2
    assert "--image needs --output" in capsys.readouterr().err
    assert kfp_client.PACKAGE.stat().st_mtime_ns == checked_in


def test_kfp_cron_adds_seconds_and_refuses_bad_fields():
    assert kfp_client.kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert kfp_client.kfp_cron("30 0 3 * * 1") == "30 0 3 * * 1"
    with pytest.raises(ValueError, match="expected 5 fields"):
        kfp_client.kfp_cron("daily")


def test_resolve_params_matches_the_cli_loader():
    text = (ROOT / "params.yaml").read_text()
    expected = load_params(ROOT / "params.yaml", presets=["digits"], overrides=["warmup.epochs=1"])
    assert runner.resolve_params(text, ["digits"], ["warmup.epochs=1"]) == expected
    assert runner.resolve_params(runner.params_text(expected)) == expected
    assert runner.resolve_params(runner.stage_params_text(expected, "evaluate")) == expected


# ----------------------------------------------------------------------------- submit / schedule contract


class _Recorder(BaseHTTPRequestHandler):
    """Answers the KFP v2beta1 REST calls the SDK makes, recording each request."""

    requests: ClassVar[list[dict]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        path = self.path.split("?")[0]
        self.requests.append(
            {"method": self.command, "path": path, "auth": self.headers.get("Authorization"), "body": body}
        )
        replies = {
            ("GET", "/apis/v2beta1/experiments"): {"experiments": []},
            ("POST", "/apis/v2beta1/experiments"): {"experiment_id": "exp-1", "display_name": "labelsieve"},
            ("POST", "/apis/v2beta1/runs"): {"run_id": "run-1"},
            ("POST", "/apis/v2beta1/recurringruns"): {"recurring_run_id": "job-1"},
        }
        data = json.dumps(replies.get((self.command, path), {})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def kfp_host():
    """A local HTTP server on 127.0.0.1 standing in for the Kubeflow Pipelines API."""
    _Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.requests
    server.shutdown()
    server.server_close()


def _posted(requests, path):
    (request,) = [r for r in requests if r["method"] == "POST" and r["path"] == path]
    return request


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_submit_contract_sends_the_package_params_and_token(kfp_host, monkeypatch, capsys):
    host, requests = kfp_host
    monkeypatch.setenv(kfp_client.TOKEN_ENV, "secret-token")
    args = ["pipeline", "submit", "--host", host, "--preset", "digits", "--set", "warmup.epochs=2"]
    assert main([*args, "--run-name", "smoke", "--allow-default-image"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": "run-1", "host": host}
    run = _posted(requests, "/apis/v2beta1/runs")
    assert run["auth"] == "Bearer secret-token"
    body = run["body"]
    assert body["display_name"] == "smoke" and body["experiment_id"] == "exp-1"
    spec, platform = yaml.safe_load_all(kfp_client.PACKAGE.read_text())
    assert body["pipeline_spec"] == {
        "pipeline_spec": spec,
        "platform_spec": platform,
    }  # ingest stays uncached
    sent = body["runtime_config"]["parameters"]
    assert set(sent) == {f"{name}_params" for name in STEPS} | {"crawl_root"}
    assert runner.resolve_params(sent["ingest_params"]).ingest.source == "digits"
    assert runner.resolve_params(sent["warmup_params"]).warmup.epochs == 2


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_schedule_contract_one_at_a_time_no_catchup_crawl_root_at_run_time(
    kfp_host, tmp_path, capsys
):
    host, requests = kfp_host
    args = ["pipeline", "schedule", "--host", host, "--cron", "0 3 * * *", "--allow-default-image"]
    assert main([*args, "--crawl-root", "s3://bucket/crawls/"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["recurring_run_id"] == "job-1" and printed["cron"] == "0 0 3 * * *"
    body = _posted(requests, "/apis/v2beta1/recurringruns")["body"]
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["experiment_id"] == "exp-1" and body["display_name"] == "labelsieve-retrain"
    assert body["runtime_config"]["parameters"]["crawl_root"] == "s3://bucket/crawls/"  # listed by each run


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_submit_unreachable_host_exits_2(capsys):
    from tests.conftest import free_port

    host = f"http://127.0.0.1:{free_port()}"
    assert main(["pipeline", "submit", "--host", host, "--allow-default-image"]) == 2
    assert "labelsieve pipeline submit: error: cannot reach" in capsys.readouterr().err


# ----------------------------------------------------------------------------- a fake kfp.Client


class _FakeClient:
    """Records how the CLI builds `kfp.Client` and what it calls it with."""

    calls: ClassVar[list[tuple[str, dict]]] = []

    def __init__(self, **kwargs) -> None:
        self.calls.append(("Client", kwargs))

    def create_run_from_pipeline_package(self, pipeline_file, **kwargs):
        self.calls.append(("run", {"pipeline_file": pipeline_file, **kwargs}))
        return type("Run", (), {"run_id": "run-9"})()

    def create_experiment(self, **kwargs):
        self.calls.append(("experiment", kwargs))
        return type("Experiment", (), {"experiment_id": "exp-9"})()

    def create_recurring_run(self, **kwargs):
        self.calls.append(("recurring", kwargs))
        return type("Job", (), {"recurring_run_id": "job-9"})()


@pytest.fixture
def fake_client(monkeypatch, tmp_path):
    """`kfp.Client` replaced by `_FakeClient`, and a package compiled for a pushed image."""
    import kfp

    _FakeClient.calls = []
    monkeypatch.setattr(kfp, "Client", _FakeClient)
    package = kfp_client.compile_pipeline(tmp_path / "pushed.yaml", image="registry.example/ls:2")
    return _FakeClient.calls, str(package)


CLUSTER = ["--namespace", "team-a", "--service-account", "trainer", "--pipeline-root", "s3://art/root"]


def test_submit_passes_namespace_service_account_and_pipeline_root(fake_client, monkeypatch, capsys):
    calls, package = fake_client
    monkeypatch.setenv(kfp_client.TOKEN_ENV, "tok")
    args = ["pipeline", "submit", "--host", "https://kf", "--package", package, *CLUSTER, "--no-cache"]
    assert main([*args, "--preset", "digits"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": "run-9", "host": "https://kf"}
    (_, client), (_, run) = calls
    assert client == {"host": "https://kf", "existing_token": "tok", "namespace": "team-a"}
    assert run["pipeline_file"] == package and run["namespace"] == "team-a"
    assert run["service_account"] == "trainer" and run["pipeline_root"] == "s3://art/root"
    assert run["enable_caching"] is False and run["experiment_name"] == "labelsieve"
    assert main(["pipeline", "submit", "--host", "https://kf", "--package", package]) == 0
    assert calls[-1][1]["enable_caching"] is None  # the compiled settings: every task cached but ingest
    assert run["arguments"] == kfp_client.arguments(load_params(ROOT / "params.yaml", presets=["digits"]))


def test_schedule_passes_namespace_service_account_pipeline_root_and_crawl_root(fake_client, capsys):
    calls, package = fake_client
    args = ["pipeline", "schedule", "--host", "https://kf", "--package", package, "--cron", "0 3 * * *"]
    assert main([*args, *CLUSTER, "--crawl-root", "s3://b/crawls"]) == 0
    assert json.loads(capsys.readouterr().out)["recurring_run_id"] == "job-9"
    (_, client), (_, experiment), (_, job) = calls
    assert client["namespace"] == "team-a" and experiment == {"name": "labelsieve", "namespace": "team-a"}
    assert job["experiment_id"] == "exp-9" and job["pipeline_package_path"] == package
    assert job["service_account"] == "trainer" and job["pipeline_root"] == "s3://art/root"
    assert job["max_concurrency"] == 1 and job["no_catchup"] is True
    assert job["cron_expression"] == "0 0 3 * * *" and job["params"]["crawl_root"] == "s3://b/crawls"


@pytest.mark.parametrize("action", [["submit"], ["schedule", "--cron", "0 3 * * *"]])
def test_the_default_image_is_refused_for_a_cluster_unless_allowed(fake_client, capsys, action):
    calls, _ = fake_client
    command = ["pipeline", *action, "--host", "https://kf"]  # the checked-in package: labelsieve:latest
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "'labelsieve:latest'" in err and "--image" in err and "--allow-default-image" in err
    assert calls == []
    assert main([*command, "--allow-default-image"]) == 0
    assert calls


# ----------------------------------------------------------------------------- kfp local: progress, early end


def test_run_local_with_nothing_new_runs_ingest_only_and_prints_one_line_per_task(tmp_path):
    """kfp's SubprocessRunner on the checked-in package: every crawl is in the ledger, so the run ends."""
    store, crawls = tmp_path / "store", tmp_path / "crawls"
    (crawls / "2026-11-20").mkdir(parents=True)
    store.mkdir()
    (store / LEDGER).write_text(json.dumps({"crawls": ["2026-11-20"]}))
    params = load_params(None, overrides=[f"ingest.append_to={store}", "runtime.progress=never"])
    progress = io.StringIO()
    result = kfp_client.run_local(
        kfp_client.arguments(params, crawl_root=str(crawls)),
        pipeline_root=tmp_path / "kfp",
        progress=progress,
    )
    first, *lines = progress.getvalue().splitlines()
    assert first == f"kfp local: tasks' full output in {result['log']}"
    (line,) = lines
    name, status, seconds = line.split()
    assert (name, status) == ("ingest", "SUCCESS") and seconds.endswith("s") and float(seconds[:-1]) >= 0
    log = Path(result["log"]).read_text()
    assert "executor_input" in log and "crawl_root" in log  # the executor's full input is in the log
    assert set(result["outputs"]) == {"ingest"}
    assert json.loads((Path(result["outputs"]["ingest"]) / "nothing_new.json").read_text())["crawls"] == [
        "2026-11-20"
    ]
