"""T̂ with its small off-diagonal entries pruned: does it tell a flip from a confusion? Measured on kept runs.

The study behind rule 4 of the purify rule (`purification.single_flips`, docs/purification.md, "One flip per
column: telling a flip from a confusion"); its ``r 0`` row is rule 3, confident learning's T̂ uncut.

Confident learning counts the networks' own confusions (a clean Shirt called T-shirt) as label noise, so
T̂ holds small off-diagonal entries where the injected matrix has none (docs/purification_studies.md,
"A second tuning slice"). Under a class swap the swap's entry dwarfs them; under symmetric noise the entries
of a column are alike. The variant here zeroes every off-diagonal entry below r times its column's largest
off-diagonal entry and renormalises the column (`pruned`; r 0 is the rule), in both of the rule's posteriors:
the final networks' (flags) and the average's (relabels), each with its own T̂ as in `purify`. A second
family prunes only the columns whose largest off-diagonal entry holds at least c of the column's
off-diagonal mass (noise that goes mostly to one class, as under a swap).

Per run and variant: F1, AUROC, relabel accuracy, noise left, and the pruned average's T̂'s mean absolute error
to the injected matrix. Nothing is retrained; the final networks' prediction pass is redone
(`purify_ceiling.load_run`). Run it on the tuning slices and digits, never to choose on the benchmark's runs:

    uv run python benchmarks/pruned_noise_matrix.py WORK... --out benchmarks/results/pruned_noise_matrix.json
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import purify_ceiling, retrained_flags
from labelsieve.maths import confident, purification
from labelsieve.maths.noise import noise_matrix

RATIOS = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
# The grid's plateau (docs/purification_studies.md), adopted as rule 4: where one source holds half a column's
# noise, only it (`purification.single_flips` keeps the largest entry alone, as every r from 0.6 to 0.9 did).
RULE_4 = (0.9, 0.5)
# (ratio, concentration): pruning only in the columns whose noise goes mostly to one class.
CONCENTRATED = (
    *((ratio, 0.5) for ratio in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)),
    *((0.5, concentration) for concentration in (0.4, 0.6, 0.7)),
)


def pruned(matrix: np.ndarray, ratio: float, concentration: float = 0.0) -> np.ndarray:
    """`matrix` (columns sum to 1) with each off-diagonal entry below `ratio` × its column's largest
    off-diagonal entry set to 0, and each column renormalised to sum to 1. Only the columns whose largest
    off-diagonal entry holds at least `concentration` of the column's off-diagonal mass are pruned."""
    diagonal = np.eye(len(matrix), dtype=bool)
    off = np.where(diagonal, 0.0, matrix)
    largest, mass = off.max(axis=0, keepdims=True), off.sum(axis=0, keepdims=True)
    concentrated = largest >= concentration * mass
    kept = np.where(diagonal | (off >= ratio * largest) | ~concentrated, matrix, 0.0)
    return kept / kept.sum(axis=0, keepdims=True)


def measure(run: Path, dataset: Path, params_file: Path) -> dict[str, Any]:
    """The rule under every variant (`RATIOS`, then `CONCENTRATED`) on one finished run."""
    given, truth, final, averaged, _ = purify_ceiling.load_run(run, dataset, params_file)
    injected = noise_matrix(truth, given, final.shape[1])
    on_final = confident.estimate(given, final).noise_matrix
    on_average = confident.estimate(given, averaged).noise_matrix
    variants = {f"r {ratio}": (ratio, 0.0) for ratio in RATIOS}
    variants |= {f"r {ratio} where c ≥ {c}": (ratio, c) for ratio, c in CONCENTRATED}
    results = {}
    for name, (ratio, c) in variants.items():
        wrong = purification.posterior(given, final, pruned(on_final, ratio, c)).wrong
        relabel_matrix = pruned(on_average, ratio, c)
        relabel = purification.posterior(given, averaged, relabel_matrix)
        mae = float(np.abs(relabel_matrix - injected).mean())
        results[name] = retrained_flags.flagged_by(given, truth, relabel, wrong) | {"mae": mae}
    return results


def table(results: dict[str, dict[str, Any]]) -> str:
    """A Markdown table: per run and ratio, the detection figures and the pruned T̂'s error."""
    return retrained_flags.table(results, "pruned below", ("mae", "MAE to the injected"))


def main() -> None:
    purify_ceiling.run_on_kept(__doc__, measure, table)


if __name__ == "__main__":
    main()
