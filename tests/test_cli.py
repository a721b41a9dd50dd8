import json

import numpy as np

from labelsieve.cli import main


def test_cli_ingest_then_inject_noise_on_digits(tmp_path, capsys):
    common = ["--preset", "digits", "--set", "runtime.progress=never"]
    assert main(["ingest", *common, "--out-dir", str(tmp_path / "ds")]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == 10
    args = [
        "inject-noise",
        *common,
        "--set",
        "inject_noise.rate=0.2",
        "--dataset-dir",
        str(tmp_path / "ds"),
        "--out-dir",
        str(tmp_path / "labels"),
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    labels = np.load(tmp_path / "labels" / "labels.npz")
    assert summary["train"] == float(np.mean(labels["train_labels"] != labels["train_true_labels"]))


def test_cli_bad_param_exits_2_with_the_key(tmp_path, capsys):
    code = main(["ingest", "--set", "inject_noise.rate=1.3", "--out-dir", str(tmp_path)])
    assert code == 2
    assert "inject_noise.rate: 1.3 is outside [0, 1)" in capsys.readouterr().err


def test_cli_missing_dataset_exits_2_naming_the_fix(tmp_path, capsys):
    code = main(["inject-noise", "--dataset-dir", str(tmp_path / "nope")])
    assert code == 2
    assert "dataset.json is missing (run `labelsieve ingest`)" in capsys.readouterr().err


def test_cli_export_without_purify_output_exits_2(tmp_path, capsys):
    code = main(
        [
            "export",
            "--dataset-dir",
            str(tmp_path),
            "--purified-dir",
            str(tmp_path / "p"),
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "labelsieve export: error:" in capsys.readouterr().err
