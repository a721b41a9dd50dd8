"""The purify rule: keep, relabel or drop each training sample (pure NumPy, no I/O).

This is both the `purify` stage's rule and the in-memory API for people who already have predictions
(`labelsieve.find_label_issues`). docs/purification.md gives the reasoning and the measurements; in short:

1. Confident learning on probabilities that did not simply memorise the given labels (`pred_probs`: the
   stage averages the co-trained networks' predictions over training with their final ones; a user may
   pass out-of-sample ones) estimates the noise matrix T̂[i, j] = P(ỹ = i | y* = j)
   (`labelsieve.maths.confident`). Confident learning also counts the networks' own confusions (a clean
   Shirt called T-shirt) as label noise, so T̂ holds small spurious off-diagonal entries. A column whose
   largest off-diagonal entry holds at least half of the column's off-diagonal mass (`FLIP_SHARE`), and at
   least twice its share under evenly spread noise (`FLIP_OVER_EVEN`), is read as one flip, as under a
   class swap: it keeps only that entry and its diagonal, renormalised (`single_flips`). Columns of spread
   noise (symmetric, instance-dependent) are left as they are.
2. The belief about the true class, P(y* | x). Probabilities from noise-robust training (the co-trained
   networks; `probs_from="robust"`) are used as they are. A model fitted to the given labels with a plain
   loss (k-fold cross-validation, cleanlab's setting; `probs_from="noisy_labels"`) learns the noisy
   conditional P(ỹ | x) = T P(y* | x) instead, so its probabilities are unmixed first (`unmix`).
   Read as the truth, they would count the noise twice: at 80% symmetric noise no label looks right.
   Unmixing needs a T̂ in which every true class keeps its label more often than it loses it to any one
   other class (`identifiable`); where the estimate breaks that, the probabilities are used as they are.
3. Bayes' rule, with that belief and T̂ as the likelihood of the given label, gives each sample's posterior
   over its true class:
   P(y* = j | x, ỹ) = p_j T̂[ỹ, j] / Σ_k p_k T̂[ỹ, k].
   The score is the probability that the given label is wrong, P(y* ≠ ỹ | x, ỹ) = 1 − P(y* = ỹ | x, ỹ).
   Under symmetric noise it orders the samples by p_ỹ; under a class swap it weighs the swap's source
   class; in a class that nothing flips into (T̂[ỹ, j] ≈ 0 for j ≠ ỹ) it is ≈ 0, so the class stays clean.
4. Flag every sample whose score is at least τ (`threshold`, default `WRONG_THRESHOLD`). τ < 1/2 says
   that keeping a wrong label costs more than losing a right one: (1 − τ)/τ = 1.5 times at τ = 0.4.
   Given `flag_probs`, the score is steps 1 to 3 run on them instead (their own T̂), while `pred_probs`'
   posterior still picks and gates the relabel (step 5). The stage flags by the final networks alone and
   relabels by their average with the training dynamics: the late networks flag more precisely, the early
   divisions keep a swapped sample from being relabelled to its swap partner. Robust `flag_probs` are read
   both ways (`two_readings`): noise-robust training still fits part of the noise (co-divide keeps some
   wrong labels in its labeled set), so the flag score is the mean of their posterior read as P(y* | x)
   and read, unmixed, as a noisy-label model's P(ỹ | x).
5. A flagged sample is relabelled to the posterior's top class ŷ when P(y* = ŷ | x, ỹ) > 1 − τ, else
   dropped. The same τ then bounds every label the dataset keeps or gives: each is wrong with posterior
   probability below τ. A flagged sample's own label has P(y* = ỹ | x, ỹ) ≤ 1 − τ, so ŷ ≠ ỹ whenever
   the gate passes.

The constants are τ, a probability with a decision-theoretic meaning, and the one-flip share of step 1,
both chosen on the Fashion-MNIST tuning slices and digits, and the one-flip test's factor over even noise,
chosen on simulated probabilities and three- and four-class subsets of digits (docs/purification.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from labelsieve.maths import chunks, confident

KEEP, RELABEL, DROP = 0, 1, 2
# τ: flag a label whose posterior probability of being wrong is at least this (docs/purification.md).
WRONG_THRESHOLD = 0.4
DECISION_NAMES = ("keep", "relabel", "drop")
# What `pred_probs` estimate: the given label of a model fitted to it, or the true class (step 2).
PROBS_FROM = ("noisy_labels", "robust")
# Raised whenever a change to the rule changes its decisions: benchmarks/quality.py keys its runs by it.
# (`FLIP_OVER_EVEN` changed decisions only below five classes, which no benchmark run has, so it kept 5.)
# 2: relabel by the posterior's top class when it is right with probability above 1 − τ.
# 3: the stage flags by the final networks' posterior (`flag_probs`), relabels by the averaged one.
# 4: T̂'s one-flip columns keep only their flip (`single_flips`). 5: robust `flag_probs` flag by the mean of
# their two readings (`two_readings`).
RULE_VERSION = 5
# Rules 3 and 5 changed only the runs with training dynamics (SSL epochs); rule 4 changed both kinds.
RULE_VERSION_WITHOUT_DYNAMICS = 4
# A column of T̂ whose largest off-diagonal entry holds at least this share of the column's off-diagonal
# mass is one flip plus confusions (step 1; chosen on the tuning slices and digits, docs/purification.md)...
FLIP_SHARE = 0.5
# ...and at least this many times the share 1 / (C − 1) that it holds when the noise is spread evenly over
# the other classes, C counting the classes the given labels use. It binds only below five classes: with
# three, the larger of a column's two entries always holds half, so the share alone read symmetric noise
# as flips (benchmarks/few_classes.py).
FLIP_OVER_EVEN = 2.0


@dataclass(frozen=True)
class Purification:
    """The decisions, the per-sample scores and the noise estimate behind them."""

    decision: np.ndarray  # (N,) int8: KEEP, RELABEL or DROP
    new_labels: np.ndarray  # (N,) int64: ỹ if kept, ŷ if relabelled, -1 if dropped
    scores: dict[str, np.ndarray]  # (N,) each; see `find_label_issues`
    noise: confident.NoiseEstimate
    unmixed: bool = False  # the belief was unmixed from P(ỹ | x) (step 2)


class Posterior(NamedTuple):
    """Each sample's posterior over its true class, P(y* = j | x, ỹ), reduced to what the rule reads."""

    wrong: np.ndarray  # (N,) float64: P(y* ≠ ỹ | x, ỹ)
    best: np.ndarray  # (N,) int64: ŷ = argmax_j P(y* = j | x, ỹ)
    best_prob: np.ndarray  # (N,) float64: P(y* = ŷ | x, ỹ)


