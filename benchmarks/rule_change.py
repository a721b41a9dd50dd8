"""What rule 3 of the purify rule changed on the same networks: flags by the final prediction or the average.

Since rule 3 (`purification.RULE_VERSION`), `purify` flags a sample by the posterior of the co-trained
networks' final prediction alone, and relabels or drops it by the posterior of that prediction averaged
with the training dynamics; before, the average did both (docs/purification.md, "Flags from the final
networks, relabels from the average"). For each kept `quality.py --work` run with training dynamics this
redoes the final prediction pass and reports both rules' detection figures against the training-set truth:
- ``rule 2``: flags, relabels and drops by the average;
- ``rule 3``: the stage's rule now (its figures equal the run's own where the final networks are
  `ssl_train`'s and its last epoch is no recalibration, as in every preset but `smr_cifar10`).
The rule was chosen on the tuning slice and digits; run this on the benchmark's runs only to report it.

    uv run python benchmarks/rule_change.py /var/tmp/bw/ls --out benchmarks/results/rule_change_inst40.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling  # noqa: E402
from benchmarks.flip_scoring import figures  # noqa: E402

FIELDS = ("precision", "recall", "f1", "auroc", "relabel_accuracy", "noise_left")


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """Both rules' figures on one finished run."""
    kept = purify_ceiling.load_run(run, dataset, params_file)
    return {
        "rule 2": figures(kept.given, kept.truth, kept.averaged),
        "rule 3": figures(kept.given, kept.truth, kept.averaged, kept.final),
    }


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run and rule, the detection figures."""
    lines = ["| run | rule | " + " | ".join(FIELDS) + " |", "|---|---|" + "---:|" * len(FIELDS)]
    for run, rules in results.items():
        for name, fig in rules.items():
            lines.append(
                f"| {run} | {name} | "
                + " | ".join("" if fig[k] is None else f"{fig[k]:.4f}" for k in FIELDS)
                + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
