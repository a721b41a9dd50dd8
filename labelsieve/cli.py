"""The `labelsieve` command. Each subcommand is a stage name with hyphens (`inject-noise` runs
`inject_noise`) and only adapts argv to the stage's `run()`; `predict` classifies images with a model
package, and `publish` gates and publishes one (labelsieve/publish.py).

Torch and the stage modules are imported only when a command runs, so `--help` and `--version` are quick.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from labelsieve.config import Params, load_params, preset_names
from labelsieve.errors import LabelsieveError
from labelsieve.pipeline_cli import add_pipeline_command, run_pipeline_command
from labelsieve.stages import STAGES, Stage, producer

METRICS_DIR = "metrics"  # where `labelsieve run` has evaluate write the git-tracked metrics and plot data


def first_paragraph(doc: str) -> str:
    """The first paragraph of a docstring as one line, so a wrapped first sentence stays whole."""
    return re.sub(r"\s+", " ", doc.strip().split("\n\n")[0]).strip()


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph (up to a full stop before a capital)."""
    paragraph = first_paragraph(doc)
    found = re.match(r"(.+?[.!?])(?:\s+(?=[A-Z])|$)", paragraph)
    return found.group(1) if found else paragraph


def package_version() -> str:
    """The installed distribution's version (package metadata)."""
    try:
        return version("labelsieve")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one subcommand per stage."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--params", help="params file (default: ./params.yaml if present, else built-in defaults)"
    )
    common.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="NAME",
        help=f"apply a preset overlay; repeatable; one of: {', '.join(preset_names())}",
    )
    common.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        dest="overrides",
        help="override one param (value parsed as YAML); repeatable",
    )
    parser = argparse.ArgumentParser(prog="labelsieve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        sub = commands.add_parser(
            stage.name.replace("_", "-"),
            parents=[common],
            help=first_sentence(stage.doc),
            description=first_paragraph(stage.doc),
        )
        for name, default in stage.inputs.items():
            sub.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                default=default,
                help="input directory (default: %(default)s)",
            )
        sub.add_argument("--out-dir", default=stage.out_dir, help="output directory (default: %(default)s)")
        sub.add_argument(
            "--summary-json",
            metavar="PATH",
            help="also write the printed summary here (under torchrun: rank 0 only; labelsieve/launch.py)",
        )
        if stage.name == "evaluate":
            sub.add_argument(
                "--metrics-dir",
                help="also write metrics.json, plots/ and timings.json here (dvc.yaml: metrics, git-tracked)",
            )
        sub.set_defaults(stage=stage.name)
    _add_predict(commands)
    _add_export(commands)
    _add_publish(commands, common)
    add_pipeline_command(commands, [common])
    _add_run(commands, common)
    return parser


def _params(args: argparse.Namespace) -> Params:
    """Params from --params (else ./params.yaml if present), --preset and --set; applies runtime.threads
    and labelsieve's malloc thresholds (engine/allocator.py)."""
    params_file = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    params = load_params(params_file, presets=args.preset, overrides=args.overrides)
    from labelsieve.engine.device import prepare_process  # torch: only once a command runs

    prepare_process(params.runtime.threads)
    return params


