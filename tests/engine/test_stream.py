"""The streaming data path: streamed rows equal resident rows, `auto` picks by free memory, and a streamed
training run equals a resident one bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from labelsieve.config import ConfigError, load_params
from labelsieve.engine import stream
from labelsieve.engine.resident import TrainingData
from labelsieve.engine.stream import StreamedImages, choose_data_path, prefetch, row_range
from labelsieve.stages import co_divide, group_regularize, ingest, inject_noise, retrain, ssl_train, warmup
from tests.conftest import TINY_PIPELINE

N = 300


@pytest.fixture
def split(tmp_path: Path) -> tuple[StreamedImages, torch.Tensor]:
    """(streamed, resident) views of one random uint8 (N, 3, 5, 4) split saved as .npy."""
    array = np.random.default_rng(0).integers(0, 256, (N, 3, 5, 4), dtype=np.uint8)
    np.save(tmp_path / "train.npy", array)
    mapped = np.load(tmp_path / "train.npy", mmap_mode="r")
    return StreamedImages(mapped, torch.device("cpu")), torch.from_numpy(array)


def test_streamed_split_looks_like_the_resident_tensor(split):
    images, resident = split
    assert len(images) == N and images.shape == resident.shape and images.device == torch.device("cpu")
    assert torch.equal(images[7], resident[7]) and torch.equal(images[-1], resident[-1])


def test_random_index_tensors_return_the_resident_rows_in_their_order(split):
    images, resident = split
    generator = torch.Generator().manual_seed(1)
    for size in (1, 5, 64, N, 2 * N):
        idx = torch.randint(-N, N, (size,), generator=generator)  # repeats and negative indices
        got = images[idx]
        assert got.dtype == torch.uint8 and torch.equal(got, resident[idx])
    assert images[torch.tensor([], dtype=torch.int64)].shape == (0, 3, 5, 4)
    with pytest.raises(IndexError):
        images[torch.tensor([N])]


def test_slices_return_the_resident_rows_with_read_ahead(split):
    images, resident = split
    for start in range(0, N, 64):  # as predict_logits walks a split: the later slices come from read-ahead
        assert torch.equal(images[start : start + 64], resident[start : start + 64])
    assert not images._plan  # every read-ahead slice was taken
    for part in (slice(10, 10), slice(-20, None), slice(250, 999), slice(0, 50, 3)):
        assert torch.equal(images[part], resident[part])


def test_a_row_range_is_a_streamed_view_that_reads_nothing_until_indexed(split):
    images, resident = split
    block = row_range(images, slice(40, 240))  # a data-parallel rank's block of an evaluation pass
    assert isinstance(block, StreamedImages) and block.shape == (200, 3, 5, 4)
    assert torch.equal(block[0:64], resident[40:104]) and torch.equal(block[-1], resident[239])
    assert row_range(images, slice(None)) is images
    assert torch.equal(row_range(resident, slice(40, 240)), resident[40:240])


def test_planned_batches_are_served_from_the_plan_and_other_requests_at_once(split):
    images, resident = split
    order = list(torch.randperm(N, generator=torch.Generator().manual_seed(2)).split(32))
    prefetch(images, order)
    for k, idx in enumerate(order):
        assert torch.equal(images[idx], resident[idx])
        assert torch.equal(images[idx], resident[idx])  # a repeat (MixMatch's second view)
        assert len(images._plan) == len(order) - k - 1  # taken from the plan
        if k == 3:
            stray = torch.tensor([5, 5, 1])
            assert torch.equal(images[stray], resident[stray])  # not planned: gathered now
            assert len(images._plan) == len(order) - k - 1
    # a request that extends the planned batch (retrain's batch + its neighbours) uses it for its start
    prefetch(images, order[:2])
    pool = torch.cat([order[0], torch.tensor([0, 299, 0])])
    assert torch.equal(images[pool], resident[pool]) and len(images._plan) == 1


def test_prefetch_maps_positions_through_ids_and_interleaves_orders(split):
    images, resident = split
    ids = torch.arange(N - 1, -1, -1)
    labeled, unlabeled = [torch.tensor([0, 1]), torch.tensor([2])], [torch.tensor([9, 8]), torch.tensor([7])]
    prefetch(images, labeled, unlabeled, ids=ids)
    for idx in (labeled[0], unlabeled[0], labeled[1], unlabeled[1]):
        assert torch.equal(images[ids[idx]], resident[ids[idx]])
    assert not images._plan
    prefetch(resident, labeled)  # a resident tensor: nothing to do


def test_a_failed_gather_in_the_worker_is_raised_to_the_consumer(split):
    images, _ = split
    prefetch(images, [torch.tensor([1]), torch.tensor([N + 5])])
    images[torch.tensor([1])]
    with pytest.raises(IndexError):
        images[torch.tensor([N + 5])]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_streamed_rows_reach_cuda_through_pinned_memory_in_plan_order(split):
    images, resident = split
    images, resident = StreamedImages(images._array, torch.device("cuda")), resident.cuda()
    order = [idx.cuda() for idx in torch.randperm(N, generator=torch.Generator().manual_seed(3)).split(32)]
    prefetch(images, order)
    for idx in order:
        got = images[idx]
        assert got.device.type == "cuda" and torch.equal(got, resident[idx])
        assert torch.equal(images[idx], resident[idx])
    assert not images._plan
    for start in range(0, N, 64):
        assert torch.equal(images[start : start + 64], resident[start : start + 64])


@pytest.mark.parametrize(
    ("setting", "needed", "free", "expected"),
    [
        ("auto", 400, 1000, "resident"),
        ("auto", 500, 1000, "resident"),
        ("auto", 501, 1000, "stream"),
        ("auto", 10, None, "resident"),  # free memory unknown: today's behaviour
        ("stream", 1, 1 << 40, "stream"),
        ("resident", 1 << 40, 1, "resident"),
    ],
)
def test_data_path_choice(monkeypatch, capsys, setting, needed, free, expected):
    monkeypatch.setattr(stream, "available_bytes", lambda device: free)
    assert choose_data_path(setting, needed, torch.device("cpu")) == expected
    line = capsys.readouterr().err
    if setting == "auto" and expected == "resident":
        assert line == ""  # the everyday case is quiet
        return
    assert line.count("\n") == 1 and line.startswith(f"data path: {expected} (runtime.data_path {setting};")
    if setting == "auto" and free is not None:
        assert f"{needed}.0 B" in line and f"{free}.0 B free on cpu" in line


def test_free_memory_is_cuda_free_memory_or_mem_available(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 << 30, 80 << 30))
    assert stream.available_bytes(torch.device("cuda:0")) == 3 << 30
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:  16000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n")
    real = Path

    monkeypatch.setattr(stream, "Path", lambda p: meminfo if p == "/proc/meminfo" else real(p))
    assert stream.available_bytes(torch.device("cpu")) == 2048 * 1024


def test_an_unknown_data_path_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(
        ConfigError, match="runtime.data_path: 'disk' is not one of 'auto', 'resident', 'stream'"
    ):
        load_params(None, overrides=["runtime.data_path=disk"])


def _train(root: Path, data_path: str) -> Path:
    """The training stages (retrain: SSSL, dataset-scope kNN) on digits, in root/<data_path>."""
    out = root / data_path
    params = load_params(
        None,
        presets=["digits"],
        overrides=[
            *TINY_PIPELINE,
            f"runtime.data_path={data_path}",
            "retrain.use_purified=false",
            "retrain.knn_scope=dataset",
            "model.eval_batch_size=200",  # several slices per evaluation pass
        ],
    )
    dirs = {"dataset_dir": root / "dataset", "labels_dir": root / "labels"}
    if not dirs["labels_dir"].exists():
        ingest.run(params, out_dir=dirs["dataset_dir"])
        inject_noise.run(params, dataset_dir=dirs["dataset_dir"], out_dir=dirs["labels_dir"])
    warmup.run(params, **dirs, out_dir=out / "warmup")
    co_divide.run(params, **dirs, warmup_dir=out / "warmup", out_dir=out / "divide")
    ssl_train.run(params, **dirs, warmup_dir=out / "warmup", divide_dir=out / "divide", out_dir=out / "ssl")
    group_regularize.run(params, **dirs, networks_dir=out / "ssl", out_dir=out / "group")
    retrain.run(params, **dirs, purified_dir=None, ssl_dir=out / "ssl", out_dir=out / "model")
    return out


@pytest.mark.integration
def test_streamed_training_equals_resident_training_bit_for_bit(tmp_path, capsys):
    resident, streamed = _train(tmp_path, "resident"), _train(tmp_path, "stream")
    assert "data path: stream" in capsys.readouterr().err
    data = TrainingData.load(tmp_path / "dataset", tmp_path / "labels", torch.device("cpu"), "stream")
    assert isinstance(data.train_images, StreamedImages)
    for stage in ("warmup", "ssl", "group"):
        for k in (1, 2):
            first = torch.load(resident / stage / f"net{k}.pt", weights_only=True)
            second = torch.load(streamed / stage / f"net{k}.pt", weights_only=True)
            for name in first:
                assert torch.equal(first[name], second[name]), (stage, k, name)
    for stage in ("warmup", "ssl", "group", "model"):
        history = [json.loads((out / stage / "history.json").read_text()) for out in (resident, streamed)]
        assert history[0] == history[1], stage
    partitions = [np.load(out / "divide" / "partition.npz") for out in (resident, streamed)]
    for name in partitions[0].files:
        np.testing.assert_array_equal(partitions[0][name], partitions[1][name], err_msg=name)
    for name in ("weights.pt", "soft_targets.npz"):
        assert (resident / "model" / name).read_bytes() == (streamed / "model" / name).read_bytes(), name
