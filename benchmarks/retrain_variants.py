"""Retrain variants, measured on kept runs: each a name and `--set` overrides of the retrain stage.

For every kept `labelsieve` run under the WORK folders (`quality.py --work`) and every variant, purify,
retrain and evaluate are rerun on a scratch copy of the run (`retrain_threshold.rerun_tail`; the kept run
is not touched), and the retrained network's last-epoch test accuracy is recorded. A variant is NAME or
NAME:KEY=VALUE[;KEY=VALUE...]; NAME alone is the runs' own params. Choose on the Fashion-MNIST tuning slice
(`benchmarks/tuning_slice.py`) or on digits, never on the benchmark's runs:

    uv run python benchmarks/retrain_variants.py WORK... --variant own \\
        --variant "d0.25:retrain.distill=0.25" --set runtime.threads=1 \\
        --set ingest.source=/tmp/fm-tune/manifest.csv --set ingest.per_class_limit=0
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, retrain_threshold  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """NAME[:KEY=VALUE;...] -> (NAME, ["KEY=VALUE", ...])."""
    name, _, overrides = text.partition(":")
    items = [item for item in overrides.split(";") if item]
    if not name or any("=" not in item for item in items):
        raise SystemExit(f"--variant {text!r}: expected NAME or NAME:KEY=VALUE[;KEY=VALUE...]")
    return name, items


def main() -> None:
    parser = retrain_threshold.rerun_parser(__doc__)
    parser.add_argument("--variant", action="append", required=True, type=parse_variant)
    args = parser.parse_args()
    results = retrain_threshold.rerun_variants(args.work, args.set, args.variant)
    purify_ceiling.report(results, retrain_threshold.table, args.out)


if __name__ == "__main__":
    main()
