"""The publish gate: its arithmetic, the versioned layout and pointer under a folder or an s3:// prefix,
refusals that publish nothing, a pointer written only after its model, and warm starts from the pointer."""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path

import pytest
import torch

from labelsieve import publish, registry
from labelsieve.atomic import save_torch, write_json
from labelsieve.data.s3 import StorageError
from labelsieve.data.store import load_dataset
from labelsieve.models import build_model
from labelsieve.stages import ingest
from labelsieve.stages.warmup import WarmStartError, warm_start
from labelsieve.storage import Location, open_location

UTC = datetime.UTC


# ----------------------------------------------------------------------------- the gate's arithmetic


@pytest.mark.parametrize(
    ("candidate", "previous", "max_drop", "passed", "drop"),
    [
        (0.89, 0.90, 0.01, True, 0.01),  # exactly the margin passes (0.90 - 0.89 is 0.010000000000000009)
        (0.8899, 0.90, 0.01, False, 0.0101),
        (0.95, 0.90, 0.01, True, -0.05),  # an improvement
        (0.90, 0.90, 0.0, True, 0.0),  # max_drop 0: equal passes ...
        (0.8998, 0.90, 0.0, False, 0.0002),  # ... one image in 5,000 worse does not
        (455 / 500, 460 / 500, 0.01, True, 0.01),  # 5 of 500 test images fewer: exactly 1 point
        (454 / 500, 460 / 500, 0.01, False, 0.012),  # 6 fewer: 1.2 points
        (0.10, 0.90, 1.0, True, 0.80),  # max_drop 1 lets anything through
    ],
)
def test_gate_refuses_only_a_drop_larger_than_max_drop(candidate, previous, max_drop, passed, drop):
    result = publish.gate(candidate, previous, max_drop)
    assert result.passed is passed
    assert result.drop == pytest.approx(drop, abs=1e-12)
    assert (result.candidate, result.previous, result.max_drop) == (candidate, previous, max_drop)
    assert ("more than publish.max_drop" in result.reason) is not passed


def test_gate_passes_the_first_model_and_refuses_nonsense():
    first = publish.gate(0.31, None, 0.01)
    assert first.passed and first.drop is None and first.reason == "no model is published yet"
    with pytest.raises(publish.PublishError, match=r"candidate accuracy 1.2 is not in \[0, 1\]"):
        publish.gate(1.2, 0.5, 0.01)
    with pytest.raises(publish.PublishError, match="publish.max_drop -0.1 is negative"):
        publish.gate(0.5, 0.5, -0.1)


