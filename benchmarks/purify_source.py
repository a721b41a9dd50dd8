"""Which networks `purify` reads (`purify.relabel_from`), measured on kept runs.

For every kept run under the WORK folders (`quality.py --work`), purify is rerun on a scratch copy of the
run once per source, with the training as saved, so the sources are compared on the same networks:
`ssl` (ssl_train's networks; without SSL epochs, the warm-up's as they pass through) and `group` (the
networks group_regularize leaves). Pass the `--set` overrides the runs were made with. Choose on the
Fashion-MNIST tuning slice (`benchmarks/tuning_slice.py`) or on digits, never on the benchmark's runs:

    uv run python benchmarks/purify_source.py WORK... --set runtime.threads=1 \\
        --set ingest.source=/tmp/fm-tune/manifest.csv --set ingest.per_class_limit=0 --out FILE.json
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, retrain_threshold  # noqa: E402

SOURCES = ("ssl", "group")
FIGURES = ("f1", "auroc", "relabel_accuracy")


def detection(run: Path, work: Path, overrides: list[str]) -> dict[str, dict[str, float]]:
    """Purify's detection figures of the kept `run` under each source."""
    figures = {}
    for source in SOURCES:
        summary = retrain_threshold.rerun(
            run, work, [*overrides, f"purify.relabel_from={source}"], ("purify",)
        )
        figures[source] = {key: summary[key] for key in FIGURES}
    return figures


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown: one row per run and source, and the mean per noise setting and source."""
    lines = [
        "| run | relabel_from | " + " | ".join(FIGURES) + " |",
        "|---|---" + "|---:" * len(FIGURES) + "|",
    ]
    for run, by_source in results.items():
        lines += [
            f"| {run} | {source} | " + " | ".join(_cell(fig[key]) for key in FIGURES) + " |"
            for source, fig in by_source.items()
        ]
    noise_of = {run: run.split("/")[-1].split("-")[0] for run in results}
    for noise in sorted(set(noise_of.values())):
        runs = [by for run, by in results.items() if noise_of[run] == noise]
        for source in SOURCES:
            means = [_mean([by[source][key] for by in runs]) for key in FIGURES]
            lines.append(
                f"| {noise}, mean of {len(runs)} | {source} | " + " | ".join(map(_cell, means)) + " |"
            )
    return "\n".join(lines) + "\n"


def _mean(values: list[float | None]) -> float | None:
    """The mean of the values a run has (relabel accuracy is None where a run relabelled nothing)."""
    have = [v for v in values if v is not None]
    return statistics.mean(have) if have else None


def _cell(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def main() -> None:
    args = retrain_threshold.rerun_parser(__doc__).parse_args()
    results: dict[str, Any] = {}
    for work in map(Path, args.work):
        for run in sorted(p.parent for p in work.glob("*/labels")):
            results[f"{work.name}/{run.name}"] = detection(run, work, args.set)
    if not results:
        raise SystemExit(f"no kept run under {', '.join(args.work)}")
    purify_ceiling.report(results, table, args.out)


if __name__ == "__main__":
    main()
