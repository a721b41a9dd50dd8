"""Integration tests of the retrain stage (SSSL, §5) on digits: labels, schedule, resume, and SSSL vs CE."""

import json

import numpy as np
import pytest
import torch

from labelsieve.config import load_params
from labelsieve.data.store import load_dataset
from labelsieve.engine import checkpoint as checkpoint_module
from labelsieve.engine.augment import to_float
from labelsieve.errors import LabelsieveError
from labelsieve.maths import forward, neighbours
from labelsieve.package import load_package
from labelsieve.stages import ingest, inject_noise, retrain, warmup

pytestmark = pytest.mark.integration

TINY = ("runtime.progress=never", "model.eval_batch_size=4096")
# 5 epochs: CE, mixup, then synthetic from e_s = 2 with corrections at 2 and 4; dataset-wide kNN, K = 3.
SCHEDULE = (
    "retrain.epochs=5",
    "retrain.warmup_epochs=1",
    "retrain.synthetic_start=2",
    "retrain.correction_period=2",
    "retrain.knn_scope=dataset",
    "retrain.neighbours=3",
)


def _params(*overrides: str, presets: tuple[str, ...] = ("digits", "sssl")):
    return load_params(None, presets=presets, overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    params = _params()
    ingest.run(params, out_dir=root / "dataset")
    inject_noise.run(params, dataset_dir=root / "dataset", out_dir=root / "labels")
    return {"dataset_dir": root / "dataset", "labels_dir": root / "labels"}


def _retrain(params, data_dirs, out, purified_dir=None):
    return retrain.run(params, **data_dirs, purified_dir=purified_dir, out_dir=out)


def _history(out):
    return json.loads((out / "history.json").read_text())


def _test_predictions(out, dataset_dir) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, true class) of the package in `out` on the clean test split."""
    model, meta = load_package(out)
    dataset = load_dataset(dataset_dir)
    images = torch.from_numpy(np.array(dataset.images("test")))
    with torch.no_grad():
        predicted = model(to_float(images, meta["mean"], meta["std"])).argmax(dim=1).numpy()
    return predicted, dataset.labels("test")


# ----------------------------------------------------------------------------- purified labels


@pytest.fixture(scope="module")
def purified(data_dirs, tmp_path_factory):
    """Hand-made purify output: every class-0 sample dropped, every class-1 sample relabelled to 2."""
    true = np.load(data_dirs["labels_dir"] / "labels.npz")["train_true_labels"]
    labels, decision = true.copy(), np.zeros(len(true), dtype=np.int8)
    decision[true == 0], labels[true == 0] = retrain.DROP, -1
    decision[true == 1], labels[true == 1] = retrain.RELABEL, 2
    directory = tmp_path_factory.mktemp("purified")
    np.savez(directory / "labels.npz", train_labels=labels, train_decision=decision)
    return directory, labels, decision


PURIFIED = ("retrain.use_purified=true", "retrain.epochs=4", "retrain.synthetic_start=2")


def test_retrain_purified_exclude_trains_without_dropped_and_on_relabels(data_dirs, purified, tmp_path):
    directory, labels, decision = purified
    out = tmp_path / "model"
    summary = _retrain(_params(*PURIFIED, "retrain.dropped=exclude"), data_dirs, out, directory)
    dropped = decision == retrain.DROP
    assert summary["samples"] == summary["kept"] == int((~dropped).sum())
    assert summary["dropped"] == int(dropped.sum()) and summary["relabelled"] == int((decision == 1).sum())
    saved = np.load(out / "soft_targets.npz")
    np.testing.assert_array_equal(saved["trained"], ~dropped)
    # A correction (epoch 2, m = 0.9) cannot move a target's argmax off its onehot label.
    np.testing.assert_array_equal(saved["targets"][~dropped].argmax(axis=1), labels[~dropped])
    predicted, true = _test_predictions(out, data_dirs["dataset_dir"])
    assert np.mean(predicted == 0) < 0.02  # class 0 was never a target
    assert np.mean(predicted[true == 1] == 2) > 0.7  # the relabel, not the given label, was learned


def test_retrain_purified_unlabeled_keeps_dropped_with_zero_weight(data_dirs, purified, tmp_path):
    directory, _, decision = purified
    out = tmp_path / "model"
    summary = _retrain(_params(*PURIFIED, "retrain.dropped=unlabeled"), data_dirs, out, directory)
    dropped = decision == retrain.DROP
    assert summary["samples"] == len(decision) and summary["kept"] == int((~dropped).sum())
    saved = np.load(out / "soft_targets.npz")
    assert saved["trained"].all()
    np.testing.assert_array_equal(saved["loss_weight"], (~dropped).astype(np.float32))
    predicted, _ = _test_predictions(out, data_dirs["dataset_dir"])
    assert np.mean(predicted == 0) < 0.05  # seen as images, never as a labelled target


def test_redecide_applies_purifys_rule_at_retrains_own_threshold(tmp_path):
    # The hand case of tests/maths/test_purification.py: wrong 2/29, 8/11, 1/13, 9/37, 3/4; top classes
    # 0, 1, 1, 1, 0 with posterior 27/29, 8/11, 12/13, 28/37, 3/4.
    given = np.array([0, 0, 1, 1, 1])
    # noise_score, purify's flag score (the mean of two readings), is not what retrain re-decides.
    np.savez(
        tmp_path / "scores.npz",
        posterior_score=np.array([2 / 29, 8 / 11, 1 / 13, 9 / 37, 3 / 4]),
        noise_score=np.array([0.9, 0.0, 0.9, 0.9, 0.0]),
        predicted=np.array([0, 1, 1, 1, 0]),
        confidence=np.array([27 / 29, 8 / 11, 12 / 13, 28 / 37, 3 / 4]),
    )
    decision, labels = retrain.redecide(tmp_path, given, 2, 0.4)  # purify's default: its decisions
    assert decision.tolist() == [retrain.KEEP, retrain.RELABEL, retrain.KEEP, retrain.KEEP, retrain.RELABEL]
    assert labels.tolist() == [0, 1, 1, 1, 0]
    # τ = 0.74 flags sample 4 alone, and its 3/4 for class 0 passes 1 − τ = 0.26: relabelled. τ = 0.8
    # flags nothing.
    decision, labels = retrain.redecide(tmp_path, given, 2, 0.74)
    assert decision.tolist() == [retrain.KEEP] * 4 + [retrain.RELABEL]
    assert labels.tolist() == [0, 0, 1, 1, 0]
    assert retrain.redecide(tmp_path, given, 2, 0.8)[0].tolist() == [retrain.KEEP] * 5


def test_redecide_without_usable_scores_names_the_file_and_the_fix(tmp_path):
    given = np.array([0, 1])
    with pytest.raises(
        LabelsieveError, match=r"scores\.npz has no readable posterior_score.*flag_threshold: null"
    ):
        retrain.redecide(tmp_path, given, 2, 0.5)
    two = {"noise_score": np.array([0.1, 0.2]), "predicted": np.array([0, 1]), "confidence": np.ones(2)}
    np.savez(tmp_path / "scores.npz", **two)  # written before rule 5
    with pytest.raises(LabelsieveError, match=r"no readable posterior_score, predicted, confidence"):
        retrain.redecide(tmp_path, given, 2, 0.5)
    scores = {
        "posterior_score": np.array([0.1, np.nan]),
        "predicted": np.array([0, 2]),
        "confidence": np.ones(3),
    }
    np.savez(tmp_path / "scores.npz", **scores)
    with pytest.raises(LabelsieveError, match=r"confidence must be of shape \(2,\), got \(3,\)"):
        retrain.redecide(tmp_path, given, 2, 0.5)
    np.savez(tmp_path / "scores.npz", **{**scores, "confidence": np.ones(2)})
    with pytest.raises(LabelsieveError, match=r"must be finite.*class indices in \[0, 2\)"):
        retrain.redecide(tmp_path, given, 2, 0.5)


def test_weighted_soft_ce_zero_weight_rows_add_nothing_and_ones_match_soft_ce():
    logits = torch.randn(6, 4, requires_grad=True)
    targets = torch.softmax(torch.randn(6, 4), dim=1)
    ones = retrain.weighted_soft_ce(logits, targets, torch.ones(6))
    assert torch.equal(ones, neighbours.soft_cross_entropy(logits, targets))
    weight = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    loss = retrain.weighted_soft_ce(logits, targets, weight)
    kept = weight.bool()
    torch.testing.assert_close(loss, neighbours.soft_cross_entropy(logits[kept], targets[kept]))
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.equal(grad[~kept], torch.zeros_like(grad[~kept]))


def test_retrain_missing_purified_file_names_it_and_the_fix(data_dirs, tmp_path):
    with pytest.raises(LabelsieveError, match=r"purified/labels\.npz is missing.*labelsieve purify"):
        _retrain(_params("retrain.use_purified=true"), data_dirs, tmp_path / "m", tmp_path / "purified")
    assert not (tmp_path / "m").exists()


def test_retrain_purified_file_of_another_size_is_refused(data_dirs, tmp_path):
    np.savez(tmp_path / "labels.npz", train_labels=np.zeros(7, np.int64), train_decision=np.zeros(7, np.int8))
    with pytest.raises(LabelsieveError, match=r"train_labels must be integers of shape \(\d+,\)"):
        _retrain(_params("retrain.use_purified=true"), data_dirs, tmp_path / "m", tmp_path)


def test_retrain_refuses_one_kept_sample_only_when_it_trains(data_dirs, tmp_path):
    # GRIP at 80% noise once dropped all but one sample; its preset has no retrain epoch, so that run
    # must not fail in a stage that trains nothing.
    n = len(np.load(data_dirs["labels_dir"] / "labels.npz")["train_true_labels"])
    labels, decision = np.full(n, -1, np.int64), np.full(n, retrain.DROP, np.int8)
    labels[0], decision[0] = 0, retrain.KEEP
    np.savez(tmp_path / "labels.npz", train_labels=labels, train_decision=decision)
    summary = _retrain(
        _params("retrain.use_purified=true", "retrain.epochs=0"), data_dirs, tmp_path / "m", tmp_path
    )
    assert summary["epochs"] == 0
    with pytest.raises(LabelsieveError, match=r"only 1 sample\(s\) are kept; retrain needs at least 2"):
        _retrain(
            _params("retrain.use_purified=true", "retrain.epochs=1"), data_dirs, tmp_path / "m2", tmp_path
        )


def test_sssl_preset_trains_on_the_raw_labels_with_upstream_stages_passed_through():
    params = load_params("params.yaml", presets=["sssl"])
    assert not params.retrain.use_purified and params.retrain.epochs == 15
    assert (params.warmup.epochs, params.warmup.networks, params.ssl_train.epochs) == (0, 1, 0)
    assert params.group_regularize.epochs == 0
    assert params.retrain.knn_scope == "dataset"  # chosen on the tuning slice (docs/algorithms.md §5)
    assert params.retrain.forward_correction == 0  # no purify estimate of the raw labels to correct with


# ----------------------------------------------------------------------------- schedule and resume


@pytest.fixture(scope="module")
def whole(data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "model"
    return out, _retrain(_params(*SCHEDULE), data_dirs, out)


def test_retrain_schedule_phases_and_corrections_on_the_right_epochs(whole):
    history = _history(whole[0])
    assert [h["kind"] for h in history] == ["ce", "mixup", "synthetic", "synthetic", "synthetic"]
    moved = [h["epoch"] for h in history if h.get("target_shift", 0.0) > 0]
    assert moved == [2, 4]  # measured on the targets: e_s, then every correction_period-th epoch
    assert [h["epoch"] for h in history if "clean_fraction" in h] == [1, 2, 3, 4]  # GMM after warm-up
    targets = np.load(whole[0] / "soft_targets.npz")["targets"]
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    assert (targets.max(axis=1) < 1).mean() > 0.5  # the corrections softened the targets


class _Killed(Exception):
    pass


def test_retrain_resume_after_kill_equals_uninterrupted(data_dirs, whole, tmp_path, monkeypatch):
    out = tmp_path / "model"
    real = checkpoint_module.Checkpoint.save
    saves = {"n": 0}

    def save_then_die(self, state):  # the process dies after epoch 2 (a correction epoch) is saved
        real(self, state)
        saves["n"] += 1
        if saves["n"] == 3:
            raise _Killed

    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", save_then_die)
    with pytest.raises(_Killed):
        _retrain(_params(*SCHEDULE), data_dirs, out)
    assert not out.exists() and (tmp_path / "model.ckpt" / "last.pt").exists()
    monkeypatch.undo()
    _retrain(_params(*SCHEDULE), data_dirs, out)
    first = torch.load(whole[0] / "weights.pt", weights_only=True)
    second = torch.load(out / "weights.pt", weights_only=True)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=0, atol=0, msg=name)
    for key in ("targets", "trained", "loss_weight"):
        np.testing.assert_array_equal(
            np.load(out / "soft_targets.npz")[key], np.load(whole[0] / "soft_targets.npz")[key]
        )
    resumed, uninterrupted = _history(out), _history(whole[0])
    for record in (*resumed, *uninterrupted):
        assert "train_seconds" not in record  # wall time lives in <out_dir>.timings.json
    assert resumed == uninterrupted
    assert not (tmp_path / "model.ckpt").exists()


# ----------------------------------------------------------------------------- SSSL vs plain CE


def test_sssl_beats_ce_on_digits_at_40_percent_symmetric_noise(data_dirs, tmp_path):
    # The same budget and seed for both. At 14 epochs CE is still near its best (gaps of 0.3 to 2.5 points
    # over seeds 0-3); by 24 it has fitted much of the noise (gaps of 6.1 and 4.2 points at seeds 0 and 1).
    budget = 24
    ce = warmup.run(
        _params(f"warmup.epochs={budget}", presets=("digits", "ce")), **data_dirs, out_dir=tmp_path / "ce"
    )
    sssl = _retrain(_params(f"retrain.epochs={budget}"), data_dirs, tmp_path / "sssl")
    assert sssl["test_acc"] > ce["test_acc"] + 0.02, (sssl["test_acc"], ce["test_acc"])


# ----------------------------------------------------------------------------- distillation from the ensemble


def _labels_with_probs() -> retrain.TrainingLabels:
    """Three samples, three classes: kept as 0, relabelled to 2, dropped; the ensemble's predictions."""
    probs = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.1, 0.7, 0.2]], dtype=np.float32)
    return retrain.TrainingLabels(
        np.array([0, 2, -1]),
        np.array([retrain.KEEP, retrain.RELABEL, retrain.DROP], np.int8),
        "purified",
        probs,
    )


