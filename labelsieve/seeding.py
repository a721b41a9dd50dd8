"""Seeded random streams. Each consumer asks for its own named stream, so adding a draw in one place
never shifts the numbers another place gets."""

from __future__ import annotations

import zlib

import numpy as np
import torch


def numpy_rng(seed: int, *tags: str) -> np.random.Generator:
    """A NumPy generator determined by `seed` and the stream's name(s)."""
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) for t in tags)])


def torch_generator(seed: int, *tags: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on `device` determined by `seed` and the stream's name(s)."""
    derived = int(numpy_rng(seed, *tags).integers(0, 2**63 - 1))
    generator = torch.Generator(device=device)
    generator.manual_seed(derived)
    return generator