def test_version_names_are_utc_time_and_the_weights_hash():
    when = datetime.datetime(2026, 11, 21, 4, 0, 12, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert hashlib.sha256(b"x").hexdigest()[:8] == "2d711642"
    assert registry.version_name(when, b"x") == "20261121T030012Z-2d711642"
    assert registry.version_folder("20261121T030012Z-2d711642") == "models/20261121T030012Z-2d711642"


# ----------------------------------------------------------------------------- publishing


@pytest.fixture
def dataset(tmp_path, image_folder, make_params) -> Path:
    """12 cats and 4 dogs; a quarter of each held out: the test split is 3 cats and 1 dog."""
    params = make_params(
        f"ingest.source={image_folder({'cat': 12, 'dog': 4})}",
        "data.image_size=8",
        "ingest.val_fraction=0",
        "ingest.test_fraction=0.25",
        "ingest.near_duplicate_bits=-1",
    )
    ingest.run(params, out_dir=tmp_path / "dataset")
    assert load_dataset(tmp_path / "dataset").labels("test").tolist() == [0, 0, 0, 1]
    return tmp_path / "dataset"


def constant_package(directory: Path, predicted: int, *, size: int = 8, classes=("cat", "dog")) -> Path:
    """A small_cnn package that predicts class `predicted` for every image: all weights 0, the head's
    bias 1 for that class. On the fixture's test split: cat 3/4 right, dog 1/4."""
    model = build_model("small_cnn", num_classes=len(classes), in_channels=1)
    state = {
        name: torch.zeros_like(t) if t.is_floating_point() else t for name, t in model.state_dict().items()
    }
    state["fc.bias"][predicted] = 1.0
    save_torch(directory / "weights.pt", state)
    meta = {"format_version": 1, "model": "small_cnn", "num_classes": len(classes), "in_channels": 1}
    meta |= {"image_size": size, "channels": 1, "mean": [0.5], "std": [0.25], "classes": list(classes)}
    write_json(directory / "model.json", meta)
    write_json(directory / "model_card.json", {"format_version": 1, "predicts": classes[predicted]})
    return directory


@pytest.fixture
def evaluated(tmp_path) -> Path:
    write_json(tmp_path / "evaluate" / "metrics.json", {"test_acc": 0.5})
    return tmp_path / "evaluate"


@pytest.fixture(params=["folder", "s3"])
def root(request, tmp_path) -> str:
    """Where models are published: a local folder, or a prefix in a fresh bucket on a moto server."""
    if request.param == "folder":
        return str(tmp_path / "published")
    return f"s3://{request.getfixturevalue('s3_bucket')}/team/models"


def _publish(make_params, root, package, dataset, evaluated, out, when, *settings):
    params = make_params(f"publish.to={root}", "runtime.device=cpu", *settings)
    now = datetime.datetime(2026, 11, when, 3, 0, 0, tzinfo=UTC)
    return publish.run(
        params, dataset_dir=dataset, model_dir=package, evaluate_dir=evaluated, out_dir=out, now=now
    )


def test_publish_versions_then_points_and_refuses_a_worse_model(
    tmp_path, make_params, dataset, evaluated, root, capsys
):
    dog = constant_package(tmp_path / "dog-pkg", 1)
    cat = constant_package(tmp_path / "cat-pkg", 0)
    content_hash = load_dataset(dataset).meta["content_hash"]
    where = open_location(root)

    first = _publish(make_params, root, dog, dataset, evaluated, tmp_path / "p1", 20)
    v1 = first["version"]
    assert first["decision"] == "published" and first["gate"]["previous"] is None
    assert v1.startswith("20261120T030000Z-") and first["candidate"]["test_accuracy"] == 0.25
    pointer = json.loads(where.read_bytes("latest.json"))
    assert pointer == {
        "version": v1,
        "path": f"models/{v1}",
        "test_accuracy": 0.25,
        "test_count": 4,
        "dataset_content_hash": content_hash,
        "published_at": "20261120T030000Z",
        "previous_version": None,
    }
    files = ["metrics.json", "model.json", "model_card.json", "publish.json", "weights.pt"]
    assert where.files() == ["latest.json", *(f"models/{v1}/{name}" for name in files)]
    assert where.read_bytes(f"models/{v1}/weights.pt") == (dog / "weights.pt").read_bytes()
    assert json.loads(where.read_bytes(f"models/{v1}/publish.json"))["decision"] == "published"

    second = _publish(make_params, root, cat, dataset, evaluated, tmp_path / "p2", 21)
    v2 = second["version"]
    assert second["decision"] == "published" and v2 > v1
    assert second["gate"]["previous"] == 0.25 and second["gate"]["candidate"] == 0.75
    assert second["previous"]["version"] == v1 and second["previous"]["test_accuracy_now"] == 0.25
    latest = json.loads(where.read_bytes("latest.json"))
    assert (latest["version"], latest["test_accuracy"], latest["previous_version"]) == (v2, 0.75, v1)
    capsys.readouterr()

    pointer_bytes = where.read_bytes("latest.json")
    third = _publish(make_params, root, dog, dataset, evaluated, tmp_path / "p3", 22)
    assert third["decision"] == "refused" and third["version"] == v2
    assert third["gate"]["drop"] == pytest.approx(0.5)
    assert "REFUSED" in capsys.readouterr().err
    assert where.read_bytes("latest.json") == pointer_bytes  # nothing published
    assert {name.split("/")[1] for name in where.files("models")} == {v1, v2}
    assert publish.read_record(tmp_path / "p3") == third


def test_publish_compares_on_this_runs_test_split_by_class_name(
    tmp_path, make_params, dataset, evaluated, root
):
    """The published model is measured again on the current test images, its classes matched by name:
    one that knows only 'dog' (index 0) is right on the 1 dog of 4, not on the 3 cats."""
    old = constant_package(tmp_path / "old", 0, classes=("dog",))
    _publish(make_params, root, old, dataset, evaluated, tmp_path / "p1", 20)
    record = _publish(
        make_params, root, constant_package(tmp_path / "new", 1), dataset, evaluated, tmp_path / "p2", 21
    )
    assert record["previous"]["test_accuracy_now"] == 0.25 and record["gate"]["drop"] == pytest.approx(0.0)


def test_an_ensemble_package_is_measured_and_published_with_every_member(
    tmp_path, make_params, dataset, evaluated
):
    """Members cat (bias 1 on cat) and dog-twice-as-sure (bias 2 on dog): mean logits say dog, 1 of 4."""
    package = constant_package(tmp_path / "pkg", 1)
    (package / "weights.pt").rename(package / "weights_2.pt")
    constant_package(tmp_path / "cat", 0)
    (tmp_path / "cat" / "weights.pt").rename(package / "weights.pt")
    state = torch.load(package / "weights_2.pt", weights_only=True)
    state["fc.bias"][1] = 2.0
    save_torch(package / "weights_2.pt", state)
    meta = json.loads((package / "model.json").read_text())
    write_json(
        package / "model.json", {**meta, "format_version": 2, "members": ["weights.pt", "weights_2.pt"]}
    )
    root = str(tmp_path / "published")
    record = _publish(make_params, root, package, dataset, evaluated, tmp_path / "p1", 20)
    assert record["decision"] == "published" and record["candidate"]["test_accuracy"] == 0.25
    version = record["version"]
    published = open_location(root).files(f"models/{version}")
    assert f"models/{version}/weights_2.pt" in published and f"models/{version}/weights.pt" in published


def test_a_failed_upload_leaves_the_previous_pointer(
    tmp_path, make_params, dataset, evaluated, root, monkeypatch
):
    dog, cat = constant_package(tmp_path / "dog", 1), constant_package(tmp_path / "cat", 0)
    v1 = _publish(make_params, root, dog, dataset, evaluated, tmp_path / "p1", 20)["version"]
    upload = Location.upload

    def failing(self, source, name):
        if name.endswith("model_card.json"):  # after weights.pt and model.json went up
            raise StorageError(f"injected failure uploading {name}")
        upload(self, source, name)

    monkeypatch.setattr(Location, "upload", failing)
    with pytest.raises(StorageError, match="injected failure"):
        _publish(make_params, root, cat, dataset, evaluated, tmp_path / "p2", 21)
    where = open_location(root)
    assert registry.read_latest(where)["version"] == v1  # the pointer still names a complete model
    assert not (tmp_path / "p2").exists()
    monkeypatch.setattr(Location, "upload", upload)
    again = _publish(make_params, root, cat, dataset, evaluated, tmp_path / "p2", 21)
    assert again["decision"] == "published" and registry.read_latest(where)["version"] == again["version"]


def test_publish_off_damaged_pointer_and_incomparable_models_are_clear(
    tmp_path, make_params, dataset, evaluated
):
    cat = constant_package(tmp_path / "cat", 0)
    off = publish.run(
        make_params(), dataset_dir=dataset, model_dir=cat, evaluate_dir=evaluated, out_dir=tmp_path / "off"
    )
    assert off["decision"] == "off" and "publish.to is empty" in off["reason"]
    with pytest.raises(publish.PublishError, match=r"none/model_card.json missing .*retrain.epochs > 0"):
        _publish(make_params, tmp_path / "r", tmp_path / "none", dataset, evaluated, tmp_path / "o", 20)

    root = tmp_path / "root"
    root.mkdir()
    (root / "latest.json").write_text('{"version": "v1"}')
    with pytest.raises(registry.RegistryError, match=r"latest.json is damaged: path is missing"):
        _publish(make_params, root, cat, dataset, evaluated, tmp_path / "o", 20)
    (root / "latest.json").write_text(
        json.dumps(
            {
                "version": "20261120T030000Z-00000000",
                "path": "models/20261120T030000Z-00000000",
                "test_accuracy": 0.5,
                "test_count": 4,
                "dataset_content_hash": "x",
                "published_at": "20261120T030000Z",
            }
        )
    )
    with pytest.raises(registry.RegistryError, match="lacks weights.pt, model.json, model_card.json"):
        _publish(make_params, root, cat, dataset, evaluated, tmp_path / "o", 20)
    constant_package(root / "models" / "20261120T030000Z-00000000", 0, size=16)
    with pytest.raises(publish.PublishError, match="takes 16 px images .* holds 8 px"):
        _publish(make_params, root, cat, dataset, evaluated, tmp_path / "o", 20)
    with pytest.raises(publish.PublishError, match="only local folders and s3:// prefixes"):
        _publish(make_params, "http://example.invalid/models", cat, dataset, evaluated, tmp_path / "o", 20)


# ----------------------------------------------------------------------------- warm start


def test_warm_start_loads_the_published_weights_into_every_network(
    tmp_path, make_params, dataset, evaluated, root
):
    params = make_params("warmup.init_from=latest", f"publish.to={root}")
    fresh = [build_model("small_cnn", num_classes=2, in_channels=1) for _ in range(2)]
    assert warm_start(fresh, params) == {"init_from": "latest", "version": None}  # nothing published yet

    cat = constant_package(tmp_path / "cat", 0)
    version = _publish(make_params, root, cat, dataset, evaluated, tmp_path / "p1", 20)["version"]
    networks = [build_model("small_cnn", num_classes=2, in_channels=1) for _ in range(2)]
    record = warm_start(networks, params)
    assert record == {"init_from": "latest", "version": version, "test_accuracy": 0.75}
    published = torch.load(cat / "weights.pt", weights_only=True)
    for model in networks:
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, published[name], rtol=0, atol=0, msg=name)

    wider = [build_model("small_cnn", num_classes=3, in_channels=1)]  # a crawl added a class
    head = wider[0].fc.weight.detach().clone()
    assert warm_start(wider, params)["version"] == version
    torch.testing.assert_close(wider[0].fc.weight, head)  # the head stays fresh, the backbone is loaded
    torch.testing.assert_close(wider[0].state_dict()["body.0.weight"], published["body.0.weight"])

    with pytest.raises(WarmStartError, match="needs publish.to"):
        warm_start(networks, make_params("warmup.init_from=latest"))
    rgb = [build_model("small_cnn", num_classes=2, in_channels=3)]
    with pytest.raises(WarmStartError, match=f"published version {version} .* does not fit"):
        warm_start(rgb, params)
    assert warm_start(networks, make_params(f"publish.to={root}")) == {"init_from": "", "version": None}


def test_labelsieve_publish_command_prints_the_decision_and_names_a_missing_package(
    tmp_path, dataset, evaluated, capsys
):
    from labelsieve.cli import main

    cat = constant_package(tmp_path / "cat", 0)
    command = ["publish", "--dataset-dir", str(dataset), "--evaluate-dir", str(evaluated)]
    command += ["--out-dir", str(tmp_path / "out"), "--set", f"publish.to={tmp_path / 'root'}"]
    assert main([*command, "--model-dir", str(cat), "--set", "runtime.device=cpu"]) == 0
    printed = capsys.readouterr()
    record = json.loads(printed.out)
    assert record["decision"] == "published" and record["candidate"]["test_accuracy"] == 0.75
    assert f"publish: published {record['version']} to {tmp_path / 'root' / 'models'}" in printed.err
    assert main([*command, "--model-dir", str(tmp_path / "none")]) == 2
    assert "labelsieve publish: error: cannot publish:" in capsys.readouterr().err
