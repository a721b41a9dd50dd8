"""Near-duplicate detection with a perceptual hash (a DCT pHash) of stored uint8 images.

An image is averaged to grayscale, resized to 28 x 28 (bilinear, antialiased) and transformed with a 2-D
DCT; the signs of the 14 x 14 lowest frequencies (the DC term left out) give 195 bits. Resizing and JPEG
recompression flip few of them, so an altered copy lies within a small Hamming distance of its original.
Measured on Fashion-MNIST (benchmarks/near_duplicates.py): a distance of at most 14 catches 146 of 150
resized or recompressed copies and flags 54 of the 60,000 training images against the 10,000 test
images, most of them near-copies in the dataset itself (same label, pixel error like an altered copy).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

SIDE = 28  # images are resized to SIDE x SIDE before the DCT
LOW = 14  # the signs of the LOW x LOW lowest frequencies, less the DC term, are the hash
BITS = LOW * LOW - 1
WORDS = -(-BITS // 64)  # a hash is WORDS uint64 words


def _dct_rows(n: int, rows: int) -> torch.Tensor:
    """The first `rows` rows of the (n, n) orthonormal DCT-II matrix."""
    k = torch.arange(rows, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    d[0] /= 2**0.5
    return d.float()


_DCT = _dct_rows(SIDE, LOW)  # (LOW, SIDE)


def phash(images: np.ndarray, rows: np.ndarray | None = None, batch: int = 4096) -> np.ndarray:
    """(N, WORDS) uint64 hashes of (N, C, H, W) uint8 images (C = 1 or 3), or of `images[rows]`.

    Reads `batch` images at a time, so a disk-backed array is never loaded whole.
    """
    count = len(images) if rows is None else len(rows)
    out = np.zeros((count, WORDS), dtype=np.uint64)
    for start in range(0, count, batch):
        part = slice(start, start + batch) if rows is None else rows[start : start + batch]
        pixels = np.array(images[part], dtype=np.float32)  # a copy: memmaps may be read-only
        x = torch.from_numpy(pixels).mean(dim=1, keepdim=True)
        x = F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)[:, 0]
        low = (_DCT @ x @ _DCT.T).reshape(len(x), LOW * LOW)[:, 1:]  # (B, BITS)
        bits = np.zeros((len(x), WORDS * 64), dtype=bool)
        bits[:, :BITS] = (low > 0).numpy()
        out[start : start + len(x)] = np.packbits(bits, axis=1).view(np.uint64)
    return out


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between hashes paired row by row: (N, WORDS) x (N, WORDS) -> (N,) int64."""
    return np.bitwise_count(a ^ b).sum(axis=-1, dtype=np.int64)


def nearest(query: np.ndarray, reference: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the Hamming distance to the nearest reference hash and that hash's row.

    Bits become +-1 vectors, so the distance is (BITS - a . b) / 2: one matrix product per `chunk` queries.
    Returns (distance (N,), row (N,)), both int64; with no reference, every distance is BITS + 1 and row -1.
    """
    distance = np.full(len(query), BITS + 1, dtype=np.int64)
    row = np.full(len(query), -1, dtype=np.int64)
    if len(reference) == 0:
        return distance, row
    signs = _signs(reference).T.contiguous()  # (BITS, M)
    for start in range(0, len(query), chunk):
        dots = _signs(query[start : start + chunk]) @ signs  # (b, M), exact integers in float32
        best, where = dots.max(dim=1)
        distance[start : start + len(best)] = ((BITS - best) / 2).round().long().numpy()
        row[start : start + len(best)] = where.numpy()
    return distance, row


def _signs(hashes: np.ndarray) -> torch.Tensor:
    """(N, BITS) float32 +-1 of (N, WORDS) uint64 hashes."""
    bits = np.unpackbits(np.ascontiguousarray(hashes).view(np.uint8), axis=1)[:, :BITS]
    return torch.from_numpy(bits).float().mul_(2).sub_(1)
