"""The purify rule (`labelsieve.maths.purification`): hand-computed cases and a float64 reference."""

import dataclasses

import numpy as np
import pytest
import torch

import labelsieve
from labelsieve.config import PurifyConfig, load_params
from labelsieve.maths import chunks, confident
from labelsieve.maths.purification import (
    DROP,
    KEEP,
    RELABEL,
    WRONG_THRESHOLD,
    decide,
    find_label_issues,
    flag_top,
    identifiable,
    margins,
    posterior,
    single_flips,
    two_readings,
    unmix,
)
from labelsieve.stages import purify as purify_stage
from labelsieve.stages import ssl_train


def test_hand_case_posteriors_flags_and_relabels():
    # t = (0.55, 0.6); confident classes: 0, 1, 1, 1, 0 -> joint [[1, 1], [1, 2]] -> Q = joint / 5, prior
    # (0.4, 0.6), T = Q / prior = [[1/2, 1/3], [1/2, 2/3]]. P(y* = j | x, ỹ) ∝ p_j T[ỹ, j]:
    # sample 0: (0.45, 0.1/3) -> (27/29, 2/29); sample 1: (0.1, 0.8/3) -> (3/11, 8/11);
    # sample 2: (0.05, 0.6) -> (1/13, 12/13); sample 3: (0.15, 1.4/3) -> (9/37, 28/37);
    # sample 4: (0.4, 0.4/3) -> (3/4, 1/4).
    # τ = 0.4 flags samples 1 (wrong 8/11) and 4 (3/4); both top classes pass 1 − τ = 0.6: relabelled.
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7], [0.8, 0.2]])
    result = find_label_issues(labels, probs, probs_from="robust")
    np.testing.assert_allclose(result.noise.noise_matrix, [[1 / 2, 1 / 3], [1 / 2, 2 / 3]])
    np.testing.assert_allclose(result.scores["noise_score"], [2 / 29, 8 / 11, 1 / 13, 9 / 37, 3 / 4])
    assert result.scores["predicted"].tolist() == [0, 1, 1, 1, 0]
    np.testing.assert_allclose(result.scores["confidence"], [27 / 29, 8 / 11, 12 / 13, 28 / 37, 3 / 4])
    assert result.decision.tolist() == [KEEP, RELABEL, KEEP, KEEP, RELABEL]
    assert result.new_labels.tolist() == [0, 1, 1, 1, 0]
    # τ = 0.24 also flags sample 3 (9/37 ≈ 0.243), whose top class is its own label: dropped. Samples 1
    # and 4 must now be right with probability above 0.76; 8/11 and 3/4 are not: dropped too.
    assert find_label_issues(labels, probs, threshold=0.24, probs_from="robust").decision.tolist() == [
        KEEP,
        DROP,
        KEEP,
        DROP,
        DROP,
    ]
    assert (
        find_label_issues(labels, probs, threshold=0.25, probs_from="robust").decision[3] == KEEP
    )  # inclusive
    # Column 0 of T̂ has 1/2 on and off its diagonal: not identifiable, so noisy-label probabilities are
    # read as they are and give the same decisions.
    unmixable = find_label_issues(labels, probs)
    assert not unmixable.unmixed and unmixable.decision.tolist() == result.decision.tolist()
    assert PurifyConfig().flag_threshold == WRONG_THRESHOLD  # the stage's default is the API's
    assert labelsieve.find_label_issues is find_label_issues  # the package's API is the stage's rule


def one_flip_reference(matrix: np.ndarray) -> np.ndarray:
    """Step 1's cut, column by column in plain loops: where the largest off-diagonal entry holds at least
    half of the column's off-diagonal mass and at least twice the even share 1 / (C − 1), each smaller
    off-diagonal entry is cut and the column rescaled."""
    out = np.array(matrix, dtype=np.float64)
    bar = max(0.5, 2.0 / (out.shape[0] - 1))
    for j in range(out.shape[1]):
        off = [out[i, j] for i in range(out.shape[0]) if i != j]
        if sum(off) > 0 and max(off) >= bar * sum(off):
            for i in range(out.shape[0]):
                if i != j and out[i, j] < max(off):
                    out[i, j] = 0.0
            out[:, j] /= out[:, j].sum()
    return out