def _add_run(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    doc = "run every stage in order in this process (default artifact paths), then print the report's path"
    sub = commands.add_parser("run", parents=[common], help=doc, description=doc)
    sub.set_defaults(stage=None)


def _run(args: argparse.Namespace) -> int:
    """Run `labelsieve run`: the whole DAG through the same run() functions dvc.yaml calls."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # every rank would ingest and write every stage
        print("labelsieve run: error: under torchrun, launch each stage on its own", file=sys.stderr)
        return 2
    summary: dict = {}
    try:
        params = _params(args)
        for stage in STAGES.values():
            print(f"labelsieve run: {stage.name} -> {stage.out_dir}", file=sys.stderr, flush=True)
            extra = {"metrics_dir": METRICS_DIR} if stage.name == "evaluate" else {}
            summary = stage.run(params, **stage.inputs, out_dir=stage.out_dir, **extra)
    except (LabelsieveError, FileNotFoundError) as err:
        print(f"labelsieve run: error: {err}", file=sys.stderr)
        return 2
    # The last stage is evaluate: its summary is the headline numbers plus the report's path.
    print(json.dumps(summary, indent=2, default=str))
    print(f"report: {summary.get('report', '')}")
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    doc = (
        "write the purified dataset, split into train/, val/ and test/ folders or as images/ plus a CSV "
        "manifest, each file the original where it still is (manifest.csv says which; ingestible again)"
    )
    sub = commands.add_parser("export", help=doc, description=doc)
    sub.add_argument("--dataset-dir", default="artifacts/dataset", help="default: %(default)s")
    sub.add_argument("--purified-dir", default="artifacts/purified", help="default: %(default)s")
    sub.add_argument("--format", choices=("folder", "csv"), default="folder", help="default: %(default)s")
    sub.add_argument(
        "--dropped",
        choices=("omit", "folder"),
        default="omit",
        help="leave dropped samples out (manifest.csv still lists them), or write them under _dropped/ "
        "(default: %(default)s)",
    )
    sub.add_argument("--out-dir", default="exports/purified", help="default: %(default)s")
    sub.set_defaults(stage=None)


def _export(args: argparse.Namespace) -> int:
    """Run `labelsieve export`."""
    from labelsieve.export import export

    try:
        counts = export(
            args.dataset_dir, args.purified_dir, args.out_dir, fmt=args.format, dropped=args.dropped
        )
    except LabelsieveError as err:
        print(f"labelsieve export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({**counts, "out": str(args.out_dir)}, indent=2))
    return 0


def _add_publish(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    doc = (
        "publish the retrained model to publish.to (models/<version>/ and latest.json) if its test accuracy "
        "is at most publish.max_drop below the published model's on the same test split"
    )
    sub = commands.add_parser("publish", parents=[common], help=doc, description=doc)
    sub.add_argument("--dataset-dir", default=STAGES["ingest"].out_dir, help="default: %(default)s")
    sub.add_argument("--model-dir", default=STAGES["retrain"].out_dir, help="default: %(default)s")
    sub.add_argument("--evaluate-dir", default=STAGES["evaluate"].out_dir, help="default: %(default)s")
    sub.add_argument("--out-dir", default="artifacts/publish", help="publish.json (default: %(default)s)")
    sub.set_defaults(stage=None)


def _publish(args: argparse.Namespace) -> int:
    """Run `labelsieve publish`: prints publish.json; a refused model exits 0 (the gate worked)."""
    from labelsieve import publish

    try:
        record = publish.run(
            _params(args),
            dataset_dir=args.dataset_dir,
            model_dir=args.model_dir,
            evaluate_dir=args.evaluate_dir,
            out_dir=args.out_dir,
        )
    except (LabelsieveError, FileNotFoundError, RuntimeError) as err:  # RuntimeError: resolve_device
        print(f"labelsieve publish: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2, default=str))
    return 0


def _add_predict(commands: argparse._SubParsersAction) -> None:
    doc = "classify images with a model package (the retrain stage's output)"
    sub = commands.add_parser("predict", help=doc, description=doc)
    sub.add_argument("model", metavar="MODEL", help="model package directory")
    sub.add_argument(
        "images",
        metavar="IMAGES",
        nargs="+",
        help="image files, folders (searched recursively) or .csv/.jsonl manifests with a path column",
    )
    sub.add_argument("--top-k", type=int, default=3, help="classes reported per image (default: %(default)s)")
    sub.add_argument("--out", default="predictions.csv", help="output CSV (default: %(default)s)")
    sub.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    sub.set_defaults(stage=None)


def _predict(args: argparse.Namespace) -> int:
    """Run `labelsieve predict`: unreadable images are reported, never fatal, unless none could be read."""
    from labelsieve import predict
    from labelsieve.engine.device import resolve_device

    try:
        rows = predict.predict(args.model, args.images, top_k=args.top_k, device=resolve_device(args.device))
        predict.write_predictions(args.out, rows, args.top_k)
    except (LabelsieveError, RuntimeError, ValueError) as err:  # resolve_device raises the latter two
        print(f"labelsieve predict: error: {err}", file=sys.stderr)
        return 2
    failed = [r for r in rows if r.status != predict.OK]
    for row in failed:
        print(f"labelsieve predict: skipped {row.path}: {row.status}: {row.detail}", file=sys.stderr)
    if len(failed) == len(rows):
        what = f"none of the {len(rows)} images could be read" if rows else "no images found"
        print(f"labelsieve predict: error: {what} (rows in {args.out})", file=sys.stderr)
        return 2
    summary = {"images": len(rows), "predicted": len(rows) - len(failed), "skipped": len(failed)}
    print(json.dumps({**summary, "out": str(args.out)}, indent=2))
    return 0


def missing_inputs(stage: Stage, inputs: dict[str, str]) -> list[str]:
    """One message per input directory of `stage` that does not exist, naming its flag and the stage that
    makes it; empty when every input is there."""
    problems = []
    for name, path in inputs.items():
        if Path(path).is_dir():
            continue
        line = f"input --{name.replace('_', '-')} {path} does not exist"
        if (maker := producer(stage.inputs[name])) is not None:
            command = maker.name.replace("_", "-")
            line += f"; the {maker.name} stage makes it (labelsieve {command} --out-dir {path})"
        problems.append(line)
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; print its headline figures as JSON. Input errors exit 2 with one clear message.

    An OSError no stage turned into a LabelsieveError (an unreadable input, a folder that refuses a
    write) is one line too, naming the file: never a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return _command(args)
    except OSError as err:
        print(f"labelsieve {args.command}: error: {os_error_message(err)}", file=sys.stderr)
        return 2


def os_error_message(err: OSError) -> str:
    """`err` as one line that names its file(s), e.g. ``Permission denied: out/ds``."""
    if err.filename is None:
        return str(err)
    files = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
    return f"{err.strerror or type(err).__name__}: {files}"


# Stages that train or predict data-parallel under torchrun (labelsieve/engine/distributed.py); under
# torchrun the others run on rank 0 alone.
DATA_PARALLEL = frozenset({"warmup", "co_divide", "ssl_train", "group_regularize", "purify", "retrain"})


def not_this_rank(stage: str) -> bool:
    """Whether torchrun started this process as a rank other than 0 for a stage that is not data-parallel."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return launched and os.environ.get("RANK", "0") != "0" and stage not in DATA_PARALLEL


def _command(args: argparse.Namespace) -> int:
    """Dispatch one parsed command."""
    if args.command == "predict":
        return _predict(args)
    if args.command == "export":
        return _export(args)
    if args.command == "publish":
        return _publish(args)
    if args.command == "pipeline":
        return run_pipeline_command(args)
    if args.command == "run":
        return _run(args)
    stage = STAGES[args.stage]
    if not_this_rank(stage.name):
        return 0
    inputs = {name: getattr(args, name) for name in stage.inputs}
    if missing := missing_inputs(stage, inputs):
        for line in missing:
            print(f"labelsieve {args.command}: error: {line}", file=sys.stderr)
        return 2
    try:
        params = _params(args)
        extra = {"metrics_dir": args.metrics_dir} if getattr(args, "metrics_dir", None) else {}
        summary = stage.run(params, **inputs, out_dir=args.out_dir, **extra)
    except (LabelsieveError, FileNotFoundError) as err:
        print(f"labelsieve {args.command}: error: {err}", file=sys.stderr)
        return 2
    if args.summary_json and os.environ.get("RANK", "0") == "0":  # torchrun sets RANK in every process
        from labelsieve.atomic import write_text  # numpy: not needed to build the parser

        write_text(args.summary_json, json.dumps(summary, indent=2, default=str) + "\n")
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
