"""benchmarks/: speed.py's smoke run covers every stage and its bf16 peak table reads device names;
quality.py runs the DAG per method, reuses a run with identical params and reports a failed run without
losing the rest."""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from labelsieve.config import load_params
from labelsieve.data.store import Dataset
from labelsieve.engine import loop
from labelsieve.engine.resident import TrainingData
from labelsieve.maths import confident, purification
from labelsieve.maths.dynamics import TrainingDynamics
from labelsieve.maths.purification import WRONG_THRESHOLD
from labelsieve.models import build_model
from labelsieve.stages import STAGES, co_divide

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SPEED = BENCHMARKS / "speed.py"
SPEED_STAGES = {"ce", "warmup-mixup", "ssl", "co-divide", "grip", "retrain-batch", "retrain-dataset"}


@functools.cache
def _benchmark_module(script: str) -> ModuleType:
    """benchmarks/<script>.py as a module (the scripts are not part of the package)."""
    name = f"labelsieve_{script}_benchmark"
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_speed_smoke_reports_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "speed"
    subprocess.run(
        [sys.executable, str(SPEED), "--smoke", "--out", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    result = json.loads((out / "speed.json").read_text())
    stages = result["stages"]
    assert set(stages) == SPEED_STAGES
    for name, figures in stages.items():
        assert figures["seconds"] > 0, name
        assert math.isfinite(figures["ratio_to_ce"]) and figures["ratio_to_ce"] > 0, name
        assert figures["samples_per_second"] > 0, name
        assert figures["peak_rss_mib"] > 0, name
    assert stages["ce"]["ratio_to_ce"] == pytest.approx(1.0)
    assert set(stages["retrain-dataset"]["parts_seconds"]) == {"prepare", "train"}
    assert result["ce_step"]["flops_per_step"] > 0
    table = (out / "speed.md").read_text()
    assert all(f"| {name} |" in table for name in SPEED_STAGES)


@pytest.mark.parametrize(
    ("device_name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA H100 NVL", None),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_peak_bf16_tflops_by_device_name(device_name: str, tflops: float | None) -> None:
    assert _benchmark_module("speed").peak_bf16_tflops(device_name) == tflops


# Digits, one or two epochs per stage: `smr` and `labelsieve` resolve to the same params here (the
# overrides turn smr's passed-through stages back on), and `clean` cannot run SSL with one network.
TINY_QUALITY = (
    "data.image_size=8",
    "model.crop_padding=1",
    "model.batch_size=64",
    "ingest.source=digits",
    "ingest.per_class_limit=0",
    "runtime.threads=1",
    "warmup.epochs=1",
    "ssl_train.epochs=2",
    "ssl_train.batch_size=32",
    "group_regularize.epochs=1",
    "group_regularize.warmup_epochs=1",
    "retrain.epochs=1",
)


@pytest.mark.integration
def test_quality_run_of_a_seed_does_not_depend_on_the_other_seeds_of_the_invocation(tmp_path: Path) -> None:
    # ingest's splits are seeded: the shared dataset must not take them from whichever seed ran first
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--noise", "sym50", "--methods", "ce"]
    single = (*TINY_QUALITY, "ssl_train.epochs=0", "group_regularize.epochs=0")  # ce: one network
    command += [f"--set={item}" for item in single]
    runs = {}
    for seeds in ("0,2", "2"):
        out = tmp_path / seeds.replace(",", "-")
        subprocess.run([*command, "--seeds", seeds, "--out", str(out)], capture_output=True, check=True)
        runs[seeds] = json.loads((out / "sym50-ce-seed2.json").read_text())
    for field in ("noise_rate_actual", "last_test_acc", "best_val_test_acc"):
        assert runs["0,2"][field] == runs["2"][field], field


@pytest.mark.integration
def test_quality_runs_reuses_and_reports_failures(tmp_path: Path) -> None:
    out = tmp_path / "quality"
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--out", str(out), "--noise", "sym50"]
    command += [f"--set={item}" for item in TINY_QUALITY]
    first = subprocess.run([*command, "--methods", "smr,labelsieve,clean"], capture_output=True, text=True)
    assert first.returncode != 0 and "failed" in first.stderr and "sym50-clean" in first.stderr
    smr = json.loads((out / "sym50-smr.json").read_text())
    assert 0.0 < smr["last_test_acc"] <= 1.0 and smr["final_stage"] == "retrain"
    assert 0.0 < smr["detection"]["f1"] <= 1.0 and smr["peak_rss_mb"] > 0
    assert set(smr["stage_seconds"]) == set(STAGES) - {"ingest"}  # ingest is shared
    twin = json.loads((out / "sym50-labelsieve.json").read_text())
    assert twin["method"] == "labelsieve" and twin["same_run_as"] == "sym50-smr"
    assert twin["last_test_acc"] == smr["last_test_acc"]
    assert not (out / "sym50-clean.json").exists()
    mtime = (out / "sym50-smr.json").stat().st_mtime_ns
    again = subprocess.run([*command, "--methods", "smr"], capture_output=True, text=True, check=True)
    assert (out / "sym50-smr.json").stat().st_mtime_ns == mtime  # saved, same params: not rerun
    assert "| sym50 | smr | " in again.stdout and "| sym50 | labelsieve | " in (out / "table.md").read_text()
    assert "†" not in (out / "table.md").read_text()
    edited = tmp_path / "params.yaml"  # other base params: the saved runs are marked stale, not rerun
    edited.write_text((BENCHMARKS.parent / "params.yaml").read_text().replace("lr: 0.1 ", "lr: 0.09 "))
    stale = subprocess.run(
        [*command, "--table", "--params", str(edited)], capture_output=True, text=True, check=True
    )
    assert "| sym50 | smr† | " in stale.stdout and "a purify rule older than the current ones" in stale.stdout
    assert (out / "sym50-smr.json").stat().st_mtime_ns == mtime


@pytest.mark.integration
def test_retrain_studies_reproduce_a_kept_run_with_its_own_params(tmp_path: Path) -> None:
    """`retrain_threshold.py` at the run's own τ_r and `retrain_variants.py`'s plain variant rerun it bit for
    bit; another τ_r or variant trains another network."""
    work, out = tmp_path / "work", tmp_path / "quality"
    sets = [f"--set={item}" for item in TINY_QUALITY]
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--out", str(out), "--work", str(work)]
    subprocess.run(
        [*command, "--noise", "sym50", "--methods", "labelsieve", *sets], check=True, capture_output=True
    )
    saved = json.loads((out / "sym50-labelsieve.json").read_text())
    assert "resumed" not in saved
    (out / "sym50-labelsieve.json").unlink()  # rerun on the kept run folder: its stages resume
    again = subprocess.run(
        [*command, "--noise", "sym50", "--methods", "labelsieve", *sets], check=True, capture_output=True
    )
    resumed = json.loads((out / "sym50-labelsieve.json").read_text())
    assert resumed["resumed"] is True and resumed["last_test_acc"] == saved["last_test_acc"]
    assert " (resumed) |" in again.stdout.decode()
    own = str(load_params(BENCHMARKS.parent / "params.yaml").retrain.flag_threshold)
    study = tmp_path / "threshold.json"
    script = [sys.executable, str(BENCHMARKS / "retrain_threshold.py"), str(work), "--out", str(study)]
    subprocess.run([*script, "--thresholds", f"0.4,{own}", *sets], check=True, capture_output=True)
    result = json.loads(study.read_text())["work/sym50-labelsieve"]
    assert list(result) == ["0.4", own] and 0.0 < result["0.4"] <= 1.0
    assert result[own] == saved["last_test_acc"]  # the same params rerun: the same network, bit for bit
    assert not any(work.glob("tmp*"))  # the scratch copy is gone; the kept run is untouched
    assert "| mean |" in study.with_suffix(".md").read_text()
    variants = tmp_path / "variants.json"
    script = [sys.executable, str(BENCHMARKS / "retrain_variants.py"), str(work), "--out", str(variants)]
    assert load_params(BENCHMARKS.parent / "params.yaml").retrain.distill != 0.9  # the variant changes β
    chosen = ["--variant", "own", "--variant", "d0.9:retrain.distill=0.9;retrain.dropped=exclude"]
    subprocess.run([*script, *chosen, *sets], check=True, capture_output=True)
    result = json.loads(variants.read_text())["work/sym50-labelsieve"]
    assert result["own"] == saved["last_test_acc"] and 0.0 < result["d0.9"] <= 1.0
    assert result["d0.9"] != result["own"]


@pytest.mark.integration
def test_purify_source_reruns_purify_on_the_kept_networks_under_each_source(tmp_path: Path) -> None:
    work, out = tmp_path / "work", tmp_path / "quality"
    grip = (*TINY_QUALITY, "ssl_train.epochs=0", "retrain.epochs=0")  # one network, no SSL
    sets = [f"--set={item}" for item in grip]
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--out", str(out), "--work", str(work)]
    subprocess.run(
        [*command, "--noise", "sym50", "--methods", "grip", *sets], check=True, capture_output=True
    )
    saved = json.loads((out / "sym50-grip.json").read_text())["detection"]
    study = tmp_path / "source.json"
    script = [sys.executable, str(BENCHMARKS / "purify_source.py"), str(work), "--out", str(study)]
    subprocess.run([*script, *sets], check=True, capture_output=True)
    result = json.loads(study.read_text())["work/sym50-grip"]
    assert set(result) == {"ssl", "group"}
    own = load_params(BENCHMARKS.parent / "params.yaml", presets=["grip"]).purify.relabel_from
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert result[own][key] == saved.get(key)  # the preset's own source: the saved run, bit for bit
    assert result["ssl"] != result["group"]  # the two sources read different networks
    assert "| sym50, mean of 1 | group |" in study.with_suffix(".md").read_text()


def _kept_run_study(script: str, work: Path, tmp_path: Path, *options: str) -> tuple[dict[str, Any], Path]:
    """Run a kept-run study script on `work` with --out and `options`; (its figures of the one sym50 run, the
    JSON path)."""
    out = tmp_path / f"{script}.json"
    command = [sys.executable, str(BENCHMARKS / f"{script}.py"), str(work), "--out", str(out), *options]
    subprocess.run(command, check=True, capture_output=True)
    return json.loads(out.read_text())["work/sym50-labelsieve"], out


@pytest.mark.integration
def test_kept_run_studies_reproduce_the_kept_run_under_the_stage_rule(tmp_path: Path) -> None:
    tiny, work, out = tmp_path / "tiny.yaml", tmp_path / "work", tmp_path / "quality"
    params = load_params(BENCHMARKS.parent / "params.yaml", overrides=list(TINY_QUALITY)).to_dict()
    tiny.write_text(yaml.safe_dump(params))  # the study reads the kept params file, so it holds the sizes
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--params", str(tiny), "--out", str(out)]
    run = ["--work", str(work), "--noise", "sym50", "--methods", "labelsieve"]
    subprocess.run([*command, *run], check=True, capture_output=True)
    saved = json.loads((out / "sym50-labelsieve.json").read_text())["detection"]
    result, study = _kept_run_study("rule_change", work, tmp_path)
    assert set(result) == {"rule 2", "rule 3", "rule 4", "rule 5"}
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert result["rule 5"][key] == saved[key]  # the stage's rule on the kept networks: the run's own
        for rule in ("rule 2", "rule 3", "rule 4"):
            assert result[rule][key] is None or 0.0 <= result[rule][key] <= 1.0
    assert "| work/sym50-labelsieve | rule 2 |" in study.with_suffix(".md").read_text()
    reads, _ = _kept_run_study("flag_reading", work, tmp_path)
    partial = [f"partial {alpha}" for alpha in (0.25, 0.5, 0.75)]
    assert list(reads) == ["robust", *partial, "unmixed", "mean", "tempered 2", "count cap"]
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert reads["mean"][key] == saved[key]  # rule 5, the stage's: the run's own
        assert reads["robust"][key] == result["rule 4"][key]  # one reading: rule 4 as rule_change has it
    taus, _ = _kept_run_study("flag_threshold", work, tmp_path)
    assert f"τ {WRONG_THRESHOLD}" in taus
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert taus[f"τ {WRONG_THRESHOLD}"][key] == saved[key]  # the stage's τ: the run's own decisions
    flagged = [taus[name]["flagged"] for name in taus]
    assert flagged == sorted(flagged, reverse=True) and flagged[0] > flagged[-1]  # a higher τ flags fewer
    sources, flags = _kept_run_study("retrained_flags", work, tmp_path)
    assert list(sources) == ["stage", "retrained", "mean", "retrained_unmixed", "mean_unmixed"]
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert sources["stage"][key] == saved[key]  # the final networks' flags: the run's own
    assert all(0.0 <= fig["train_acc"] <= 1.0 for fig in sources.values())
    assert sources["retrained"]["auroc"] != sources["stage"]["auroc"]  # another network's prediction pass
    assert sources["retrained_unmixed"]["train_acc"] == sources["retrained"]["train_acc"]  # the same network
    assert "| mean F1 | stage " in flags.with_suffix(".md").read_text()
    sources, _ = _kept_run_study("retrain_crossfit", work, tmp_path)
    assert list(sources) == ["stage", "retrained", "crossfit", "crossfit_unmixed", "mean_crossfit"]
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert sources["stage"][key] == saved[key]  # the final networks' flags: the run's own
    assert sources["crossfit"]["auroc"] != sources["retrained"]["auroc"]  # four other networks
    assert sources["crossfit"]["train_acc"] == sources["crossfit_unmixed"]["train_acc"]  # the same prediction
    assert sources["stage"]["cost_x_retrain"] > 0.0
    sources, _ = _kept_run_study("feature_head_flags", work, tmp_path)
    assert list(sources) == ["stage", "head", "head_unmixed", "mean_unmixed"]
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert sources["stage"][key] == saved[key]  # the final networks' flags: the run's own
    assert sources["head"]["train_acc"] == sources["head_unmixed"]["train_acc"]  # the same head
    assert 0.0 <= sources["head"]["train_acc"] <= 1.0
    sources, _ = _kept_run_study("noise_matrix_sources", work, tmp_path)
    assert list(sources) == [
        "stage",
        "confident_learning",
        "injected",
        "confident_top",
        "fixed_point",
        "head",
        "retrained",
    ]
    for key in (
        "f1",
        "auroc",
        "relabel_accuracy",
    ):  # confident learning's T̂ on the final networks: the run's own
        assert sources["stage"][key] == saved[key]
    assert sources["injected"]["mae"] == 0.0 < sources["stage"]["mae"]
    factors, few = _kept_run_study("few_classes", work, tmp_path, "--seeds", "1")
    for key in ("f1", "auroc", "relabel_accuracy"):
        assert factors["× 2 (the rule)"][key] == saved[key]  # the run's own
        # Ten classes: half the mass is the larger bar, so the factor over even noise changes nothing.
        assert factors["share alone (rule 4)"][key] == saved[key]
    three = json.loads(few.read_text())["simulated C=3 symmetric 1000/class"]
    assert (three["share alone (rule 4)"]["cut"], three["× 2 (the rule)"]["cut"]) == (3.0, 0.0)
    assert three["× 2 (the rule)"]["f1"] > three["share alone (rule 4)"]["f1"] + 0.1
    division = tmp_path / "division.json"
    script = [sys.executable, str(BENCHMARKS / "division_probe.py"), str(work / "sym50-labelsieve")]
    options = ["--variant", "base", "--out", str(tmp_path / "probe"), "--results", str(division)]
    subprocess.run([*script, *options], check=True, capture_output=True)
    [row] = json.loads(division.read_text())
    assert row["per_class"] and 0.0 <= row["auroc_clean_prob"] <= 1.0
    for figures in row["per_class"].values():
        assert 0.0 < figures["noisy_share"] < 1.0
        assert set(figures) == {
            "noisy_share",
            "auroc_clean_prob",
            "auroc_warmup_own_prob",
            "auroc_warmup_margin",
            "auroc_warmup_log_ratio",
            "labeled_clean",
            "labeled_noisy",
        }


def test_quality_key_covers_only_what_a_run_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    quality = _benchmark_module("quality")
    base = BENCHMARKS.parent / "params.yaml"

    def key(method: str, *overrides: str) -> str:
        return quality.params_key(quality.method_params(base, method, "sym50", list(overrides)))

    for method in ("ce", "clean", "grip", "sssl"):  # no SSL epoch: only the batch size is read
        assert key(method) == key(method, "ssl_train.lambda_u=7", "ssl_train.recalibration_period=3")
        assert key(method) != key(method, "ssl_train.batch_size=32")
    for method in ("dividemix", "smr", "labelsieve"):
        assert key(method) != key(method, "ssl_train.lambda_u=7")
    assert key("ce") != key("ce", "model.lr=0.09")
    for method in ("ce", "clean", "grip", "sssl", "dividemix", "cleanlab"):  # no mixup warm-up
        assert key(method) == key(method, "warmup.alpha=2")
    for method in ("smr", "labelsieve"):
        assert key(method) != key(method, "warmup.alpha=2")
    for method in ("ce", "clean", "dividemix", "smr", "cleanlab"):  # no GRIP or retrain epoch
        assert key(method) == key(method, "group_regularize.lr=0.2", "retrain.flag_threshold=0.45")
    assert key("grip") != key("grip", "group_regularize.entropy_weight=0.2")
    assert key("labelsieve") != key("labelsieve", "group_regularize.schedule=continue")
    assert key("grip") == key("grip", "retrain.flag_threshold=0.45")
    assert key("sssl") != key("sssl", "retrain.mixup_alpha=2")
    assert key("sssl") == key("sssl", "retrain.flag_threshold=0.45")  # trains on the noisy labels
    assert key("labelsieve") != key("labelsieve", "retrain.flag_threshold=0.45")
    before = {method: key(method) for method in quality.METHODS}
    monkeypatch.setattr(quality.purification, "RULE_VERSION", quality.purification.RULE_VERSION + 1)
    changed = {method for method in quality.METHODS if key(method) != before[method]}
    assert changed == {"dividemix", "smr", "labelsieve"}  # the runs whose purify reads training dynamics
    version = quality.purification.RULE_VERSION_WITHOUT_DYNAMICS
    monkeypatch.setattr(quality.purification, "RULE_VERSION_WITHOUT_DYNAMICS", version + 1)
    changed = {method for method in quality.METHODS if key(method) != before[method]}
    assert changed == {"dividemix", "smr", "grip", "labelsieve"}  # every run that reports purify's rule

    def reads(method: str) -> dict:
        return quality.params_read(quality.method_params(base, method, "sym50", []).to_dict())

    # GRIP's own schedule, the only one before the key existed, is left out: saved runs keep their keys
    assert "schedule" not in reads("labelsieve")["group_regularize"]
    assert reads("grip")["group_regularize"]["schedule"] == "continue"
    unmixed = {method for method in quality.METHODS if "purify_probs_from" in reads(method)}
    assert unmixed == {"grip"}  # purify unmixes only the probabilities of networks fitted to the given labels


def test_quality_reuses_a_run_only_of_the_same_procedure(tmp_path: Path) -> None:
    quality = _benchmark_module("quality")
    for name, method, key in [("inst40-cleanlab", "cleanlab", "k1"), ("sym50-smr", "smr", "k2")]:
        (tmp_path / f"{name}.json").write_text(json.dumps({"method": method, "params_key": key}))
    assert quality._same_run(tmp_path, "ce", "k1") is None  # cleanlab resolves to ce's params
    assert quality._same_run(tmp_path, "cleanlab", "k1")["method"] == "cleanlab"
    assert quality._same_run(tmp_path, "labelsieve", "k2")["method"] == "smr"
    assert quality._same_run(tmp_path, "cleanlab", "k2") is None


def test_quality_ce_epoch_is_the_runs_own_plain_ce_epoch(tmp_path: Path) -> None:
    quality = _benchmark_module("quality")
    base = BENCHMARKS.parent / "params.yaml"

    def write_history(folder: str, records: list[dict]) -> None:
        (tmp_path / folder).mkdir(exist_ok=True)
        (tmp_path / folder / "history.json").write_text(json.dumps(records))

    write_history("warmup", [{"train_seconds": t} for t in (4.0, 9.0, 6.0)])
    write_history(
        "ssl",
        [
            {"kind": "mixmatch", "train_seconds": 30.0},
            {"kind": "recalibration", "train_seconds": 5.0},
            {"kind": "recalibration", "train_seconds": 7.0},
        ],
    )
    dividemix = quality.method_params(base, "dividemix", "sym50", [])  # CE warm-up of two networks
    assert quality.ce_epoch_seconds(dividemix, tmp_path) == 3.0  # median(4, 9, 6) / 2
    smr = quality.method_params(base, "smr", "sym50", [])  # mixup warm-up: the recalibration epochs
    assert quality.ce_epoch_seconds(smr, tmp_path) == 3.0  # median(5, 7) / 2
    no_recalibration = quality.method_params(base, "smr", "sym50", ["ssl_train.recalibration_period=0"])
    write_history("ssl", [{"kind": "mixmatch", "train_seconds": 30.0}])
    assert quality.ce_epoch_seconds(no_recalibration, tmp_path) is None


@pytest.mark.integration
def test_quality_cleanlab_peer_cross_fits_flags_and_retrains(tmp_path: Path) -> None:
    out = tmp_path / "quality"
    command = [sys.executable, str(BENCHMARKS / "quality.py"), "--out", str(out), "--noise", "sym50"]
    command += [f"--set={item}" for item in TINY_QUALITY]
    subprocess.run([*command, "--methods", "cleanlab"], capture_output=True, text=True, check=True)
    run = json.loads((out / "sym50-cleanlab.json").read_text())
    assert run["final_stage"] == "cleanlab" and 0.0 < run["last_test_acc"] <= 1.0
    detection = run["detection"]
    assert 0.0 < detection["f1"] <= 1.0 and 0.5 < detection["auroc"] <= 1.0
    assert 0.0 <= detection["noise_matrix_mae"] < 0.2
    assert detection["noise_rate_after"] < run["noise_rate_actual"]  # pruning removed some noise
    assert "| sym50 | cleanlab | " in (out / "table.md").read_text()


def test_cleanlab_folds_are_stratified_and_seeded() -> None:
    peer = _benchmark_module("cleanlab_peer")
    labels = np.repeat(np.arange(3), [10, 7, 5])
    folds = peer.stratified_folds(labels, 5, seed=0)
    for c in range(3):
        sizes = np.bincount(folds[labels == c], minlength=5)
        assert sizes.max() - sizes.min() <= 1  # each class spread evenly over the folds
    np.testing.assert_array_equal(folds, peer.stratified_folds(labels, 5, seed=0))
    assert not np.array_equal(folds, peer.stratified_folds(labels, 5, seed=1))


def test_quality_table_reports_mean_and_std_over_seeds() -> None:
    quality = _benchmark_module("quality")
    assert quality.mean_std([0.80, 0.82]) == "81.00 ± 1.00"  # population std of 80 and 82
    assert quality.mean_std([0.8]) == "80.00" and quality.mean_std([None]) == ""

    def run(seed: int, acc: float) -> dict:
        return {
            "noise": "sym50",
            "method": "ce",
            "seed": seed,
            "last_test_acc": acc,
            "best_val_test_acc": acc,
            "single_network_test_acc": acc,
            "detection": None,
            "epoch_seconds": {"warmup": 1.0},
            "wall_seconds": 10.0,
            "peak_rss_mb": 100.0,
        }

    text = quality.table([run(0, 0.80), run(1, 0.82), run(2, 0.84)])
    assert "| sym50, last epoch | 82.00 ± 1.63 (n=3) |" in text
    assert text.count("| sym50 | ce | ") == 3


@pytest.mark.integration
def test_stream_smoke_times_both_paths_with_identical_losses(tmp_path: Path) -> None:
    stream = _benchmark_module("stream")
    threads = torch.get_num_threads()  # the benchmark sets torch's thread count for the whole process
    stream.main(["--smoke", "--shapes", "fmnist", "--threads", str(threads), "--out", str(tmp_path)])
    result = json.loads((tmp_path / "stream.json").read_text())
    figures = result["shapes"]["fmnist"]
    assert set(result["shapes"]) == {"fmnist"} and figures["source"] == "synthetic"
    assert figures["losses_identical"] and figures["steps"] == 4 and figures["image_shape"] == [1, 28, 28]
    for path in ("resident", "stream"):
        assert figures[path]["samples_per_second"] > 0 and figures[path]["cpu_seconds"] > 0
    assert figures["ratio"] == pytest.approx(
        figures["stream"]["samples_per_second"] / figures["resident"]["samples_per_second"]
    )
    assert result["cpu"] and result["torch"] == torch.__version__ and result["threads"] == threads
    assert "| fmnist 1x28x28 |" in (tmp_path / "stream.md").read_text()


def test_crawl_scale_images_are_distinct_and_growth_compares_one_sitting(tmp_path: Path) -> None:
    crawl_scale = _benchmark_module("crawl_scale")
    crawl_scale.generate(tmp_path / "crawl", 30)
    files = sorted((tmp_path / "crawl").rglob("*.ppm"))
    assert len(files) == 30 and len({f.parent.name for f in files}) == 10
    assert len({f.read_bytes() for f in files}) == 30  # no two alike, so ingest keeps every one
    header = f"P6\n{crawl_scale.SIDE} {crawl_scale.SIDE}\n255\n".encode()
    assert all(
        f.read_bytes().startswith(header) and f.stat().st_size == len(header) + 64 * 64 * 3 for f in files
    )
    crawl_scale.generate(tmp_path / "small", 10, side=8)  # web_finetune.py's 224 px crawl, smaller
    assert all(f.read_bytes()[:11] == b"P6\n8 8\n255\n" for f in (tmp_path / "small").rglob("*.ppm"))
    assert {f.stat().st_size for f in (tmp_path / "small").rglob("*.ppm")} == {11 + 8 * 8 * 3}

    def step(seconds: float, sitting: str) -> dict[str, object]:
        return {
            "seconds": seconds + 5,
            "net_seconds": seconds,
            "cpu_seconds": 3 * seconds,
            "peak_rss_mib": 1.0,
            "peak_anon_mib": 2.0,
            "sitting": sitting,
        }

    rows = [
        {
            "n": 10,
            "steps": {
                "ingest": step(1.0, "a"),
                "purify": step(4.0, "b"),
            },
        },
        {"n": 100, "steps": {"ingest": step(30.0, "a")}},
        {
            "n": 1000,
            "steps": {
                "ingest": step(99.0, "c"),
                "purify": step(40.0, "b"),
            },
        },
    ]
    env = {"cpu": "x", "cores": 2, "torch": "t", "threads": 1, "commit": "c"}
    table = crawl_scale.markdown({"environment": env, "rows": rows})
    # ingest's largest N was measured in sitting c alone: no ratio; purify's two sizes share sitting b
    assert "| ingest | 1e+01" not in table and "| ingest | 1e+02" not in table
    assert "| purify | 1e+01 -> 1e+03 | 100x | 10.00x | 10.00x | 1.00x |" in table
    assert "| 1e+03 | purify | b | 45.0 | 40.0 | 120.0 | 40000.0 | 1 | 2 |" in table
    rows[1]["steps"]["ingest"]["cold_cache"] = True
    rows[1]["steps"]["ingest"]["sitting"] = "2026-12-05T06:29:46Z"
    table = crawl_scale.markdown({"environment": env, "rows": rows})
    assert "| 1e+02 | ingest, cold cache | 2026-12-05 06:29 | 35.0 |" in table


def test_crawl_scale_cold_cache_names_the_file_it_could_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crawl_scale = _benchmark_module("crawl_scale")
    monkeypatch.setattr(crawl_scale, "DROP_CACHES", tmp_path / "missing" / "drop_caches")
    with pytest.raises(SystemExit, match="--cold-cache needs root to write .*missing/drop_caches"):
        crawl_scale.drop_page_cache()


def test_tuning_slices_are_disjoint_from_the_benchmarks_images_and_each_other() -> None:
    slicer = _benchmark_module("tuning_slice")
    labels = np.tile(np.arange(3), 4300)  # 4,300 images per class, interleaved
    images = {}
    for part, splits in slicer.PARTS.items():
        rows = slicer.slice_rows(labels, part)
        for split, (start, stop) in splits.items():
            picked = np.array([i for i, s in rows if s == split])
            assert np.bincount(labels[picked]).tolist() == [stop - start] * 3
            rank = picked // 3  # position of each image among its class's images
            assert rank.min() == start and rank.max() == stop - 1
        assert min(i // 3 for i, _ in rows) >= 1000  # never one of the CPU profile's first 1,000 per class
        images[part] = {i for i, _ in rows}
        assert len(images[part]) == len(rows)
    assert not images[1] & images[2]


def test_purify_ceiling_rankings_by_hand() -> None:
    ceiling = _benchmark_module("purify_ceiling")
    labels = np.array([0, 1])
    final = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    dynamics = {
        "probs": np.array([[0.5, 0.4, 0.1], [0.8, 0.1, 0.1]]),
        "loss": np.array([0.4, 1.9]),
        "held_out_probs": np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]),
    }
    joint = np.array([[0.4, 0.1, 0.0], [0.0, 0.3, 0.0], [0.1, 0.05, 0.05]])  # row 1: no off-diagonal mass
    averaged = (dynamics["probs"] + final) / 2  # [0.6, 0.3, 0.1] and [0.7, 0.2, 0.1]
    noise_matrix = np.array([[0.8, 0.2, 0.0], [0.1, 0.7, 0.1], [0.1, 0.1, 0.9]])  # P(ỹ = i | y* = j)
    scores = ceiling.rankings(labels, averaged, dynamics, joint, noise_matrix)
    np.testing.assert_allclose(scores["margin"], [-(0.6 - 0.3), -(0.2 - 0.7)])
    np.testing.assert_allclose(scores["self_confidence"], [-0.6, -0.2])
    np.testing.assert_allclose(scores["dynamics_loss"], [0.4, 1.9])
    np.testing.assert_allclose(scores["held_out"], [-0.9, -0.7])
    # row 0's source is class 1 alone; row 1 has none, so its sources weigh 1/2 each
    np.testing.assert_allclose(scores["noise_source_margin"], [-(0.6 - 0.3), -(0.2 - (0.7 + 0.1) / 2)])
    # p_j · T[ỹ, j]: sample 0 [0.48, 0.06, 0] → 0.06 / 0.54; sample 1 [0.07, 0.14, 0.01] → 0.08 / 0.22
    np.testing.assert_allclose(scores["noise_posterior"], [1 / 9, 4 / 11])
    # Unmixed: the belief b solves T b = q: b = [2/3, 1/3, 0] and [5/6, 1/6, 0] (no clipping), and
    # Σ_j b_j T[ỹ, j] = q_ỹ, so P(wrong) = 1 − b_ỹ T[ỹ, ỹ] / q_ỹ = 1 − (8/15) / 0.6 and 1 − (7/60) / 0.2.
    np.testing.assert_allclose(noise_matrix @ np.array([2 / 3, 1 / 3, 0]), averaged[0])
    np.testing.assert_allclose(noise_matrix @ np.array([5 / 6, 1 / 6, 0]), averaged[1])
    np.testing.assert_allclose(scores["unmixed_posterior"], [1 / 9, 5 / 12])
    assert set(scores) == set(ceiling.RANKINGS)


def test_expected_f1_cut_by_hand() -> None:
    ceiling = _benchmark_module("purify_ceiling")
    # Σ q = 2.1. Sorted q = 0.9, 0.8, 0.3, 0.1: expected F1 2·0.9/3.1, 2·1.7/4.1, 2·2.0/5.1, 2·2.1/6.1
    # = 0.581, 0.829, 0.784, 0.689: the best cut flags the top two (q ≥ 0.8, about F*/2 = 0.41 and up).
    wrong = np.array([0.3, 0.9, 0.1, 0.8])
    assert ceiling.expected_f1_cut(wrong).tolist() == [False, True, False, True]
    # Near-certain labels: one sure error alone is flagged, not the doubtful rest.
    assert ceiling.expected_f1_cut(np.array([0.99, 0.05, 0.05])).tolist() == [True, False, False]


def test_relabel_gates_by_hand() -> None:
    gate = _benchmark_module("relabel_gate")
    # The hand case of tests/maths/test_purification.py: T = [[1/2, 1/3], [1/2, 2/3]], P(wrong) =
    # 2/29, 8/11, 1/13, 9/37, 3/4; τ = 0.4 flags samples 1 and 4.
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    # The final model is unsure of sample 4 (0.56 against the kept sample 0's 0.9 for class 0): the
    # typical gate drops it; by the posterior of the averaged probabilities its class 0 is right with
    # probability 3/4 > 1 − τ, so that gate relabels it; by the final probabilities' posterior
    # (0.28 / (0.28 + 0.44 · 2/3) = 21/43 < 0.6) it is dropped.
    final = probs.copy()
    final[4] = [0.56, 0.44]
    new = gate.gate_labels(labels, probs, final, 0.4)
    assert new["typical"].tolist() == [0, 1, 1, 1, -1]
    assert new["posterior"].tolist() == [0, 1, 1, 1, 0]
    assert new["posterior_final"].tolist() == [0, 1, 1, 1, -1]
    truth = np.array([0, 1, 1, 0, 1])  # sample 3 is noisy and kept; sample 4's relabel to 0 is wrong
    assert gate.figures(new["posterior"], labels, truth) == {
        "relabelled": 2,
        "relabel_accuracy": 0.5,
        "correct_relabels": 1,
        "noise_left": 0.4,
        "labelled_fraction": 1.0,
    }


def test_noisy_label_probs_figures_by_hand() -> None:
    study = _benchmark_module("noisy_label_probs")
    # Samples 0 to 3 are kept (sample 1 wrongly), 4 relabelled rightly, 5 relabelled wrongly, 6 dropped.
    truth = np.array([0, 1, 1, 0, 1, 0, 1])
    given = np.array([0, 0, 1, 0, 0, 1, 0])  # noisy: 1, 4, 5, 6
    decision = np.array([0, 0, 0, 0, 1, 1, 2])
    new_labels = np.array([0, 0, 1, 0, 1, 1, -1])
    score = np.array([0.1, 0.2, 0.0, 0.3, 0.9, 0.8, 0.7])  # ranks the noisy 1 below the clean 3: AUROC 11/12
    figures = study.figures(decision, new_labels, score, given, truth)
    assert figures == pytest.approx(
        {  # flags 4, 5, 6: precision 1, recall 3/4
            "f1": 6 / 7,
            "auroc": 11 / 12,
            "relabelled": 2 / 7,
            "relabel_accuracy": 0.5,
            "dropped": 1 / 7,
            "noise_left": 2 / 6,
        }
    )
    # Every variant decides every sample; the API's default unmixes, `robust` reads the probabilities as
    # they are: on the two-class hand case of tests/maths/test_purification.py T̂ is not identifiable,
    # so both give the same decisions.
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    decided = study.decisions(labels, probs)
    assert set(decided) == set(study.VARIANTS)
    assert decided["noisy_labels"][0].tolist() == decided["robust"][0].tolist() == [0, 1, 0, 0, 1]


def test_noisy_label_probs_anchor_matrix_and_estimators_by_hand() -> None:
    study = _benchmark_module("noisy_label_probs")
    # 100 samples; p_0 runs 0.00..0.99 and p_1 = 1 - p_0 runs 0.01..1.00. The 97th percentiles are 0.9603
    # and 0.9703, so the anchors are the samples with p_0 = 0.97 and p_1 = 0.98: the columns of T̂.
    p0 = np.arange(100) / 100.0
    probs = np.stack([p0, 1.0 - p0], axis=1)
    np.testing.assert_allclose(study.anchor_matrix(probs), [[0.97, 0.02], [0.03, 0.98]], atol=1e-12)
    # The injected matrix has no error against itself, and every estimator decides every sample.
    truth = (p0 < 0.5).astype(np.int64)
    given = truth.copy()
    given[::5] = 1 - given[::5]
    rows = study.estimator_figures(given, truth, probs)
    assert set(rows) == set(study.ESTIMATORS)
    assert rows["injected"]["mae"] == 0.0
    assert all(0.0 <= row["f1"] <= 1.0 and 0.0 <= row["auroc"] <= 1.0 for row in rows.values())


def test_division_probe_per_class_figures_on_a_hand_case() -> None:
    probe = _benchmark_module("division_probe")
    # Class 0: samples 0-3, sample 3 noisy; class 1: samples 4-5, both clean (left out); class 2: none.
    given = np.array([0, 0, 0, 0, 1, 1])
    noisy = np.array([False, False, False, True, False, False])
    labeled = np.array([[True, True, False, True, True, True], [True, False, False, True, True, True]])
    # An inverted score: the noisy sample scores lowest, below every clean one (AUROC 0); the other ranks
    # it above two of the three clean samples and ties the third (AUROC (2 + 0.5) / 3).
    scores = {
        "inverted": np.array([0.9, 0.8, 0.7, 0.1, 0.0, 0.0]),
        "mixed": np.array([0.2, 0.5, 0.1, 0.5, 0, 0]),
    }
    figures = probe.per_class(given, noisy, labeled, scores, ["a", "b", "c"])
    assert list(figures) == ["a"]
    assert figures["a"]["noisy_share"] == 0.25
    assert figures["a"]["inverted"] == 0.0
    assert figures["a"]["mixed"] == pytest.approx(2.5 / 3)
    assert figures["a"]["labeled_clean"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)  # per sample, mean of nets
    assert figures["a"]["labeled_noisy"] == 1.0


def test_division_probe_variant_syntax() -> None:
    probe = _benchmark_module("division_probe")
    assert probe.parse_variant("base") == ("base", [])
    assert probe.parse_variant("ce:warmup.loss=ce,warmup.confidence_penalty=1") == (
        "ce",
        ["warmup.loss=ce", "warmup.confidence_penalty=1"],
    )


def test_quality_runs_any_preset_as_a_method_and_tables_it_after_the_comparison() -> None:
    quality = _benchmark_module("quality")
    base = BENCHMARKS.parent / "params.yaml"
    assert quality.ALL_METHODS[: len(quality.METHODS)] == quality.METHODS
    params = quality.method_params(base, "smr_cifar10", "sym50", ["data.channels=1"])
    assert params.model.name == "preact_resnet18"  # the published settings, not the CPU profile's
    assert (params.ssl_train.batch_size, params.ssl_train.lambda_u, params.co_divide.per_class) == (
        128,
        25.0,
        False,
    )
    assert (params.inject_noise.mode, params.inject_noise.rate) == ("symmetric", 0.5)
    assert (params.group_regularize.epochs, params.retrain.epochs) == (0, 0)  # the method alone, as `smr`
    runs = [
        {
            "method": m,
            "noise": "sym50",
            "seed": 0,
            "detection": None,
            "epoch_seconds": {},
            "last_test_acc": acc,
            "best_val_test_acc": acc,
            "best_val_epoch": 1,
            "wall_seconds": 1.0,
            "peak_rss_mb": 1.0,
        }
        for m, acc in (("smr_cifar10", 0.84), ("ce", 0.8))
    ]
    header = quality.table(runs).splitlines()[0]
    assert header == "| setting | ce | smr_cifar10 |"


def test_web_finetune_agreement_and_table_by_hand(tmp_path: Path) -> None:
    web = _benchmark_module("web_finetune")
    resident = [("keep", "cat"), ("relabel", "dog"), ("drop", "")]
    rows = {"resident": resident, "stream": [resident[0], ("keep", ""), resident[2]]}  # one of 3 differs
    for path, decided in rows.items():
        (tmp_path / path / "purified").mkdir(parents=True)
        lines = ["decision,new_label,noise_score"] + [f"{d},{n},0.5" for d, n in decided]
        (tmp_path / path / "purified" / "manifest.csv").write_text("\n".join(lines) + "\n")
        score = np.array([0.1, 0.2, 0.3]) + (0.25 if path == "stream" else 0.0)
        np.savez(tmp_path / path / "purified" / "scores.npz", noise_score=score, decision=np.array([0, 1, 2]))
    run = {
        "wall_seconds": 10.0,
        "epoch_seconds": {"warmup": 1.0, "ssl_train": 2.0, "group_regularize": None, "retrain": 0.5},
        "peak_cuda_mib": None,
        "last_test_acc": 0.8,
        "detection": {"f1": 0.9, "auroc": 0.95, "relabel_accuracy": None},
    }
    runs = {"resident": run, "stream": {**run, "wall_seconds": 12.5, "last_test_acc": 0.79}}
    agree = web.agreement(runs, tmp_path)
    assert agree["decisions_identical"] is False and agree["decision_agreement"] == pytest.approx(2 / 3)
    assert agree["max_score_difference"] == {"noise_score": pytest.approx(0.25)}  # ints are not compared
    assert agree["test_acc_difference"] == pytest.approx(-0.01)
    result = {"command": "c", "device": "cpu", "torch": "t", "commit": "x", "images": 3, "side": 8}
    result |= {"ingest_seconds": 1.0, "settings": ["a=1"], "runs": runs, "agreement": agree}
    table = web.markdown(result)
    assert "| resident | 10.0 | 1.00 / 2.00 /  / 0.50 |  | 80.00 | 0.900 | 0.950 |  |" in table
    assert "(resident wall / stream wall): 0.800" in table and "agreement 0.6667" in table


def test_metadata_memory_builds_a_loadable_store_and_writes_its_manifest(tmp_path: Path) -> None:
    from labelsieve.data.store import load_dataset

    module = _benchmark_module("metadata_memory")
    module.make_store(tmp_path / "store", 500)
    samples = load_dataset(tmp_path / "store").samples
    assert [len(samples[split]["id"]) for split in ("train", "val", "test")] == [400, 50, 50]
    assert len({sha for table in samples.values() for sha in table["sha256"].tolist()}) == 500
    for step in module.STEPS:
        assert module.measure(step, tmp_path / "store")["seconds"] > 0
    lines = (tmp_path / "store" / "manifest.csv").read_text().splitlines()
    assert len(lines) == 401 and lines[1].startswith(f"{samples['train']['id'][0]},0,/crawl/class0/")


def test_detection_ceiling_figures_by_hand() -> None:
    study = _benchmark_module("detection_ceiling")
    truth = np.array([0, 0, 0, 1, 1, 1])
    given = np.array([0, 1, 0, 1, 0, 1])  # noisy: 1 and 4, so T = [[2/3, 1/3], [1/3, 2/3]]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.1, 0.9]])
    # P(y* ≠ ỹ | x, ỹ) = p_other T[ỹ, other] / Σ_j p_j T[ỹ, j]: 1/19, 2/3, 1/4, 1/9, 7/13, 1/19.
    figures = study.ceiling(given, truth, probs)
    assert figures == pytest.approx(
        {
            "noise_rate": 2 / 6,
            "auroc": 1.0,
            "f1_default": 1.0,  # τ 0.4 flags exactly 1 and 4
            "f1_best": 1.0,
            "best_threshold": 0.3,  # the lowest τ of the grid above 1/4
            "clean_accuracy": 1.0,
        }
    )


def test_crawl_scale_stand_ins_have_the_stages_shapes_and_purify_reads_them(tmp_path: Path) -> None:
    crawl_scale = _benchmark_module("crawl_scale")
    root, out = tmp_path / "root", tmp_path / "out"
    common = ["--sizes", "300", "--root", str(root), "--out", str(out), "--threads", "1"]
    chain = "ingest,inject_noise,warmup,co_divide,ssl_train,group_regularize"
    crawl_scale.main([*common, "--steps", chain])  # ssl-train and group-regularize write the real files
    work = root / "n300"
    real = {name: dict(np.load(work / f"ssl/{name}")) for name in ("dynamics.npz", "partition.npz")}
    real["soft_labels.npy"] = {"soft": np.load(work / "group/soft_labels.npy")}
    crawl_scale.main([*common, "--steps", "purify", "--purify-inputs", "stand-in"])
    stand_in = {name: dict(np.load(work / f"ssl/{name}")) for name in ("dynamics.npz", "partition.npz")}
    stand_in["soft_labels.npy"] = {"soft": np.load(work / "group/soft_labels.npy")}
    for name, arrays in real.items():
        assert stand_in[name].keys() == arrays.keys(), name
        for key, value in arrays.items():
            assert (stand_in[name][key].shape, stand_in[name][key].dtype) == (value.shape, value.dtype), key
    assert np.allclose(stand_in["soft_labels.npy"]["soft"].sum(axis=2), 1.0)
    assert np.allclose(stand_in["dynamics.npz"]["probs"].sum(axis=1), 1.0, atol=1e-5)
    for k in (1, 2):
        assert (work / f"ssl/net{k}.pt").read_bytes() == (work / f"warmup/net{k}.pt").read_bytes()
    result = json.loads((out / "crawl_scale.json").read_text())
    assert result["rows"][0]["steps"]["purify"]["inputs"] == "stand-in"
    assert "| 3e+02 | purify, stand-in inputs |" in (out / "crawl_scale.md").read_text()
    assert (work / "purified" / "scores.npz").is_file()


def test_refit_forward_loss_by_hand() -> None:
    refit = _benchmark_module("refit_detection")
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = torch.tensor([1, 0])
    matrix = np.array([[0.6, 0.3, 0.0], [0.4, 0.7, 0.1], [0.0, 0.0, 0.9]])  # columns: P(ỹ | y* = j)
    p = np.exp(logits.double().numpy())
    p /= p.sum(axis=1, keepdims=True)
    expected = -np.mean([np.log(matrix[1] @ p[0]), np.log(matrix[0] @ p[1])])
    got = refit.forward_loss(logits, labels, torch.from_numpy(matrix).float())
    assert float(got) == pytest.approx(expected, rel=1e-6)
    same = refit.forward_loss(logits, labels, torch.eye(3))  # T = I: plain cross-entropy
    assert float(same) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, labels)), rel=1e-6)


