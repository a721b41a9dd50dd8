"""Integration tests of warmup, co_divide and ssl_train on digits (tiny budgets, CPU)."""

import json

import numpy as np
import pytest
import torch

from labelsieve.config import load_params
from labelsieve.engine import checkpoint as checkpoint_module
from labelsieve.stages import co_divide, ingest, inject_noise, ssl_train, warmup

pytestmark = pytest.mark.integration

TINY = (
    "runtime.progress=never",
    "warmup.epochs=2",
    "ssl_train.epochs=2",
    "ssl_train.recalibration_period=4",
    "model.eval_batch_size=4096",
)


def _params(*overrides: str, presets: tuple[str, ...] = ("digits",)):
    return load_params(None, presets=presets, overrides=[*TINY, *overrides])


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    params = _params()
    ingest.run(params, out_dir=root / "dataset")
    inject_noise.run(params, dataset_dir=root / "dataset", out_dir=root / "labels")
    return {"dataset_dir": root / "dataset", "labels_dir": root / "labels"}


def _weights(directory):
    return [torch.load(directory / f"net{k}.pt", weights_only=True) for k in (1, 2)]


def _assert_same_weights(first, second):
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


class _Killed(Exception):
    pass


def _kill_after_saves(monkeypatch, saves: int):
    """Make Checkpoint.save raise right after its `saves`-th successful write (a killed process)."""
    real = checkpoint_module.Checkpoint.save
    count = {"n": 0}

    def save(self, state):
        real(self, state)
        count["n"] += 1
        if count["n"] == saves:
            raise _Killed

    monkeypatch.setattr(checkpoint_module.Checkpoint, "save", save)


