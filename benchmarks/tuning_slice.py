"""Write a Fashion-MNIST tuning slice that the benchmark never sees, as a manifest `labelsieve ingest` reads.

The quality benchmark's CPU profile trains on the first 1,000 training images of each class and tests on
the official test split. Purification rules are chosen on this slice instead: training images 1,000 to
1,999 of each class as the training pool (ingest carves the noisy validation split from it) and images
2,000 to 2,199 of each class as a test split, so no image of the reported figures takes part.
A second slice (``--part 2``), images 3,000 to 3,999 and 4,000 to 4,199 of each class, shares no image
with either, so that a rule can be checked on a third set before it is adopted.

    uv run python benchmarks/tuning_slice.py /tmp/fm-tune
    uv run python benchmarks/quality.py --methods labelsieve --noise sym50,asym40,inst40 \\
        --set ingest.source=/tmp/fm-tune/manifest.csv --set ingest.per_class_limit=0 \\
        --work /tmp/fm-tune-work --out /tmp/fm-tune-results

The class names are Fashion-MNIST's, so the ``fashion_mnist`` asymmetric map applies unchanged.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from labelsieve.atomic import atomic_dir
from labelsieve.config import load_params
from labelsieve.data import idx

REPO = Path(__file__).resolve().parent.parent
PARTS = {  # per-class index ranges of the training file, for each slice
    1: {"train": (1000, 2000), "test": (2000, 2200)},
    2: {"train": (3000, 4000), "test": (4000, 4200)},
}


def slice_rows(labels: np.ndarray, part: int = 1) -> list[tuple[int, str]]:
    """(index into the training file, split) for every image of the slice, in file order within a class."""
    rows = []
    for c in range(int(labels.max()) + 1):
        members = np.flatnonzero(labels == c)
        for split, (start, stop) in PARTS[part].items():
            rows += [(int(i), split) for i in members[start:stop]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("out", help="folder to write (replaced atomically)")
    parser.add_argument("--part", type=int, choices=sorted(PARTS), default=1, help="which slice (default 1)")
    args = parser.parse_args()
    params = load_params(REPO / "params.yaml")
    arrays = idx.load_fashion_mnist(
        REPO / params.ingest.fashion_mnist_dir,
        download=params.ingest.download,
        url=params.ingest.download_url,
        cache_dir=Path(params.ingest.cache_dir).expanduser(),
    )
    images, labels = arrays["train_images"], arrays["train_labels"]
    with atomic_dir(args.out) as tmp:
        (tmp / "images").mkdir()
        table = io.StringIO()
        writer = csv.writer(table, lineterminator="\n")
        writer.writerow(["path", "label", "split"])
        for i, split in slice_rows(labels, args.part):
            name = f"images/{i:05d}.png"
            Image.fromarray(images[i]).save(tmp / name)
            writer.writerow([name, idx.FASHION_MNIST_CLASSES[labels[i]], split])
        (tmp / "manifest.csv").write_text(table.getvalue())
    print(f"wrote {args.out}/manifest.csv")


if __name__ == "__main__":
    main()