def test_neighbour_posterior_by_hand() -> None:
    study = _benchmark_module("neighbour_evidence")
    matrix = np.array([[0.6, 0.4], [0.4, 0.6]])  # a 40% swap between two classes
    given = np.array([0, 0, 0, 1, 1])
    nearest = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 4], [4, 0, 1], [3, 0, 1]])
    wrong = study.neighbour_posterior(given, nearest, matrix, 0.5)
    # sample 0 (ỹ 0; neighbours' labels 0, 0, 1): odds of class 1 over 0 are (0.4/0.6) · (0.4/0.6)^(0.5·(2-1))
    odds = (0.4 / 0.6) * (0.4 / 0.6) ** 0.5
    assert wrong[0] == pytest.approx(odds / (1 + odds))
    # sample 3 (ỹ 1; labels 1, 0, 0): class 0 over 1 is (0.4/0.6) · (0.6/0.4)^(0.5·(2-1))
    odds = (0.4 / 0.6) * (0.6 / 0.4) ** 0.5
    assert wrong[3] == pytest.approx(odds / (1 + odds))
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.5, 0.5], [0.8, 0.2], [0.5, 0.5]])
    with_probs = study.neighbour_posterior(given, nearest, matrix, 0.5, probs)
    odds = (0.4 / 0.6) * (0.6 / 0.4) ** 0.5 * (0.8 / 0.2)
    assert with_probs[3] == pytest.approx(odds / (1 + odds))