def test_distill_targets_mix_onehot_and_ensemble_by_hand():
    cfg = _params("retrain.distill=0.25", "retrain.dropped=exclude").retrain
    state = retrain.initial_state(_labels_with_probs(), 3, cfg, torch.device("cpu"))
    # 0.75 onehot + 0.25 p: [0.75 + 0.15, 0.075, 0.025] and [0.05, 0.05, 0.75 + 0.15]
    expected = torch.tensor([[0.9, 0.075, 0.025], [0.05, 0.05, 0.9]])
    torch.testing.assert_close(state.targets[:2], expected)
    assert state.train_ids.tolist() == [0, 1] and state.loss_weight.tolist() == [1.0, 1.0, 0.0]


def test_dropped_ensemble_keeps_dropped_samples_with_the_ensemble_target():
    cfg = _params("retrain.distill=0", "retrain.dropped=ensemble").retrain
    labels = _labels_with_probs()
    state = retrain.initial_state(labels, 3, cfg, torch.device("cpu"))
    torch.testing.assert_close(state.targets[2], torch.from_numpy(labels.probs[2]))
    torch.testing.assert_close(state.targets[0], torch.tensor([1.0, 0.0, 0.0]))  # β = 0: onehot
    assert state.train_ids.tolist() == [0, 1, 2] and state.loss_weight.tolist() == [1.0, 1.0, 1.0]


