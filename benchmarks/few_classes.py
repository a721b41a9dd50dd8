"""The one-flip test of purify's noise matrix with few classes (`purification.FLIP_OVER_EVEN`).

Rule 4 cuts a column of T̂ to its largest off-diagonal entry when that entry holds at least half of the
column's off-diagonal mass (`FLIP_SHARE`; docs/purification.md, "One flip per column: telling a flip from a
confusion"). With three classes a column has two off-diagonal entries, and the larger always holds half:
symmetric noise was read as flips, one of each column's two sources was cut, and the samples it had
flipped could no longer be flagged. The test now also asks the largest entry for `FLIP_OVER_EVEN` times the
share 1 / (C − 1) that it holds under evenly spread noise; from five classes on, half is the larger bar, so
nothing changes there. This script reruns purify's rule under each factor of `FACTORS` (0: the share alone,
as rule 4 was; 1e9: no column cut):

- on simulated probabilities (always): C = 3, 4, 5 and 10 classes, 40% noise that is symmetric, a pair
  flip (class j to j + 1) or towards the class an image most resembles (its largest other logit), logits
  N(0, 1) with 2 added to the true class, 120 or 1,000 samples a class, `--seeds` seeds each;
- on kept `quality.py --work` runs (WORK...), as the stage decides (flags by the final networks, relabels
  by their average with the training dynamics), e.g. subsets of digits chosen with `ingest.classes`.

    uv run python benchmarks/few_classes.py [WORK...] --out benchmarks/results/few_classes.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import purify_ceiling, retrained_flags  # noqa: E402
from benchmarks.flip_scoring import decision_figures  # noqa: E402
from labelsieve.maths import confident, purification  # noqa: E402

# "no cut": a bar above any column's whole off-diagonal mass.
FACTORS = {"share alone (rule 4)": 0.0, "× 1.5": 1.5, "× 2 (the rule)": 2.0, "× 3": 3.0, "no cut": 1e9}
MODES = ("symmetric", "pair", "resembling")
NOISE_RATE = 0.4
TRUE_LOGIT_BOOST = 2.0


@contextlib.contextmanager
def over_even(factor: float) -> Iterator[None]:
    """`purification.FLIP_OVER_EVEN` set to `factor` inside the block."""
    saved = purification.FLIP_OVER_EVEN
    purification.FLIP_OVER_EVEN = factor
    try:
        yield
    finally:
        purification.FLIP_OVER_EVEN = saved


def simulate(classes: int, mode: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given labels, true labels, probabilities) of one simulated set; the probabilities are a calibrated
    belief about the true class (softmax of N(0, 1) logits with `TRUE_LOGIT_BOOST` on the true class)."""
    rng = np.random.default_rng(seed)
    n = classes * per_class
    truth = np.repeat(np.arange(classes), per_class)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), truth] += TRUE_LOGIT_BOOST
    if mode == "symmetric":
        other = (truth + rng.integers(1, classes, n)) % classes
    elif mode == "pair":
        other = (truth + 1) % classes
    else:  # resembling: the class with the largest logit but the true one's
        masked = logits.copy()
        masked[np.arange(n), truth] = -np.inf
        other = masked.argmax(axis=1)
    given = np.where(rng.random(n) < NOISE_RATE, other, truth)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return given, truth, probs / probs.sum(axis=1, keepdims=True)


def columns_cut(given: np.ndarray, probs: np.ndarray) -> int:
    """How many columns of confident learning's T̂ on `probs` the one-flip test cuts."""
    estimate = confident.estimate(given, probs)
    cut = purification.single_flips(estimate).noise_matrix
    return int((~np.isclose(cut, estimate.noise_matrix)).any(axis=0).sum())


def under_each_factor(
    given: np.ndarray, truth: np.ndarray, pred_probs: np.ndarray, flag_probs: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """The rule's figures, and the flag matrix's columns cut, under each factor of `FACTORS`."""
    out = {}
    for name, factor in FACTORS.items():
        with over_even(factor):
            result = purification.find_label_issues(
                given, pred_probs, probs_from="robust", flag_probs=flag_probs
            )
            cut = columns_cut(given, pred_probs if flag_probs is None else flag_probs)
        out[name] = decision_figures(
            given, truth, result.decision, result.new_labels, result.scores["noise_score"]
        ) | {"cut": float(cut)}
    return out


def simulated(seeds: int) -> dict[str, dict[str, Any]]:
    """Per simulated cell, each factor's figures averaged over `seeds` seeds."""
    results = {}
    for classes in (3, 4, 5, 10):
        for mode in MODES:
            for per_class in (120, 1000):
                runs = [under_each_factor(*simulate(classes, mode, per_class, s)) for s in range(seeds)]
                results[f"simulated C={classes} {mode} {per_class}/class"] = {
                    name: {key: _mean([run[name][key] for run in runs]) for key in runs[0][name]}
                    for name in FACTORS
                }
    return results


def kept_run(run: Path, dataset: Path, params_file: Path) -> dict[str, dict[str, Any]]:
    """The stage's rule under each factor on one kept run."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    return under_each_factor(given, truth, averaged, final)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per cell or run and factor, the figures and the columns cut."""
    return retrained_flags.table(results, "one-flip test", ("cut", "columns cut"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("work", nargs="*", help="quality.py --work folders (dataset/, params.yaml, runs)")
    parser.add_argument("--seeds", type=int, default=20, help="seeds per simulated cell")
    parser.add_argument("--out", help="write the figures here (JSON) and a Markdown table beside it")
    args = parser.parse_args()
    results = simulated(args.seeds) | purify_ceiling.measure_kept(args.work, kept_run)
    purify_ceiling.report(results, table, args.out)


if __name__ == "__main__":
    main()