def _estimate_of(matrix: np.ndarray) -> confident.NoiseEstimate:
    """A noise estimate holding `matrix` as T̂, with a uniform prior (what `single_flips` reads)."""
    classes = len(matrix)
    return confident.NoiseEstimate(
        thresholds=np.full(classes, 0.5),
        confident_joint=np.eye(classes, dtype=np.int64),
        joint=matrix / classes,
        noise_matrix=matrix,
        prior=np.full(classes, 1.0 / classes),
        noise_rates=np.zeros(classes),
        label_counts=np.full(classes, 10),
    )


def test_single_flips_cut_the_confusions_of_one_flip_columns_by_hand():
    # Four classes: the bar is max(1/2, 2/3) of a column's off-diagonal mass.
    # Column 0: off-diagonal (0.3, 0.05, 0.05), 0.3 ≥ 2/3 of 0.4: one flip, (0.6, 0.3) / 0.9.
    # Column 1: (0.1, 0.1, 0.1), 0.1 < 0.2: spread noise, unchanged. Column 2: no noise, unchanged.
    # Column 3: (0.1, 0.1, 0), half the mass, under 2/3 of it: unchanged.
    matrix = np.array(
        [[0.6, 0.1, 0.0, 0.1], [0.3, 0.7, 0.0, 0.1], [0.05, 0.1, 1.0, 0.0], [0.05, 0.1, 0.0, 0.8]]
    )
    cut = np.array(
        [[2 / 3, 0.1, 0.0, 0.1], [1 / 3, 0.7, 0.0, 0.1], [0.0, 0.1, 1.0, 0.0], [0.0, 0.1, 0.0, 0.8]]
    )
    estimate = _estimate_of(matrix)
    result = single_flips(estimate)
    np.testing.assert_allclose(result.noise_matrix, cut)
    np.testing.assert_allclose(result.noise_matrix, one_flip_reference(matrix))
    np.testing.assert_allclose(result.joint, cut / 4)
    # Given class i's noise rate 1 − Q[i, i] / Σ_j Q[i, j]; uniform prior: 1 − T[i, i] / Σ_j T[i, j].
    np.testing.assert_allclose(result.noise_rates, [3 / 13, 13 / 34, 1 / 11, 1 / 9])
    assert result.prior is estimate.prior and result.confident_joint is estimate.confident_joint
    # An empty column (a class with no sample) stays empty.
    empty = single_flips(
        confident.NoiseEstimate(
            estimate.thresholds,
            estimate.confident_joint,
            estimate.joint,
            np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.2], [0.0, 0.0, 0.8]]),
            np.array([0.5, 0.0, 0.5]),
            np.zeros(3),
            np.full(3, 10),
        )
    )
    np.testing.assert_array_equal(empty.noise_matrix[:, 1], 0.0)
    spread = np.full((3, 3), 0.1) + np.diag([0.7] * 3)  # every column's noise split evenly: nothing cut
    uncut = dataclasses.replace(estimate, noise_matrix=spread)
    assert single_flips(uncut) is uncut


def test_single_flips_need_twice_the_even_share_with_few_classes_by_hand():
    # Three classes: the larger of a column's two off-diagonal entries always holds half of its mass, so the
    # bar is 2 / (3 − 1), all of it. Symmetric noise estimated unevenly, (0.12, 0.08), keeps both sources.
    three = np.array([[0.8, 0.1, 0.1], [0.12, 0.8, 0.1], [0.08, 0.1, 0.8]])
    uneven = _estimate_of(three)
    assert single_flips(uneven) is uneven
    # Four classes: the bar is 2/3. (0.25, 0.15, 0.1) holds half: kept; (0.32, 0.08, 0.05) holds 0.71: cut.
    four = np.eye(4)
    four[:, 0] = [0.5, 0.25, 0.15, 0.1]
    four[:, 1] = [0.32, 0.55, 0.08, 0.05]
    cut = single_flips(_estimate_of(four)).noise_matrix
    np.testing.assert_allclose(cut[:, 0], four[:, 0])
    np.testing.assert_allclose(cut[:, 1], np.array([0.32, 0.55, 0.0, 0.0]) / 0.87)
    np.testing.assert_allclose(cut, one_flip_reference(four))
    # Five classes: half is the larger bar (2/4). (0.2, 0.1, 0.05, 0.05) holds half: cut, (0.6, 0.2) / 0.8.
    five = np.eye(5)
    five[:, 0] = [0.6, 0.2, 0.1, 0.05, 0.05]
    np.testing.assert_allclose(single_flips(_estimate_of(five)).noise_matrix[:, 0], [0.75, 0.25, 0, 0, 0])


