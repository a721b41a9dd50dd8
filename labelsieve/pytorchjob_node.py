"""What every replica of a stage's PyTorchJob runs: ``python -m labelsieve.pytorchjob_node`` (see
labelsieve/pytorchjob.py).

It downloads the stage's inputs into a local folder, runs the stage under ``<launcher> --node_rank $RANK
--rdzv_endpoint $MASTER_ADDR:$MASTER_PORT`` (the variables the training operator sets in each replica),
and on the replica of rank 0 uploads the outputs to ``<output>/out/`` and then the headline figures to
``<output>/summary.json``, the object the launcher waits for. The params text comes from
$LABELSIEVE_PARAMS_YAML.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from labelsieve.errors import LabelsieveError
from labelsieve.launch import run_stage_launched
from labelsieve.pytorchjob import PARAMS_ENV
from labelsieve.stages import STAGES


def build_parser() -> argparse.ArgumentParser:
    """Arguments of one replica."""
    parser = argparse.ArgumentParser(prog="python -m labelsieve.pytorchjob_node", description=__doc__)
    parser.add_argument("--stage", required=True, choices=sorted(STAGES))
    parser.add_argument("--launcher", required=True, help='e.g. "torchrun --nnodes 2 --nproc_per_node 4"')
    parser.add_argument(
        "--input", action="append", default=[], metavar="KEY=URI", help="an input directory; repeatable"
    )
    parser.add_argument("--output", required=True, help="s3:// prefix (or folder) rank 0 writes to")
    parser.add_argument("--work-dir", help="local folder for inputs and outputs (default: a temporary one)")
    return parser


def node_launcher(launcher: str, environ: os._Environ[str] | dict[str, str]) -> str:
    """`launcher` with this replica's rank and the Master's rendezvous endpoint.

    Raises:
        LabelsieveError: RANK, MASTER_ADDR or MASTER_PORT is not set (not run by the training operator).
    """
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not environ.get(key)]
    if missing:
        raise LabelsieveError(f"{', '.join(missing)} not set: run by the training operator's PyTorchJob")
    endpoint = f"{environ['MASTER_ADDR']}:{environ['MASTER_PORT']}"
    return f"{launcher} --node_rank {environ['RANK']} --rdzv_endpoint {endpoint}"


def run_node(args: argparse.Namespace, environ: os._Environ[str] | dict[str, str]) -> dict | None:
    """Run this replica's part of the stage; rank 0 returns the summary it uploaded."""
    from labelsieve.storage import download_tree, open_location, upload_tree

    launcher = node_launcher(args.launcher, environ)
    rank_zero = environ["RANK"] == "0"
    inputs = dict(item.split("=", 1) for item in args.input)
    with tempfile.TemporaryDirectory(prefix="labelsieve-node-", dir=args.work_dir) as tmp:
        local = {key: str(Path(tmp) / key) for key in inputs}
        for key, uri in inputs.items():
            download_tree(open_location(uri), Path(local[key]))
        out_dir = Path(tmp) / "out"
        summary = run_stage_launched(
            args.stage,
            environ.get(PARAMS_ENV, ""),
            launcher=launcher,
            out_dir=str(out_dir),
            summary_required=rank_zero,
            **local,
        )
        if rank_zero:
            output = open_location(args.output)
            upload_tree(out_dir, output.child("out"))
            output.write_bytes("summary.json", json.dumps(summary, indent=2).encode())
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run one replica; errors exit 2 with one line."""
    args = build_parser().parse_args(argv)
    try:
        run_node(args, os.environ)
    except (LabelsieveError, FileNotFoundError) as err:
        print(f"labelsieve pytorchjob node: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