def test_distill_without_ensemble_probabilities_names_the_missing_array(data_dirs, tmp_path):
    n = len(np.load(data_dirs["labels_dir"] / "labels.npz")["train_true_labels"])
    np.savez(tmp_path / "labels.npz", train_labels=np.zeros(n, np.int64), train_decision=np.zeros(n, np.int8))
    with pytest.raises(LabelsieveError, match=r"no train_probs.*retrain\.distill"):
        _retrain(
            _params("retrain.use_purified=true", "retrain.distill=0.5"), data_dirs, tmp_path / "m", tmp_path
        )


def test_ensemble_package_holds_the_retrained_and_the_co_trained_networks(data_dirs, tmp_path):
    """warmup's two networks stand in for ssl_train's: the package adds them after the retrained one."""
    co_trained = tmp_path / "co_trained"
    warmup.run(_params("warmup.epochs=1", "warmup.networks=2"), **data_dirs, out_dir=co_trained)
    params = _params("retrain.epochs=1", "retrain.package=ensemble")
    out = tmp_path / "model"
    summary = retrain.run(params, **data_dirs, purified_dir=None, ssl_dir=co_trained, out_dir=out)
    model, meta = load_package(out)
    assert (
        meta["members"] == ["weights.pt", "weights_2.pt", "weights_3.pt"] and summary["package_members"] == 3
    )
    for k, name in enumerate(("net1.pt", "net2.pt"), start=1):
        saved = torch.load(co_trained / name, weights_only=True)
        packaged = model.members[k].state_dict()
        assert all(torch.equal(saved[key], packaged[key]) for key in saved)
    predicted, true = _test_predictions(out, data_dirs["dataset_dir"])
    assert summary["package_test_acc"] == pytest.approx(float(np.mean(predicted == true)), abs=0.01)

    with pytest.raises(
        LabelsieveError, match=r"retrain.package: ensemble uses .*or set retrain.package: single"
    ):
        retrain.run(
            params, **data_dirs, purified_dir=None, ssl_dir=tmp_path / "none", out_dir=tmp_path / "m2"
        )