def test_three_classes_under_symmetric_noise_keep_every_source_of_the_noise():
    # 40% symmetric noise over three classes, a calibrated belief (logits N(0, 1), +2 on the true class).
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 1000)
    logits = rng.normal(size=(3000, 3))
    logits[np.arange(3000), truth] += 2.0
    given = np.where(rng.random(3000) < 0.4, (truth + rng.integers(1, 3, 3000)) % 3, truth)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    result = find_label_issues(given, probs, probs_from="robust")
    injected = np.full((3, 3), 0.2) + np.diag([0.4] * 3)  # P(ỹ = i | y* = j): 0.6 kept, 0.2 to each other
    assert np.abs(result.noise.noise_matrix - injected).mean() < 0.05  # no source of the noise cut
    flagged, noisy = result.decision != KEEP, given != truth
    f1 = 2 * (flagged & noisy).sum() / (flagged.sum() + noisy.sum())
    assert f1 > 0.85  # 0.68 when one source of each column was cut
    # A ten-output model on the same three classes: the classes the labels use set the bar, not the outputs.
    wide = np.concatenate([probs * 0.97, np.full((3000, 7), 0.03 / 7)], axis=1)
    widened = find_label_issues(given, wide, probs_from="robust")
    np.testing.assert_allclose(widened.noise.noise_matrix[:3, :3], result.noise.noise_matrix, atol=0.02)
    assert widened.decision.tolist() == result.decision.tolist()


def test_two_readings_average_the_robust_and_the_unmixed_posterior_by_hand():
    # Unmixed through this T: (0.75, 0.25) → (0.9, 0.1) and (0.9, 0.1) → (1, 0) (the unmix test below).
    noise_matrix = np.array([[0.8, 0.3], [0.2, 0.7]])
    probs, labels = np.array([[0.75, 0.25], [0.9, 0.1]]), np.array([0, 0])
    # Robust: 0.25·0.3 / (0.75·0.8 + 0.25·0.3) = 1/9 and 0.1·0.3 / (0.9·0.8 + 0.1·0.3) = 1/25. Unmixed: 1/25
    # and 0. The means: 17/225 and 1/50.
    np.testing.assert_allclose(two_readings(labels, probs, noise_matrix)[0], [17 / 225, 1 / 50], rtol=1e-12)
    # A matrix that cannot be unmixed (class 0 labelled 1 as often as 0) leaves the robust reading alone.
    not_unmixable = np.array([[0.5, 0.4], [0.5, 0.6]])
    # 0.25·0.4 / (0.75·0.5 + 0.25·0.4) = 4/19 and 0.1·0.4 / (0.9·0.5 + 0.1·0.4) = 4/49.
    np.testing.assert_allclose(two_readings(labels, probs, not_unmixable)[0], [4 / 19, 4 / 49], rtol=1e-12)


