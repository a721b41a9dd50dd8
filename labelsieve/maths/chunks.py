"""Fixed-size chunks of samples, so that per-sample O(N) maths keeps its working set in cache.

An N-sized temporary at N = 1e7 is 40 to 400 MB: it leaves the last-level cache (32 MiB on the
reference machine), and past glibc's 32 MiB mmap threshold every such temporary is fresh memory that
the kernel page-faults in and then unmaps again. Before this module, most of the time of the GMM
posterior and of the JS divergence at N = 1e7 was the kernel's (benchmarks/scale.py). Walking the
samples a chunk at a time keeps each temporary small: it stays in cache, and the allocator hands the
same memory back for the next chunk. Per-sample results go into one preallocated (N,) output, and sums
over samples are accumulated per chunk in float64.

Below one chunk (N · row_values ≤ CHUNK_VALUES) the chunked code runs the very same operations on the
whole tensor, so its results are bit-identical to unchunked code; above it they differ only by float64
round-off of the sums.
"""

from __future__ import annotations

__all__ = ["CHUNK_VALUES", "row_chunks"]

# Values (rows × values per row) in one chunk: 1 MiB of float64, so a chunk and its handful of
# temporaries fit the 32 MiB L3 (and mostly the 1 MiB L2), while the per-chunk overhead of
# dispatching a dozen tensor ops (a few µs each) stays a few percent of the chunk's arithmetic.
CHUNK_VALUES = 1 << 17


def row_chunks(n_rows: int, row_values: int = 1) -> list[slice]:
    """Consecutive slices covering rows 0..n_rows − 1, each at most ``CHUNK_VALUES`` values.

    Args:
        n_rows: N, the number of rows (samples).
        row_values: Values per row, e.g. C for an (N, C) tensor; a row is never split, so a chunk
            holds at least one row.

    Returns:
        The slices in order; one slice when everything fits in one chunk, none when N = 0.
    """
    rows = max(1, CHUNK_VALUES // max(1, row_values))
    return [slice(start, min(start + rows, n_rows)) for start in range(0, n_rows, rows)]
