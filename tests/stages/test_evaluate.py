"""Tests of the evaluate stage: its figures on fixed predictions, and the stage and its report on digits."""

import base64
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelsieve import report
from labelsieve.cli import main
from labelsieve.config import load_params
from labelsieve.stages import STAGES, evaluate

TINY = (
    "runtime.progress=never",
    "model.eval_batch_size=4096",
    "warmup.epochs=2",
    "ssl_train.epochs=2",
    "ssl_train.recalibration_period=0",
    "group_regularize.epochs=2",
    "group_regularize.warmup_epochs=2",
    "retrain.epochs=2",
    "retrain.warmup_epochs=1",
    "retrain.synthetic_start=1",
    "evaluate.gallery_size=12",
)


def _params(*overrides):
    return load_params(None, presets=["digits"], overrides=[*TINY, *overrides])


# --------------------------------------------------------------------------- the figures on fixed inputs


def test_final_stage_is_the_last_training_stage_that_trained():
    assert evaluate.final_stage(_params()) == "retrain"
    assert evaluate.final_stage(_params("retrain.epochs=0")) == "group_regularize"
    assert evaluate.final_stage(_params("retrain.epochs=0", "group_regularize.epochs=0")) == "ssl_train"
    none_after_warmup = ("retrain.epochs=0", "group_regularize.epochs=0", "ssl_train.epochs=0")
    assert evaluate.final_stage(_params(*none_after_warmup)) == "warmup"
    assert evaluate.final_stage(_params(*none_after_warmup, "warmup.epochs=0")) == "warmup"