def test_posterior_division_uses_each_networks_own_posterior(make_params) -> None:
    study = _benchmark_module("posterior_division")
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    labels = torch.arange(40) % 3
    dataset = Dataset(root=Path("."), classes=["a", "b", "c"], meta={"content_hash": "c0ffee"}, samples={})
    data = TrainingData(
        images, labels, images, labels, images, labels, None, (0.5,), (0.25,), dataset, "c0ffee:key"
    )
    networks = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        networks.append(build_model("small_cnn", num_classes=3, in_channels=1).eval())
    given = labels.numpy()
    expected = []
    for model in networks:
        p = torch.softmax(loop.logits_on(model, images, data, make_params()), dim=1).double().numpy()
        t = purification.single_flips(confident.estimate(given, p)).noise_matrix  # purify's T̂
        joint = p * t[given]  # p_j T[ỹ, j], float64 by hand
        expected.append(joint[np.arange(40), given] / joint.sum(axis=1))
    # Untrained networks give clean probabilities of about 0.15 to 0.55, and where depends on the CPU's
    # kernels (bf16 or fp32): the threshold sits inside both networks' ranges, so each splits its samples.
    low, high = max(e.min() for e in expected), min(e.max() for e in expected)
    assert low < high
    params = make_params(f"co_divide.threshold={(low + high) / 2}")
    result = study.divide_by_posterior(networks, data, params, tag="t", min_size=1)
    assert result.fell_back == [False, False]
    for k in range(2):
        assert result.clean_prob[k].numpy() == pytest.approx(expected[k], abs=1e-6)
        assert torch.equal(result.labeled[k], result.clean_prob[k] > params.co_divide.threshold)
        assert 0 < int(result.labeled[k].sum()) < 40
    assert not torch.equal(result.clean_prob[0], result.clean_prob[1])
    stage_divide = co_divide.divide
    with study.division_by("posterior"):
        assert co_divide.divide is study.divide_by_posterior
    assert co_divide.divide is stage_divide
    gmm = stage_divide(networks, data, params, tag="epoch4", min_size=1)
    with study.division_by("posterior_first"):  # the co_divide stage's tag alone goes to the posterior
        first = co_divide.divide(networks, data, params, tag="co_divide", min_size=1)
        later = co_divide.divide(networks, data, params, tag="epoch4", min_size=1)
    assert torch.equal(first.clean_prob, result.clean_prob)
    assert torch.equal(later.clean_prob, gmm.clean_prob)
    assert not torch.equal(gmm.clean_prob, result.clean_prob)
    assert co_divide.divide is stage_divide
    counts = [np.array([1, 2, 0]), np.array([3, 0, 1])]
    counted = study.divide_by_posterior(networks, data, params, tag="t", min_size=1, counts=counts)
    assert torch.equal(counted.clean_prob, result.clean_prob)
    for k in range(2):
        for c in range(3):
            members = labels == c
            out, kept = members & ~counted.labeled[k], members & counted.labeled[k]
            assert int(out.sum()) == counts[k][c]
            if counts[k][c]:  # the left-out members are the least likely to be clean
                assert counted.clean_prob[k][out].max() <= counted.clean_prob[k][kept].min()
    with study.division_by("posterior_counts"):
        with pytest.raises(RuntimeError, match="co_divide stage must divide"):
            co_divide.divide(networks, data, params, tag="epoch4", min_size=1)
        co_divide.divide(networks, data, params, tag="co_divide", min_size=1)
        later = co_divide.divide(networks, data, params, tag="epoch4", min_size=1)
    for k, model in enumerate(networks):
        p = torch.softmax(loop.logits_on(model, images, data, params), dim=1).double().numpy()
        left_out = np.bincount(given[~later.labeled[k].numpy()], minlength=3)
        assert left_out.tolist() == confident.estimate(given, p).flag_counts().tolist()  # the study's counts


