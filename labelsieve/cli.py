"""The `labelsieve` command. Each subcommand is a stage name with hyphens (`inject-noise` runs
`inject_noise`) and only adapts argv to the stage's `run()`; `predict` classifies images with a model
package."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from labelsieve import predict
from labelsieve.config import Params, load_params, preset_names
from labelsieve.engine.device import apply_threads, resolve_device
from labelsieve.errors import LabelsieveError
from labelsieve.export import export
from labelsieve.pipeline_cli import add_pipeline_command, run_pipeline_command
from labelsieve.stages import STAGES


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
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for stage in STAGES.values():
        doc = (sys.modules[stage.run.__module__].__doc__ or "").strip().splitlines()[0]
        sub = commands.add_parser(stage.name.replace("_", "-"), parents=[common], help=doc, description=doc)
        for name, default in stage.inputs.items():
            sub.add_argument(
                f"--{name.replace('_', '-')}",
                dest=name,
                default=default,
                help="input directory (default: %(default)s)",
            )
        sub.add_argument("--out-dir", default=stage.out_dir, help="output directory (default: %(default)s)")
        sub.set_defaults(stage=stage.name)
    _add_predict(commands)
    _add_export(commands)
    add_pipeline_command(commands, [common])
    _add_run(commands, common)
    return parser


def _params(args: argparse.Namespace) -> Params:
    """Params from --params (else ./params.yaml if present), --preset and --set; applies runtime.threads."""
    params_file = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
    params = load_params(params_file, presets=args.preset, overrides=args.overrides)
    apply_threads(params.runtime.threads)
    return params


def _add_run(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    doc = "run every stage in order in this process (default artifact paths), then print the report's path"
    sub = commands.add_parser("run", parents=[common], help=doc, description=doc)
    sub.set_defaults(stage=None)


def _run(args: argparse.Namespace) -> int:
    """Run `labelsieve run`: the whole DAG through the same run() functions dvc.yaml calls."""
    summary: dict = {}
    try:
        params = _params(args)
        for stage in STAGES.values():
            print(f"labelsieve run: {stage.name} -> {stage.out_dir}", file=sys.stderr, flush=True)
            summary = stage.run(params, **stage.inputs, out_dir=stage.out_dir)
    except (LabelsieveError, FileNotFoundError) as err:
        print(f"labelsieve run: error: {err}", file=sys.stderr)
        return 2
    # The last stage is evaluate: its summary is the headline numbers plus the report's path.
    print(json.dumps(summary, indent=2, default=str))
    print(f"report: {summary.get('report', '')}")
    return 0


def _add_export(commands: argparse._SubParsersAction) -> None:
    doc = "write the purified dataset as an image folder or a CSV manifest (ingestible again)"
    sub = commands.add_parser("export", help=doc, description=doc)
    sub.add_argument("--dataset-dir", default="artifacts/dataset", help="default: %(default)s")
    sub.add_argument("--purified-dir", default="artifacts/purified", help="default: %(default)s")
    sub.add_argument("--format", choices=("folder", "csv"), default="folder", help="default: %(default)s")
    sub.add_argument(
        "--dropped",
        choices=("omit", "folder"),
        default="omit",
        help="leave dropped samples out, or keep them under _dropped/ (default: %(default)s)",
    )
    sub.add_argument("--out-dir", default="exports/purified", help="default: %(default)s")
    sub.set_defaults(stage=None)


def _export(args: argparse.Namespace) -> int:
    """Run `labelsieve export`."""
    try:
        counts = export(
            args.dataset_dir, args.purified_dir, args.out_dir, fmt=args.format, dropped=args.dropped
        )
    except LabelsieveError as err:
        print(f"labelsieve export: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({**counts, "out": str(args.out_dir)}, indent=2))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; print its headline figures as JSON. Input errors exit 2 with one clear message."""
    args = build_parser().parse_args(argv)
    if args.command == "predict":
        return _predict(args)
    if args.command == "export":
        return _export(args)
    if args.command == "pipeline":
        return run_pipeline_command(args)
    if args.command == "run":
        return _run(args)
    stage = STAGES[args.stage]
    try:
        params = _params(args)
        inputs = {name: getattr(args, name) for name in stage.inputs}
        summary = stage.run(params, **inputs, out_dir=args.out_dir)
    except (LabelsieveError, FileNotFoundError) as err:
        print(f"labelsieve {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