def test_classification_figures_fixed_predictions_match_hand_computed():
    truth = np.array([0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0])
    figures = evaluate.classification_figures(truth, predicted, ["a", "b", "c"])
    assert figures["accuracy"] == pytest.approx(3 / 5)
    assert figures["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # a: 1 hit of 2 predicted, of 2 actual; b: 2 of 3 predicted, of 2 actual; c: never predicted.
    assert figures["per_class"]["a"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert figures["per_class"]["b"] == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    )
    assert figures["per_class"]["c"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    )
    assert figures["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_accuracy_figures_chooses_the_epoch_on_noisy_validation_not_test():
    history = [
        {"epoch": 0, "val_acc": 0.50, "test_acc": 0.90, "train_seconds": 1.0},
        {"epoch": 1, "val_acc": 0.70, "test_acc": 0.80, "train_seconds": 2.0},
        {"epoch": 2, "val_acc": 0.60, "test_acc": 0.85, "train_seconds": 3.0},
    ]
    figures = evaluate.accuracy_figures(history)
    assert figures["test_acc"] == 0.85 and figures["val_acc"] == 0.60  # the last epoch
    assert figures["best_val_epoch"] == 1 and figures["best_val_test_acc"] == 0.80  # not the test-best 0.90
    assert "train_seconds" not in figures  # wall time stays out of cached outputs (metrics/timings.json)
    assert evaluate.accuracy_figures([]) == {}


def test_flat_metrics_are_numbers_only_without_nan_or_none():
    test = {"accuracy": 0.8, "macro_f1": 0.7}
    stages = {"warmup": {"test_acc": 0.6, "best_val_test_acc": 0.65, "train_seconds": 3.0}}
    detection = {
        "precision": 0.9,
        "recall": 0.8,
        "f1": 0.85,
        "auroc": 0.95,
        "relabel_accuracy": None,
    }
    flat = evaluate.flat_metrics("warmup", stages, test, detection, 0.45)
    assert flat["test_acc"] == 0.8 and flat["test_acc_best_val_epoch"] == 0.65
    assert flat["warmup.test_acc"] == 0.6 and flat["detection.auroc"] == 0.95
    assert flat["noise_rate_actual"] == 0.45
    assert "detection.relabel_accuracy" not in flat  # no relabels: no figure rather than a null
    no_truth = evaluate.flat_metrics(
        "warmup", stages, {"accuracy": float("nan"), "macro_f1": 0.0}, None, None
    )
    assert "test_acc" not in no_truth and "noise_rate_actual" not in no_truth
    assert all(isinstance(v, int | float) for v in flat.values())


def test_gmm_counts_integrate_to_the_sample_count():
    edges = np.linspace(0.0, 1.0, 51)
    entry = {"all": [20] * 50, "weights": [0.7, 0.3], "means": [0.2, 0.7], "variances": [0.003, 0.005]}
    counts = evaluate.gmm_counts(entry, edges)
    assert counts["gmm_clean"].sum() == pytest.approx(0.7 * 1000, rel=1e-3)  # clean = the low-mean component
    assert counts["gmm_noisy"].sum() == pytest.approx(0.3 * 1000, rel=1e-3)


def test_gmm_counts_use_the_clean_flags_of_per_class_fits():
    edges = np.linspace(0.0, 1.0, 51)
    # Two classes of 500, each with its own GMM; class 2's clean component has the higher mean of the
    # four, so only the flags (not argmin of the means) can name the clean ones.
    entry = {
        "all": [20] * 50,
        "weights": [0.5 * 0.6, 0.5 * 0.4, 0.5 * 0.8, 0.5 * 0.2],
        "means": [0.2, 0.6, 0.5, 0.8],
        "variances": [0.003] * 4,
        "clean": [True, False, True, False],
    }
    counts = evaluate.gmm_counts(entry, edges)
    assert counts["gmm_clean"].sum() == pytest.approx((0.3 + 0.4) * 1000, rel=1e-3)
    assert counts["gmm_noisy"].sum() == pytest.approx((0.2 + 0.1) * 1000, rel=1e-3)


def test_gallery_spreads_over_decisions_and_classes_highest_noise_first():
    def row(i, decision, label, score):
        return {"index": str(i), "decision": decision, "given_label": label, "noise_score": str(score)}

    rows = [
        row(0, "relabel", "a", 0.9),
        row(1, "relabel", "a", 0.8),
        row(2, "relabel", "b", 0.5),
        row(3, "drop", "b", 0.7),
        row(4, "keep", "a", -0.1),
        row(5, "keep", "b", -0.1),
        row(6, "keep", "a", -0.9),
        row(7, "keep", "b", 0.2),
    ]
    chosen = evaluate.gallery_rows(rows, 6)
    # relabel: 2 (class a's best, then class b's best); drop: only 1, so borderline gets 3: the kept
    # samples with the highest noise score, classes taking turns, ties by index.
    assert [(r["group"], r["index"]) for r in chosen] == [
        ("relabel", "0"),
        ("relabel", "2"),
        ("drop", "3"),
        ("borderline", "7"),
        ("borderline", "4"),
        ("borderline", "5"),
    ]


# --------------------------------------------------------------------------- the stage on digits


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """`labelsieve run` on digits, 2 epochs per training stage; returns (artifacts dir, its summary)."""
    root = tmp_path_factory.mktemp("evaluate")
    args = ["run", "--preset", "digits", *(arg for item in TINY for arg in ("--set", item))]
    stdout, cwd = io.StringIO(), os.getcwd()
    os.chdir(root)  # `labelsieve run` writes the default paths, relative to the working directory
    try:
        with contextlib.redirect_stdout(stdout):
            assert main(args) == 0
    finally:
        os.chdir(cwd)
    *summary, report_line = stdout.getvalue().strip().splitlines()
    assert report_line == "report: artifacts/evaluate/report.html"
    return root / "artifacts", json.loads("\n".join(summary))


@pytest.mark.integration
def test_evaluate_digits_figures_agree_with_the_histories_and_purify(digits_run):
    root, summary = digits_run
    out = root / "evaluate"
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["final_stage"] == "retrain" and summary["report"] == "artifacts/evaluate/report.html"
    history = json.loads((root / "model" / "history.json").read_text())
    # The package's predictions reproduce the accuracy the retrain stage logged for its last epoch.
    assert metrics["test_acc"] == pytest.approx(history[-1]["test_acc"], abs=1e-6)
    best = max(history, key=lambda h: h["val_acc"])
    assert metrics["test_acc_best_val_epoch"] == pytest.approx(best["test_acc"])
    detection = json.loads((root / "purified" / "summary.json").read_text())["detection"]
    assert metrics["detection.f1"] == detection["f1"] and metrics["detection.auroc"] == detection["auroc"]
    noise = json.loads((root / "labels" / "noise.json").read_text())
    assert metrics["noise_rate_actual"] == noise["train"]["actual_noise_rate"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    matrix = np.array(evaluation["test"]["confusion_matrix"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(metrics["test_acc"])
    with open(out / "plots" / "confusion.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == matrix.sum() and sum(r["actual"] == r["predicted"] for r in rows) == np.trace(matrix)
    with open(out / "plots" / "training_curves.csv", newline="") as handle:
        curves = list(csv.DictReader(handle))
    assert [r["stage"] for r in curves] == ["warmup"] * 2 + ["ssl_train"] * 2 + ["group_regularize"] * 2 + [
        "retrain"
    ] * 2
    with open(out / "plots" / "roc.csv", newline="") as handle:
        roc = [(float(r["fpr"]), float(r["tpr"])) for r in csv.DictReader(handle)]
    assert roc[0] == (0.0, 0.0) and roc[-1] == pytest.approx((1.0, 1.0))
    histograms = json.loads((out / "plots" / "loss_histograms.json").read_text())
    assert set(histograms) == {"co_divide", "ssl_train"} and len(histograms["ssl_train"]["networks"]) == 2
    assert {p.name for p in (out / "figures").iterdir()} == {
        "training_curves.png",
        "loss_histogram.png",
        "confusion.png",
        "roc.png",
        "noise_matrix.png",
    }
    estimate = evaluation["purify"]["noise_estimate"]
    assert len(estimate["noise_matrix"]) == len(estimate["injected_noise_matrix"]) == 10


@pytest.mark.integration
def test_evaluate_without_retrain_scores_the_ensemble_of_the_last_trained_stage(digits_run, tmp_path):
    root, _ = digits_run
    params = _params("retrain.epochs=0")
    inputs = {name: root / default.split("/")[-1] for name, default in STAGES["evaluate"].inputs.items()}
    summary = evaluate.run(params, **inputs, out_dir=tmp_path / "evaluate")
    history = json.loads((root / "group" / "history.json").read_text())
    assert summary["final_stage"] == "group_regularize"
    assert summary["test_acc"] == pytest.approx(history[-1]["test_acc"], abs=1e-6)


@pytest.mark.integration
def test_evaluate_without_ground_truth_reports_no_detection_figures(digits_run, tmp_path):
    root, _ = digits_run
    inputs = {name: root / default.split("/")[-1] for name, default in STAGES["evaluate"].inputs.items()}
    # Real crawled data: noise rate 0, so the "true" labels are only the given ones.
    inputs["labels_dir"] = tmp_path / "labels"
    shutil.copytree(root / "labels", inputs["labels_dir"])
    noise = json.loads((inputs["labels_dir"] / "noise.json").read_text())
    (inputs["labels_dir"] / "noise.json").write_text(json.dumps({**noise, "rate": 0.0}))
    summary = evaluate.run(_params(), **inputs, out_dir=tmp_path / "evaluate")
    assert "test_acc" in summary and not any(k.startswith("detection") for k in summary)
    assert "noise_rate_actual" not in summary
    out = tmp_path / "evaluate"
    assert not (out / "plots" / "roc.csv").exists() and not (out / "figures" / "roc.png").exists()
    assert "true:" not in (out / "report.html").read_text()


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


@pytest.mark.integration
def test_report_html_is_self_contained(digits_run):
    root, _ = digits_run
    text = (root / "evaluate" / "report.html").read_text()
    parser = _Collector()
    parser.feed(text)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 5 + 12  # the five figures and the gallery
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(attrs["src"].split(",", 1)[1]))).verify()
    for tag, attrs in parser.tags:
        assert "href" not in attrs and (tag == "img" or "src" not in attrs), (tag, attrs)
        assert tag not in ("link", "script", "iframe", "object", "embed")
    assert "relabel_from" in text  # the resolved params are in it


@pytest.mark.integration
def test_report_html_renders_in_headless_chromium(digits_run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh installs Debian's chromium)")
    report = digits_run[0] / "evaluate" / "report.html"
    flags = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    # A probe copy records each image's decoded width on load; --dump-dom serialises the DOM after load.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => document.querySelectorAll('img').forEach("
        "i => i.setAttribute('data-natural-width', i.naturalWidth)));</script>"
    )
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    dom = subprocess.run(
        [*flags, "--dump-dom", f"file://{probe}"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    parser = _Collector()
    parser.feed(dom)
    images = [attrs for tag, attrs in parser.tags if tag == "img"]
    assert len(images) == 17 and all(a["src"].startswith("data:image/png;base64,") for a in images)
    widths = [int(a["data-natural-width"]) for a in images]
    assert all(w > 0 for w in widths)  # every image decoded (a broken one has naturalWidth 0)
    assert widths[5:] == [64] * 12  # the gallery thumbnails at evaluate.thumbnail_px
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1200,2000", f"file://{report}"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2000, 1200)
    # Not blank: text, tables and figures make many distinct grey levels and a real spread.
    assert pixels.std() > 10 and len(np.unique(pixels)) > 50


def test_regression_names_the_better_earlier_stage_only_when_the_final_model_is_worse():
    stages = {
        "ssl_train": {"test_acc": 0.85},
        "group_regularize": {"test_acc": 0.80},
        "retrain": {"test_acc": 0.78},
    }
    found = evaluate.regression("retrain", stages, 0.78)
    assert found == {
        "final_stage": "retrain",
        "final_test_acc": 0.78,
        "best_stage": "ssl_train",
        "best_test_acc": 0.85,
    }
    assert evaluate.regression("retrain", stages, 0.86) is None
    box = report.regression_warning(found)
    assert "class='warning'" in box and "78.0%" in box and "85.0%" in box and "ssl_train" in box
    assert report.regression_warning(None) == ""


def test_report_values_are_percentages_with_one_decimal():
    assert report.format_value(0.81234, "percent") == "81.2%"
    assert report.format_value(0.912345, "ratio") == "0.912"
    assert report.format_value(3, "integer") == "3"
    assert report.format_value(None, "percent") == "–"
    assert report.format_value(float("nan"), "percent") == "–"


def test_provenance_hashes_the_resolved_params_and_names_the_commit():
    base = load_params(None)
    found = evaluate.provenance(base, "abc123")
    assert found["dataset_content_hash"] == "abc123" and len(found["params_sha256"]) == 64
    assert evaluate.params_hash(base) != evaluate.params_hash(load_params(None, overrides=["model.lr=0.05"]))
    assert found["git_commit"] is None or len(found["git_commit"]) == 40
    assert evaluate.git_commit(Path("/")) is None
    assert "Git commit of the code" in report.provenance_table(found)