# ----------------------------------------------------------------------------- forward correction

FORWARD = (
    "retrain.use_purified=true",
    "retrain.init_from=scratch",
    "retrain.epochs=1",
    "retrain.distill=0.25",
)


def _purify_output(directory, data_dirs, noise_matrix, sevens_as_ones=False):
    """Every given label kept, the ensemble's prediction 0.9 on the given label (with `sevens_as_ones`, on
    class 1 for every other sample given 7), and `noise_matrix`."""
    given = np.load(data_dirs["labels_dir"] / "labels.npz")["train_labels"]
    believed = given.copy()
    if sevens_as_ones:
        believed[np.flatnonzero(given == 7)[::2]] = 1
    probs = np.full((len(given), 10), 0.1 / 9, np.float32)
    probs[np.arange(len(given)), believed] = 0.9
    directory.mkdir()
    np.savez(
        directory / "labels.npz",
        train_labels=given,
        train_decision=np.zeros(len(given), np.int8),
        train_probs=probs,
    )
    summary = {"noise_estimate": {"noise_matrix": noise_matrix.tolist()}}
    (directory / "summary.json").write_text(json.dumps(summary))
    return given, probs


def test_forward_correction_trains_through_the_labels_expected_noise_matrix(data_dirs, tmp_path):
    identity = np.eye(10)
    _purify_output(tmp_path / "identity", data_dirs, identity, sevens_as_ones=True)
    plain = _params(*FORWARD, "retrain.forward_correction=0", presets=("digits",))
    _retrain(plain, data_dirs, tmp_path / "plain", tmp_path / "identity")
    on = _params(*FORWARD, "retrain.forward_correction=1", presets=("digits",))
    _retrain(on, data_dirs, tmp_path / "corrected", tmp_path / "identity")
    # Through the identity the corrected loss is the plain one (up to float rounding of log(softmax)).
    assert _history(tmp_path / "corrected")[0]["loss"] == pytest.approx(
        _history(tmp_path / "plain")[0]["loss"], rel=1e-4
    )

    # Class 1 given as 7 a third of the time, and half the 7s look like 1s to the ensemble: the matrix
    # retrain learns through is the posterior's.
    swap = np.eye(10)
    swap[[1, 7], 1] = 2 / 3, 1 / 3
    given, probs = _purify_output(tmp_path / "swap", data_dirs, swap, sevens_as_ones=True)
    data = retrain.TrainingData.load(data_dirs["dataset_dir"], data_dirs["labels_dir"], torch.device("cpu"))
    labels = retrain.read_labels(on, data, tmp_path / "swap")
    expected = forward.expected_noise_matrix(given, given, probs, swap)
    np.testing.assert_allclose(labels.noise_matrix, expected)
    assert 0.3 < labels.noise_matrix[7, 1] < 0.4 and labels.noise_matrix[7, 7] == 1.0
    half = _params(*FORWARD, "retrain.forward_correction=0.5", presets=("digits",))
    shrunk = retrain.read_labels(half, data, tmp_path / "swap").noise_matrix
    np.testing.assert_allclose(shrunk, 0.5 * expected + 0.5 * np.eye(10))
    _retrain(on, data_dirs, tmp_path / "swapped", tmp_path / "swap")
    # The swap moves the first epoch's loss by about 0.15% (2.0721 against 2.0690 on an AVX2 EPYC). With the
    # ensemble agreeing with every given label, T_r stayed within 0.01 of the identity and the losses 0.006%
    # apart, which an AVX2 CPU could not tell from rounding.
    assert _history(tmp_path / "swapped")[0]["loss"] != pytest.approx(
        _history(tmp_path / "corrected")[0]["loss"], rel=1e-4
    )


