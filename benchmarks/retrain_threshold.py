"""Retrain's threshold τ_r (`retrain.flag_threshold`), measured on kept runs.

For every kept `labelsieve` run under the WORK folders (`quality.py --work`) and every τ_r, purify, retrain
and evaluate are rerun on a scratch copy of the run, the stages before them as saved, and the retrained
network's last-epoch test accuracy is recorded (the kept run itself is not touched). Pass the `--set`
overrides the runs were made with: rerun at their own τ_r, a run reproduces its saved accuracy. Choose on
the Fashion-MNIST tuning slice (`benchmarks/tuning_slice.py`) or on digits, never on the benchmark's runs:

    uv run python benchmarks/retrain_threshold.py WORK... --thresholds 0.5,0.9,0.99 --set runtime.threads=1 \\
        --set ingest.source=/tmp/fm-tune/manifest.csv --set ingest.per_class_limit=0
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, quality  # noqa: E402
from labelsieve.engine.device import apply_threads  # noqa: E402
from labelsieve.stages import STAGES  # noqa: E402

TAIL = ("purify", "retrain", "evaluate")


def rerun_tail(run: Path, work: Path, overrides: list[str]) -> float:
    """The last-epoch test accuracy of `run` with purify, retrain and evaluate rerun under `overrides`."""
    return float(rerun(run, work, overrides, TAIL)["test_acc"])


def rerun(run: Path, work: Path, overrides: list[str], stages: tuple[str, ...]) -> dict[str, Any]:
    """The last of `stages` rerun in order on a scratch copy of the kept `run` (``<noise>-<method>[-seed<s>]``
    under the `quality.py --work` folder `work`) with `overrides`; its summary. Their old outputs are not
    copied, and the kept run is not touched."""
    noise, method, *seed = run.name.split("-")
    seeded = [f"runtime.seed={seed[0].removeprefix('seed')}"] if seed else []
    params = quality.method_params(work / "params.yaml", method, noise, [*overrides, *seeded])
    apply_threads(params.runtime.threads)
    outputs = [Path(STAGES[name].out_dir).name for name in stages]
    outputs += [f"{name}.timings.json" for name in outputs]
    with tempfile.TemporaryDirectory(dir=work) as scratch:
        copy = Path(scratch) / run.name
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns(*outputs))
        for name in stages:
            stage = STAGES[name]
            inputs = {k: quality._relocate(p, work / "dataset", copy) for k, p in stage.inputs.items()}
            summary = stage.run(
                params, **inputs, out_dir=quality._relocate(stage.out_dir, work / "dataset", copy)
            )
    return summary


def table(results: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per run, one column per τ_r, and the mean over the runs."""
    thresholds = list(next(iter(results.values())))
    lines = ["| run | " + " | ".join(thresholds) + " |", "|---" * (len(thresholds) + 1) + "|"]
    lines += [
        f"| {run} | " + " | ".join(f"{100 * acc[t]:.2f}" for t in thresholds) + " |"
        for run, acc in results.items()
    ]
    means = [statistics.mean(acc[t] for acc in results.values()) for t in thresholds]
    lines.append("| mean | " + " | ".join(f"{100 * m:.2f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def rerun_parser(doc: str) -> argparse.ArgumentParser:
    """The command line of a study that reruns stages of kept runs: WORK..., --set and --out."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", nargs="+", help="quality.py --work folders (dataset/, params.yaml, runs)")
    parser.add_argument(
        "--set", action="append", default=[], help="a params override the runs were made with"
    )
    parser.add_argument("--out", help="write the figures here (JSON) and a Markdown table beside it")
    return parser


def rerun_variants(
    works: list[str], sets: list[str], variants: list[tuple[str, list[str]]]
) -> dict[str, dict[str, float]]:
    """``{"<work>/<run>": {variant: test accuracy}}``: `rerun_tail` of every kept `labelsieve` run under the
    `works` folders with `sets` plus each variant's overrides."""
    results: dict[str, dict[str, float]] = {}
    for work in map(Path, works):
        for run in sorted(p.parent.parent for p in work.glob("*-labelsieve*/ssl/dynamics.npz")):
            key = f"{work.name}/{run.name}"
            results[key] = {name: rerun_tail(run, work, [*sets, *extra]) for name, extra in variants}
            print(key, results[key], flush=True)
    if not results:
        raise SystemExit(f"no labelsieve run with ssl/dynamics.npz under {', '.join(works)}")
    return results


def main() -> None:
    parser = rerun_parser(__doc__)
    parser.add_argument("--thresholds", required=True, help="comma-separated τ_r values in (0, 1)")
    args = parser.parse_args()
    variants = [(t, [f"retrain.flag_threshold={t}"]) for t in args.thresholds.split(",")]
    purify_ceiling.report(rerun_variants(args.work, args.set, variants), table, args.out)


if __name__ == "__main__":
    main()