def single_flips(estimate: confident.NoiseEstimate) -> confident.NoiseEstimate:
    """`estimate` with each one-flip column of T̂ cut to its diagonal and largest off-diagonal entry (ties
    kept) and renormalised; the joint Q[i, j] = T̂[i, j] P(y* = j) and the noise rates follow from it.

    A column is one flip when its largest off-diagonal entry holds at least `FLIP_SHARE` of its
    off-diagonal mass and at least `FLIP_OVER_EVEN` / (C − 1) of it, twice its share under evenly spread
    noise, C being the classes that occur among the given labels (so with three or four, more than half;
    a model with more outputs than the data has classes does not lower the bar). A column with no
    off-diagonal mass, or none at all (a class with no sample), is unchanged; where nothing is cut,
    `estimate` itself is returned. The thresholds, the confident joint, the prior and the label counts
    stay confident learning's.
    """
    matrix = estimate.noise_matrix
    diagonal = np.eye(len(matrix), dtype=bool)
    off = np.where(diagonal, 0.0, matrix)
    largest, mass = off.max(axis=0), off.sum(axis=0)
    classes = int(np.count_nonzero(estimate.label_counts))
    share = max(FLIP_SHARE, FLIP_OVER_EVEN / max(classes - 1, 1))
    one_flip = (mass > 0) & (largest >= share * mass)
    kept = np.where(diagonal | (off >= largest[None, :]) | ~one_flip[None, :], matrix, 0.0)
    if np.array_equal(kept, matrix):  # nothing cut: confident learning's estimate, bit for bit
        return estimate
    total = kept.sum(axis=0, keepdims=True)
    matrix = np.divide(kept, total, out=np.zeros_like(kept), where=total > 0)
    joint = matrix * estimate.prior[None, :]
    given = joint.sum(axis=1)
    clean_share = np.divide(np.diagonal(joint), given, out=np.ones(len(given)), where=given > 0)
    return replace(estimate, noise_matrix=matrix, joint=joint, noise_rates=1.0 - clean_share)


