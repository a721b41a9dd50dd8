"""How purify reads the final networks for its flags (rule 5), measured on kept runs.

The co-trained networks are trained to predict the true class, but co-divide's labeled set keeps some wrong
labels, so they also fit part of the noise. Their flag posterior can read the prediction p as the belief
P(y* | x) (rule 4), as a noisy-label model's P(ỹ | x) unmixed through their T̂ (the API's
`probs_from="noisy_labels"`), or partway, unmixed through (1 − α) I + α T̂. For each kept `quality.py
--work` run with training dynamics this redoes the final prediction pass and the stage's rule (flags by the
final networks, relabels by the average's posterior; `purification.find_label_issues`) with each reading:

- ``robust``: rule 4, p as it is;
- ``partial 0.25``, ``partial 0.5``, ``partial 0.75``: unmixed through (1 − α) I + α T̂;
- ``unmixed``: unmixed through T̂ (α = 1);
- ``mean``: the mean of the robust and the unmixed posterior (`purification.two_readings`), rule 5, the
  stage's rule now;
- ``tempered 2``: p² renormalised, a sharper belief that needs no T̂;
- ``count cap``: rule 4's flags, at most confident learning's count round(ρ̂_i · N_i) in each given class
  (the highest scores; `purification.flag_top`).

Run it on the tuning slices and digits, never to choose on the benchmark's runs:

    uv run python benchmarks/flag_reading.py WORK... --out benchmarks/results/flag_reading.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, retrained_flags  # noqa: E402
from benchmarks.flip_scoring import decision_figures  # noqa: E402
from labelsieve.maths import confident, purification  # noqa: E402

PARTIAL = (0.25, 0.5, 0.75)


def readings(labels: np.ndarray, final: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each reading's (flag score, ranking score), (N,) float64 each: a sample is flagged when its flag score
    is at least τ, and the AUROC is the ranking score's. They are the same score but for the count cap,
    whose flag score is 0 outside the cap and whose ranking is the robust one. T̂ is the final networks' own
    (one-flip columns cut, as the stage's)."""
    estimate = purification.single_flips(confident.estimate(labels, final))
    matrix = estimate.noise_matrix

    def read(belief: np.ndarray) -> np.ndarray:
        return purification.posterior(labels, belief, matrix).wrong

    def partial(alpha: float) -> np.ndarray:
        return read(purification.unmix(final, (1.0 - alpha) * np.eye(len(matrix)) + alpha * matrix))

    mean, robust = purification.two_readings(labels, final, matrix)
    counts = np.round(estimate.noise_rates * estimate.label_counts).astype(np.int64)
    capped = np.where(purification.flag_top(robust, labels, counts), robust, 0.0)
    squared = final**2
    scores = {
        "robust": robust,
        **{f"partial {a}": partial(a) for a in PARTIAL},
        "unmixed": partial(1.0),
        "mean": mean,
        "tempered 2": read(squared / squared.sum(axis=1, keepdims=True)),
    }
    return {name: (score, score) for name, score in scores.items()} | {"count cap": (capped, robust)}


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The stage's rule under each reading of the flag posterior on one finished run."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    stage = purification.find_label_issues(given, averaged, probs_from="robust", flag_probs=final)
    relabel_to, confidence = stage.scores["predicted"], stage.scores["confidence"]
    results = {}
    for name, (flag_score, ranking) in readings(given, final).items():
        decision, new_labels = purification.decide(
            given, flag_score, relabel_to, confidence, purification.WRONG_THRESHOLD
        )
        results[name] = decision_figures(given, truth, decision, new_labels, ranking) | {
            "flagged": float((decision != purification.KEEP).mean())
        }
    return results


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run and reading, the detection figures and the share flagged."""
    return retrained_flags.table(results, "flag reading", ("flagged", "share flagged"))


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