def reference_unmix(probs: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Each row's b with T b = p (a linear solve, float64), clipped at 0 and renormalised."""
    belief = np.clip(np.array([np.linalg.solve(matrix, row) for row in probs]), 0.0, None)
    return belief / belief.sum(axis=1, keepdims=True)


def test_flag_probs_flag_by_their_own_posterior_and_pred_probs_pick_and_gate_the_relabel():
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(3), 20)
    given = np.where(rng.random(60) < 0.3, (truth + rng.integers(1, 3, 60)) % 3, truth)  # 30% flipped
    final, averaged = rng.dirichlet(np.ones(3), size=60), rng.dirichlet(np.ones(3), size=60)
    final = 0.7 * final + 0.3 * np.eye(3)[truth]  # networks that lean to the true class
    result = find_label_issues(given, averaged, probs_from="robust", flag_probs=final)

    def bayes(probs: np.ndarray, matrix: np.ndarray | None = None) -> np.ndarray:
        """P(y* = j | x, ỹ) ∝ p_j T̂[ỹ, j], float64, with `probs`' own cut T̂ unless `matrix` is given."""
        if matrix is None:
            matrix = one_flip_reference(confident.estimate(given, probs).noise_matrix)
        joint = probs * matrix[given]
        return joint / joint.sum(axis=1, keepdims=True)

    # Robust flag probabilities are read both ways: as the belief, and unmixed through their own T̂.
    flag_matrix = one_flip_reference(confident.estimate(given, final).noise_matrix)
    assert all(flag_matrix[j, j] > np.delete(flag_matrix[:, j], j).max() for j in range(3))  # identifiable
    robust = 1.0 - bayes(final)[np.arange(60), given]
    unmixed = 1.0 - bayes(reference_unmix(final, flag_matrix), flag_matrix)[np.arange(60), given]
    wrong = (robust + unmixed) / 2.0
    assert ((robust >= WRONG_THRESHOLD) != (wrong >= WRONG_THRESHOLD)).any()  # the readings' mean decides
    np.testing.assert_allclose(result.scores["posterior_score"], robust, atol=1e-12)
    gate = bayes(averaged)
    best = gate.argmax(axis=1)
    flagged = wrong >= WRONG_THRESHOLD
    relabel = flagged & (best != given) & (gate.max(axis=1) > 1.0 - WRONG_THRESHOLD)
    assert flagged.any() and relabel.any() and (flagged & ~relabel).any()
    np.testing.assert_allclose(result.scores["noise_score"], wrong, atol=1e-12)
    assert result.decision.tolist() == np.where(flagged, np.where(relabel, RELABEL, DROP), KEEP).tolist()
    assert result.new_labels.tolist() == np.where(flagged, np.where(relabel, best, -1), given).tolist()
    np.testing.assert_allclose(
        result.noise.noise_matrix, one_flip_reference(confident.estimate(given, averaged).noise_matrix)
    )
    # The flags differ from the averaged posterior's own, so the test tells the two rules apart.
    assert (
        find_label_issues(given, averaged, probs_from="robust").decision.tolist() != result.decision.tolist()
    )
    with pytest.raises(ValueError, match="flag_probs must have pred_probs' shape"):
        find_label_issues(given, averaged, flag_probs=final[:, :2])


def test_the_stage_flags_by_the_final_networks_and_relabels_by_their_average_with_the_dynamics():
    rng = np.random.default_rng(1)
    given = np.repeat(np.arange(3), 20)
    final, dynamic = rng.dirichlet(np.ones(3), size=60), rng.dirichlet(np.ones(3), size=60)
    dynamics = {"probs": dynamic.astype(np.float32), "margin": np.zeros(60)}
    stage = purify_stage.purify(
        torch.from_numpy(given), torch.from_numpy(final), torch.eye(3)[None], dynamics, load_params(None)
    )
    averaged = (dynamics["probs"].astype(np.float64) + final) / 2.0
    expected = find_label_issues(given, averaged, probs_from="robust", flag_probs=final)
    assert stage.decision.tolist() == expected.decision.tolist()
    np.testing.assert_array_equal(stage.scores["noise_score"], expected.scores["noise_score"])
    np.testing.assert_array_equal(stage.noise.noise_matrix, expected.noise.noise_matrix)
    # Final networks that just fitted every given label (a last recalibration epoch, as the published SMR
    # schedule has), or GRIP's, would flag nothing they memorised: the average flags then.
    averaged_flags = find_label_issues(given, averaged, probs_from="robust").decision.tolist()
    assert averaged_flags != expected.decision.tolist()
    published = load_params(None, presets=["smr_cifar10"])
    assert ssl_train.recalibrates(published, published.ssl_train.epochs - 1)
    group = load_params(None, overrides=["purify.relabel_from=group"])
    for params in (published, group):
        labels, probs = torch.from_numpy(given), torch.from_numpy(final)
        result = purify_stage.purify(labels, probs, torch.eye(3)[None], dynamics, params)
        assert result.decision.tolist() == averaged_flags


