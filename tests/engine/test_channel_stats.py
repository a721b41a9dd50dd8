"""Per-channel statistics of the training images, which every stage normalises with."""

import numpy as np

from labelsieve.engine.resident import channel_stats


def test_channel_stats_match_float64_numpy_and_do_not_depend_on_the_block_size():
    images = np.random.default_rng(0).integers(0, 256, (7, 3, 5, 4), dtype=np.uint8)
    x = images.astype(np.float64) / 255.0
    mean, std = x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))  # population std, as normalisation uses
    for chunk_bytes in (1, 3 * 5 * 4 * 8 * 2, 1 << 30):  # one image per block, two, all at once
        got_mean, got_std = channel_stats(images, chunk_bytes=chunk_bytes)
        np.testing.assert_allclose(got_mean, mean, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got_std, std, rtol=0, atol=1e-12)


def test_channel_stats_of_a_constant_image_have_the_floor_std():
    mean, std = channel_stats(np.full((2, 1, 3, 3), 51, dtype=np.uint8))
    assert mean == (0.2,) and std == (1e-6,)  # sqrt of the 1e-12 variance floor, never a division by zero
