"""How well the perceptual hash of labelsieve/data/near_duplicates.py finds altered copies of test images.

On Fashion-MNIST (IDX files in --data, default Debian's /usr/share/datasets/fashion-mnist):

- caught: `--copies` seeded test images are altered three ways, each decoded back to 28 px exactly as
  ingest decodes a file (labelsieve/data/images.py): ``resize`` (bilinear up to 36 px, saved as PNG),
  ``jpeg`` (JPEG at quality 70) and ``resize+jpeg`` (both). A copy is caught at threshold t when some test
  image's hash lies within Hamming distance t of its hash (what ingest's leak check asks); ``caught_own``
  counts those within t of the original itself.
- false matches: of the 60,000 training images, how many have a test image within t (``train_flagged``),
  and how many of those are not exact-pixel copies (``train_flagged_not_exact``): the training images a
  threshold t would drop. At the chosen threshold (``ingest.near_duplicate_bits``) each flagged pair's
  mean pixel error is compared with the worst altered copy's: a pair above it is a clear false match,
  one below looks like a near-copy within Fashion-MNIST itself (``flagged_same_label`` helps judge).

Writes `--out` (default benchmarks/results/near_duplicates.json). Run from the repository root:

    uv run python benchmarks/near_duplicates.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from labelsieve.atomic import write_json
from labelsieve.config import IngestConfig
from labelsieve.data import idx, images
from labelsieve.data.near_duplicates import BITS, distances, nearest, phash

THRESHOLDS = list(range(0, 25))


def altered(pixels: np.ndarray, kind: str) -> np.ndarray:
    """A (1, 28, 28) copy of one (28, 28) image after `kind`, decoded as ingest decodes a file."""
    image = Image.fromarray(pixels, mode="L")
    if "resize" in kind:
        image = image.resize((36, 36), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    if "jpeg" in kind:
        image.save(buffer, format="JPEG", quality=70)
    else:
        image.save(buffer, format="PNG")
    return images.decode_image(buffer.getvalue(), size=28, channels=1, max_pixels=10**6)


def _mean_abs_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) mean absolute pixel difference (0..255) between paired images."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=(1, 2, 3))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/near_duplicates.json"))
    args = parser.parse_args()

    arrays = idx.load_fashion_mnist(args.data, download=False, url="", cache_dir=args.data)
    train, test = arrays["train_images"][:, None], arrays["test_images"][:, None]  # (N, 1, 28, 28)
    started = time.perf_counter()
    train_hash, test_hash = phash(train), phash(test)
    hash_seconds = time.perf_counter() - started
    started = time.perf_counter()
    train_distance, train_match = nearest(train_hash, test_hash)
    nearest_seconds = time.perf_counter() - started
    test_sha = {hashlib.sha256(x.tobytes()).hexdigest() for x in test}
    exact = np.array([hashlib.sha256(x.tobytes()).hexdigest() in test_sha for x in train])

    chosen = np.random.default_rng(args.seed).choice(len(test), size=args.copies, replace=False)
    caught: dict[str, dict[str, list[int]]] = {}
    copy_error: list[np.ndarray] = []
    for kind in ("resize", "jpeg", "resize+jpeg"):
        copies = np.stack([altered(test[i, 0], kind) for i in chosen])
        copy_hash = phash(copies)
        copy_error.append(_mean_abs_error(copies, test[chosen]))
        distance, _ = nearest(copy_hash, test_hash)
        own = distances(copy_hash, test_hash[chosen])
        caught[kind] = {
            "caught": [int((distance <= t).sum()) for t in THRESHOLDS],
            "caught_own": [int((own <= t).sum()) for t in THRESHOLDS],
            "distance_to_original": sorted(own.tolist()),
        }
    threshold = IngestConfig().near_duplicate_bits
    flagged = np.flatnonzero(train_distance <= threshold)
    pair_error = _mean_abs_error(train[flagged], test[train_match[flagged]])
    worst_copy = float(np.concatenate(copy_error).max())
    labels = arrays["train_labels"][flagged] == arrays["test_labels"][train_match[flagged]]
    result = {
        "dataset": "fashion-mnist",
        "hash": f"signs of 14 x 14 low DCT frequencies, {BITS} bits (labelsieve/data/near_duplicates.py)",
        "copies_per_kind": args.copies,
        "thresholds": THRESHOLDS,
        "hash_bits": BITS,
        "chosen_threshold": threshold,
        "copies": caught,
        "train_images": len(train),
        "test_images": len(test),
        "train_exact_copies_of_test": int(exact.sum()),
        "train_flagged": [int((train_distance <= t).sum()) for t in THRESHOLDS],
        "train_flagged_not_exact": [int(((train_distance <= t) & ~exact).sum()) for t in THRESHOLDS],
        "at_chosen_threshold": {
            "copies_caught": {kind: row["caught"][threshold] for kind, row in caught.items()},
            "train_flagged": len(flagged),
            "flagged_same_label": int(labels.sum()),
            "flagged_pixel_error_above_worst_copy": int((pair_error > worst_copy).sum()),
            "worst_copy_pixel_error": round(worst_copy, 2),
            "flagged_pixel_error": sorted(round(float(e), 2) for e in pair_error),
        },
        "seconds": {"hash_70k": round(hash_seconds, 2), "nearest_60k_x_10k": round(nearest_seconds, 2)},
    }
    write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("chosen_threshold", "at_chosen_threshold", "seconds")}))
    for kind, row in caught.items():
        print(f"{kind}: caught per threshold {row['caught']}")
    print(f"train flagged per threshold {result['train_flagged']}")


if __name__ == "__main__":
    main()
