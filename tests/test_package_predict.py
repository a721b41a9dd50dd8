"""The model package (save/load) and `labelsieve predict` on a tiny hand-built package."""

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labelsieve.cli import main
from labelsieve.config import load_params
from labelsieve.data.images import decode_image
from labelsieve.data.store import Dataset
from labelsieve.engine.augment import to_float
from labelsieve.engine.device import autocast
from labelsieve.engine.resident import TrainingData
from labelsieve.models import build_model
from labelsieve.package import Ensemble, PackageError, load_package, package_files, save_package
from labelsieve.predict import predict, write_predictions
from tests.conftest import encode, random_png

CLASSES = ["cat", "dog", "owl"]
MEAN, STD = (0.4,), (0.3,)


def _data() -> TrainingData:
    images = torch.zeros((4, 1, 8, 8), dtype=torch.uint8)
    labels = torch.zeros(4, dtype=torch.long)
    dataset = Dataset(root=Path("."), classes=CLASSES, meta={"content_hash": "c0ffee"}, samples={})
    return TrainingData(
        train_images=images,
        train_labels=labels,
        val_images=images,
        val_labels=labels,
        test_images=images,
        test_labels=labels,
        train_true_labels=None,
        mean=MEAN,
        std=STD,
        dataset=dataset,
        key="c0ffee:noise-key",
    )


def _model(num_classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=num_classes, in_channels=1)
    model(torch.randn(16, 1, 8, 8))  # train-mode forward: non-default BatchNorm running statistics
    return model.eval()


@pytest.fixture
def package(tmp_path):
    params = load_params(None, overrides=["runtime.progress=never"])
    model = _model()
    directory = tmp_path / "model"
    save_package(directory, [model], params=params, data=_data(), metrics={"test_acc": 0.5})
    return directory, model, params


class _Arbitrary:
    pass


def test_save_package_load_package_round_trip_gives_identical_outputs(package):
    directory, model, params = package
    loaded, meta = load_package(directory)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert meta["classes"] == CLASSES and meta["image_size"] == 8 and meta["channels"] == 1
    assert meta["mean"] == list(MEAN) and meta["std"] == list(STD) and meta["model"] == "small_cnn"
    card = json.loads((directory / "model_card.json").read_text())
    assert card["dataset_content_hash"] == "c0ffee" and card["noise_key"] == "noise-key"
    assert card["params"] == json.loads(json.dumps(params.to_dict()))
    assert card["metrics"] == {"test_acc": 0.5} and card["created_by"].startswith("labelsieve ")
    assert all(
        t.device.type == "cpu" for t in torch.load(directory / "weights.pt", weights_only=True).values()
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("list", "is not a state dict"),
        ("object", "is not a weights-only state dict"),
        ("truncated", "is not a weights-only state dict"),
    ],
)
def test_load_package_refuses_a_non_state_dict_file(package, content, message):
    weights = package[0] / "weights.pt"
    if content == "list":
        torch.save([torch.zeros(1)], weights)
    elif content == "object":
        weights.write_bytes(
            pickle.dumps(_Arbitrary(), protocol=2)
        )  # would run arbitrary code if unpickled freely
    else:
        weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PackageError, match=message):
        load_package(package[0])


def test_load_package_refuses_weights_of_another_network(package):
    torch.save(_model(num_classes=4).state_dict(), package[0] / "weights.pt")
    with pytest.raises(PackageError, match="does not fit a small_cnn network"):
        load_package(package[0])


def test_load_package_missing_package_or_model_json_is_named(tmp_path, package):
    with pytest.raises(PackageError, match="does not exist"):
        load_package(tmp_path / "nowhere")
    (package[0] / "model.json").unlink()
    with pytest.raises(PackageError, match="model.json is missing"):
        load_package(package[0])


def _ensemble_members() -> list[torch.nn.Module]:
    members = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        model = build_model("small_cnn", num_classes=3, in_channels=1)
        model(torch.randn(16, 1, 8, 8))
        members.append(model.eval())
    return members


def test_ensemble_package_predicts_the_mean_of_its_members_logits(tmp_path):
    params = load_params(None, overrides=["runtime.progress=never"])
    members = _ensemble_members()
    directory = tmp_path / "model"
    save_package(directory, members, params=params, data=_data(), metrics={})
    assert package_files(directory) == [
        "weights.pt",
        "weights_2.pt",
        "weights_3.pt",
        "model.json",
        "model_card.json",
    ]
    loaded, meta = load_package(directory)
    assert isinstance(loaded, Ensemble) and not loaded.training
    assert meta["members"] == ["weights.pt", "weights_2.pt", "weights_3.pt"]
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        by_hand = sum(m(x).double() for m in members) / 3  # float64 reference
        assert torch.allclose(loaded(x).double(), by_hand, atol=1e-5)
    (directory / "weights_3.pt").unlink()
    with pytest.raises(PackageError, match="weights_3.pt is missing"):
        load_package(directory)


