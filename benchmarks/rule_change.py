"""What the purify rule's changes did on the same networks: rules 2 to 5 on kept runs.

- ``rule 2``: flags, relabels and drops by the posterior of the final prediction averaged with the training
  dynamics, each posterior through confident learning's T̂ as estimated;
- ``rule 3``: flags by the posterior of the co-trained networks' final prediction alone, relabels by the
  average's (docs/purification.md, "Flags from the final networks, relabels from the average");
- ``rule 4``: rule 3 with each T̂'s one-flip columns cut to their flip (`purification.single_flips`;
  docs/purification.md, "One flip per column: telling a flip from a confusion");
- ``rule 5``: rule 4 flagging by the mean of the final networks' two readings, as the belief and unmixed
  as a noisy-label model (`purification.two_readings`; docs/purification.md, "Two readings of the final
  networks"). It is the stage's rule now (`purification.find_label_issues`; its figures equal the run's own
  where the final networks are `ssl_train`'s and its last epoch is no recalibration, as in every preset but
  `smr_cifar10`).
For each kept `quality.py --work` run with training dynamics this redoes the final prediction pass and
reports each rule's detection figures against the training-set truth. The rules were chosen on the tuning
slices and digits; run this on the benchmark's runs only to report them. `benchmarks/results/rule_change.md`
(stop 51) predates rule 4 and has rules 2 and 3 only.

    uv run python benchmarks/rule_change.py /var/tmp/bw/ls --out benchmarks/results/rule_change_inst40.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling  # noqa: E402
from benchmarks.flip_scoring import decision_figures, figures  # noqa: E402
from labelsieve.maths import confident, purification  # noqa: E402

FIELDS = ("precision", "recall", "f1", "auroc", "relabel_accuracy", "noise_left")


def uncut_figures(
    given: np.ndarray, truth: np.ndarray, averaged: np.ndarray, flag_probs: np.ndarray
) -> dict[str, float | None]:
    """The rule before rule 4: each posterior through confident learning's T̂ as estimated, no column cut."""

    def post(probs: np.ndarray) -> purification.Posterior:
        return purification.posterior(given, probs, confident.estimate(given, probs).noise_matrix)

    relabel, wrong = post(averaged), post(flag_probs).wrong
    decision, new_labels = purification.decide(
        given, wrong, relabel.best, relabel.best_prob, purification.WRONG_THRESHOLD
    )
    return decision_figures(given, truth, decision, new_labels, wrong)


def one_reading_figures(
    given: np.ndarray, truth: np.ndarray, averaged: np.ndarray, flag_probs: np.ndarray
) -> dict[str, float | None]:
    """Rule 4: the stage's rule flagging by `flag_probs`' posterior read as the belief alone
    (``posterior_score``)."""
    result = purification.find_label_issues(given, averaged, probs_from="robust", flag_probs=flag_probs)
    wrong, scores = result.scores["posterior_score"], result.scores
    decision, new_labels = purification.decide(
        given, wrong, scores["predicted"], scores["confidence"], purification.WRONG_THRESHOLD
    )
    return decision_figures(given, truth, decision, new_labels, wrong)


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """Each rule's figures on one finished run."""
    kept = purify_ceiling.load_run(run, dataset, params_file)
    return {
        "rule 2": uncut_figures(kept.given, kept.truth, kept.averaged, kept.averaged),
        "rule 3": uncut_figures(kept.given, kept.truth, kept.averaged, kept.final),
        "rule 4": one_reading_figures(kept.given, kept.truth, kept.averaged, kept.final),
        "rule 5": figures(kept.given, kept.truth, kept.averaged, kept.final),
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