def test_forward_correction_acts_on_purified_labels_in_ce_epochs_only(data_dirs, tmp_path):
    swap = np.eye(10)
    swap[[1, 7], 1] = 2 / 3, 1 / 3
    _purify_output(tmp_path / "purified", data_dirs, swap)
    # A mixup epoch mixes targets, label and belief together: it trains the same with λ 1 as with λ 0.
    mixup = (*FORWARD, "retrain.warmup_epochs=0", "retrain.synthetic_start=5")
    for strength in (0, 1):
        params = _params(*mixup, f"retrain.forward_correction={strength}", presets=("digits",))
        _retrain(params, data_dirs, tmp_path / f"mixup{strength}", tmp_path / "purified")
    assert _history(tmp_path / "mixup1")[0]["loss"] == _history(tmp_path / "mixup0")[0]["loss"]
    # The raw noisy labels have no purify estimate: there is nothing to correct through.
    raw = _params("retrain.forward_correction=1", "retrain.epochs=1")
    data = retrain.TrainingData.load(data_dirs["dataset_dir"], data_dirs["labels_dir"], torch.device("cpu"))
    assert retrain.read_labels(raw, data, None).noise_matrix is None


def test_forward_correction_without_a_usable_matrix_names_the_file(data_dirs, tmp_path):
    given, _ = _purify_output(tmp_path / "purified", data_dirs, np.eye(10))
    (tmp_path / "purified" / "summary.json").unlink()
    params = _params(*FORWARD, "retrain.forward_correction=1", presets=("digits",))
    with pytest.raises(LabelsieveError, match=r"summary\.json has no readable noise_estimate\.noise_matrix"):
        _retrain(params, data_dirs, tmp_path / "m", tmp_path / "purified")
    (tmp_path / "purified" / "summary.json").write_text(
        json.dumps({"noise_estimate": {"noise_matrix": [[1.0]]}})
    )
    with pytest.raises(
        LabelsieveError, match=r"noise_matrix must hold \(10, 10\) probabilities, got \(1, 1\)"
    ):
        _retrain(params, data_dirs, tmp_path / "m", tmp_path / "purified")
    assert not (tmp_path / "m").exists() and len(given) > 0