def test_dynamics_window_records_each_division_and_averages_by_hand() -> None:
    study = _benchmark_module("dynamics_window")
    generator = torch.Generator().manual_seed(0)
    probs = [torch.softmax(torch.randn(2, 4, 3, generator=generator), dim=2) for _ in range(3)]
    labels = torch.tensor([0, 1, 2, 0])
    recorded: list[np.ndarray] = []
    plain = TrainingDynamics.create(4, 3, torch.device("cpu"))
    patched = TrainingDynamics.create(4, 3, torch.device("cpu"))
    stage_add = TrainingDynamics.add
    with study.recording(recorded):
        for p in probs:
            patched.add(p, labels)
    assert TrainingDynamics.add is stage_add
    for p in probs:
        plain.add(p, labels)
    assert all(torch.equal(plain.means()[k], patched.means()[k]) for k in plain.means())  # training unchanged
    divisions = np.stack(recorded)
    expected = np.stack([p.double().numpy().mean(axis=0) for p in probs])  # each division's network mean
    np.testing.assert_allclose(divisions, expected, rtol=1e-12)
    np.testing.assert_allclose(divisions.mean(axis=0), plain.means()["probs"].numpy(), rtol=1e-12)
    final = np.full((4, 3), 1.0 / 3.0)
    variants = study.averages(divisions, final)
    d0, d1, d2 = expected
    np.testing.assert_allclose(variants["final"], final)
    np.testing.assert_allclose(variants["last_half"], ((d1 + d2) / 2 + final) / 2, rtol=1e-12)  # from 3 // 2
    np.testing.assert_allclose(variants["ramp"], ((d0 + 2 * d1 + 3 * d2) / 6 + final) / 2, rtol=1e-12)


