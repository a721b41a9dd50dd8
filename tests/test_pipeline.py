"""The Kubeflow pipeline: one set of stages everywhere, the compiled IR, and the submit/schedule contract."""

import dataclasses
import inspect
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from components import COMPONENTS
from components.image import IMAGE
from labelsieve import pipeline
from labelsieve.cli import main
from labelsieve.config import Params, load_params
from labelsieve.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
SHARED_SECTIONS = {"data", "model", "runtime"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The pipeline compiled with the defaults: (pipeline spec, kubernetes platform spec)."""
    out = pipeline.compile_pipeline(tmp_path_factory.mktemp("compiled") / "pipeline.yaml")
    spec, platform = yaml.safe_load_all(out.read_text())
    return out, spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _task(name: str) -> str:
    return name.replace("_", "-")


def test_stages_components_dvc_and_params_are_one_set():
    stages = set(STAGES)
    dvc = set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    sections = set(yaml.safe_load((ROOT / "params.yaml").read_text())) - SHARED_SECTIONS
    fields = {f.name for f in dataclasses.fields(Params)} - SHARED_SECTIONS
    modules = {p.stem for p in (ROOT / "components").glob("*.py")} - {"__init__", "image"}
    assert stages == set(COMPONENTS) == dvc == sections == fields == modules


@pytest.mark.parametrize("name", list(STAGES))
def test_component_inputs_match_the_stage_registry(name):
    spec = COMPONENTS[name].component_spec
    artifacts = set(spec.inputs) - {"params_yaml", "presets", "overrides"}
    assert artifacts == set(STAGES[name].inputs)
    assert {"out", "metrics"} <= set(spec.outputs)
    assert spec.implementation.container.image == IMAGE
    assert len(inspect.getsource(COMPONENTS[name].python_func).splitlines()) <= 40  # thin: no logic


def test_compiled_pipeline_matches_checked_in_yaml(compiled):
    out, _, _ = compiled
    assert out.read_text() == pipeline.PACKAGE.read_text(), "run `labelsieve pipeline compile` and commit"


def test_compiled_pipeline_requests_gpus_on_network_stages_only(compiled):
    _, spec, platform = compiled
    executors = spec["deploymentSpec"]["executors"]
    for name in STAGES:
        resources = executors[f"exec-{_task(name)}"]["container"]["resources"]
        assert resources["resourceCpuRequest"] == "4" and resources["resourceMemoryRequest"] == "16G"
        tolerations = platform.get(f"exec-{_task(name)}", {}).get("tolerations", [])
        if name in ("ingest", "inject_noise"):
            assert "accelerator" not in resources and not tolerations
        else:
            assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
            assert resources["accelerator"]["resourceCount"] == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations


def test_compiled_pipeline_retries_with_backoff_and_caches_every_task(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {_task(name) for name in STAGES}
    for task in tasks.values():
        assert task["cachingOptions"] == {"enableCache": True}
        assert task["retryPolicy"] == {
            "maxRetryCount": 3,
            "backoffDuration": "30s",
            "backoffFactor": 2.0,
            "backoffMaxDuration": "600s",
        }


def test_compiled_pipeline_takes_s3_credentials_from_a_secret(compiled):
    _, _, platform = compiled
    (secret,) = platform["exec-ingest"]["secretAsEnv"]
    assert secret["secretName"] == "labelsieve-s3" and secret["optional"] is True
    assert {item["envVar"] for item in secret["keyToEnv"]} == {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL",
    }
    assert all("secretAsEnv" not in platform[k] for k in platform if k != "exec-ingest")


def test_compiled_pipeline_wires_the_dag_like_dvc(compiled):
    _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    producers = {stage.out_dir: _task(name) for name, stage in STAGES.items()}
    for name, stage in STAGES.items():
        inputs = tasks[_task(name)]["inputs"]
        for key, path in stage.inputs.items():
            source = inputs["artifacts"][key]["taskOutputArtifact"]
            assert source == {"producerTask": producers[path], "outputArtifactKey": "out"}
        assert set(inputs["parameters"]) == {"params_yaml", "presets", "overrides"}


def test_pipeline_compile_cli_with_options(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    args = ["pipeline", "compile", "--out", str(out), "--gpus", "0", "--image", "registry.example/ls:1"]
    assert main([*args, "--node-selector", "pool=gpu"]) == 0
    assert json.loads(capsys.readouterr().out) == {"compiled": str(out)}
    spec, platform = yaml.safe_load_all(out.read_text())
    for executor in spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["image"] == "registry.example/ls:1"
        assert "accelerator" not in executor["container"]["resources"]
    assert "tolerations" not in json.dumps(platform)


def test_kfp_cron_adds_seconds_and_refuses_bad_fields():
    assert pipeline.kfp_cron("0 3 * * *") == "0 0 3 * * *"
    assert pipeline.kfp_cron("30 0 3 * * 1") == "30 0 3 * * 1"
    with pytest.raises(ValueError, match="expected 5 fields"):
        pipeline.kfp_cron("daily")


def test_newest_crawl_of_a_folder_is_the_last_by_name(tmp_path):
    for name in ("2026-11-01", "2026-11-21", "2026-10-30"):
        (tmp_path / name).mkdir()
    (tmp_path / "2026-12-31.txt").write_text("not a crawl")
    assert pipeline.newest_crawl(str(tmp_path)) == str(tmp_path / "2026-11-21")
    with pytest.raises(FileNotFoundError, match="no crawl"):
        pipeline.newest_crawl(str(tmp_path / "2026-11-01"))


def test_resolve_params_matches_the_cli_loader(tmp_path):
    text = (ROOT / "params.yaml").read_text()
    expected = load_params(ROOT / "params.yaml", presets=["digits"], overrides=["warmup.epochs=1"])
    assert pipeline.resolve_params(text, ["digits"], ["warmup.epochs=1"]) == expected
    resolved = pipeline.arguments(expected)
    assert (
        pipeline.resolve_params(resolved["params_yaml"], resolved["presets"], resolved["overrides"])
        == expected
    )


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
    monkeypatch.setenv(pipeline.TOKEN_ENV, "secret-token")
    args = ["pipeline", "submit", "--host", host, "--preset", "digits", "--set", "warmup.epochs=2"]
    assert main([*args, "--run-name", "smoke"]) == 0
    assert json.loads(capsys.readouterr().out) == {"run_id": "run-1", "host": host}
    run = _posted(requests, "/apis/v2beta1/runs")
    assert run["auth"] == "Bearer secret-token"
    body = run["body"]
    assert body["display_name"] == "smoke" and body["experiment_id"] == "exp-1"
    spec, platform = yaml.safe_load_all(pipeline.PACKAGE.read_text())
    assert body["pipeline_spec"] == {"pipeline_spec": spec, "platform_spec": platform}
    sent = body["runtime_config"]["parameters"]
    params = pipeline.resolve_params(sent["params_yaml"], sent["presets"], sent["overrides"])
    assert params.ingest.source == "digits" and params.warmup.epochs == 2


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_schedule_contract_one_at_a_time_no_catchup_newest_crawl(kfp_host, tmp_path, capsys):
    host, requests = kfp_host
    for name in ("2026-11-20", "2026-11-21"):
        (tmp_path / "crawls" / name).mkdir(parents=True)
    args = ["pipeline", "schedule", "--host", host, "--cron", "0 3 * * *"]
    assert main([*args, "--crawl-root", str(tmp_path / "crawls")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["recurring_run_id"] == "job-1" and printed["cron"] == "0 0 3 * * *"
    body = _posted(requests, "/apis/v2beta1/recurringruns")["body"]
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
    assert body["experiment_id"] == "exp-1" and body["display_name"] == "labelsieve-retrain"
    sent = body["runtime_config"]["parameters"]
    newest = str(tmp_path / "crawls" / "2026-11-21")
    assert pipeline.resolve_params(sent["params_yaml"]).ingest.source == newest


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_pipeline_submit_unreachable_host_exits_2(capsys):
    from tests.conftest import free_port

    assert main(["pipeline", "submit", "--host", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "labelsieve pipeline submit: error" in capsys.readouterr().err
