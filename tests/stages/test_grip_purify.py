"""Integration tests of group_regularize, purify and export on digits (tiny budgets, CPU)."""

import csv
import json

import numpy as np
import pytest
import torch

from labelsieve.config import load_params
from labelsieve.data.store import load_dataset
from labelsieve.engine import checkpoint as checkpoint_module
from labelsieve.export import export
from labelsieve.maths import grip
from labelsieve.maths.purification import DROP
from labelsieve.stages import co_divide, group_regularize, ingest, inject_noise, purify, ssl_train, warmup

pytestmark = pytest.mark.integration

TINY = (
    "runtime.progress=never",
    "warmup.epochs=3",
    "ssl_train.epochs=3",
    "ssl_train.recalibration_period=0",
    "group_regularize.epochs=3",
    "group_regularize.warmup_epochs=2",
    "model.eval_batch_size=4096",
)


def _params(*overrides):
    return load_params(None, presets=["digits"], overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """digits at 40% symmetric noise, run through ssl_train; returns the directories."""
    root = tmp_path_factory.mktemp("grip")
    params = _params()
    dirs = {"dataset_dir": root / "dataset", "labels_dir": root / "labels"}
    ingest.run(params, out_dir=dirs["dataset_dir"])
    inject_noise.run(params, dataset_dir=dirs["dataset_dir"], out_dir=dirs["labels_dir"])
    warmup.run(params, **dirs, out_dir=root / "warmup")
    co_divide.run(params, **dirs, warmup_dir=root / "warmup", out_dir=root / "divide")
    ssl_train.run(
        params, **dirs, warmup_dir=root / "warmup", divide_dir=root / "divide", out_dir=root / "ssl"
    )
    group_regularize.run(params, **dirs, networks_dir=root / "ssl", out_dir=root / "group")
    purify.run(params, **dirs, ssl_dir=root / "ssl", group_dir=root / "group", out_dir=root / "purified")
    return root, dirs


def test_group_regularize_outputs_soft_labels_and_purifies(pipeline):
    root, dirs = pipeline
    soft = np.load(root / "group" / "soft_labels.npy")
    assert soft.shape == (2, 10, 10)
    np.testing.assert_allclose(soft.sum(axis=2), 1.0, atol=1e-5)
    assert np.all(np.argmax(soft, axis=2) == np.arange(10))  # each class's soft label peaks on itself
    history = json.loads((root / "group" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert history[0]["discarded"] == [0, 0] and history[0]["revised"] == [0, 0]  # before E_warm - 1
    assert min(history[2]["discarded"]) + min(history[2]["revised"]) > 0  # purification active at epoch 2
    memory = np.load(root / "group" / "js_memory.npy")
    noisy = np.load(dirs["labels_dir"] / "labels.npz")["train_is_noisy"]
    assert memory[0][noisy].mean() > memory[0][~noisy].mean()  # noisy samples sit far from their soft label


def test_group_regularize_resume_after_kill_equals_uninterrupted(pipeline, tmp_path, monkeypatch):
    root, dirs = pipeline
    real = checkpoint_module.Checkpoint.save

    def kill_after_second(self, state):
        real(self, state)
        if state["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", kill_after_second)
    with pytest.raises(KeyboardInterrupt):
        group_regularize.run(_params(), **dirs, networks_dir=root / "ssl", out_dir=tmp_path / "group")
    monkeypatch.undo()
    group_regularize.run(_params(), **dirs, networks_dir=root / "ssl", out_dir=tmp_path / "group")
    for k in (1, 2):
        whole = torch.load(root / "group" / f"net{k}.pt", weights_only=True)
        resumed = torch.load(tmp_path / "group" / f"net{k}.pt", weights_only=True)
        for name in whole:
            torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0)
    np.testing.assert_array_equal(
        np.load(tmp_path / "group" / "soft_labels.npy"), np.load(root / "group" / "soft_labels.npy")
    )


def test_group_regularize_zero_epochs_passes_networks_through_with_estimated_soft_labels(pipeline, tmp_path):
    root, dirs = pipeline
    group_regularize.run(
        _params("group_regularize.epochs=0"), **dirs, networks_dir=root / "ssl", out_dir=tmp_path / "g"
    )
    for name, value in torch.load(root / "ssl" / "net1.pt", weights_only=True).items():
        torch.testing.assert_close(torch.load(tmp_path / "g" / "net1.pt", weights_only=True)[name], value)
    soft = np.load(tmp_path / "g" / "soft_labels.npy")
    np.testing.assert_allclose(soft.sum(axis=2), 1.0, atol=1e-5)


def test_purify_has_fewer_label_errors_than_the_noisy_labels(pipeline):
    root, dirs = pipeline
    summary = json.loads((root / "purified" / "summary.json").read_text())
    detection = summary["detection"]
    assert detection["noise_rate_after"] < detection["noise_rate_before"] / 3
    assert detection["f1"] > 0.8 and detection["auroc"] > 0.9
    labels = np.load(root / "purified" / "labels.npz")
    truth = np.load(dirs["labels_dir"] / "labels.npz")["train_true_labels"]
    used = labels["train_decision"] != DROP
    assert np.mean(labels["train_labels"][used] != truth[used]) == pytest.approx(
        detection["noise_rate_after"]
    )
    with open(root / "purified" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(truth) and {r["decision"] for r in rows} <= {"keep", "relabel", "drop"}
    assert all((r["new_label"] == "") == (r["decision"] == "drop") for r in rows)
    assert sum(summary["decisions"].values()) == len(truth)


def test_purify_writes_numeric_scores_matching_the_manifest_and_a_noise_estimate(pipeline):
    root, _ = pipeline
    scores = np.load(root / "purified" / "scores.npz")
    labels = np.load(root / "purified" / "labels.npz")
    np.testing.assert_array_equal(scores["decision"], labels["train_decision"])
    np.testing.assert_array_equal(scores["new_label"], labels["train_labels"])
    with open(root / "purified" / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    np.testing.assert_allclose([float(r["noise_score"]) for r in rows], scores["noise_score"], atol=1e-6)
    estimate = json.loads((root / "purified" / "summary.json").read_text())["noise_estimate"]
    matrix = np.array(estimate["noise_matrix"])
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, atol=1e-5)
    truth = np.array(estimate["injected_noise_matrix"])
    assert estimate["noise_matrix_mae"] == pytest.approx(np.abs(matrix - truth).mean(), abs=1e-5)
    assert estimate["noise_matrix_mae"] < 0.05
    assert estimate["probs_unmixed"] is False  # the co-trained networks' probabilities are used as they are


def test_purify_sees_a_class_swap_that_leaves_other_classes_clean(tmp_path):
    """digits with 1 <-> 7 and 3 <-> 8 swapped at 40%: the swaps are estimated and flagged, the six
    classes outside the map are estimated clean and nothing in them is flagged."""
    swaps = "{'1': '7', '7': '1', '3': '8', '8': '3'}"
    params = _params(
        "inject_noise.mode=asymmetric",
        "inject_noise.rate=0.4",
        "inject_noise.class_map=custom",
        f"inject_noise.custom_map={swaps}",
        "group_regularize.epochs=0",
    )
    dirs = {"dataset_dir": tmp_path / "dataset", "labels_dir": tmp_path / "labels"}
    ingest.run(params, out_dir=dirs["dataset_dir"])
    inject_noise.run(params, dataset_dir=dirs["dataset_dir"], out_dir=dirs["labels_dir"])
    warmup.run(params, **dirs, out_dir=tmp_path / "warmup")
    co_divide.run(params, **dirs, warmup_dir=tmp_path / "warmup", out_dir=tmp_path / "divide")
    ssl_train.run(
        params,
        **dirs,
        warmup_dir=tmp_path / "warmup",
        divide_dir=tmp_path / "divide",
        out_dir=tmp_path / "ssl",
    )
    group_regularize.run(params, **dirs, networks_dir=tmp_path / "ssl", out_dir=tmp_path / "group")
    purify.run(params, **dirs, ssl_dir=tmp_path / "ssl", group_dir=tmp_path / "group", out_dir=tmp_path / "p")
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    rates = summary["noise_estimate"]["noise_rates"]
    matrix = np.array(summary["noise_estimate"]["noise_matrix"])  # [given][true]
    for a, b in ((1, 7), (7, 1), (3, 8), (8, 3)):
        assert matrix[a, b] > 0.2, (a, b, matrix[a, b])  # about 0.4 of true b carry label a
        assert rates[str(a)] > 0.2
    for clean in (0, 2, 4, 5, 6, 9):
        assert rates[str(clean)] < 0.05, (clean, rates[str(clean)])
        assert summary["per_class"][str(clean)]["keep"] >= 0.95 * sum(
            summary["per_class"][str(clean)].values()
        )
    assert summary["detection"]["f1"] > 0.6 and summary["noise_estimate"]["noise_matrix_mae"] < 0.05


def test_export_then_ingest_gives_back_the_purified_labels(pipeline, tmp_path):
    root, dirs = pipeline
    dataset = load_dataset(dirs["dataset_dir"])
    purified = np.load(root / "purified" / "labels.npz")
    expected = {"train": {}, "test": {}}  # split -> sha256 -> class name
    for i, sha in enumerate(dataset.samples["train"]["sha256"]):
        if purified["train_decision"][i] != DROP:
            expected["train"][sha] = dataset.classes[purified["train_labels"][i]]
    for split, into in (("val", "train"), ("test", "test")):  # val joins the training pool again
        for sha, label in zip(dataset.samples[split]["sha256"], dataset.samples[split]["label"], strict=True):
            expected[into][sha] = dataset.classes[label]
    for fmt in ("folder", "csv"):
        out = tmp_path / fmt
        counts = export(dirs["dataset_dir"], root / "purified", out, fmt=fmt, dropped="folder")
        assert counts["dropped"] == int(np.sum(purified["train_decision"] == DROP))
        # digits has no files: every sample is written from its stored pixels
        assert counts["originals"] == 0 and counts["pixels"] == sum(dataset.meta["counts"].values())
        source = out if fmt == "folder" else out / "manifest.csv"
        params = load_params(
            None,
            presets=["digits"],
            overrides=["runtime.progress=never", f"ingest.source={source}", "ingest.val_fraction=0"],
        )
        ingest.run(params, out_dir=tmp_path / f"re-{fmt}")
        again = load_dataset(tmp_path / f"re-{fmt}")
        assert again.classes == dataset.classes
        got = {
            split: {
                sha: again.classes[label]
                for sha, label in zip(
                    again.samples[split]["sha256"], again.samples[split]["label"], strict=True
                )
            }
            for split in ("train", "test")
        }
        assert got == expected, fmt
        report = json.loads((tmp_path / f"re-{fmt}" / "ingest_report.json").read_text())
        assert report["skipped_counts"] == {"dropped_by_purify": counts["dropped"]}
    assert (tmp_path / "folder" / "_dropped").is_dir()


def test_grip_preset_fine_tunes_without_instance_purification():
    # Chosen on the tuning slice (docs/algorithms.md §4, "Which part costs"): the GRIP epochs continue the CE
    # schedule with the soft-label and entropy terms on and the per-batch purification never active.
    params = load_params("params.yaml", presets=["grip"])
    cfg = params.group_regularize
    assert (params.warmup.epochs, cfg.epochs, cfg.schedule) == (12, 3, "continue")
    assert cfg.soft_weight > 0 and cfg.entropy_weight > 0
    assert not any(grip.purification_active(e, warmup_epochs=cfg.warmup_epochs) for e in range(cfg.epochs))
    # purify reads the network GRIP leaves, not the CE epochs' (benchmarks/purify_source.py on the slice)
    assert params.purify.relabel_from == "group"
