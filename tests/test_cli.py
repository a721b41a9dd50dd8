import importlib.metadata
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from labelsieve.cli import first_paragraph, first_sentence, main
from labelsieve.stages import STAGES


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
    code = main(["inject-noise", "--dataset-dir", str(tmp_path)])  # the folder is there, but empty
    assert code == 2
    assert "dataset.json is missing (run `labelsieve ingest`)" in capsys.readouterr().err


def test_cli_missing_input_dir_names_the_flag_and_the_stage_that_makes_it(tmp_path, capsys):
    dirs = ["--dataset-dir", str(tmp_path), "--labels-dir", str(tmp_path), "--ssl-dir", str(tmp_path)]
    code = main(["purify", *dirs, "--group-dir", str(tmp_path / "group"), "--out-dir", str(tmp_path / "p")])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        f"labelsieve purify: error: input --group-dir {tmp_path / 'group'} does not exist; the "
        f"group_regularize stage makes it (labelsieve group-regularize --out-dir {tmp_path / 'group'})\n"
    )
    assert not (tmp_path / "p").exists()


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


def test_cli_help_imports_neither_torch_nor_the_stage_modules():
    probe = (
        "import sys\n"
        "from labelsieve.cli import main\n"
        "for argv in (['--help'], ['purify', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ['torch', 'boto3', 'kfp', *(f'labelsieve.stages.{s}' for s in ('purify', 'ssl_train'))]\n"
        "print('IMPORTED', [m for m in heavy if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "usage: labelsieve purify" in done.stdout
    assert done.stdout.splitlines()[-1] == "IMPORTED []"


def test_cli_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"labelsieve {importlib.metadata.version('labelsieve')}\n"


def test_cli_stage_help_keeps_the_wrapped_first_sentence_whole(capsys):
    doc = "Stage 9, `x`: a first sentence that\n    wraps. A second one.\n\nMore detail."
    assert first_sentence(doc) == "Stage 9, `x`: a first sentence that wraps."
    assert first_paragraph(doc) == "Stage 9, `x`: a first sentence that wraps. A second one."
    for stage in STAGES.values():
        assert re.search(r"[.!?]$", first_sentence(stage.doc)), stage.name
    with pytest.raises(SystemExit):
        main(["co-divide", "--help"])
    help_text = "".join(capsys.readouterr().out.split())  # argparse may wrap lines at hyphens
    assert "".join(first_paragraph(STAGES["co_divide"].doc).split()) in help_text
