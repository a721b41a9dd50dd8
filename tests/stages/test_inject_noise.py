import json

import numpy as np
import pytest

from labelsieve.maths.noise import NoiseError
from labelsieve.stages import ingest, inject_noise


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "ds"
    from labelsieve.config import load_params

    ingest.run(load_params(None, presets=["digits"], overrides=["runtime.progress=never"]), out_dir=out)
    return out


def _run(make_params, digits_dir, tmp_path, *overrides):
    out = tmp_path / "labels"
    summary = inject_noise.run(
        make_params(*overrides, presets=("digits",)), dataset_dir=digits_dir, out_dir=out
    )
    return summary, np.load(out / "labels.npz"), json.loads((out / "noise.json").read_text())


def test_inject_noise_symmetric_half_is_about_45_percent_wrong(make_params, digits_dir, tmp_path):
    summary, arrays, report = _run(make_params, digits_dir, tmp_path, "inject_noise.rate=0.5")
    train_n = len(arrays["train_labels"])
    assert report["train"]["redrawn"] == train_n // 2
    assert summary["train"] == pytest.approx(0.45, abs=0.04)
    assert np.array_equal(arrays["train_is_noisy"], arrays["train_labels"] != arrays["train_true_labels"])
    matrix = np.array(report["train"]["noise_matrix"])
    np.testing.assert_allclose(matrix.sum(axis=0), 1.0, atol=1e-5)  # columns are P(. | true = j)
    assert len(arrays["val_labels"]) == report["val"]["n"] > 0


def test_inject_noise_rate_zero_passes_through(make_params, digits_dir, tmp_path):
    summary, arrays, report = _run(make_params, digits_dir, tmp_path, "inject_noise.rate=0")
    assert np.array_equal(arrays["train_labels"], arrays["train_true_labels"])
    assert summary["train"] == 0.0 and report["val"]["redrawn"] == 0
    np.testing.assert_allclose(np.array(report["train"]["noise_matrix"]), np.eye(10))


def test_inject_noise_key_changes_with_every_param_and_seed(make_params, digits_dir, tmp_path):
    keys = set()
    for overrides in (
        ("inject_noise.rate=0.3",),
        ("inject_noise.rate=0.4",),
        ("inject_noise.rate=0.4", "inject_noise.mode=pairflip"),
        ("inject_noise.rate=0.4", "runtime.seed=1"),
    ):
        keys.add(_run(make_params, digits_dir, tmp_path, *overrides)[2]["key"])
    assert len(keys) == 4
    same = _run(make_params, digits_dir, tmp_path, "inject_noise.rate=0.3")
    assert same[2]["key"] in keys


def test_inject_noise_instance_mode_exact_rate(make_params, digits_dir, tmp_path):
    _, arrays, report = _run(
        make_params, digits_dir, tmp_path, "inject_noise.rate=0.4", "inject_noise.mode=instance"
    )
    n = len(arrays["train_labels"])
    assert report["train"]["actual_noise_rate"] == pytest.approx((4 * n // 10) / n)


def test_inject_noise_custom_map_and_bad_map(make_params, digits_dir, tmp_path):
    _, arrays, _ = _run(
        make_params,
        digits_dir,
        tmp_path,
        "inject_noise.mode=asymmetric",
        "inject_noise.rate=0.5",
        "inject_noise.class_map=custom",
        "inject_noise.custom_map={'7': '1'}",
    )
    changed = arrays["train_is_noisy"]
    assert set(arrays["train_true_labels"][changed]) == {7} and set(arrays["train_labels"][changed]) == {1}
    with pytest.raises(NoiseError, match="names class\\(es\\) not in the dataset: 'Ankle boot'"):
        _run(make_params, digits_dir, tmp_path, "inject_noise.mode=asymmetric", "inject_noise.rate=0.5")
