"""The `labelsieve` command. Each subcommand is a stage name with hyphens (`inject-noise` runs
`inject_noise`) and only adapts argv to the stage's `run()`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from labelsieve.config import load_params, preset_names
from labelsieve.errors import LabelsieveError
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one stage; print its headline figures as JSON. Input errors exit 2 with one clear message."""
    args = build_parser().parse_args(argv)
    stage = STAGES[args.stage]
    try:
        params_file = args.params or ("params.yaml" if Path("params.yaml").is_file() else None)
        params = load_params(params_file, presets=args.preset, overrides=args.overrides)
        if params.runtime.threads:
            torch.set_num_threads(params.runtime.threads)
        inputs = {name: getattr(args, name) for name in stage.inputs}
        summary = stage.run(params, **inputs, out_dir=args.out_dir)
    except (LabelsieveError, FileNotFoundError) as err:
        print(f"labelsieve {args.command}: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
