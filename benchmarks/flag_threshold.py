"""τ (`purify.flag_threshold`) rechecked under the stage's rule: the rule's figures at each τ on kept runs.

τ = 0.4 was chosen under rule 2 (README, "How each default was chosen"). Rule 4 cuts T̂'s one-flip columns
(docs/purification.md, "One flip per column: telling a flip from a confusion"), which changes the posteriors
that τ thresholds. For each kept `quality.py --work` run with training dynamics this redoes the final
prediction pass and decides as `purify` does (`purification.find_label_issues`: flags by the final networks,
relabels by their average with the dynamics) at every τ of `THRESHOLDS`, against the training-set truth.
Nothing is retrained. Run it on the tuning slices and digits, never to choose on the benchmark's runs:

    uv run python benchmarks/flag_threshold.py WORK... --out benchmarks/results/flag_threshold.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, retrained_flags  # noqa: E402
from benchmarks.flip_scoring import decision_figures  # noqa: E402
from labelsieve.maths import purification  # noqa: E402

THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55)


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The stage's rule at every τ of `THRESHOLDS` on one finished run."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    results = {}
    for tau in THRESHOLDS:
        result = purification.find_label_issues(
            given, averaged, threshold=tau, probs_from="robust", flag_probs=final
        )
        results[f"τ {tau}"] = decision_figures(
            given, truth, result.decision, result.new_labels, result.scores["noise_score"]
        ) | {"flagged": float((result.decision != purification.KEEP).mean())}
    return results


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run and τ, the detection figures and the share flagged."""
    return retrained_flags.table(results, "τ", ("flagged", "share flagged"))


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