@pytest.fixture(scope="module")
def warmed(data_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "warmup"
    summary = warmup.run(_params(), **data_dirs, out_dir=out)
    return out, summary


def test_warmup_writes_two_networks_and_history(warmed):
    out, summary = warmed
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert summary["networks"] == 2 and 0.3 < summary["test_acc"] <= 1.0
    assert not (out.parent / "warmup.ckpt").exists()  # the checkpoint is removed once outputs exist


def test_warmup_same_seed_identical_weights(data_dirs, warmed, tmp_path):
    warmup.run(_params(), **data_dirs, out_dir=tmp_path / "again")
    _assert_same_weights(_weights(warmed[0]), _weights(tmp_path / "again"))


def test_warmup_other_seed_other_weights(data_dirs, warmed, tmp_path):
    warmup.run(_params("runtime.seed=1"), **data_dirs, out_dir=tmp_path / "other")
    assert not torch.equal(_weights(warmed[0])[0]["fc.weight"], _weights(tmp_path / "other")[0]["fc.weight"])


def test_warmup_resume_after_kill_equals_uninterrupted(data_dirs, warmed, tmp_path, monkeypatch):
    out = tmp_path / "warmup"
    _kill_after_saves(monkeypatch, 1)
    with pytest.raises(_Killed):
        warmup.run(_params(), **data_dirs, out_dir=out)
    assert not out.exists() and (tmp_path / "warmup.ckpt" / "last.pt").exists()  # no half output
    monkeypatch.undo()
    warmup.run(_params(), **data_dirs, out_dir=out)
    _assert_same_weights(_weights(warmed[0]), _weights(out))
    resumed = json.loads((out / "history.json").read_text())
    whole = json.loads((warmed[0] / "history.json").read_text())
    for record in (*resumed, *whole):
        assert "train_seconds" not in record  # wall time lives in <out_dir>.timings.json
    assert resumed == whole


def test_warmup_ignores_a_checkpoint_of_other_params(data_dirs, warmed, tmp_path, monkeypatch):
    out = tmp_path / "warmup"
    _kill_after_saves(monkeypatch, 1)
    with pytest.raises(_Killed):
        warmup.run(_params("model.lr=0.05"), **data_dirs, out_dir=out)
    monkeypatch.undo()
    warmup.run(_params(), **data_dirs, out_dir=out)  # must start afresh, not resume the lr=0.05 run
    _assert_same_weights(_weights(warmed[0]), _weights(out))


@pytest.fixture(scope="module")
def divided(data_dirs, warmed, tmp_path_factory):
    out = tmp_path_factory.mktemp("divide") / "divide"
    summary = co_divide.run(_params(), **data_dirs, warmup_dir=warmed[0], out_dir=out)
    return out, summary


def test_co_divide_outputs_and_clean_probability_is_informative(divided, data_dirs):
    out, summary = divided
    arrays = np.load(out / "partition.npz")
    n = len(np.load(data_dirs["labels_dir"] / "labels.npz")["train_labels"])
    assert arrays["clean_prob"].shape == arrays["losses"].shape == arrays["labeled"].shape == (2, n)
    np.testing.assert_array_equal(arrays["labeled"], arrays["clean_prob"] > 0.5)
    noisy = np.load(data_dirs["labels_dir"] / "labels.npz")["train_is_noisy"]
    for k in range(2):  # noisy samples have larger losses, so the GMM gives them lower clean probability
        assert arrays["clean_prob"][k][~noisy].mean() > arrays["clean_prob"][k][noisy].mean() + 0.2
        assert summary["networks"][k]["labeled_precision"] > 1 - noisy.mean() + 0.1
    hist = json.loads((out / "histogram.json").read_text())
    assert sum(hist["networks"][0]["all"]) == n
    assert sum(hist["networks"][0]["truly_noisy"]) == int(noisy.sum())


def test_co_divide_guard_falls_back_with_a_warning(data_dirs, warmed, tmp_path):
    params = _params("co_divide.threshold=0.999999")
    with pytest.warns(UserWarning, match="fell back to the top/bottom-k"):
        summary = co_divide.run(params, **data_dirs, warmup_dir=warmed[0], out_dir=tmp_path / "d")
    labeled = np.load(tmp_path / "d" / "partition.npz")["labeled"]
    assert summary["networks"][0]["fell_back"] and labeled[0].sum() >= params.ssl_train.batch_size


def _ssl(params, data_dirs, warmed, divided, out):
    return ssl_train.run(params, **data_dirs, warmup_dir=warmed[0], divide_dir=divided[0], out_dir=out)


def test_ssl_train_resume_after_kill_equals_uninterrupted(data_dirs, warmed, divided, tmp_path, monkeypatch):
    # 3 SSL epochs = global epochs 2, 3 (recalibration: (3 + 1) % 4 == 0) and 4.
    params = _params("ssl_train.epochs=3")
    _ssl(params, data_dirs, warmed, divided, tmp_path / "whole")
    history = json.loads((tmp_path / "whole" / "history.json").read_text())
    assert [h["kind"] for h in history] == ["mixmatch", "recalibration", "mixmatch"]
    assert all(0 < f < 1 for h in history if h["kind"] == "mixmatch" for f in h["labeled_fraction"])
    _kill_after_saves(monkeypatch, 2)
    with pytest.raises(_Killed):
        _ssl(params, data_dirs, warmed, divided, tmp_path / "resumed")
    monkeypatch.undo()
    _ssl(params, data_dirs, warmed, divided, tmp_path / "resumed")
    _assert_same_weights(_weights(tmp_path / "whole"), _weights(tmp_path / "resumed"))
    final = np.load(tmp_path / "resumed" / "partition.npz")["clean_prob"]
    np.testing.assert_array_equal(final, np.load(tmp_path / "whole" / "partition.npz")["clean_prob"])


def test_ssl_train_web_scale_variant_mixes_unlabeled_rows_but_drops_their_loss(
    data_dirs, warmed, divided, tmp_path, monkeypatch
):
    # §2.2 web scale: Z̃ still mixes all 4B rows [x1; x2; u1; u2]; only the first 2B are forwarded.
    mixed_sizes = []
    real_mix = ssl_train.mixmatch.mix

    def spy(inputs, targets, lam, perm):
        mixed_sizes.append((len(inputs), len(perm)))
        return real_mix(inputs, targets, lam, perm)

    monkeypatch.setattr(ssl_train.mixmatch, "mix", spy)
    params = _params("ssl_train.lambda_u=0", "ssl_train.epochs=1")
    summary = _ssl(params, data_dirs, warmed, divided, tmp_path / "w")
    assert summary["lu"] == [0.0, 0.0] and summary["lx"][0] > 0
    b = params.ssl_train.batch_size
    assert mixed_sizes and mixed_sizes[0] == (4 * b, 4 * b)


def test_ssl_train_refuses_a_single_warmed_network(data_dirs, tmp_path):
    params = _params("warmup.networks=1", "warmup.epochs=1")
    warmup.run(params, **data_dirs, out_dir=tmp_path / "w1")
    co_divide.run(params, **data_dirs, warmup_dir=tmp_path / "w1", out_dir=tmp_path / "d1")
    with pytest.raises(Exception, match="ssl_train needs two networks"):
        ssl_train.run(
            params,
            **data_dirs,
            warmup_dir=tmp_path / "w1",
            divide_dir=tmp_path / "d1",
            out_dir=tmp_path / "s",
        )


def test_is_recalibration_every_p_th_global_epoch():
    assert [e for e in range(15) if ssl_train.is_recalibration(e, 6)] == [5, 11]
    assert not any(ssl_train.is_recalibration(e, 0) for e in range(50))
    # The CPU profile: 3 warm-up + 12 SSL epochs, none in the last third (SSL steps 8..11).
    chosen = [e for e in range(3, 15) if ssl_train.is_recalibration(e, 6, step=e - 3, last_step=8)]
    assert chosen == [5]


def test_history_window_averages_exactly_history_epochs_with_this_one():
    past = torch.arange(12.0).reshape(6, 2)  # six earlier epochs of two samples
    assert ssl_train.history_window(past, 5).tolist() == past[-4:].tolist()  # + this epoch = 5
    assert len(ssl_train.history_window(past, 1)) == 0 and len(ssl_train.history_window(past, 0)) == 0
    assert len(ssl_train.history_window(past[:2], 5)) == 2  # fewer epochs so far: all of them


def _two_class_losses() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class 0 is easy (clean losses near 0.1), class 1 hard (clean near 0.6); noisy ones near 0.9."""
    gen = torch.Generator().manual_seed(0)
    parts, labels, clean = [], [], []
    for label, clean_mean in ((0, 0.1), (1, 0.6)):
        parts += [
            clean_mean + 0.03 * torch.randn(600, generator=gen),
            0.9 + 0.03 * torch.randn(400, generator=gen),
        ]
        labels += [torch.full((1000,), label)]
        clean += [torch.arange(1000) < 600]
    return torch.cat(parts).clamp(0, 1), torch.cat(labels), torch.cat(clean)


def test_per_class_division_keeps_the_clean_samples_of_a_hard_class():
    losses, labels, clean = _two_class_losses()
    hard = labels == 1
    recall = {}
    for per_class in (False, True):
        params = _params(f"co_divide.per_class={str(per_class).lower()}")
        classes = co_divide.class_members(labels, params)
        normalised = co_divide.division.minmax_normalise(losses, groups=classes)
        prob, fits = co_divide.fit_clean_prob(normalised, classes, labels, params, seed_key=("test",))
        assert len(fits) == (2 if per_class else 1)
        assert sum(fit.share for fit in fits) == pytest.approx(1.0)
        recall[per_class] = float((prob[hard & clean] > 0.5).float().mean())
        # the per-class posterior is the class's own GMM: refit class 1 alone and compare
        if per_class:
            alone = co_divide.division.posterior(fits[1].gmm, normalised[hard])
            torch.testing.assert_close(prob[hard], alone)
            assert float((prob[~clean] < 0.5).float().mean()) > 0.99
    assert recall[True] > 0.99 > 0.5 > recall[False]


def test_per_class_division_fits_one_gmm_per_class_on_digits(data_dirs, warmed, tmp_path):
    co_divide.run(
        _params("co_divide.per_class=true"), **data_dirs, warmup_dir=warmed[0], out_dir=tmp_path / "d"
    )
    arrays = np.load(tmp_path / "d" / "partition.npz")
    labels = np.load(data_dirs["labels_dir"] / "labels.npz")["train_labels"]
    for c in np.unique(labels):  # normalised within each class
        assert arrays["normalised"][0][labels == c].max() == pytest.approx(1.0)
    entry = json.loads((tmp_path / "d" / "histogram.json").read_text())["networks"][0]
    assert sum(entry["clean"]) == len(np.unique(labels)) and sum(entry["weights"]) == pytest.approx(1.0)


@pytest.mark.parametrize("fraction", [1.0, 0.41])
def test_a_fractional_epoch_trains_its_first_batches_at_the_full_epochs_rates(
    data_dirs, fraction, monkeypatch
):
    from labelsieve.engine import loop
    from labelsieve.engine.resident import TrainingData

    params = _params()
    data = TrainingData.load(data_dirs["dataset_dir"], data_dirs["labels_dir"], torch.device("cpu"))
    model = loop.build_networks(params, data, 1, torch.device("cpu"))[0]
    optimizer = loop.make_optimizer(model, params.model)
    rates = []
    real_set_lr = loop.set_lr
    monkeypatch.setattr(loop, "set_lr", lambda opt, lr: (rates.append(lr), real_set_lr(opt, lr)))
    generators = loop.Generators(0, "test", torch.device("cpu"))
    loop.supervised_epoch(
        model,
        optimizer,
        data,
        params=params,
        epoch=3,
        loss="ce",
        alpha=1.0,
        penalty=0.0,
        generators=generators,
        desc="t",
        fraction=fraction,
    )
    steps = -(-len(data.train_labels) // params.model.batch_size)
    taken = int(np.ceil(fraction * steps))
    assert len(rates) == taken and (fraction == 1.0 or taken < steps)
    expected = [loop.lr_at(3 + s / steps, params.model, params.total_epochs) for s in range(taken)]
    assert rates == expected
