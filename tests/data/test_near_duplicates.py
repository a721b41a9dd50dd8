"""Perceptual-hash near-duplicates: altered copies are near, other images far, and ingest drops train
images that are altered copies of test images."""

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from labelsieve.config import IngestConfig
from labelsieve.data import images, near_duplicates
from labelsieve.stages import ingest

THRESHOLD = IngestConfig().near_duplicate_bits


def _smooth(seed: int, size: int = 28) -> np.ndarray:
    """A (size, size) uint8 image like Fashion-MNIST's: a few filled shapes with sharp edges on black."""
    rng = np.random.default_rng(seed)
    image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x0, y0 = rng.integers(0, size - 8, 2)
        x1, y1 = x0 + rng.integers(6, size - x0 + 1), y0 + rng.integers(6, size - y0 + 1)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((int(x0), int(y0), int(x1), int(y1)), fill=int(rng.integers(60, 256)))
    return np.asarray(image)


def _altered(pixels: np.ndarray) -> bytes:
    """`pixels` resized up to 36 px and saved as a quality-70 JPEG."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((36, 36), Image.BILINEAR).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


def test_phash_puts_altered_copies_near_and_other_images_far():
    originals = np.stack([_smooth(seed) for seed in range(40)])[:, None]
    copies = np.stack(
        [images.decode_image(_altered(x[0]), size=28, channels=1, max_pixels=10**6) for x in originals]
    )
    own = near_duplicates.distances(near_duplicates.phash(copies), near_duplicates.phash(originals))
    assert (own <= THRESHOLD).mean() >= 0.95
    hashes = near_duplicates.phash(originals)
    others = [near_duplicates.distances(hashes[i], hashes[j]) for i in range(40) for j in range(i)]
    assert min(others) > THRESHOLD
    assert np.median(others) == pytest.approx(near_duplicates.BITS / 2, abs=15)  # about half the bits


def test_phash_is_the_same_for_gray_and_rgb_and_rows_select_images():
    gray = np.stack([_smooth(seed) for seed in range(5)])[:, None]
    rgb = np.repeat(gray, 3, axis=1)
    np.testing.assert_array_equal(near_duplicates.phash(gray), near_duplicates.phash(rgb))
    rows = np.array([4, 1])
    np.testing.assert_array_equal(near_duplicates.phash(gray, rows), near_duplicates.phash(gray)[rows])


def _random_hashes(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = np.zeros((n, near_duplicates.WORDS * 64), dtype=bool)
    bits[:, : near_duplicates.BITS] = rng.random((n, near_duplicates.BITS)) < 0.5
    return np.packbits(bits, axis=1).view(np.uint64)


def test_nearest_matches_a_brute_force_search():
    rng = np.random.default_rng(0)
    query, reference = _random_hashes(rng, 37), _random_hashes(rng, 11)
    reference[3] = query[5]
    reference[3, 0] ^= np.uint64(0b101)  # two bits away
    distance, row = near_duplicates.nearest(query, reference, chunk=8)
    brute = np.array([[int(np.bitwise_count(q ^ r).sum()) for r in reference] for q in query])
    np.testing.assert_array_equal(distance, brute.min(axis=1))
    np.testing.assert_array_equal(row, brute.argmin(axis=1))
    assert (distance[5], row[5]) == (2, 3)
    empty, none = near_duplicates.nearest(query, reference[:0])
    assert (empty > near_duplicates.BITS).all() and (none == -1).all()


def test_ingest_drops_a_resized_recompressed_copy_of_a_test_image(tmp_path, make_params):
    root = tmp_path / "crawl"
    root.mkdir()
    rows = []
    for i in range(16):
        buffer = io.BytesIO()
        Image.fromarray(_smooth(i)).save(buffer, format="PNG")
        (root / f"{i}.png").write_bytes(buffer.getvalue())
        rows.append((f"{i}.png", "ab"[i % 2], "test" if i >= 12 else "train"))
    (root / "copy.jpg").write_bytes(_altered(_smooth(13)))  # test image 13, resized and recompressed
    rows.append(("copy.jpg", "b", "train"))
    manifest = root / "m.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([("path", "label", "split"), *rows])
    params = make_params(f"ingest.source={manifest}", "data.image_size=28", "ingest.val_fraction=0")
    summary = ingest.run(params, out_dir=tmp_path / "ds")
    report = json.loads((tmp_path / "ds" / "ingest_report.json").read_text())
    assert report["skipped_counts"] == {ingest.NEAR_TEST_LEAK: 1}
    assert report["skipped"][0]["source"] == "copy.jpg"
    assert "of test image 13.png" in report["skipped"][0]["detail"]
    assert (summary["train"], summary["test"]) == (12, 4)
    off = make_params(f"ingest.source={manifest}", "data.image_size=28", "ingest.near_duplicate_bits=-1")
    assert ingest.run(off, out_dir=tmp_path / "off")["skipped"] == 0