def test_pruned_noise_matrix_by_hand() -> None:
    study = _benchmark_module("pruned_noise_matrix")
    # Column 0: off-diagonal 0.3 and 0.05; at r 0.25 the 0.05 (< 0.075) goes and the column is renormalised.
    # Column 1: off-diagonal 0.1 and 0.1, alike, so both stay. Column 2 has nothing off the diagonal.
    matrix = np.array([[0.65, 0.1, 0.0], [0.3, 0.8, 0.0], [0.05, 0.1, 1.0]])
    np.testing.assert_allclose(
        study.pruned(matrix, 0.25), [[0.65 / 0.95, 0.1, 0.0], [0.3 / 0.95, 0.8, 0.0], [0.0, 0.1, 1.0]]
    )
    np.testing.assert_array_equal(study.pruned(matrix, 0.0), matrix)  # r 0: the rule's own T̂
    # With c 0.9 column 0 (0.3 of 0.35 off-diagonal, 0.86) is not concentrated enough and stays whole.
    np.testing.assert_array_equal(study.pruned(matrix, 0.25, 0.9), matrix)
    np.testing.assert_allclose(study.pruned(matrix, 0.25, 0.8), study.pruned(matrix, 0.25))


def test_noise_matrix_estimators_on_hand_cases() -> None:
    study = _benchmark_module("noise_matrix_sources")
    # 6 samples, 2 classes, N/C = 3: at share 2/3 each column reads the given labels of its 2 surest samples.
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]])
    given = np.array([0, 1, 0, 1, 1, 0])
    top = study.confident_top(given, probs, share=2 / 3)
    np.testing.assert_allclose(top, [[0.5, 0.5], [0.5, 0.5]])  # class 0: samples 0, 1; class 1: samples 5, 4
    # One round from a uniform start on one-hot probabilities: each column is the given-label histogram of
    # the samples predicted to be that class (class 0: labels 0, 1, 0; class 1: labels 1, 1, 0).
    hard = np.eye(2)[[0, 0, 0, 1, 1, 1]]
    matrix = study.fixed_point(given, hard, np.full((2, 2), 0.5), rounds=1)
    np.testing.assert_allclose(matrix, [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
