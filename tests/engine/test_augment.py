"""Tests for labelsieve.engine.augment against hand-computed values and slow per-sample references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from labelsieve.engine.augment import augment, random_crop, random_flip, to_float


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int = 16, c: int = 3, h: int = 8, w: int = 6, seed: int = 0) -> torch.Tensor:
    # Non-square and with no zero pixels, so a wrong axis or a padded-in zero shows up.
    return torch.randint(1, 256, (b, c, h, w), generator=_gen(seed), dtype=torch.uint8)


def _crop_reference(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    # The documented draw, then one slice per sample.
    offsets = torch.randint(0, 2 * padding + 1, (x.shape[0], 2), generator=generator, device=x.device)
    padded = F.pad(x, (padding,) * 4)
    h, w = x.shape[2:]
    return torch.stack(
        [padded[b, :, dy : dy + h, dx : dx + w] for b, (dy, dx) in enumerate(offsets.tolist())]
    )


def test_to_float_hand_computed_two_channels() -> None:
    x = torch.tensor([[[[0, 255]], [[51, 102]]]], dtype=torch.uint8)  # (1, 2, 1, 2)
    out = to_float(x, mean=[0.5, 0.2], std=[0.25, 0.1])
    # channel 0: (0 - .5) / .25 = -2, (1 - .5) / .25 = 2; channel 1: (.2 - .2) / .1 = 0, (.4 - .2) / .1 = 2
    expected = torch.tensor([[[[-2.0, 2.0]], [[0.0, 2.0]]]])
    assert out.dtype == torch.float32
    assert_close(out, expected)


def test_to_float_accepts_tensor_stats() -> None:
    x = torch.full((2, 1, 3, 3), 255, dtype=torch.uint8)
    assert_close(to_float(x, torch.tensor([0.0]), torch.tensor([0.5])), torch.full((2, 1, 3, 3), 2.0))


def test_to_float_non_uint8_raises() -> None:
    with pytest.raises(TypeError, match="uint8"):
        to_float(torch.zeros(1, 1, 2, 2), [0.5], [0.5])


def test_to_float_wrong_channel_count_raises() -> None:
    with pytest.raises(ValueError, match="3 entries"):
        to_float(torch.zeros(1, 3, 2, 2, dtype=torch.uint8), [0.5], [0.5, 0.5, 0.5])


def test_to_float_nonpositive_std_raises() -> None:
    with pytest.raises(ValueError, match="positive"):
        to_float(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), [0.5], [0.0])


@pytest.mark.parametrize("padding", [1, 2, 4])
def test_random_crop_matches_per_sample_reference(padding: int) -> None:
    x = _images()
    out = random_crop(x, padding, _gen(7))
    assert out.shape == x.shape and out.dtype == torch.uint8
    assert_close(out, _crop_reference(x, padding, _gen(7)), rtol=0, atol=0)


def test_random_crop_offsets_cover_range_and_pad_with_zeros() -> None:
    # One white 1x1 image per sample: the crop moves the pixel to (p - dy, p - dx) or off the image.
    padding = 2
    x = torch.zeros(2000, 1, 5, 5, dtype=torch.uint8)
    x[:, :, 2, 2] = 255
    out = random_crop(x, padding, _gen(3))
    assert out.sum(dim=(1, 2, 3)).eq(255).all()  # the centre pixel stays inside for padding <= 2
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert set(rows.tolist()) == set(range(5)) and set(cols.tolist()) == set(range(5))
    assert int((out == 0).sum()) == 2000 * 24


def test_random_crop_padding_zero_is_identity() -> None:
    x = _images()
    g = _gen(1)
    state = g.get_state()
    assert random_crop(x, 0, g) is x
    assert torch.equal(g.get_state(), state)  # draws nothing


def test_random_crop_negative_padding_raises() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        random_crop(_images(), -1, _gen(0))


def test_random_flip_flips_exactly_the_drawn_samples() -> None:
    x = _images(b=64)
    out = random_flip(x, _gen(11))
    chosen = torch.rand(64, generator=_gen(11)) < 0.5
    assert 0 < int(chosen.sum()) < 64  # the seed gives a real mix
    for b in range(64):
        expected = x[b].flip(-1) if chosen[b] else x[b]
        assert torch.equal(out[b], expected), b


def test_augment_equals_crop_then_flip_then_to_float() -> None:
    x = _images()
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    out = augment(x, padding=2, flip=True, mean=mean, std=std, generator=_gen(5))
    g = _gen(5)
    expected = to_float(random_flip(random_crop(x, 2, g), g), mean, std)
    assert_close(out, expected, rtol=0, atol=0)


def test_augment_no_flip_no_padding_is_to_float() -> None:
    x = _images()
    out = augment(x, padding=0, flip=False, mean=[0.5] * 3, std=[0.5] * 3, generator=_gen(0))
    assert_close(out, to_float(x, [0.5] * 3, [0.5] * 3), rtol=0, atol=0)


def test_augment_same_seed_same_batch_other_seed_differs() -> None:
    x = _images(b=32)
    kwargs = {"padding": 4, "flip": True, "mean": [0.5] * 3, "std": [0.25] * 3}
    a = augment(x, generator=_gen(9), **kwargs)
    b = augment(x, generator=_gen(9), **kwargs)
    c = augment(x, generator=_gen(10), **kwargs)
    assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_cuda_matches_cuda_reference() -> None:
    x = _images().cuda()
    g = torch.Generator(device="cuda").manual_seed(4)
    out = random_crop(x, 3, g)
    ref = _crop_reference(x, 3, torch.Generator(device="cuda").manual_seed(4))
    assert out.device.type == "cuda"
    assert_close(out, ref, rtol=0, atol=0)
