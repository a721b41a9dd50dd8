"""glibc malloc thresholds for training loops, which free and reallocate the same large buffers every step.

With glibc's defaults, many of a step's tensors are allocated with mmap and freed with munmap, or the heap is
trimmed back to the kernel after a free, and every new buffer then costs page faults. How many depends on
the path glibc's adaptive thresholds take: three `benchmarks/speed.py` runs here spent 7.1, 36.6 and 74.6 s
in the kernel (1.8 to 24.9 million page faults). Keeping freed memory in the process removes most of them
(docs/benchmarks.md, "Allocator"):

- buffers up to 32 MiB come from the heap, not from mmap (`M_MMAP_THRESHOLD`, glibc's largest on 64-bit);
- the heap is trimmed only when 256 MiB at its top are free (`M_TRIM_THRESHOLD`);
- each heap growth asks for 64 MiB more than it needs (`M_TOP_PAD`).

The cost is memory the process keeps after freeing it: at most about 320 MiB per process. Results do not
change: the allocator decides where bytes live, not what is computed. A user who sets any of glibc's
`MALLOC_*_` variables keeps their own settings.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # glibc's <malloc.h>
SETTINGS = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 256 << 20, M_TOP_PAD: 64 << 20}
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_ARENA_MAX")


def tune_malloc() -> bool:
    """Apply `SETTINGS` to glibc's malloc; False (nothing changed) without glibc or under the user's own."""
    if any(name in os.environ for name in USER_VARIABLES):
        return False
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # no C library to open this way (Windows)
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # musl, macOS
        return False
    return all(libc.mallopt(param, value) == 1 for param, value in SETTINGS.items())
