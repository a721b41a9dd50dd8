"""Whole-batch augmentation on the device: random shift (pad + crop), horizontal flip, normalisation.

The dataset stays resident as uint8 (B, C, H, W); crop and flip run on uint8 (a quarter of the bytes of
float32), and only the final batch is converted. This replaces per-sample PIL transforms, which dominate
the published DivideMix epoch (docs/benchmarks.md).

Randomness: every draw comes from the ``generator`` argument, which must live on the same device as the
batch, so a seed fixes the batch. The draws, in order, are:
- :func:`random_crop`: ``torch.randint(0, 2 * padding + 1, (B, 2))``; column 0 is the row offset, column 1
  the column offset into the zero-padded image. Nothing is drawn when padding is 0.
- :func:`random_flip`: ``torch.rand(B)``; sample b is flipped where the draw is < 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def to_float(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """Normalise uint8 pixels: (x / 255 - mean) / std per channel.

    Args:
        x: (B, C, H, W) uint8.
        mean: (C,) channel means in 0..1 pixel units.
        std: (C,) channel standard deviations in 0..1 pixel units.

    Returns:
        (B, C, H, W) float32, same device and memory format as x.

    Raises:
        TypeError: x is not uint8.
        ValueError: mean or std does not have C entries, or a std given as a sequence is not positive.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"expected a uint8 batch, got {x.dtype}")
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).flatten()
    std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).flatten()
    channels = x.shape[1]
    if mean_t.numel() != channels or std_t.numel() != channels:
        raise ValueError(f"mean and std need {channels} entries, got {mean_t.numel()} and {std_t.numel()}")
    # Check Python sequences only: checking a device tensor would force a host sync on every batch.
    if not isinstance(std, Tensor) and min(std) <= 0:
        raise ValueError(f"std must be positive, got {list(std)}")
    # Fold /255 into the affine map: one subtract and one multiply over the batch.
    scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
    shift = (255.0 * mean_t).view(1, -1, 1, 1)
    return (x.to(torch.float32) - shift) * scale


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random shift: zero-pad by ``padding`` on each side, then crop back to H×W at a per-sample offset.

    Offsets are uniform in [0, 2 * padding] per axis and per sample (see the module docstring for the exact
    draw). Vectorised as two gathers: rows first, then columns.

    Args:
        x: (B, C, H, W) batch of any dtype.
        padding: pixels of zero padding per side; 0 returns x itself and draws nothing.
        generator: source of the offsets, on x's device.

    Returns:
        (B, C, H, W) shifted batch.

    Raises:
        ValueError: padding is negative.
    """
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=x.device)
    padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
    rows = offsets[:, 0:1] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(w, device=x.device)  # (B, W)
    padded = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * padding))  # (B, C, H, W + 2p)
    return padded.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))  # (B, C, H, W)


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip a random half of the batch left-right (Bernoulli 0.5 per sample).

    Args:
        x: (B, C, H, W) batch of any dtype.
        generator: source of the draws, on x's device.

    Returns:
        (B, C, H, W) batch; sample b is mirrored where ``torch.rand(B)[b] < 0.5``.
    """
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5  # (B,)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def augment(
    x: Tensor,
    *,
    padding: int,
    flip: bool,
    mean: Sequence[float] | Tensor,
    std: Sequence[float] | Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Crop, then flip (both on uint8), then normalise: the standard CIFAR-style training view.

    Args:
        x: (B, C, H, W) uint8 batch on the device.
        padding: shift range in pixels per side (0 disables the crop).
        flip: whether to mirror a random half of the batch.
        mean: (C,) channel means in 0..1 pixel units.
        std: (C,) channel standard deviations in 0..1 pixel units.
        generator: source of all randomness, on x's device; crop offsets are drawn before flip decisions.

    Returns:
        (B, C, H, W) float32 normalised batch.
    """
    x = random_crop(x, padding, generator)
    if flip:
        x = random_flip(x, generator)
    return to_float(x, mean, std)