def test_posterior_relabels_only_where_the_noise_matrix_lets_a_label_come_from():
    # Classes 0 and 2 swap 40% of their labels; nothing flips into or out of class 1. Columns sum to 1.
    noise_matrix = np.array([[0.6, 0.0, 0.4], [0.0, 1.0, 0.0], [0.4, 0.0, 0.6]])
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.3, 0.5, 0.2], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.5, 0.0, 0.5]])
    post = posterior(labels, probs, noise_matrix)
    # sample 0: (0.18, 0, 0.08) -> (9/13, 0, 4/13): the network's top class 1 cannot have given label 0;
    # sample 1: (0.06, 0, 0.32) -> (3/19, 0, 16/19); sample 2: (0, 0.2, 0) -> class 1 surely;
    # sample 3: no mass at all (p_1 = 0) -> its label is kept with probability 1.
    np.testing.assert_allclose(post.wrong, [4 / 13, 16 / 19, 0.0, 0.0], atol=1e-15)
    assert post.best.tolist() == [0, 2, 1, 1]
    np.testing.assert_allclose(post.best_prob, [9 / 13, 16 / 19, 1.0, 1.0])
    decision, new_labels = decide(labels, post.wrong, post.best, post.best_prob, 0.3)
    assert decision.tolist() == [DROP, RELABEL, KEEP, KEEP]  # sample 0's top class is its label: dropped
    assert new_labels.tolist() == [-1, 2, 1, 1]
    # The gate is strict: a top class right with probability exactly 1 − τ is not enough.
    at_the_gate = np.array([0.5, 0.5 + 1e-9])
    decision, _ = decide(labels[:2], np.array([0.5, 0.5]), np.array([2, 2]), at_the_gate, 0.5)
    assert decision.tolist() == [DROP, RELABEL]


def test_from_one_minus_one_over_c_every_flagged_label_is_relabelled():
    # The best class has probability >= 1/C, a flagged given class <= 1 - τ: from τ = 1 - 1/C (0.9 here) no
    # drop is possible, which is why retrain.dropped is inert at τ_r 0.99 (docs/algorithms.md §5.1).
    rng = np.random.default_rng(1)
    classes, n = 10, 4000
    labels = rng.integers(0, classes, n)
    probs = rng.dirichlet(np.full(classes, 0.05), n)  # peaked, so many labels are flagged
    noise_matrix = np.full((classes, classes), 0.05) + np.eye(classes) * 0.5
    post = posterior(labels, probs, noise_matrix / noise_matrix.sum(axis=0))
    counts = {}
    for threshold in (0.6, 0.9, 0.99):
        decision, _ = decide(labels, post.wrong, post.best, post.best_prob, threshold)
        counts[threshold] = ((decision == RELABEL).sum(), (decision == DROP).sum())
    assert counts[0.6][1] > 0  # below the bound these posteriors do drop some
    assert counts[0.9][1] == counts[0.99][1] == 0
    assert min(counts[0.9][0], counts[0.99][0]) > 1000