def margins(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(N,) p_ỹ − max_{j≠ỹ} p_j, in chunks of rows (no (N, C) temporary)."""
    out = np.empty(len(labels), dtype=np.float64)
    rows_of = np.arange(len(labels))
    for rows in chunks.row_chunks(len(labels), probs.shape[1]):
        p = np.array(probs[rows], dtype=np.float64)
        own = p[rows_of[rows] - rows.start, labels[rows]]
        p[rows_of[rows] - rows.start, labels[rows]] = -np.inf
        out[rows] = own - p.max(axis=1)
    return out


def identifiable(noise_matrix: np.ndarray) -> bool:
    """Whether every column of T[i, j] = P(ỹ = i | y* = j) has its diagonal above each off-diagonal entry.

    The condition under which a swap can be told from a class's own label: a class that is labelled as
    another more often than as itself (an estimated swap at 50% or beyond) cannot be unmixed.
    """
    diagonal = np.diagonal(noise_matrix)
    off = np.where(np.eye(len(diagonal), dtype=bool), -np.inf, noise_matrix)
    return bool(np.all(diagonal > off.max(axis=0)))


def unmix(probs: np.ndarray, noise_matrix: np.ndarray) -> np.ndarray:
    """(N, C) float64 P(y* | x) from a noisy-label model's P(ỹ | x) = T P(y* | x), in chunks of rows.

    Each row is q T⁺ᵀ (T⁺ the pseudo-inverse, T itself when T is invertible), clipped at 0 and
    renormalised: the columns of T sum to 1, so before clipping a row already sums to 1. A row that the
    clipping empties (possible only for a singular T) keeps `probs`' row.
    """
    inverse_t = np.linalg.pinv(noise_matrix).T
    out = np.empty(probs.shape, dtype=np.float64)
    for rows in chunks.row_chunks(len(probs), probs.shape[1]):
        given = np.asarray(probs[rows], dtype=np.float64)
        belief = np.clip(given @ inverse_t, 0.0, None)
        total = belief.sum(axis=1, keepdims=True)
        empty = total[:, 0] <= 0
        belief[empty], total[empty] = given[empty], given[empty].sum(axis=1, keepdims=True)
        out[rows] = belief / total
    return out


def posterior(labels: np.ndarray, probs: np.ndarray, noise_matrix: np.ndarray) -> Posterior:
    """P(y* = j | x, ỹ) ∝ p_j T[ỹ, j], T[i, j] = P(ỹ = i | y* = j), in chunks of rows (no (N, C) temporary).

    A row with no mass (every p_j T[ỹ, j] = 0) keeps its label: wrong 0, ŷ = ỹ with probability 1.
    """
    n = len(labels)
    wrong, best_prob = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    best = np.empty(n, dtype=np.int64)
    rows_of = np.arange(n)
    for rows in chunks.row_chunks(n, probs.shape[1]):
        given, local = labels[rows], rows_of[rows] - rows.start
        joint = posterior_rows(given, probs[rows], noise_matrix)
        wrong[rows] = 1.0 - joint[local, given]
        best[rows] = joint.argmax(axis=1)
        best_prob[rows] = joint[local, best[rows]]
    return Posterior(wrong, best, best_prob)


def posterior_rows(labels: np.ndarray, probs: np.ndarray, noise_matrix: np.ndarray) -> np.ndarray:
    """(n, C) float64 P(y* = j | x, ỹ) of a block of rows (`posterior`'s, whole, for callers that need it).

    A row with no mass keeps its label with probability 1.
    """
    joint = np.asarray(probs, dtype=np.float64) * noise_matrix[labels]
    total = joint.sum(axis=1)
    empty = total <= 0
    joint[empty, labels[empty]] = 1.0
    joint /= np.where(empty, 1.0, total)[:, None]
    return joint


def two_readings(
    labels: np.ndarray, probs: np.ndarray, noise_matrix: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, robust), (N,) each: P(y* ≠ ỹ | x, ỹ) averaged over two readings of `probs`, and the first
    reading alone. The readings: `probs` as the belief P(y* | x), and as a noisy-label model's P(ỹ | x),
    unmixed through `noise_matrix` where it is `identifiable` (else the two readings agree).

    The mean weighs neither reading more: co-trained networks are trained to be robust but still fit part
    of the noise. Unmixing clips beliefs at 0, which ties many posteriors at 0 or 1; the mean keeps the
    robust reading's order among them.
    """
    robust = posterior(labels, probs, noise_matrix).wrong
    if not identifiable(noise_matrix):
        return robust, robust
    return (robust + posterior(labels, unmix(probs, noise_matrix), noise_matrix).wrong) / 2.0, robust


def flag_top(score: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N,) bool: in each given class i, the `counts[i]` samples with the highest `score` (ties by index)."""
    flagged = np.zeros(len(labels), dtype=bool)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(len(counts) + 1))
    for c, count in enumerate(counts):
        members = order[bounds[c] : bounds[c + 1]]
        k = min(int(count), len(members))
        if k > 0:
            flagged[members[np.argsort(-score[members], kind="stable")[:k]]] = True
    return flagged


def decide(
    labels: np.ndarray,
    noise_score: np.ndarray,
    predicted: np.ndarray,
    confidence: np.ndarray,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 4 and 5 of the rule: flag at τ = `threshold`, then relabel or drop each flagged sample.

    Args:
        labels: (N,) given labels ỹ.
        noise_score: (N,) P(y* ≠ ỹ | x, ỹ) (`Posterior.wrong`).
        predicted: (N,) ŷ, the posterior's top class (`Posterior.best`).
        confidence: (N,) P(y* = ŷ | x, ỹ) (`Posterior.best_prob`).
        threshold: τ in (0, 1).

    Returns:
        (decision, new labels): int8 KEEP / RELABEL / DROP per sample, and int64 labels, -1 where dropped.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    flagged = noise_score >= threshold
    relabel = flagged & (predicted != labels) & (confidence > 1.0 - threshold)
    decision = np.where(flagged, np.where(relabel, RELABEL, DROP), KEEP).astype(np.int8)
    new_labels = np.where(flagged, np.where(relabel, predicted, -1), labels).astype(np.int64)
    return decision, new_labels


def find_label_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    threshold: float = WRONG_THRESHOLD,
    probs_from: str = "noisy_labels",
    flag_probs: np.ndarray | None = None,
) -> Purification:
    """Score, flag and decide every sample (the module docstring's rule).

    Args:
        labels: (N,) given labels ỹ in [0, C).
        pred_probs: (N, C) probabilities that did not memorise ỹ: averaged over training, or out of
            sample (k-fold). Drive the noise estimate and the relabel target, and the ranking unless
            `flag_probs` is given.
        threshold: τ in (0, 1): flag a sample whose label is wrong with at least this probability, and
            relabel it only to a class that is right with probability above 1 − τ.
        probs_from: ``noisy_labels`` when a model fitted to the given labels with a plain loss made
            `pred_probs` (k-fold cross-validation); ``robust`` when noise-robust training made them (the
            `purify` stage's co-trained networks). Step 2 of the module docstring.
        flag_probs: optional (N, C) probabilities, of the same kind, whose posterior (with their own
            noise estimate) scores and flags instead (step 4; the stage: the final networks alone). Robust
            ones flag by the mean of their two readings (`two_readings`).

    Returns:
        `Purification`; its scores: ``noise_score`` (P(y* ≠ ỹ | x, ỹ), from `flag_probs` when given: the
        score that flags), ``posterior_score`` (the same posterior under `probs_from`'s reading alone; it
        differs from ``noise_score`` only for robust `flag_probs`), ``self_confidence`` (p_ỹ of
        `pred_probs`), ``predicted`` (ŷ, the posterior's top class) and ``confidence`` (P(y* = ŷ | x, ỹ)).
        `noise` is `pred_probs`' estimate (step 1: one-flip columns cut).
    """
    if probs_from not in PROBS_FROM:
        raise ValueError(f"probs_from must be one of {', '.join(PROBS_FROM)}; got {probs_from!r}")
    noise, unmixed, post = estimate_and_posterior(labels, pred_probs, probs_from, "pred_probs")
    labels, pred_probs = np.asarray(labels).astype(np.int64), np.asarray(pred_probs)
    wrong = single = post.wrong
    if flag_probs is not None:
        if np.shape(flag_probs) != pred_probs.shape:
            raise ValueError(
                f"flag_probs must have pred_probs' shape {pred_probs.shape}, got {np.shape(flag_probs)}"
            )
        wrong, single = flag_scores(labels, flag_probs, probs_from)
    decision, new_labels = decide(labels, wrong, post.best, post.best_prob, threshold)
    own = np.take_along_axis(pred_probs, labels[:, None], axis=1)[:, 0]
    scores = {
        "noise_score": wrong,
        "posterior_score": single,
        "self_confidence": own.astype(np.float64),
        "predicted": post.best,
        "confidence": post.best_prob,
    }
    return Purification(decision, new_labels, scores, noise, unmixed)


def flag_scores(labels: np.ndarray, flag_probs: np.ndarray, probs_from: str) -> tuple[np.ndarray, np.ndarray]:
    """(noise_score, posterior_score) of flagging probabilities: steps 1 to 3 on them (their own T̂), and for
    robust ones the mean of their two readings (`two_readings`; else the two scores are the same)."""
    if probs_from != "robust":
        wrong = estimate_and_posterior(labels, flag_probs, probs_from, "flag_probs")[2].wrong
        return wrong, wrong
    noise = single_flips(confident.estimate(labels, flag_probs, "flag_probs"))  # refuses bad inputs
    return two_readings(np.asarray(labels).astype(np.int64), np.asarray(flag_probs), noise.noise_matrix)


def estimate_and_posterior(
    labels: np.ndarray, probs: np.ndarray, probs_from: str, name: str = "probs"
) -> tuple[confident.NoiseEstimate, bool, Posterior]:
    """Steps 1 to 3 on one set of probabilities: the noise estimate (`single_flips` of confident learning's),
    whether the belief was unmixed, and the posterior (`probs_from` as in `find_label_issues`; `name` is
    what errors call the probabilities)."""
    noise = single_flips(confident.estimate(labels, probs, name))  # refuses bad labels and probabilities
    labels, probs = np.asarray(labels).astype(np.int64), np.asarray(probs)  # lists work as arrays do
    unmixed = probs_from == "noisy_labels" and identifiable(noise.noise_matrix)
    belief = unmix(probs, noise.noise_matrix) if unmixed else probs
    return noise, unmixed, posterior(labels, belief, noise.noise_matrix)