def test_version_1_package_without_members_still_loads(package):
    directory, model, _ = package
    meta = json.loads((directory / "model.json").read_text())
    del meta["members"]
    (directory / "model.json").write_text(json.dumps({**meta, "format_version": 1}))
    loaded, meta = load_package(directory)
    assert meta["members"] == ["weights.pt"]
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    (directory / "model.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(PackageError, match="format_version 3 is not one this labelsieve reads"):
        load_package(directory)
    (directory / "model.json").write_text(json.dumps({**meta, "members": ["weights.pt", "other.pt"]}))
    with pytest.raises(PackageError, match="members must list weights.pt, weights_2.pt"):
        load_package(directory)


def test_predict_with_an_ensemble_package_matches_its_mean_logits(tmp_path):
    params = load_params(None, overrides=["runtime.progress=never"])
    members = _ensemble_members()
    directory = tmp_path / "model"
    save_package(directory, members, params=params, data=_data(), metrics={})
    image = tmp_path / "a.png"
    image.write_bytes(random_png(seed=4))
    (row,) = predict(directory, [image], top_k=3)
    pixels = decode_image(image.read_bytes(), size=8, channels=1, max_pixels=10**6)
    x = to_float(torch.from_numpy(pixels.copy())[None], MEAN, STD).contiguous(
        memory_format=torch.channels_last
    )
    with torch.no_grad(), autocast(torch.device("cpu")):  # the same (bf16 where native) precision as predict
        logits = [m(x).float().double() for m in members]
    probs = F.softmax(sum(logits) / 3, dim=1)[0]  # float64 mean of the members' logits
    assert [CLASSES.index(c) for c in row.classes] == probs.argsort(descending=True).tolist()
    assert row.probs == pytest.approx(sorted(probs.tolist(), reverse=True), abs=1e-5)


def test_load_package_invalid_model_json_names_the_key(package):
    meta = json.loads((package[0] / "model.json").read_text())
    meta["classes"] = ["cat"]
    (package[0] / "model.json").write_text(json.dumps(meta))
    with pytest.raises(PackageError, match="1 classes listed for num_classes 3"):
        load_package(package[0])


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    (root / "nested").mkdir(parents=True)
    good = Image.fromarray((torch.arange(144).reshape(12, 12) * 1.7).to(torch.uint8).numpy(), mode="L")
    (root / "nested" / "good.png").write_bytes(encode(good))
    broken = bytearray(encode(good))
    broken[broken.find(b"IDAT") + 6] ^= 0xFF  # a damaged compressed stream behind a valid header
    (root / "corrupt.png").write_bytes(bytes(broken))
    (root / "notes.txt").write_text("a text file, not an image\n")
    (root / ".hidden.png").write_bytes(random_png(1))  # hidden files are skipped
    return root


def test_predict_folder_gives_top_k_for_good_image_and_reasons_for_bad(package, images, tmp_path):
    rows = {Path(r.path).name: r for r in predict(package[0], [images], top_k=2)}
    assert set(rows) == {"good.png", "corrupt.png", "notes.txt"}
    good = rows["good.png"]
    assert good.status == "ok" and len(good.classes) == 2 and set(good.classes) <= set(CLASSES)
    pixels = decode_image((images / "nested" / "good.png").read_bytes(), size=8, channels=1, max_pixels=10**6)
    x = to_float(torch.from_numpy(pixels.copy())[None], MEAN, STD).contiguous(
        memory_format=torch.channels_last
    )
    with torch.no_grad(), autocast(torch.device("cpu")):  # the same (bf16 where native) precision as predict
        probs = F.softmax(package[1](x).float(), dim=1)[0]
    top = probs.topk(2)
    assert good.classes == tuple(CLASSES[i] for i in top.indices.tolist())
    assert good.probs == pytest.approx(top.values.tolist(), abs=1e-6)
    assert rows["corrupt.png"].status == "corrupt" and rows["corrupt.png"].classes == ()
    assert rows["notes.txt"].status == "not_an_image" and rows["notes.txt"].detail
    write_predictions(tmp_path / "p.csv", list(rows.values()), top_k=2)
    with open(tmp_path / "p.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "status", "detail"]
    assert [r["status"] for r in table] == [rows[n].status for n in rows]


def test_predict_manifest_reports_missing_files_and_bad_rows(package, images, tmp_path):
    manifest = images / "list.jsonl"
    lines = [
        '{"path": "nested/good.png"}',
        '{"path": "gone.png"}',
        "{not json",
        '{"label": "cat"}',
        '{"path": 5}',
    ]
    manifest.write_text("\n".join(lines) + "\n")
    rows = predict(package[0], [manifest], top_k=5)
    assert [r.status for r in rows] == ["ok", "missing_file", *["bad_manifest_row"] * 3]
    assert [r.detail for r in rows[3:]] == ["missing 'path'", "'path' must be a string, got 5"]
    assert len(rows[0].classes) == 3  # top-k is capped at the number of classes
    assert sum(rows[0].probs) == pytest.approx(1.0, abs=1e-5)


def test_cli_predict_exits_0_and_reports_unreadable_images_on_stderr(package, images, tmp_path, capsys):
    out = tmp_path / "predictions.csv"
    assert main(["predict", str(package[0]), str(images), "--out", str(out), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["predicted"] == 1
    assert "corrupt.png: corrupt" in captured.err and "notes.txt: not_an_image" in captured.err
    with open(out, newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 3


def test_cli_predict_exits_2_when_no_image_can_be_read(package, images, tmp_path, capsys):
    args = ["predict", str(package[0]), str(images / "notes.txt"), "--out", str(tmp_path / "p.csv")]
    assert main(args) == 2
    assert "labelsieve predict: error: none of the 1 images could be read" in capsys.readouterr().err
    assert (tmp_path / "p.csv").is_file()  # the reasons are still written


def test_cli_predict_bad_package_or_top_k_exits_2(package, images, tmp_path, capsys):
    assert main(["predict", str(tmp_path / "nope"), str(images), "--out", str(tmp_path / "p.csv")]) == 2
    assert "labelsieve predict: error: model package" in capsys.readouterr().err
    assert (
        main(["predict", str(package[0]), str(images), "--top-k", "0", "--out", str(tmp_path / "p.csv")]) == 2
    )
    assert "--top-k" in capsys.readouterr().err