def test_a_class_estimated_clean_has_nothing_flagged():
    rng = np.random.default_rng(0)
    n = 600
    labels = np.repeat([0, 1, 2], n // 3)
    probs = np.full((n, 3), 0.05)
    probs[np.arange(n), labels] = 0.9
    # Class 2 is clean, but some of its samples are far less confident than others (a hard class).
    probs[labels == 2] = np.column_stack([np.full(200, 0.2), np.full(200, 0.2), np.full(200, 0.6)])
    probs[np.flatnonzero(labels == 2)[:50]] = [0.3, 0.3, 0.4]
    # Class 1 carries 40 samples of class 0.
    wrong = np.flatnonzero(labels == 1)[rng.permutation(200)[:40]]
    probs[wrong] = [0.9, 0.05, 0.05]
    result = find_label_issues(labels, probs, probs_from="robust")
    assert result.noise.noise_rates[2] == 0.0 and result.noise.noise_rates[0] == 0.0
    assert not (result.decision[labels != 1] != KEEP).any()
    assert set(np.flatnonzero(result.decision != KEEP)) == set(wrong)
    assert (result.new_labels[wrong] == 0).all()


def test_unmix_inverts_the_noise_matrix_by_hand_and_clips():
    noise_matrix = np.array([[0.8, 0.3], [0.2, 0.7]])  # T⁻¹ = [[1.4, -0.6], [-0.4, 1.6]]
    # (0.75, 0.25) = T (0.9, 0.1) comes back as (0.9, 0.1); (0.9, 0.1) gives (1.2, -0.2), clipped: (1, 0).
    np.testing.assert_allclose(
        unmix(np.array([[0.75, 0.25], [0.9, 0.1]]), noise_matrix), [[0.9, 0.1], [1, 0]]
    )


def test_unmix_recovers_the_true_class_probabilities_across_chunks():
    rng = np.random.default_rng(3)
    n, c = chunks.CHUNK_VALUES // 4 + 7, 4  # more than one chunk
    noise_matrix = 0.5 * np.eye(c) + 0.5 * rng.dirichlet(np.ones(c), size=c).T  # columns sum to 1
    truth = rng.dirichlet(np.ones(c), size=n)
    np.testing.assert_allclose(unmix(truth @ noise_matrix.T, noise_matrix), truth, rtol=0, atol=1e-12)


def test_identifiable_needs_every_diagonal_above_its_column():
    assert identifiable(np.array([[0.6, 0.4], [0.4, 0.6]]))
    assert not identifiable(np.array([[0.5, 0.4], [0.5, 0.6]]))  # class 0 is labelled 1 as often as 0
    assert not identifiable(np.array([[0.38, 0.48], [0.62, 0.52]]))  # an estimated swap beyond 50%


def _noisy_model_at_sixty_percent() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(given, truth, probs, T): 4 classes, 60% symmetric noise; each true class keeps 4 of 10 labels and
    gives 2 to each other class. A model fitted to those labels predicts the noisy conditional
    q = T[:, y*]: 0.4 on the true class, 0.2 elsewhere."""
    c, keep = 4, 4
    truth = np.repeat(np.arange(c), 10)
    given = truth.copy()
    for y in range(c):
        given[np.flatnonzero(truth == y)[keep:]] = [j for j in range(c) if j != y for _ in range(2)]
    noise_matrix = np.full((c, c), 0.2) + 0.2 * np.eye(c)
    return given, truth, noise_matrix[:, truth].T, noise_matrix


def test_noisy_label_probabilities_are_unmixed_instead_of_counting_the_noise_twice():
    given, truth, probs, noise_matrix = _noisy_model_at_sixty_percent()
    # Confident learning recovers T exactly (t_j = 0.28: only the true class passes its threshold).
    unmixed = find_label_issues(given, probs)
    assert unmixed.unmixed
    np.testing.assert_allclose(unmixed.noise.noise_matrix, noise_matrix)
    # Unmixed, the belief is one-hot on the true class: clean labels kept, every wrong one relabelled right.
    assert (unmixed.decision[given == truth] == KEEP).all()
    assert (unmixed.decision[given != truth] == RELABEL).all()
    np.testing.assert_array_equal(unmixed.new_labels, truth)
    # Read as the truth, q counts the noise twice: a clean label is wrong with posterior
    # 1 - 0.16 / (0.16 + 3 · 0.04) = 3/7 ≥ τ, and no class clears the gate. Everything is dropped.
    read_as_truth = find_label_issues(given, probs, probs_from="robust")
    np.testing.assert_allclose(read_as_truth.scores["noise_score"][given == truth], 3 / 7)
    assert (read_as_truth.decision == DROP).all()


def test_the_stage_unmixes_only_when_no_ssl_epoch_trained_the_networks():
    given, _, probs, _ = _noisy_model_at_sixty_percent()
    labels, final = torch.from_numpy(given), torch.from_numpy(probs)
    soft_labels, dynamics = torch.eye(4)[None], {"probs": probs, "margin": np.zeros(len(given))}
    without_ssl = load_params(None, presets=["grip"])  # warm-up CE, then GRIP: all fitted to the given labels
    assert purify_stage.purify(labels, final, soft_labels, dynamics, without_ssl).unmixed
    assert not purify_stage.purify(
        labels, final, soft_labels, dynamics, load_params(None)
    ).unmixed  # co-trained


def test_margins_match_a_float64_reference_across_chunks():
    rng = np.random.default_rng(1)
    n, c = chunks.CHUNK_VALUES // 4 + 7, 4  # more than one chunk
    probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    labels = rng.integers(0, c, n)
    p = probs.astype(np.float64)
    own = p[np.arange(n), labels]
    other = np.where(np.eye(c, dtype=bool)[labels], -np.inf, p).max(axis=1)
    np.testing.assert_allclose(margins(labels, probs), own - other, rtol=0, atol=1e-12)


def test_posterior_matches_a_float64_bayes_reference_across_chunks():
    rng = np.random.default_rng(2)
    n, c = chunks.CHUNK_VALUES // 4 + 7, 4  # more than one chunk
    probs = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    labels = rng.integers(0, c, n)
    noise_matrix = rng.dirichlet(np.ones(c), size=c).T  # columns sum to 1: P(ỹ = i | y* = j)
    wrong, best, best_prob = np.empty(n), np.empty(n, dtype=np.int64), np.empty(n)
    for k in range(n):  # P(y* = j | x, ỹ) ∝ p_j P(ỹ | y* = j), one sample at a time
        joint = probs[k].astype(np.float64) * noise_matrix[labels[k]]
        joint /= joint.sum()
        wrong[k], best[k], best_prob[k] = 1.0 - joint[labels[k]], joint.argmax(), joint.max()
    post = posterior(labels, probs, noise_matrix)
    np.testing.assert_allclose(post.wrong, wrong, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(post.best, best)
    np.testing.assert_allclose(post.best_prob, best_prob, rtol=0, atol=1e-12)


def test_flag_top_takes_the_highest_scores_per_class_with_ties_by_index():
    labels = np.array([1, 0, 1, 0, 1, 1])
    score = np.array([0.5, 0.9, 0.7, 0.1, 0.7, 0.2])
    flagged = flag_top(score, labels, np.array([1, 2]))
    assert np.flatnonzero(flagged).tolist() == [1, 2, 4]  # class 0: index 1; class 1: the 0.7 tie, both


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"pred_probs must be \(N, C\) and labels \(N,\)"):
        find_label_issues(np.array([0, 1]), np.ones((3, 2)) / 2)
    with pytest.raises(ValueError, match="labels must lie"):
        find_label_issues(np.array([0, 2]), np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="threshold must lie"):
        find_label_issues(np.array([0, 1]), np.ones((2, 2)) / 2, threshold=1.0)
    with pytest.raises(ValueError, match="probs_from must be one of noisy_labels, robust; got 'cv'"):
        find_label_issues(np.array([0, 1]), np.ones((2, 2)) / 2, probs_from="cv")
    with pytest.raises(ValueError, match="pred_probs row 0 has a negative entry .*not logits"):
        find_label_issues(np.array([0, 1]), np.log(np.ones((2, 2)) / 4))
    with pytest.raises(ValueError, match="flag_probs row 1 sums to 2, not 1"):  # the errors name the argument
        find_label_issues(
            np.array([0, 1]), np.ones((2, 2)) / 2, flag_probs=np.array([[0.5, 0.5], [1.0, 1.0]])
        )
    with pytest.raises(ValueError, match=r"labels\[1\] is 1.5"):
        find_label_issues(np.array([0.0, 1.5]), np.ones((2, 2)) / 2)
    with pytest.raises(ValueError, match="labels are all class 1: .* at least two classes"):
        find_label_issues(np.array([1, 1, 1]), np.ones((3, 2)) / 2)


def test_python_lists_are_read_as_the_arrays_they_hold():
    rng = np.random.default_rng(0)
    labels, probs = rng.integers(0, 3, 40), rng.dirichlet(np.ones(3), size=40)
    flags = rng.dirichlet(np.ones(3), size=40)
    expected = find_label_issues(labels, probs, flag_probs=flags)
    result = find_label_issues(labels.tolist(), probs.tolist(), flag_probs=flags.tolist())
    np.testing.assert_array_equal(result.decision, expected.decision)
    np.testing.assert_array_equal(result.new_labels, expected.new_labels)
    np.testing.assert_array_equal(result.scores["noise_score"], expected.scores["noise_score"])
    np.testing.assert_array_equal(result.noise.noise_matrix, expected.noise.noise_matrix)
