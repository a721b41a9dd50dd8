"""Progress bars that stay quiet when nobody is watching (stderr not a terminal)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(items: Iterable[T], *, total: int | None, desc: str, mode: str = "auto") -> Iterator[T]:
    """Wrap `items` in a tqdm bar when `mode` is "always", or "auto" and stderr is a terminal."""
    show = mode == "always" or (mode == "auto" and sys.stderr.isatty())
    return iter(tqdm(items, total=total, desc=desc, disable=not show, leave=False, file=sys.stderr))
